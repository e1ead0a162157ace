"""The ingest endpoint, POST /api/v1/ingest/<run_id>/ with `Authorization: Bearer <run token>`.

Two front doors share `ingest_handle_many`: a plain Django view (WSGI, the test client, any ASGI server without
the wrapper) and `IngestFastPath`, an ASGI wrapper that answers this one path before Django's middleware stack.
Reporters post hundreds of times a second per cluster; the fast path costs a fraction of a full Django request,
and it stores the requests that arrive while its transactions are busy together, in one transaction (group
commit): one WAL flush and a handful of statements for all of them. Every answer is sent after its commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from runs.metrics.compaction import metrics_compact_due
from runs.metrics.rows import RunGone
from runs.metrics.sql import ingest_connection_setup
from runs.metrics.store import Ready, metrics_prepare, metrics_store_many, metrics_store_ready
from runs.metrics.validation import MAX_BODY_BYTES, MAX_POINTS, IngestInvalid, ingest_parse, ingest_validate
from runs.realtime.broadcast import Message, send_many_async
from runs.realtime.listeners import GroupListeners
from runs.services.tokens import run_token_cached, run_token_check_cached

log = logging.getLogger(__name__)

INGEST_PATH = re.compile(r"/api/v1/ingest/(\d{1,18})/\Z")
UNAUTHORIZED = {"error": "invalid or missing run token: send Authorization: Bearer <the run's ingest token>"}
FAILED = {"error": "ingest failed; the error was logged, retry later"}
JSON_HEADERS = [(b"content-type", b"application/json")]
MAX_GROUP = 64  # requests stored in one transaction (at most MAX_POINTS points, one request per run)
# How long a transaction waits for prompt runs answered moments ago to post again (IngestFastPath): a transaction
# of 4 requests costs about two thirds as much CPU per request as a transaction of one.
GATHER_S = 0.001
ANSWERED_S = 0.005
# Compaction waits this long for more series to come due, and merges them all in one transaction: each
# transaction's fixed cost (statements, locks, commit) is as large as a merge's own.
COMPACT_GATHER_S = 0.2


def bearer_token(authorization: str) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@dataclass
class Answer:
    status: int
    payload: dict
    compact: list[int] = field(default_factory=list)  # series due for compaction
    push: tuple[str, Message] | None = None  # the websocket message, when the caller sends it (push=False)


def ingest_handle(*, run_id: int, authorization: str, body: bytes, compact: bool = True) -> tuple[int, dict, list]:
    """(HTTP status, JSON answer, series due for compaction). A wrong token and an unknown run get the same 401."""
    (answer,) = ingest_handle_many([(run_id, authorization, body)])
    if compact and answer.compact:
        metrics_compact_due(answer.compact)
        answer.compact = []
    return answer.status, answer.payload, answer.compact


def ingest_handle_many(requests: list[tuple[int, str, bytes]], *, push: bool = True) -> list[Answer]:
    """ingest_handle for requests of distinct runs (run id, Authorization header, body), without compaction:
    valid ones are stored together, in one transaction per MAX_POINTS points. If such a transaction fails, its
    batches are stored again one at a time, so that one request's failure (its run deleted meanwhile, a deadlock)
    is its own answer only. push=False leaves the websocket messages in the answers (metrics_store_many)."""
    answers: list = [None] * len(requests)
    ready = []
    for index, (run_id, authorization, body) in enumerate(requests):
        token = bearer_token(authorization)
        run = run_token_check_cached(run_id=run_id, token=token) if token else None
        if run is None:
            answers[index] = Answer(401, UNAUTHORIZED)
            continue
        try:
            ready.append((index, run, ingest_validate(ingest_parse(body))))
        except IngestInvalid as exc:
            answers[index] = Answer(400, exc.as_json())
    groups: list[list] = []
    points = MAX_POINTS + 1
    for item in ready:
        if points + item[2].points > MAX_POINTS:
            groups.append([])
            points = 0
        groups[-1].append(item)
        points += item[2].points
    for group in groups:
        try:
            results = metrics_store_many([(run, batch) for _, run, batch in group], push=push)
            done = [Answer(200, result.as_json(), result.compact, result.push) for result in results]
        except Exception as exc:
            if len(group) == 1:
                done = [_failure(group[0][1], exc)]
            else:
                log.info("a grouped ingest failed; storing its %d batches one at a time", len(group), exc_info=True)
                done = [_store_alone(run, batch, push) for _, run, batch in group]
        for (index, _, _), answer in zip(group, done, strict=True):
            answers[index] = answer
    return answers


def _store_alone(run, batch, push: bool) -> Answer:
    try:
        (result,) = metrics_store_many([(run, batch)], push=push)
    except Exception as exc:
        return _failure(run, exc)
    return Answer(200, result.as_json(), result.compact, result.push)


def _failure(run, exc: Exception) -> Answer:
    if isinstance(exc, RunGone):
        return Answer(401, UNAUTHORIZED)
    log.error("ingest of run %s failed", run.pk, exc_info=exc)
    return Answer(500, FAILED)


@csrf_exempt
@require_POST
def ingest(request: HttpRequest, run_id: int) -> HttpResponse:
    if len(request.body) > MAX_BODY_BYTES:
        status, payload = 413, {"error": f"body over {MAX_BODY_BYTES} bytes; send smaller batches"}
    else:
        status, payload, _ = ingest_handle(
            run_id=run_id, authorization=request.headers.get("Authorization", ""), body=request.body
        )
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def _threads() -> int:
    # One: requests are prepared on arrival, so a transaction's thread has little to do besides waiting for its
    # statement, and the requests arriving meanwhile make the next transaction larger. Two did 12-22 % worse.
    try:
        return max(1, int(os.environ.get("CP_INGEST_THREADS", "1")))
    except ValueError:
        return 1


@dataclass
class Waiting:
    run_id: int
    authorization: str
    body: bytes
    answer: asyncio.Future
    prompt: bool  # posted within ANSWERED_S of the run's previous answer
    ready: Ready | None = None  # prepared on arrival (metrics_prepare), else stored from the body in the thread


class IngestFastPath:
    """ASGI wrapper: POST /api/v1/ingest/<id>/ is answered here; everything else goes to the wrapped app.

    A request is prepared as it arrives, on the event loop, while earlier transactions run: its token checked
    against this process's cache, its body parsed and validated (a bad one is answered at once), and its blocks
    and series rows made ready (metrics_prepare) when its series are known here. A transaction of prepared requests
    then holds only their one statement; the rest is done in its thread.

    At most CP_INGEST_THREADS (default 1) transactions run at once per process, each in a thread that keeps its
    database connection. A request that arrives while they are all busy waits, and the next free one takes every
    waiting request (one per run, up to MAX_GROUP) in one transaction. Before it starts, a transaction waits up to
    GATHER_S for the runs answered within ANSWERED_S that have not posted again, if they are prompt (their last
    request came within ANSWERED_S of their answer before: reporters that post as soon as they are answered), so
    that their requests join it. Requests of a lone reporter, or of reporters that post now and then, never wait;
    under load the commits, statements and round trips are shared.

    Series that come due for compaction are merged after the answers are sent, by one thread of its own that
    gathers them for COMPACT_GATHER_S and merges them in one transaction.
    """

    def __init__(self, app):
        self.app = app
        self.slots = _threads()
        self.executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="ingest")
        # Compaction has a thread of its own, so that it never holds up a transaction's turn.
        self.compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-compact")
        self._waiting: list[Waiting] = []
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

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = INGEST_PATH.match(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not self.host_allowed(headers.get(b"host", b"").decode("latin-1")):
            return await self._respond(send, 400, {"error": "host not allowed"})
        body = await self._read_body(receive)
        if body is None:
            return await self._respond(send, 413, {"error": f"body over {MAX_BODY_BYTES} bytes; send smaller batches"})
        waiting = self.submit(int(match.group(1)), headers.get(b"authorization", b"").decode("latin-1"), body)
        try:
            answer = await waiting.answer
        except Exception:
            log.exception("ingest failed")
            return await self._respond(send, 500, FAILED)
        await self._respond(send, answer.status, answer.payload)
        self.answered(waiting, answer)

    def submit(self, run_id: int, authorization: str, body: bytes) -> Waiting:
        """Queue a request for the next transaction; its `answer` future is set once it is stored (or refused)."""
        answered = self._answered.pop(run_id, None)
        waiting = Waiting(
            run_id,
            authorization,
            body,
            asyncio.get_running_loop().create_future(),
            answered is not None and time.monotonic() - answered[0] < ANSWERED_S,
        )
        try:
            answered_now = self._prepare(waiting)
        except Exception:  # the thread does it all again, and answers any error
            log.warning("preparing an ingest of run %s failed", run_id, exc_info=True)
            answered_now = False
        if answered_now:
            return waiting
        self._waiting.append(waiting)
        for arrival in self._arrivals:
            _settle(arrival)
        self._arrivals.clear()
        if self._busy < self.slots:
            self._busy += 1
            self._spawn(self._drain())
        return waiting

    @staticmethod
    def _prepare(waiting: Waiting) -> bool:
        """What of a request needs no database, done on arrival, while earlier transactions run: the token from
        this process's cache, the body parsed and validated (a bad one is answered at once: True), and the batch
        prepared for the one-statement write. Whatever is left undone, the transaction's thread does."""
        token = bearer_token(waiting.authorization)
        run = run_token_cached(run_id=waiting.run_id, token=token) if token else None
        if run is None:
            return False
        try:
            batch = ingest_validate(ingest_parse(waiting.body))
        except IngestInvalid as exc:
            waiting.answer.set_result(Answer(400, exc.as_json()))
            return True
        waiting.ready = metrics_prepare(run=run, batch=batch)
        return False

    def answered(self, waiting: Waiting, answer: Answer) -> None:
        """Once the answer is sent: remember when, and compact the series it made due (the job never waits on
        compaction)."""
        if answer.status == 200:
            self._answered[waiting.run_id] = (time.monotonic(), waiting.prompt)
        due = [sid for sid in answer.compact if sid not in self._compacting]
        if due:
            self._compacting.update(due)
            with self._compact_lock:
                self._compact_queue.update(due)
            self._spawn(self._compact_then_release(due))

    # The threads run plain functions that keep to their own database connection: run_in_executor hands them
    # over for about half of what sync_to_async's context and thread-sensitivity bookkeeping costs per call.
    async def _store(self, group: list[Waiting]) -> list[Answer]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._store_in_thread, group)

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
                group: list[Waiting] = []
                later: list[Waiting] = []
                runs: set[int] = set()
                for waiting in self._waiting:
                    if waiting.run_id in runs or waiting.run_id in self._storing or len(group) >= MAX_GROUP:
                        later.append(waiting)  # a run's next request waits for the one being stored
                    else:
                        runs.add(waiting.run_id)
                        group.append(waiting)
                self._waiting = later
                if not group:
                    break  # all wait on runs another transaction is storing; its loop comes back for them
                self._storing |= runs
                answers: list[Answer | Exception]
                try:
                    answers = list(await self._store(group))
                except Exception as exc:  # reported by each request's handler
                    answers = [exc] * len(group)
                finally:
                    self._storing -= runs
                # The transaction's thread and connection are free: the next group goes on while this one's
                # points are pushed. Each answer waits for its push: a reporter, which posts its next batch
                # after the answer, has its pushes delivered in order.
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

    async def _push_then_answer(self, group: list[Waiting], answers: list) -> None:
        pushes = [a.push for a in answers if isinstance(a, Answer) and a.push is not None]
        try:
            await send_many_async(pushes, listeners=self._listeners)
        except Exception:  # the database holds the truth; a missed push is back-filled on reconnect
            log.warning("broadcast of %d ingests failed", len(pushes), exc_info=True)
        for waiting, answer in zip(group, answers, strict=True):
            if waiting.answer.done():  # the client went away
                continue
            if isinstance(answer, Exception):
                waiting.answer.set_exception(answer)
            else:
                waiting.answer.set_result(answer)

    async def _compact_then_release(self, series_ids: list[int]) -> None:
        # The compaction thread runs one job at a time, in order: by the end of this one, a job that started
        # after these series were queued has compacted them (this one, or an earlier one that took them along).
        try:
            await self._compact()
        finally:
            self._compacting.difference_update(series_ids)

    @staticmethod
    def host_allowed(host: str) -> bool:
        domain, _ = split_domain_port(host)
        allowed = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
        return bool(domain) and validate_host(domain, allowed)

    @staticmethod
    async def _read_body(receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""  # nothing is stored for an empty body; the closed connection gets no answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _respond(send, status: int, payload: dict) -> None:
        body = orjson.dumps(payload)
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _store_in_thread(group: list[Waiting]) -> list[Answer]:
        # The request lifecycle Django would run: drop a connection that broke or outlived CONN_MAX_AGE.
        close_old_connections()
        try:
            ingest_connection_setup()
            return _store_group(group)
        finally:
            close_old_connections()

    def _compact_in_thread(self) -> None:
        with self._compact_lock:
            if not self._compact_queue:
                return  # an earlier job took this one's series along
        time.sleep(COMPACT_GATHER_S)
        with self._compact_lock:
            series_ids, self._compact_queue = sorted(self._compact_queue), set()
        close_old_connections()
        try:
            metrics_compact_due(series_ids)
        except Exception:  # the next ingest of the series triggers it again
            log.exception("compaction of series %s failed", series_ids)
        finally:
            close_old_connections()


def _store_group(group: list[Waiting]) -> list[Answer]:
    """Answers for a group of requests of distinct runs: those prepared on arrival in one statement, the others
    (and all of them, should that statement fail) as ingest_handle_many stores requests."""
    answers: dict[int, Answer] = {}
    rest = [w for w in group if w.ready is None]
    ready = [(w, w.ready) for w in group if w.ready is not None]
    if ready:
        try:
            results = metrics_store_ready([prepared for _, prepared in ready], push=False)
        except Exception:  # stored again from their bodies, where one request's failure is its own answer only
            log.info("a prepared ingest of %d requests failed; storing them again", len(ready), exc_info=True)
            rest += [waiting for waiting, _ in ready]
        else:
            for (waiting, _), result in zip(ready, results, strict=True):
                answers[id(waiting)] = Answer(200, result.as_json(), result.compact, result.push)
    if rest:
        stored = ingest_handle_many([(w.run_id, w.authorization, w.body) for w in rest], push=False)
        for waiting, answer in zip(rest, stored, strict=True):
            answers[id(waiting)] = answer
    return [answers[id(waiting)] for waiting in group]


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def with_ingest_fast_path(app):
    """Wrap an ASGI application (controlplane.asgi's ProtocolTypeRouter) with the ingest fast path."""
    return IngestFastPath(app)
