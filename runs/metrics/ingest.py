"""Ingest requests: each request's checks and answers, and the group commit that stores the requests arriving
together in one transaction (runs.views.ingest serves them over HTTP; `answer_now` serves one request that reaches
Django, through the REST API's route, with the same checks and answers).

A request (run id, bearer token, body) is checked as it arrives, on the event loop, while earlier transactions
run: its token against this process's cache of run tokens, its body parsed and validated (a bad one is answered
at once), and on PostgreSQL its blocks and series rows made ready (metrics_prepare) when its series are known here.
What needs the database (a token not cached yet) is done in the transaction's thread.

At most CP_INGEST_THREADS (default 1) transactions run at once per process, each in a thread that keeps its
database connection. A request that arrives while they are all busy waits, and the next free one takes every
waiting request (one per run, up to MAX_GROUP) in one transaction: one WAL flush and a handful of statements for
all of them. Before it starts, a transaction waits up to GATHER_S for prompt runs answered within ANSWERED_S
(reporters that post as soon as they are answered) to post again, so that their requests join it; requests of a
lone reporter, or of reporters that post now and then, never wait. Each answer is given after its commit and after
its points were pushed to the run's websocket group, so a reporter's pushes arrive in order.

Series that come due for compaction are merged after the answers, by one thread of its own that gathers them for
COMPACT_GATHER_S and merges them in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import connection, connections

from runs.metrics.compaction import metrics_compact_due
from runs.metrics.rows import IngestResult, RunGone
from runs.metrics.sql import ingest_connection_setup
from runs.metrics.store import Ready, metrics_prepare, metrics_store_many, metrics_store_ready
from runs.metrics.validation import (
    MAX_BODY_BYTES,
    MAX_POINTS,
    Batch,
    IngestInvalid,
    batch_confine_paths,
    ingest_body,
)
from runs.models import Run
from runs.realtime.broadcast import Message, send_many, send_many_async
from runs.realtime.listeners import GroupListeners
from runs.services.rundir import run_dir_path
from runs.services.tokens import run_token_cached, run_token_check_cached

log = logging.getLogger(__name__)

MAX_GROUP = 64  # requests stored in one transaction (at most MAX_POINTS points, one request per run)
# How long a transaction waits for prompt runs answered moments ago to post again: a transaction of several
# requests costs less CPU per request than one of a single request (bench/README.md).
GATHER_S = 0.001
ANSWERED_S = 0.005
# Compaction waits this long for more series to come due, and merges them all in one transaction: each
# transaction's fixed cost (statements, locks, commit) is as large as a merge's own.
COMPACT_GATHER_S = 0.2

# The refusals, each written once; a wrong token and an unknown run get the same one.
UNAUTHORIZED = "invalid or missing run token: send Authorization: Bearer <the run's ingest token>"
FAILED = "ingest failed; the error was logged, retry later"
TOO_LARGE = f"body over {MAX_BODY_BYTES} bytes; send smaller batches"
HOST_REFUSED = "host not allowed"


@dataclass
class Answer:
    status: int
    payload: dict
    compact: list[int] = field(default_factory=list)  # series due for compaction
    push: tuple[str, Message] | None = None  # the websocket message, sent before the answer


def refusal(status: int, error: str) -> Answer:
    return Answer(status, {"error": error})


def _stored(result: IngestResult) -> Answer:
    return Answer(200, result.as_json(), result.compact, result.push)


@dataclass(eq=False)
class Request:
    """One ingest request, from its arrival to its answer."""

    run_id: int
    token: str
    body: bytes
    answer: asyncio.Future | None  # set once it is stored or refused (None: answered at once, answer_now)
    prompt: bool  # posted within ANSWERED_S of the run's previous answer
    run: Run | None = None  # once its token is checked
    batch: Batch | None = None  # once its body is validated
    ready: Ready | None = None  # prepared for the one-statement write (metrics_prepare)


def _validate(request: Request) -> Answer | None:
    """Parse and validate the body of a request whose run is known: None when it is valid, else its answer."""
    try:
        request.batch = ingest_body(request.body)
        assert request.run is not None
        batch_confine_paths(request.batch, run_dir=run_dir_path(request.run))
    except IngestInvalid as exc:
        return Answer(400, exc.as_json())
    return None


class GroupCommit:
    """The ingest requests of one process on one event loop: checked on arrival, stored in groups, answered."""

    def __init__(self):
        # CP_INGEST_THREADS, one by default: requests are prepared on arrival, so a transaction's thread has little
        # to do besides waiting for its statement, and the requests arriving meanwhile make the next transaction
        # larger (bench/README.md).
        self.slots = settings.CP_INGEST_THREADS
        self.executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="ingest")
        # Compaction has a thread of its own, so that it never holds up a transaction's turn.
        self.compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-compact")
        self._waiting: list[Request] = []
        self._storing: set[int] = set()  # runs with a request in a transaction
        self._busy = 0
        # run -> (when its last request was answered, time.monotonic; whether that request was prompt)
        self._answered: dict[int, tuple[float, bool]] = {}
        self._arrivals: list[asyncio.Future] = []  # transactions gathering requests, woken by each arrival
        self._compacting: set[int] = set()  # series queued or being compacted: asked once, not per ingest
        self._compact_queue: set[int] = set()  # series not yet taken by the compaction thread
        self._compact_lock = threading.Lock()
        self._background: set[asyncio.Task] = set()
        layer = get_channel_layer()
        self._listeners = GroupListeners(layer) if isinstance(layer, RedisChannelLayer) else None

    def submit(self, run_id: int, token: str, body: bytes) -> Request:
        """Check a request and queue it for the next transaction; its `answer` future is set once it is stored
        (or refused)."""
        answered = self._answered.pop(run_id, None)
        request = Request(
            run_id,
            token,
            body,
            asyncio.get_running_loop().create_future(),
            answered is not None and time.monotonic() - answered[0] < ANSWERED_S,
        )
        try:
            refused = self._arrive(request)
        except Exception:  # the thread does it all again, and answers any error
            log.warning("checking an ingest of run %s on arrival failed", run_id, exc_info=True)
            request.run = request.batch = request.ready = None
            refused = None
        if refused is not None:
            _resolve(request, refused)
            return request
        self._waiting.append(request)
        for arrival in self._arrivals:
            _settle(arrival)
        self._arrivals.clear()
        if self._busy < self.slots:
            self._busy += 1
            self._spawn(self._drain())
        return request

    @staticmethod
    def _arrive(request: Request) -> Answer | None:
        """What of a request needs no database, done on arrival: the token from this process's cache, the body
        validated, and the batch prepared for the one-statement write. Returns the answer of a refused request.
        Whatever is left undone, the transaction's thread does."""
        if not request.token:
            return refusal(401, UNAUTHORIZED)
        request.run = run_token_cached(run_id=request.run_id, token=request.token)
        if request.run is None:
            return None
        refused = _validate(request)
        if refused is None:
            assert request.batch is not None
            request.ready = metrics_prepare(run=request.run, batch=request.batch)
        return refused

    def answered(self, request: Request, answer: Answer) -> None:
        """Once the answer is sent: remember when, and compact the series it made due (the job never waits on
        compaction)."""
        if answer.status == 200:
            self._answered[request.run_id] = (time.monotonic(), request.prompt)
        due = [sid for sid in answer.compact if sid not in self._compacting]
        if due:
            self._compacting.update(due)
            with self._compact_lock:
                self._compact_queue.update(due)
            self._spawn(self._compact_then_release(due))

    async def idle(self) -> None:
        """Until the pushes and compactions started so far are done."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def close(self) -> None:
        """Close the threads' database connections and stop the threads (each keeps its connection otherwise)."""
        for executor, threads in ((self.executor, self.slots), (self.compactor, 1)):
            barrier = threading.Barrier(threads)

            def close(barrier=barrier):
                barrier.wait(10)
                connections.close_all()

            for future in [executor.submit(close) for _ in range(threads)]:
                future.result(20)
            executor.shutdown()

    # The threads run plain functions that keep to their own database connection, so run_in_executor is enough:
    # sync_to_async's context and thread-sensitivity bookkeeping would cost more per call for nothing.
    async def _store(self, group: list[Request]) -> list[Answer]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, _store_in_thread, group)

    async def _compact(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.compactor, self._compact_in_thread)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain(self) -> None:
        """Store waiting requests, a group per transaction, until none is left; then give the slot back."""
        try:
            while self._waiting:
                await self._gather()
                group: list[Request] = []
                later: list[Request] = []
                runs: set[int] = set()
                for request in self._waiting:
                    if request.run_id in runs or request.run_id in self._storing or len(group) >= MAX_GROUP:
                        later.append(request)  # a run's next request waits for the one being stored
                    else:
                        runs.add(request.run_id)
                        group.append(request)
                self._waiting = later
                if not group:
                    break  # all wait on runs another transaction is storing; its loop comes back for them
                self._storing |= runs
                answers: list[Answer | Exception]
                try:
                    answers = list(await self._store(group))
                except Exception as exc:  # answered as a failure, and logged, by each request's handler
                    answers = [exc] * len(group)
                finally:
                    self._storing -= runs
                # The transaction's thread and connection are free: the next group goes on while this one's
                # points are pushed.
                self._spawn(self._push_then_answer(group, answers))
        finally:
            self._busy -= 1

    async def _gather(self) -> None:
        """Wait (at most GATHER_S) while a prompt run answered moments ago has not posted again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATHER_S
        while self._expected() and (remaining := deadline - loop.time()) > 0:
            arrival = loop.create_future()
            self._arrivals.append(arrival)
            timer = loop.call_later(remaining, _settle, arrival)
            try:
                await arrival
            finally:
                timer.cancel()
                if arrival in self._arrivals:
                    self._arrivals.remove(arrival)

    def _expected(self) -> bool:
        """Whether a run that posts promptly after its answers was answered within ANSWERED_S and has not posted
        again (answered runs are neither waiting nor being stored)."""
        now = time.monotonic()
        for run_id, (at, prompt) in list(self._answered.items()):
            if now - at >= ANSWERED_S:
                del self._answered[run_id]  # its next request, if any, will not be prompt
            elif prompt:
                return True
        return False

    async def _push_then_answer(self, group: list[Request], answers: list) -> None:
        pushes = [a.push for a in answers if isinstance(a, Answer) and a.push is not None]
        try:
            await send_many_async(pushes, listeners=self._listeners)
        except Exception:  # the database holds the truth; a missed push is back-filled on reconnect
            log.warning("broadcast of %d ingests failed", len(pushes), exc_info=True)
        for request, answer in zip(group, answers, strict=True):
            _resolve(request, answer)

    async def _compact_then_release(self, series_ids: list[int]) -> None:
        # The compaction thread runs one job at a time, in order: by the end of this one, a job that started
        # after these series were queued has compacted them (this one, or an earlier one that took them along).
        try:
            await self._compact()
        finally:
            self._compacting.difference_update(series_ids)

    def _compact_in_thread(self) -> None:
        with self._compact_lock:
            if not self._compact_queue:
                return  # an earlier job took this one's series along
        time.sleep(COMPACT_GATHER_S)
        with self._compact_lock:
            series_ids, self._compact_queue = sorted(self._compact_queue), set()
        _connection_kept()
        try:
            metrics_compact_due(series_ids)
        except Exception:  # the next ingest of the series triggers it again
            log.exception("compaction of series %s failed", series_ids)


def _resolve(request: Request, answer: Answer | Exception) -> None:
    future = request.answer
    if future is None or future.done():  # the client went away
        return
    if isinstance(answer, Exception):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def answer_now(*, run_id: int, token: str, body: bytes) -> Answer:
    """One request checked, stored and answered at once, outside any group (a request that reaches Django); its
    points are pushed and its series compacted before it returns."""
    if len(body) > MAX_BODY_BYTES:
        return refusal(413, TOO_LARGE)
    (answer,) = store_requests([Request(run_id, token, body, None, False)])
    if answer.push is not None:
        send_many([answer.push])
    if answer.compact:
        metrics_compact_due(answer.compact)
    return answer


def _connection_kept() -> None:
    """The ingest and compaction threads are few and live as long as the server, so each keeps its connection from
    one group to the next (Django's request cycle, which would close it, never runs here); one that broke is
    dropped, and the next query opens another."""
    raw = connection.connection
    if raw is not None and (getattr(raw, "closed", False) or getattr(raw, "broken", False)):  # psycopg's own flags
        connection.close()


def _store_in_thread(group: list[Request]) -> list[Answer]:
    _connection_kept()
    ingest_connection_setup()
    return store_requests(group)


def store_requests(group: list[Request]) -> list[Answer]:
    """Answers for requests of distinct runs, in their order: tokens not checked on arrival checked now, bodies
    validated; those prepared on arrival stored in one statement, the others (and all of them, should that
    statement fail) in transactions of at most MAX_POINTS points."""
    answers: dict[int, Answer] = {}
    ready: list[Request] = []
    rest: list[Request] = []
    for request in group:
        if request.run is None:
            request.run = run_token_check_cached(run_id=request.run_id, token=request.token) if request.token else None
            if request.run is None:
                answers[id(request)] = refusal(401, UNAUTHORIZED)
                continue
        if request.batch is None and (refused := _validate(request)) is not None:
            answers[id(request)] = refused
            continue
        (ready if request.ready is not None else rest).append(request)
    if ready:
        try:
            results = metrics_store_ready([r.ready for r in ready if r.ready is not None], push=False)
        except Exception:  # stored again as batches, where one request's failure is its own answer only
            log.info("a prepared ingest of %d requests failed; storing them again", len(ready), exc_info=True)
            rest += ready
        else:
            for request, result in zip(ready, results, strict=True):
                answers[id(request)] = _stored(result)
    if rest:
        for request, answer in zip(rest, _store_batches(rest), strict=True):
            answers[id(request)] = answer
    return [answers[id(request)] for request in group]


def _store_batches(requests: list[Request]) -> list[Answer]:
    """Store validated requests of distinct runs together, in one transaction per MAX_POINTS points. If such a
    transaction fails, its batches are stored again one at a time, so that one request's failure (its run deleted
    meanwhile, a deadlock) is its own answer only."""
    groups: list[list[Request]] = []
    points = MAX_POINTS + 1
    for request in requests:
        assert request.batch is not None
        if points + request.batch.points > MAX_POINTS:
            groups.append([])
            points = 0
        groups[-1].append(request)
        points += request.batch.points
    answers: list[Answer] = []
    for part in groups:
        try:
            results = metrics_store_many([(r.run, r.batch) for r in part], push=False)  # type: ignore[misc]
            answers += [_stored(result) for result in results]
        except Exception as exc:
            if len(part) == 1:
                answers.append(_failure(part[0], exc))
            else:
                log.info("a grouped ingest failed; storing its %d batches one at a time", len(part), exc_info=True)
                answers += [_store_alone(request) for request in part]
    return answers


def _store_alone(request: Request) -> Answer:
    try:
        (result,) = metrics_store_many([(request.run, request.batch)], push=False)  # type: ignore[list-item]
    except Exception as exc:
        return _failure(request, exc)
    return _stored(result)


def _failure(request: Request, exc: Exception) -> Answer:
    if isinstance(exc, RunGone):
        return refusal(401, UNAUTHORIZED)
    log.error("ingest of run %s failed", request.run_id, exc_info=exc)
    return refusal(500, FAILED)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
