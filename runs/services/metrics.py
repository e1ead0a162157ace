"""Metric ingest, storage and reads.

Ingest (`metrics_record`, or `metrics_store_many` for the batches of several runs in one transaction) validates a
batch of run-directory records (docs/run-config.md), then in one transaction: locks the batch's series rows (every
writer of a series takes its row lock first, so concurrent posts of the same batch serialise and the second finds
its steps present), drops (key, step) pairs already stored, appends one packed block per key, runs the streaming
detectors, applies heartbeats and events, and on commit pushes the new points to the run's websocket group. On
PostgreSQL the usual batch (series this process wrote last, only new steps, no event, no alert) skips the locks: it
is one autocommitted statement that writes each series row only if its version is still the one this process
committed, and fails whole otherwise, for the locking path to store it (`_series_cache`). Small blocks are merged
later by `metrics_compact` (triggered by ingest when a series' ingest blocks are due, `merge_due`), which also
writes the rollups that zoomed-out reads use.

Reads (`series_read`) return every point when the requested range holds at most `max_points`, else a min/max/last
envelope per step bucket in which every spike survives.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson
import psycopg
from django.db import connection, transaction
from django.utils import timezone

from runs.models import Checkpoint, MetricSeries, Run
from runs.services import rollups as ru
from runs.services.alerts import alert_raise, alert_resolve
from runs.services.audit import SYSTEM, audit_record
from runs.services.broadcast import Message, broadcast_many_on_commit, run_group
from runs.services.checkpoints import checkpoint_retention_apply
from runs.services.detectors import WATCHED_KEYS, Thresholds, detect

KEY_RE = re.compile(r"[A-Za-z0-9_./-]{1,100}\Z")
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_RECORDS = 5000
MAX_POINTS = 100_000
MAX_STEP = 2**53  # rollups keep steps as float64, exact up to here
MAX_ERRORS = 20
MAX_PUSH_POINTS = 2000  # per key and message; a client that needs more reads the series API
NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf}
NONFINITE |= {"-inf": -math.inf, "-infinity": -math.inf}
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
ALERT_EVENTS = {"oom": ("oom", "Out of memory"), "nan": ("nan", "NaN/Inf loss")}

# Ingest blocks (tier 0) are small: one step each from a stepwise reporter. TIER0_FANOUT of them make a tier-1
# block, which shares a merge's fixed cost (statements, commit) among many; at 64 the merges took a quarter of a
# stepwise ingest's CPU. Blocks of many steps each go sooner, from COMPACT_FANOUT blocks on, once they hold
# TIER0_POINTS: a zoomed-out chart reads merged blocks' rollups but unmerged blocks whole.
COMPACT_FANOUT = 16
TIER0_FANOUT = 256
TIER0_POINTS = 4096
# Merged blocks carry rollups, so a chart reads many of them cheaply, and every tier rewrites each point once
# more: TIER_FANOUT blocks of a tier make one of the next. Batches of 50 steps go from tier 1 (4,100 points) to
# final blocks in one more merge; at 16, a second one (tier 2) rewrote every point again.
TIER_FANOUT = 64


def merge_due(tier: int, blocks: int, points: int) -> bool:
    """Whether a tier's blocks (how many, with how many points in all) are merged into one of the next tier."""
    if tier:
        return blocks >= TIER_FANOUT
    return blocks >= TIER0_FANOUT or (blocks >= COMPACT_FANOUT and points >= TIER0_POINTS)


MAX_BLOCK_POINTS = 262_144  # a merge larger than this is cut into final blocks of this size
FINAL_TIER = 99
MAX_SERIES_PER_REQUEST = 2000


# Validation


class IngestInvalid(Exception):
    """The batch is refused whole; `errors` name each offending record index and field."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__("; ".join(_describe(e) for e in errors[:3]))

    def as_json(self) -> dict:
        return {"error": str(self), "errors": self.errors}


def _describe(error: dict) -> str:
    where = "body" if error.get("index") is None else f"records[{error['index']}]"
    if error.get("field"):
        where += f".{error['field']}"
    return f"{where}: {error['message']}"


def _error(index: int | None, field_name: str, message: str) -> dict:
    return {"index": index, "field": field_name, "message": message}


def ingest_parse(body: bytes) -> Any:
    """The `records` list of a request body. NaN/Infinity literals are tolerated (Python's json writes them)."""
    if len(body) > MAX_BODY_BYTES:
        raise IngestInvalid([_error(None, "", f"is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes")])
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IngestInvalid([_error(None, "", f"is not JSON ({exc})")]) from None
    if not isinstance(doc, dict) or "records" not in doc:
        raise IngestInvalid([_error(None, "records", 'missing: send {"records": [...]}')])
    return doc["records"]


def _step_of(raw: Any) -> int | None:
    if type(raw) is int:
        return raw if 0 <= raw <= MAX_STEP else None
    if type(raw) is float and raw.is_integer() and 0 <= raw <= MAX_STEP:
        return int(raw)
    return None


def _number(raw: Any) -> float | None:
    kind = type(raw)
    if kind is float or kind is int:
        return float(raw)
    if kind is str:
        return NONFINITE.get(raw.strip().lower())
    return None


@dataclass
class Batch:
    metrics: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    events: list[tuple[int, str, int, dict]] = field(default_factory=list)  # (index, type, step, record)
    heartbeat_time: float | None = None
    heartbeats: int = 0
    max_step: int | None = None
    points: int = 0


def ingest_validate(records: Any) -> Batch:
    """Check every record (the whole batch is refused on any error) and group metric points by key."""
    if not isinstance(records, list):
        raise IngestInvalid([_error(None, "records", "must be a list of records")])
    if len(records) > MAX_RECORDS:
        raise IngestInvalid(
            [_error(None, "records", f"has {len(records)} records; send at most {MAX_RECORDS} per request")]
        )
    batch = Batch()
    errors: list[dict] = []
    metrics = batch.metrics
    max_step = -1
    for i, rec in enumerate(records):
        if len(errors) >= MAX_ERRORS:
            break
        if type(rec) is not dict:
            errors.append(_error(i, "", "must be an object"))
            continue
        kind = rec.get("kind")
        step = rec.get("step")
        step = step if type(step) is int and 0 <= step <= MAX_STEP else _step_of(step)
        if step is None:
            if "step" not in rec:
                errors.append(_error(i, "step", "missing"))
            else:
                errors.append(_error(i, "step", f"{rec['step']!r} is not an integer between 0 and 2**53"))
            continue
        if step > max_step:
            max_step = step
        if kind == "metrics":
            values = rec.get("values")
            if type(values) is not dict or not values:
                errors.append(_error(i, "values", "must be a non-empty object of key: number"))
                continue
            for key, raw in values.items():
                number = raw if type(raw) is float else _number(raw)  # float: the usual case, without a call
                pair = metrics.get(key)
                if pair is None:
                    if not KEY_RE.match(key):
                        errors.append(_error(i, f"values.{key}", "key must match [A-Za-z0-9_./-]{1,100}"))
                        continue
                    if len(metrics) >= MAX_SERIES_PER_REQUEST:
                        errors.append(_error(i, "values", f"more than {MAX_SERIES_PER_REQUEST} keys in one request"))
                        break
                    pair = metrics[key] = ([], [])
                if number is None:
                    errors.append(
                        _error(i, f"values.{key}", f"{raw!r} is not a number (NaN/Infinity may be sent as strings)")
                    )
                    continue
                pair[0].append(step)
                pair[1].append(number)
            batch.points += len(values)
        elif kind == "heartbeat":
            batch.heartbeats += 1
            when = rec.get("time")
            if when is not None and (type(when) not in (int, float) or not math.isfinite(when)):
                errors.append(_error(i, "time", f"{when!r} is not a Unix time in seconds"))
                continue
            if when is not None and (batch.heartbeat_time is None or when > batch.heartbeat_time):
                batch.heartbeat_time = float(when)
            elif when is None:
                batch.heartbeat_time = math.inf
        elif kind == "event":
            etype = rec.get("type")
            if not isinstance(etype, str) or not EVENT_TYPE_RE.match(etype):
                errors.append(_error(i, "type", "must be an event name such as checkpoint_saved, oom, nan"))
                continue
            problem = _event_problem(etype, rec)
            if problem:
                errors.append(_error(i, problem[0], problem[1]))
                continue
            batch.events.append((i, etype, step, rec))
        else:
            errors.append(_error(i, "kind", f"{kind!r} is not one of metrics, event, heartbeat"))
    if batch.points > MAX_POINTS and not errors:
        errors.append(_error(None, "records", f"hold {batch.points} points; send at most {MAX_POINTS} per request"))
    if errors:
        raise IngestInvalid(errors)
    batch.max_step = max_step if max_step >= 0 else None
    return batch


def _event_problem(etype: str, rec: dict) -> tuple[str, str] | None:
    if etype != "checkpoint_saved":
        return None
    if not isinstance(rec.get("tag", ""), str) or not isinstance(rec.get("path", ""), str):
        return "path", "tag and path must be strings"
    size = rec.get("bytes", 0)
    if type(size) is not int or size < 0:
        return "bytes", f"{size!r} is not a non-negative integer"
    if not isinstance(rec.get("metrics", {}), dict):
        return "metrics", "must be an object of metric: value"
    return None


# Writing


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    events: int = 0
    heartbeats: int = 0
    last_step: int | None = None
    alerts: list[int] = field(default_factory=list)
    compact: list[int] = field(default_factory=list)  # series now due for compaction
    push: tuple[str, Message] | None = None  # (group, websocket message) left to the caller by push=False

    def as_json(self) -> dict:
        return {
            "ok": True,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "events": self.events,
            "heartbeats": self.heartbeats,
            "last_step": self.last_step,
            "alerts": self.alerts,
        }


class RunGone(Exception):
    """The run was deleted after its token was checked."""


def metrics_record(*, run: Run, records: Any, compact: bool = True) -> IngestResult:
    """Validate and store a batch of records for `run`; idempotent on (run, key, step).

    With compact=False the caller runs `metrics_compact_due(result.compact)` itself (the ASGI ingest path does
    it after the response is sent).
    """
    batch = ingest_validate(records)
    (result,) = metrics_store_many([(run, batch)])
    if compact and result.compact:
        metrics_compact_due(result.compact)
    return result


def _heartbeat_at(batch: Batch, now: datetime.datetime) -> datetime.datetime | None:
    # A heartbeat replayed from a backlog must not make a hung job look alive: its own time counts, never later
    # than now (a node clock running ahead cannot push liveness into the future).
    if not batch.heartbeats:
        return None
    when = batch.heartbeat_time
    if when is None or not math.isfinite(when) or when >= now.timestamp():
        return now
    return datetime.datetime.fromtimestamp(when, tz=datetime.UTC)


@dataclass
class _Entry:
    """One run's batch on its way into the database."""

    run: Run
    batch: Batch
    result: IngestResult
    points: dict[str, tuple[np.ndarray, np.ndarray, int]]  # key -> (sorted unique steps, values, points sent)
    pushed: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> new steps, values
    after: dict[tuple[int, str], tuple] = field(default_factory=dict)  # the series rows once committed


@dataclass
class _NewBlock:
    series_id: int
    lo: int
    hi: int
    n: int
    vmin: float | None
    vmax: float | None
    steps: bytes  # packed
    values: bytes
    bad: int  # non-finite values


def _sorted_points(raw_steps: list[int], raw_values: list[float]) -> tuple[np.ndarray, np.ndarray, int]:
    steps = np.array(raw_steps, dtype=np.int64)
    values = np.array(raw_values, dtype=np.float64)
    submitted = steps.size
    if submitted > 1 and not bool(np.all(steps[1:] > steps[:-1])):
        steps, first = np.unique(steps, return_index=True)  # sorted; a step repeated in the batch: first wins
        values = values[first]
    return steps, values, submitted


def metrics_store_many(entries: list[tuple[Run, Batch]], *, push: bool = True) -> list[IngestResult]:
    """Store validated batches of distinct runs in one transaction; one result per batch, in order.

    Batches stored together share the transaction's statements and its commit (one WAL flush): the ASGI ingest
    path hands over this way all the requests that are waiting at the same moment. Every writer of a run's series
    holds the series rows' locks (PostgreSQL) or the database's single write lock (SQLite) while it checks which
    steps are present and appends its blocks. An error rolls back every batch of the call.

    The new points go to each run's websocket group on commit; with push=False each result's `push` holds the
    message instead, for a caller on an event loop to send without holding a thread and its connection.
    """
    if len({run.pk for run, _ in entries}) < len(entries):
        raise ValueError("at most one batch per run in one call")
    now = timezone.now()
    work = _work(entries)
    cached = _cached_series(work) if connection.vendor == "postgresql" else None
    if cached is not None:
        if _store_pg_unlocked(work, cached, now):
            _pushes(work, push)  # committed already: broadcast_many_on_commit sends at once
            return [entry.result for entry in work]
        work = _work(entries)  # the attempt counted and ran the detectors on these entries
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _store_pg(work, now)
        else:
            for entry in work:
                _store_portable(entry, now)
        for entry in work:
            for _index, etype, step, rec in entry.batch.events:
                _apply_event(entry.run, etype, step, rec, entry.result)
        _pushes(work, push)
    return [entry.result for entry in work]


def _work(entries: list[tuple[Run, Batch]]) -> list[_Entry]:
    return [
        _Entry(
            run=run,
            batch=batch,
            result=IngestResult(events=len(batch.events), heartbeats=batch.heartbeats),
            points={key: _sorted_points(*batch.metrics[key]) for key in sorted(batch.metrics)},
        )
        for run, batch in entries
    ]


def _pushes(work: list[_Entry], push: bool) -> None:
    for entry in work:
        if entry.pushed or entry.batch.events or entry.batch.heartbeats:
            # Built only if someone listens (broadcast calls it): most runs have no chart open.
            entry.result.push = (
                run_group(entry.run.pk),
                partial(_points_message, entry.run.pk, entry.pushed, entry.result.last_step),
            )
    if push:
        pushes = [entry.result.push for entry in work if entry.result.push]
        if pushes:
            broadcast_many_on_commit(pushes)


# Series known to exist, per process: a batch whose keys are all here skips the create step. Series are only
# ever deleted with their run, and a stale entry costs one retry of the create step (see _lock_series_pg).
_known_series: set[tuple[int, str]] = set()
_KNOWN_SERIES_MAX = 200_000

# Series rows as this process last committed or read them under their lock: (run id, key) -> [id, last step,
# last value, pending blocks, detector state, detector window, version]. A batch whose series are all here, that
# only adds steps past each series' last one, and that neither raises nor resolves an alert, is written in one
# autocommitted statement that updates each row only if its version is still the one here, and aborts whole if
# one is not (another process wrote the series meanwhile): the locking path then does it again. Entries are only
# ever set after a commit, so a version here always belongs to the state beside it.
_series_cache: dict[tuple[int, str], tuple] = {}
_SERIES_CACHE_MAX = 20_000  # ~1 KB each (a detector window is 512 bytes)


class _NeedsLocks(Exception):
    """The batch cannot be written without reading its series rows under their locks."""


# PostgreSQL statements of the ingest path. Rows travel as one JSON parameter per statement (orjson writes it,
# json_to_recordset reads it) and the blocks' packed arrays as two bytea parameters that each row slices: every
# statement has one text whatever the batch, so psycopg converts it once and PostgreSQL parses and plans it once
# per connection (server-side binding, prepare=True). Binding hundreds of scalars or arrays instead costs more in
# psycopg's Python code than the rest of a request.
_PG_CREATE_SERIES = (
    "INSERT INTO runs_metricseries (run_id, key, points, pending_blocks, detector_state, version) "
    "SELECT k.run_id, k.key, 0, 0, '{}', 0 FROM json_to_recordset(%s::json) AS k(run_id bigint, key text) "
    "ORDER BY k.run_id, k.key ON CONFLICT (run_id, key) DO NOTHING"
)
_PG_LOCK_SERIES = (
    "SELECT s.id, s.run_id, s.key, s.last_step, s.last_value, s.pending_blocks, s.detector_state, "
    "s.detector_window, s.version "
    "FROM runs_metricseries AS s JOIN json_to_recordset(%s::json) AS k(run_id bigint, key text) "
    "ON s.run_id = k.run_id AND s.key = k.key ORDER BY s.id FOR UPDATE OF s"
)
_PG_PRESENT = (
    "SELECT b.series_id, b.steps FROM runs_metricblock AS b "
    "JOIN json_to_recordset(%s::json) AS q(series_id bigint, lo bigint, hi bigint) "
    "ON b.series_id = q.series_id AND b.step_hi >= q.lo AND b.step_lo <= q.hi"
)
# Blocks, series counters and the runs' progress in one statement (one round trip).
_PG_WRITE = (
    "WITH {lock}r AS (UPDATE runs_run AS r SET "
    "last_step = CASE WHEN t.ms IS NULL THEN r.last_step "
    "WHEN r.last_step IS NULL OR r.last_step < t.ms THEN t.ms ELSE r.last_step END, "
    "last_heartbeat_at = CASE WHEN t.hb IS NULL THEN r.last_heartbeat_at "
    "WHEN r.last_heartbeat_at IS NULL OR r.last_heartbeat_at < t.hb THEN t.hb ELSE r.last_heartbeat_at END "
    "FROM json_to_recordset(%s::json) AS t(id bigint, ms bigint, hb timestamptz) WHERE r.id = t.id "
    "RETURNING r.id, r.last_step), "
    'b AS (INSERT INTO runs_metricblock (series_id, step_lo, step_hi, n, vmin, vmax, steps, "values", nonfinite, '
    "tier) SELECT v.id, v.lo, v.hi, v.n, v.vmin, v.vmax, substring(%s::bytea FROM v.at * 8 + 1 FOR v.n * 8), "
    "substring(%s::bytea FROM v.at * 8 + 1 FOR v.n * 8), v.bad, 0 FROM json_to_recordset(%s::json) "
    "AS v(id bigint, lo bigint, hi bigint, n integer, vmin float8, vmax float8, at integer, bad integer)), "
    "u AS (UPDATE runs_metricseries AS s SET points = s.points + v.n, last_step = v.ls, last_value = v.lv, "
    "pending_blocks = s.pending_blocks + 1, detector_state = COALESCE(v.ds, s.detector_state), "
    "detector_window = CASE WHEN v.wn IS NULL THEN s.detector_window "
    "ELSE substring(%s::bytea FROM v.wat + 1 FOR v.wn) END, version = s.version + 1 "
    "FROM json_to_recordset(%s::json) "
    "AS v(id bigint, n bigint, ls bigint, lv float8, ds jsonb, wat integer, wn integer, ver bigint, run bigint, "
    "key text){checked} RETURNING s.id, s.pending_blocks) "
)
_PG_WRITE_LOCKED = _PG_WRITE.format(lock="", checked=" WHERE s.id = v.id") + "SELECT id, last_step FROM r"
# The same write without locks held beforehand. A series row is updated only if its version is the one the batch
# was prepared from (and its run and key are the batch's: a database restored under a running server may hold the
# same id and version for another series), and the statement fails (division by zero, the one error plain SQL can
# raise on demand) unless every series row and every run row was updated, so that nothing of it stays. The series
# rows are locked first, in id order (lk; the update's plan would take them in any order), then the run rows: the
# order in which the locking path and compaction take them, so that none of them can deadlock with this.
_PG_WRITE_CHECKED = (
    _PG_WRITE.format(
        lock="lk AS (SELECT id FROM runs_metricseries WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE), ",
        checked=", lk WHERE s.id = v.id AND lk.id = s.id AND s.version = v.ver AND s.run_id = v.run AND s.key = v.key",
    )
    + "SELECT 'u', id, pending_blocks FROM u UNION ALL SELECT 'r', id, last_step FROM r UNION ALL "
    "SELECT 'c', 0, (1 / CASE WHEN (SELECT count(*) FROM u) = %s AND (SELECT count(*) FROM r) = %s THEN 1 ELSE 0 "
    "END)::bigint"
)


def _pg_cursor() -> psycopg.Cursor:
    """A server-binding cursor on Django's connection, hence inside the current transaction. Django's own cursors
    bind on the client and never prepare; only statements executed here with prepare=True are prepared."""
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:  # Django's default: preparing off
        raw.prepare_threshold = 2**31 - 1
    return psycopg.Cursor(raw)


_INGEST_PLANNER = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"
_planned: weakref.WeakSet = weakref.WeakSet()


def ingest_connection_setup() -> None:
    """Planner settings for this thread's connection, if it serves ingest only (IngestFastPath's threads).

    The ingest statements find every row they touch by primary key, but for a table of a few pages (the runs and
    series of a small deployment) the planner prefers a sequential scan and a hash join, and a prepared statement
    keeps that plan for the connection's life. A hot table then grows with dead row versions whenever pruning is
    held back (while autovacuum analyzes the block table, say), and every ingest scans all of them: PostgreSQL's CPU
    per request doubled within a minute of load. Outside a transaction only: a rollback would undo the SET.
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _planned:
        raw.execute(_INGEST_PLANNER)
        _planned.add(raw)


def _bigint_array(ids: Iterable[int]) -> str:
    """PostgreSQL's text form of a bigint[] (for `%s::bigint[]`): psycopg's list adapter costs several times as
    much per statement as the text does."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def _json_rows(names: tuple[str, ...], rows: Iterable[Iterable]) -> str:
    return orjson.dumps([dict(zip(names, row, strict=True)) for row in rows]).decode()


def _store_pg(work: list[_Entry], now: datetime.datetime) -> None:
    with _pg_cursor() as cursor:
        wanted = [(entry.run.pk, key) for entry in work for key in entry.points]
        series = _lock_series_pg(cursor, wanted) if wanted else {}
        late = [r for entry in work for r in _late_ranges(entry, series)]
        present: dict[int, np.ndarray] = {}
        if late:
            cursor.execute(_PG_PRESENT, [_json_rows(("series_id", "lo", "hi"), late)], prepare=True)
            for sid, blob in cursor.fetchall():
                steps = ru.unpack_steps(blob)
                present[sid] = np.concatenate([present[sid], steps]) if sid in present else steps
        blocks: list[_NewBlock] = []
        updates: list[tuple] = []
        for entry in work:
            _prepare(entry, series, present, blocks, updates)
        cursor.execute(_PG_WRITE_LOCKED, _write_params(work, blocks, updates, now), prepare=True)
        last_steps: dict[int, int] = dict(cursor.fetchall())
    _last_steps(work, last_steps)
    after = {pair: row for entry in work for pair, row in entry.after.items()}
    transaction.on_commit(partial(_series_cache.update, after))


def _cached_series(work: list[_Entry]) -> dict[tuple[int, str], tuple] | None:
    """The cached series rows of the batches, if they may be written without locks (see _series_cache)."""
    if connection.in_atomic_block or any(entry.batch.events for entry in work):
        return None  # inside a caller's transaction, or events to apply: the locking path
    if len(_series_cache) > _SERIES_CACHE_MAX:
        _series_cache.clear()
    series: dict[tuple[int, str], tuple] = {}
    for entry in work:
        for key, (steps, _values, _n) in entry.points.items():
            row = _series_cache.get((entry.run.pk, key))
            if row is None or (row[1] is not None and steps[0] <= row[1]):
                return None  # a series not known here, or steps that may be stored already
            series[(entry.run.pk, key)] = row
    return series


def _store_pg_unlocked(work: list[_Entry], series: dict[tuple[int, str], tuple], now: datetime.datetime) -> bool:
    """Store the batches in one autocommitted statement from their cached series rows; False when they need the
    locking path after all (an alert to raise, or a row changed since it was cached), with nothing written."""
    prepared = _prepare_unlocked(work, series)
    if prepared is None:
        return False
    return _write_unlocked(work, series, *prepared, now)


def _prepare_unlocked(work: list[_Entry], series: dict) -> tuple[list[_NewBlock], list[tuple]] | None:
    """The blocks and series-row updates of the batches, from the given series rows; None when one of them has an
    alert to raise or resolve, which only the locking path writes."""
    blocks: list[_NewBlock] = []
    updates: list[tuple] = []
    try:
        for entry in work:
            _prepare(entry, series, {}, blocks, updates, alerts=False)
    except _NeedsLocks:
        return None
    return blocks, updates


def _write_unlocked(work: list[_Entry], series: dict, blocks: list[_NewBlock], updates: list[tuple], now) -> bool:
    params = [
        _bigint_array([row[0] for row in updates]),
        *_write_params(work, blocks, updates, now),
        len(updates),
        len(work),
    ]
    try:
        with _pg_cursor() as cursor:
            cursor.execute(_PG_WRITE_CHECKED, params, prepare=True)
            rows = cursor.fetchall()
    except (psycopg.errors.DivisionByZero, psycopg.errors.DeadlockDetected):
        # A series row changed since it was cached (or, should it happen, a deadlock): nothing was written.
        for pair in series:
            _series_cache.pop(pair, None)
        return False
    _last_steps(work, {row_id: value for kind, row_id, value in rows if kind == "r"})
    pending = {row_id: value for kind, row_id, value in rows if kind == "u"}
    for entry in work:
        for pair, row in entry.after.items():
            _series_cache[pair] = (*row[:3], pending.get(row[0], row[3]), *row[4:])
    return True


@dataclass
class Ready:
    """A batch prepared for the one-statement write (metrics_prepare)."""

    run: Run
    batch: Batch
    entry: _Entry
    series: dict[tuple[int, str], tuple]
    blocks: list[_NewBlock]
    updates: list[tuple]
    now: datetime.datetime


def metrics_prepare(*, run: Run, batch: Batch) -> Ready | None:
    """All of storing a validated batch that needs no database: its blocks and series rows, detectors run, from this
    process's cached series rows (see _series_cache). None when it needs the locking path: not PostgreSQL, events,
    a series not cached here, steps that may be stored already, or an alert to raise or resolve.

    The ingest fast path prepares each request as it arrives, while the transaction before it is still running, so
    that a transaction of several requests holds only their statement."""
    if connection.vendor != "postgresql" or batch.events:
        return None
    (entry,) = _work([(run, batch)])
    series = _cached_series([entry])
    if series is None:
        return None
    prepared = _prepare_unlocked([entry], series)
    if prepared is None:
        return None
    return Ready(run, batch, entry, series, *prepared, timezone.now())


def metrics_store_ready(ready: list[Ready], *, push: bool = True) -> list[IngestResult]:
    """Store prepared batches of distinct runs in one autocommitted statement. If a series row changed since they
    were prepared (another process wrote it), metrics_store_many stores them all from the start instead."""
    work = [r.entry for r in ready]
    series = {pair: row for r in ready for pair, row in r.series.items()}
    blocks = [block for r in ready for block in r.blocks]
    updates = [update for r in ready for update in r.updates]
    if _write_unlocked(work, series, blocks, updates, min(r.now for r in ready)):
        _pushes(work, push)
        return [entry.result for entry in work]
    return metrics_store_many([(r.run, r.batch) for r in ready], push=push)


def _write_params(work: list[_Entry], blocks: list[_NewBlock], updates: list[tuple], now) -> list:
    touches = sorted((e.run.pk, e.batch.max_step, _heartbeat_at(e.batch, now)) for e in work)  # run rows in id order
    at, rows = 0, []
    for block in blocks:
        rows.append((block.series_id, block.lo, block.hi, block.n, block.vmin, block.vmax, at, block.bad))
        at += block.n
    return [
        _json_rows(("id", "ms", "hb"), touches),
        b"".join(block.steps for block in blocks),
        b"".join(block.values for block in blocks),
        _json_rows(("id", "lo", "hi", "n", "vmin", "vmax", "at", "bad"), rows),
        *_series_updates(updates),
    ]


def _last_steps(work: list[_Entry], last_steps: dict[int, int]) -> None:
    for entry in work:
        if entry.run.pk not in last_steps:
            raise RunGone(f"run {entry.run.pk} no longer exists")
        entry.result.last_step = last_steps[entry.run.pk]


def _series_updates(updates: list[tuple]) -> tuple[bytes, str]:
    """The series rows to write, as the packed windows (one bytea) and a JSON recordset that slices them."""
    windows: list[bytes] = []
    rows: list[tuple] = []
    at = 0
    for sid, n, ls, lv, ds, window, version, run_id, key in updates:
        if window is None:
            rows.append((sid, n, ls, lv, ds, None, None, version, run_id, key))
        else:
            windows.append(window)
            rows.append((sid, n, ls, lv, ds, at, len(window), version, run_id, key))
            at += len(window)
    return b"".join(windows), _json_rows(("id", "n", "ls", "lv", "ds", "wat", "wn", "ver", "run", "key"), rows)


def _lock_series_pg(cursor, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], tuple]:
    """Lock the series rows of (run id, key) pairs in id order, creating missing ones first.

    Creation comes before any row lock: two batches that both add a new key then wait on each other's insert
    without holding locks the other needs (rows are inserted in (run, key) order). Under READ COMMITTED, FOR
    UPDATE returns each row as last committed, so the steps and detector state read here are current even when
    this batch waited for another.
    """
    if len(_known_series) > _KNOWN_SERIES_MAX:
        _known_series.clear()
    if any(pair not in _known_series for pair in wanted):
        cursor.execute(_PG_CREATE_SERIES, [_json_rows(("run_id", "key"), wanted)], prepare=True)
    series = _locked_rows(cursor, wanted)
    if len(series) < len(wanted):
        # A stale cache entry (the database was emptied or restored): create what is missing after all. A run
        # deleted meanwhile is found when its row is updated (RunGone).
        missing = [pair for pair in wanted if pair not in series]
        _known_series.difference_update(missing)
        cursor.execute(_PG_CREATE_SERIES, [_json_rows(("run_id", "key"), missing)], prepare=True)
        series.update(_locked_rows(cursor, missing))
    _known_series.update(wanted)
    return series


def _locked_rows(cursor, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], tuple]:
    cursor.execute(_PG_LOCK_SERIES, [_json_rows(("run_id", "key"), wanted)], prepare=True)
    return {
        (run_id, key): (sid, last_step, last_value, pending, state, window, version)
        for sid, run_id, key, last_step, last_value, pending, state, window, version in cursor.fetchall()
    }


def _late_ranges(entry: _Entry, series: dict[tuple[int, str], tuple]) -> list[tuple[int, int, int]]:
    """(series id, lo, hi) for each key whose batch reaches back to steps already stored."""
    out = []
    for key, (steps, _values, _n) in entry.points.items():
        sid, last_step = series[(entry.run.pk, key)][:2]
        if last_step is not None and steps.size and steps[0] <= last_step:
            out.append((sid, int(steps[0]), min(int(steps[-1]), last_step)))
    return out


# SQLite (and any other backend): the same steps, a statement at a time.

_TOUCH_RUN = (
    "UPDATE runs_run SET "
    "last_step = CASE WHEN %s IS NULL THEN last_step WHEN last_step IS NULL OR last_step < %s THEN %s "
    "ELSE last_step END, "
    "last_heartbeat_at = CASE WHEN %s IS NULL THEN last_heartbeat_at "
    "WHEN last_heartbeat_at IS NULL OR last_heartbeat_at < %s THEN %s ELSE last_heartbeat_at END "
    "WHERE id = %s RETURNING last_step"
)
_SERIES_COLUMNS = "id, key, last_step, last_value, pending_blocks, detector_state, detector_window, version"
_BLOCK_COLUMNS = "series_id, step_lo, step_hi, n, vmin, vmax, steps, {values}, nonfinite, tier"
_SERIES_UPDATE = (
    "UPDATE runs_metricseries SET points = points + %s, last_step = %s, last_value = %s, "
    "pending_blocks = pending_blocks + 1, detector_state = COALESCE(%s, detector_state), "
    "detector_window = COALESCE(%s, detector_window), version = version + 1 WHERE id = %s"
)


def _store_portable(entry: _Entry, now: datetime.datetime) -> None:
    run_id = entry.run.pk
    hb = _heartbeat_at(entry.batch, now)
    hb_db = connection.ops.adapt_datetimefield_value(hb) if hb is not None else None
    ms = entry.batch.max_step
    with connection.cursor() as cursor:
        cursor.execute(_TOUCH_RUN, [ms, ms, ms, hb_db, hb_db, hb_db, run_id])
        row = cursor.fetchone()
        if row is None:
            raise RunGone(f"run {run_id} no longer exists")
        entry.result.last_step = row[0]
        keys = list(entry.points)
        if not keys:
            return
        series = _series_rows(cursor, run_id, keys)
        missing = [k for k in keys if k not in series]
        if missing:
            _create_series(cursor, run_id, missing)
            series.update(_series_rows(cursor, run_id, missing))
        series_by_pair = {(run_id, key): row for key, row in series.items()}
        present = {sid: _present_steps(cursor, sid, lo, hi) for sid, lo, hi in _late_ranges(entry, series_by_pair)}
        blocks: list[_NewBlock] = []
        updates: list[tuple] = []
        _prepare(entry, series_by_pair, present, blocks, updates)
        if not blocks:
            return
        values_col = connection.ops.quote_name("values")
        for start in range(0, len(blocks), 200):
            part = blocks[start : start + 200]
            cursor.execute(
                f"INSERT INTO runs_metricblock ({_BLOCK_COLUMNS.format(values=values_col)}) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, 0)"] * len(part)),
                [v for b in part for v in (b.series_id, b.lo, b.hi, b.n, b.vmin, b.vmax, b.steps, b.values, b.bad)],
            )
        cursor.executemany(
            _SERIES_UPDATE,
            [
                [n, ls, lv, None if ds is None else orjson.dumps(ds).decode(), window, sid]
                for sid, n, ls, lv, ds, window, *_ in updates
            ],
        )


def _series_rows(cursor, run_id: int, keys: list[str]) -> dict[str, tuple]:
    rows: dict[str, tuple] = {}
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        cursor.execute(
            f"SELECT {_SERIES_COLUMNS} FROM runs_metricseries "
            f"WHERE run_id = %s AND key IN ({', '.join(['%s'] * len(part))})",
            [run_id, *part],
        )
        for sid, key, last_step, last_value, pending, state, window, version in cursor.fetchall():
            rows[key] = (sid, last_step, last_value, pending, state, window, version)
    return rows


def _create_series(cursor, run_id: int, keys: list[str]) -> None:
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        cursor.execute(
            "INSERT INTO runs_metricseries (run_id, key, points, pending_blocks, detector_state, version) VALUES "
            + ", ".join(["(%s, %s, 0, 0, %s, 0)"] * len(part))
            + " ON CONFLICT (run_id, key) DO NOTHING",
            [v for key in part for v in (run_id, key, "{}")],
        )


def _present_steps(cursor, series_id: int, lo: int, hi: int) -> np.ndarray:
    cursor.execute(
        "SELECT steps FROM runs_metricblock WHERE series_id = %s AND step_hi >= %s AND step_lo <= %s",
        [series_id, lo, hi],
    )
    found = [ru.unpack_steps(bytes(blob)) for (blob,) in cursor.fetchall()]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


# Both backends


def _prepare(
    entry: _Entry, series: dict, present: dict[int, np.ndarray], blocks: list, updates: list, *, alerts: bool = True
) -> None:
    """Per key: drop steps already stored, run the detectors, and add the block and counter rows to write.

    alerts=False: raise _NeedsLocks instead of raising or resolving an alert (the unlocked path writes no
    alerts)."""
    run, result = entry.run, entry.result
    thresholds = Thresholds.from_config(run.config)
    for key, (steps, values, submitted) in entry.points.items():
        row = series[(run.pk, key)]
        sid, last_step, last_value, pending, state, window, version = row
        stored = present.get(sid)  # steps of the stored blocks that overlap this batch's range
        if stored is not None and stored.size:
            stored = stored[(stored >= steps[0]) & (stored <= steps[-1])]
            keep = ~np.isin(steps, stored, assume_unique=True)
            steps, values = steps[keep], values[keep]
        result.duplicates += submitted - steps.size
        if steps.size == 0:
            entry.after[(run.pk, key)] = row
            continue
        result.accepted += steps.size
        new_state = new_window = None
        if key in WATCHED_KEYS:
            new_state, new_window = _run_detectors(run, key, steps, values, state, window, thresholds, result, alerts)
        vmin, vmax, bad = ru.finite_min_max(values)
        top = int(steps[-1])
        if last_step is None or top > last_step:
            last_step, last_value = top, (float(values[-1]) if math.isfinite(values[-1]) else None)
        blocks.append(
            _NewBlock(
                sid, int(steps[0]), top, int(steps.size), vmin, vmax, ru.pack_steps(steps), ru.pack_values(values), bad
            )
        )
        updates.append((sid, int(steps.size), last_step, last_value, new_state, new_window, version, run.pk, key))
        entry.after[(run.pk, key)] = (
            sid,
            last_step,
            last_value,
            pending + 1,
            state if new_state is None else new_state,
            window if new_window is None else new_window,
            version + 1,
        )
        if merge_due(0, pending + 1, (pending + 1) * int(steps.size)):  # points: as if all were this batch's size
            result.compact.append(sid)
        entry.pushed[key] = (steps, values)


def _run_detectors(
    run: Run,
    key: str,
    steps,
    values,
    state,
    window: bytes | None,
    thresholds: Thresholds,
    result: IngestResult,
    alerts: bool = True,
) -> tuple[dict | None, bytes]:
    """(the episode state when it changed, else None; the new window, packed)."""
    current = orjson.loads(state) if isinstance(state, str | bytes) else (state or {})
    current = {k: v for k, v in current.items() if k != "w"}  # a window kept in the state before 0005
    packed = np.frombuffer(window, dtype="<f8") if window else np.empty(0)
    verdict = detect(key=key, steps=steps, values=values, state={**current, "w": packed}, thresholds=thresholds)
    if verdict.sequence and not alerts:
        raise _NeedsLocks(key)
    for finding in verdict.sequence:
        if isinstance(finding, str):
            alert_resolve(run=run, kind=finding)
            continue
        alert = alert_raise(
            run=run,
            kind=finding.kind,
            severity=finding.severity,
            step=finding.step,
            message=finding.message,
            evidence=finding.evidence,
        )
        if alert is not None:
            result.alerts.append(alert.pk)
    episodes = {k: v for k, v in verdict.state.items() if k != "w"}
    new_window = np.asarray(verdict.state["w"], dtype="<f8").tobytes()
    return (None if episodes == current else episodes), new_window


def _points_message(run_id: int, pushed: dict[str, tuple[np.ndarray, np.ndarray]], last_step: int | None) -> dict:
    """The websocket message of one ingest."""
    points = {key: _push_points(steps, values) for key, (steps, values) in pushed.items()}
    return {"type": "run.points", "run_id": run_id, "points": points, "last_step": last_step}


def _push_points(steps: np.ndarray, values: np.ndarray) -> list:
    """[[step, value], ...] for the websocket; a non-finite value is [step, null, "nan" | "inf" | "-inf"]."""
    if steps.size > MAX_PUSH_POINTS:
        steps, values = steps[-MAX_PUSH_POINTS:], values[-MAX_PUSH_POINTS:]
    out = [[s, v] for s, v in zip(steps.tolist(), values.tolist(), strict=True)]
    if not np.isfinite(values).all():
        for pair in out:
            if not math.isfinite(pair[1]):
                pair.append(nonfinite_name(pair[1]))
                pair[1] = None
    return out


def nonfinite_name(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_name(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _apply_event(run: Run, etype: str, step: int, rec: dict, result: IngestResult) -> None:
    fields = {k: v for k, v in rec.items() if k not in ("kind", "type", "step", "time")}
    if etype == "checkpoint_saved":
        tag = rec.get("tag") or f"step_{step:06d}"
        checkpoint, created = Checkpoint.objects.update_or_create(
            run_id=run.pk,
            step=step,
            defaults={
                "tag": tag[:100],
                "path": (rec.get("path") or "")[:500],
                "size_bytes": rec.get("bytes", 0),
                "metrics": _json_safe(rec.get("metrics") or {}),
            },
        )
        if created:
            audit_record(actor=SYSTEM, action="checkpoint.saved", obj=checkpoint, run_id=run.pk, message=tag)
            # The job prunes by the same rule; this records what went and removes what a stricter policy drops.
            checkpoint_retention_apply(run=run, actor=SYSTEM)
        return
    if etype in ALERT_EVENTS:
        kind, label = ALERT_EVENTS[etype]
        detail = fields.get("message") or fields.get("error") or fields.get("detail") or ""
        message = f"{label} reported by the job at step {step}" + (f": {detail}" if detail else ".")
        alert = alert_raise(
            run=run, kind=kind, severity="critical", step=step, message=str(message), evidence=_json_safe(fields)
        )
        if alert is not None:
            result.alerts.append(alert.pk)


# Compaction


def metrics_compact_due(series_ids: Iterable[int]) -> int:
    """metrics_compact for several series (those an ingest found due): one transaction, one commit, and a few
    statements for all of them; returns blocks merged."""
    ids = sorted(set(series_ids))
    if not ids:
        return 0
    counts: dict[int, dict[int, tuple[int, int]]] = {}  # series -> tier -> (blocks, points)
    with connection.cursor() as cursor:
        where, params = _id_in("series_id", ids)
        cursor.execute(
            f"SELECT series_id, tier, COUNT(*), SUM(n) FROM runs_metricblock WHERE {where} AND tier < %s "
            "GROUP BY series_id, tier",
            [*params, FINAL_TIER],
        )
        for series_id, tier, count, points in cursor.fetchall():
            counts.setdefault(series_id, {})[tier] = (count, int(points))
    due = [sid for sid in ids if any(merge_due(tier, *size) for tier, size in counts.get(sid, {}).items())]
    if not due:
        return 0
    # On PostgreSQL, a server-binding cursor with binary results: the blocks' arrays travel as bytes, where a
    # client-binding cursor sent each merged block as a hex literal in the statement's text and read each block
    # back as hex (about a third of a merge's CPU, PostgreSQL's and ours).
    with transaction.atomic(), _pg_cursor() if connection.vendor == "postgresql" else connection.cursor() as cursor:
        merges = _Merges(cursor)
        for series_id in _compaction_locks(cursor, due):
            tiers = counts[series_id]
            for tier in sorted(tiers):
                if merge_due(tier, *tiers.get(tier, (0, 0))) and merges.merge(series_id, tier):
                    blocks, points = tiers.get(tier + 1, (0, 0))
                    tiers[tier + 1] = (blocks + 1, points)  # a later tier's rule counts blocks only
        merges.finish()
    return merges.merged


def metrics_compact(*, series_id: int) -> int:
    """Merge each tier of a series that is due (merge_due) into the next tier; returns blocks merged.

    Safe beside ingest (the set of stored steps is the same before and after each merge's commit) and beside
    another compaction of the same series (an advisory lock on PostgreSQL; the second one leaves).
    """
    return metrics_compact_due([series_id])


def _id_in(column: str, ids: list[int]) -> tuple[str, list]:
    """`column` is one of ids: one array parameter on PostgreSQL, so the statement's text (and psycopg's parse of
    it) is the same whatever the count; one `%s` per id elsewhere."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::bigint[])", [_bigint_array(ids)]
    return f"{column} IN ({', '.join(['%s'] * len(ids))})", list(ids)


def _compaction_locks(cursor, series_ids: list[int]) -> list[int]:
    """The series this transaction may compact: on PostgreSQL, those whose advisory lock it got (one statement)."""
    if connection.vendor != "postgresql":
        return series_ids  # SQLite transactions here are IMMEDIATE: one writer at a time already
    cursor.execute(
        "SELECT " + ", ".join(["pg_try_advisory_xact_lock(%s, %s)"] * len(series_ids)),
        [v for sid in series_ids for v in (0x6D657472, sid % 2**31)],
    )
    return [sid for sid, got in zip(series_ids, cursor.fetchone(), strict=True) if got]


class _Merges:
    """The merges of one compaction transaction: blocks read a tier at a time, written and deleted together."""

    FLUSH_POINTS = 1_000_000  # merged points held in memory before they are written

    def __init__(self, cursor):
        self.cursor = cursor
        self.values_col = connection.ops.quote_name("values")
        self.pieces: list[list] = []
        self.held = 0
        self.old_ids: list[int] = []
        self.pending: dict[int, int] = {}  # series -> tier-0 blocks merged
        self.merged = 0

    def merge(self, series_id: int, tier: int) -> bool:
        if any(row[0] == series_id and row[9] == tier for row in self.pieces):
            self._write()  # this tier gained a block from the merge below it: read it too
        sql = (
            f"SELECT id, steps, {self.values_col} FROM runs_metricblock WHERE series_id = %s AND tier = %s "
            "ORDER BY step_lo, id"
        )
        if isinstance(self.cursor, psycopg.Cursor):
            self.cursor.execute(sql, [series_id, tier], binary=True)
        else:
            self.cursor.execute(sql, [series_id, tier])
        rows = self.cursor.fetchall()
        if not merge_due(tier, len(rows), sum(len(r[1]) for r in rows) // 8):
            return False
        steps = np.concatenate([ru.unpack_steps(bytes(r[1])) for r in rows])
        values = np.concatenate([ru.unpack_values(bytes(r[2])) for r in rows])
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        if steps.size > 1 and not bool(np.all(steps[1:] > steps[:-1])):
            steps, first = np.unique(steps, return_index=True)
            values = values[first]
        for start in range(0, steps.size, MAX_BLOCK_POINTS):
            piece_steps = steps[start : start + MAX_BLOCK_POINTS]
            final = piece_steps.size == MAX_BLOCK_POINTS
            self.pieces.append(
                _block_row(
                    series_id, piece_steps, values[start : start + MAX_BLOCK_POINTS], FINAL_TIER if final else tier + 1
                )
            )
        self.old_ids += [r[0] for r in rows]
        if tier == 0:
            self.pending[series_id] = self.pending.get(series_id, 0) + len(rows)
        self.merged += len(rows)
        self.held += steps.size
        if self.held >= self.FLUSH_POINTS:
            self._write()
        return True

    def _write(self) -> None:
        for start in range(0, len(self.pieces), 100):
            part = self.pieces[start : start + 100]
            self.cursor.execute(
                "INSERT INTO runs_metricblock (series_id, step_lo, step_hi, n, vmin, vmax, steps, "
                f"{self.values_col}, nonfinite, tier, rollup, rollup_coarse) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(part)),
                [v for row in part for v in row],
            )
        for start in range(0, len(self.old_ids), 500):
            where, params = _id_in("id", self.old_ids[start : start + 500])
            self.cursor.execute(f"DELETE FROM runs_metricblock WHERE {where}", params)
        self.pieces, self.held = [], 0
        self.old_ids = []

    def finish(self) -> None:
        self._write()
        if not self.pending:
            return
        # Last, and in id order (the order ingest locks series rows in): the series rows stay locked only for
        # the commit.
        self.cursor.executemany(
            "UPDATE runs_metricseries SET pending_blocks = CASE WHEN pending_blocks > %s THEN pending_blocks - %s "
            "ELSE 0 END WHERE id = %s",
            [[n, n, sid] for sid, n in sorted(self.pending.items())],
        )


def _block_row(series_id: int, steps: np.ndarray, values: np.ndarray, tier: int) -> list:
    vmin, vmax, bad = ru.finite_min_max(values)
    return [
        series_id,
        int(steps[0]),
        int(steps[-1]),
        int(steps.size),
        vmin,
        vmax,
        ru.pack_steps(steps),
        ru.pack_values(values),
        bad,
        tier,
        ru.pack_rollup(ru.rollup(steps, values, ru.ROLLUP_FINE)),
        ru.pack_rollup(ru.rollup(steps, values, ru.ROLLUP_COARSE)),
    ]


# Reading


def series_keys(*, run_id: int) -> list[dict]:
    return [
        {"key": key, "points": points, "last_step": last_step, "last_value": last_value}
        for key, points, last_step, last_value in MetricSeries.objects.filter(run_id=run_id)
        .order_by("key")
        .values_list("key", "points", "last_step", "last_value")
    ]


@dataclass
class _Block:
    id: int
    lo: int
    hi: int
    n: int
    coarse: np.ndarray | None  # rollup rows, compacted blocks only


def series_read(
    *, run_id: int, keys: list[str], lo: int | None = None, hi: int | None = None, max_points: int = 1500
) -> dict:
    """{"keys": {key: series}, "last_step": N} — see `read_series` for one series' shape."""
    found = dict(MetricSeries.objects.filter(run_id=run_id, key__in=keys).values_list("key", "id"))
    out = {
        key: read_series(series_id=found[key], lo=lo, hi=hi, max_points=max_points)
        if key in found
        else _full(np.empty(0, np.int64), np.empty(0))
        for key in keys
    }
    last_step = Run.objects.filter(pk=run_id).values_list("last_step", flat=True).first()
    return {"keys": out, "last_step": last_step}


def _full(steps: np.ndarray, values: np.ndarray) -> dict:
    bad = np.flatnonzero(~np.isfinite(values))
    return {
        "mode": "full",
        "steps": steps,
        "values": values,  # orjson writes NaN/inf as null; "nonfinite" says which and what they were
        "nonfinite": bad,
        "nonfinite_kinds": [nonfinite_name(float(values[i])) for i in bad[:MAX_PUSH_POINTS]],
    }


def read_series(*, series_id: int, lo: int | None, hi: int | None, max_points: int) -> dict:
    """Every point of [lo, hi] if there are at most max_points, else a min/max/last envelope of max_points buckets.

    Numpy arrays in the answer are meant for orjson with OPT_SERIALIZE_NUMPY (NaN becomes null).
    """
    blocks = _overlapping_blocks(series_id, lo, hi)
    if not blocks:
        return _full(np.empty(0, np.int64), np.empty(0))
    lo = min(b.lo for b in blocks) if lo is None else lo
    hi = max(b.hi for b in blocks) if hi is None else hi
    if sum(_points_bound(b, lo, hi) for b in blocks) <= max_points:
        steps, values = _raw_points(blocks, lo, hi)
        return _full(steps, values)
    width = max(1, -(-(hi - lo + 1) // max_points))
    parts: list[np.ndarray] = []
    raw_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for block in blocks:
        _envelope_rows(block, lo, hi, width, parts, raw_parts)
    raw_steps = np.concatenate([p[0] for p in raw_parts]) if raw_parts else np.empty(0, np.int64)
    raw_values = np.concatenate([p[1] for p in raw_parts]) if raw_parts else np.empty(0)
    inside = (raw_steps >= lo) & (raw_steps <= hi)
    raw_steps, raw_values = raw_steps[inside], raw_values[inside]
    if not parts and raw_steps.size <= max_points:
        order = np.argsort(raw_steps, kind="stable")
        return _full(raw_steps[order], raw_values[order])
    parts.append(ru.points_as_rows(raw_steps, raw_values))
    env = ru.envelope(np.concatenate(parts), lo=lo, hi=hi, buckets=max_points)
    return {
        "mode": "envelope",
        "bucket": env.bucket,
        "steps": env.steps,
        "min": env.min.astype(np.float32),  # 7 significant digits draw the same; halves the answer's size
        "max": env.max.astype(np.float32),
        "last": env.last,
        "nonfinite": env.nonfinite,
    }


def _overlapping_blocks(series_id: int, lo: int | None, hi: int | None) -> list[_Block]:
    sql = "SELECT id, step_lo, step_hi, n, rollup_coarse FROM runs_metricblock WHERE series_id = %s"
    params: list[Any] = [series_id]
    if lo is not None:
        sql += " AND step_hi >= %s"
        params.append(lo)
    if hi is not None:
        sql += " AND step_lo <= %s"
        params.append(hi)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [
            _Block(bid, blo, bhi, n, ru.unpack_rollup(bytes(coarse)) if coarse is not None else None)
            for bid, blo, bhi, n, coarse in cursor.fetchall()
        ]


def _chunk_range(rows: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Indexes [first, last) of the rollup chunks that overlap [lo, hi] (rows are in step order)."""
    overlap = np.flatnonzero((rows[:, ru.S1] >= lo) & (rows[:, ru.S0] <= hi))
    if overlap.size == 0:
        return 0, 0
    return int(overlap[0]), int(overlap[-1]) + 1


def _points_bound(block: _Block, lo: int, hi: int) -> int:
    """An upper bound on the block's points within [lo, hi]."""
    if (block.lo >= lo and block.hi <= hi) or block.coarse is None:
        return block.n
    first, last = _chunk_range(block.coarse, lo, hi)
    return max(0, min(block.n, last * ru.ROLLUP_COARSE) - first * ru.ROLLUP_COARSE)


def _slice_points(block_id: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    values_col = connection.ops.quote_name("values")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT substr(steps, %s, %s), substr({values_col}, %s, %s) FROM runs_metricblock WHERE id = %s",
            [start * 8 + 1, (stop - start) * 8, start * 8 + 1, (stop - start) * 8, block_id],
        )
        row = cursor.fetchone()
    if row is None:  # compacted away since the metadata was read
        return np.empty(0, np.int64), np.empty(0)
    return ru.unpack_steps(bytes(row[0])).copy(), ru.unpack_values(bytes(row[1])).copy()


def _whole_points(block_ids: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    if not block_ids:
        return []
    values_col = connection.ops.quote_name("values")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT steps, {values_col} FROM runs_metricblock WHERE id IN ({', '.join(['%s'] * len(block_ids))})",
            block_ids,
        )
        return [(ru.unpack_steps(bytes(s)), ru.unpack_values(bytes(v))) for s, v in cursor.fetchall()]


def _raw_points(blocks: list[_Block], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    whole, parts = [], []
    for block in blocks:
        if (block.lo >= lo and block.hi <= hi) or block.coarse is None:
            whole.append(block.id)
        else:
            first, last = _chunk_range(block.coarse, lo, hi)
            if last > first:
                parts.append(_slice_points(block.id, first * ru.ROLLUP_COARSE, min(block.n, last * ru.ROLLUP_COARSE)))
    parts.extend(_whole_points(whole))
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    steps = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    inside = (steps >= lo) & (steps <= hi)
    steps, values = steps[inside], values[inside]
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def _fine_rows(block_id: int, first: int, last: int) -> np.ndarray:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT substr(rollup, %s, %s) FROM runs_metricblock WHERE id = %s",
            [first * ru.ROLLUP_ROW_BYTES + 1, (last - first) * ru.ROLLUP_ROW_BYTES, block_id],
        )
        row = cursor.fetchone()
    return ru.unpack_rollup(bytes(row[0])) if row and row[0] is not None else ru.unpack_rollup(b"")


def _envelope_rows(block: _Block, lo: int, hi: int, width: int, parts: list, raw_parts: list) -> None:
    """Add the block's contribution: rollup rows where chunks are at most a quarter of a bucket wide, raw
    points elsewhere and for the chunks that straddle lo or hi."""
    coarse = block.coarse
    if coarse is None or coarse.size == 0:
        raw_parts.extend(_whole_points([block.id]))
        return
    span_per_point = (block.hi - block.lo + 1) / block.n
    first, last = _chunk_range(coarse, lo, hi)
    if last <= first:
        return
    if span_per_point * ru.ROLLUP_COARSE * 4 <= width:
        rows, chunk, offset = coarse[first:last], ru.ROLLUP_COARSE, first
    elif span_per_point * ru.ROLLUP_FINE * 4 <= width:
        per = ru.ROLLUP_COARSE // ru.ROLLUP_FINE
        fine_first, fine_last = first * per, min(-(-block.n // ru.ROLLUP_FINE), last * per)
        fine = _fine_rows(block.id, fine_first, fine_last)
        a, b = _chunk_range(fine, lo, hi)
        rows, chunk, offset = fine[a:b], ru.ROLLUP_FINE, fine_first + a
    else:
        raw_parts.append(_slice_points(block.id, first * ru.ROLLUP_COARSE, min(block.n, last * ru.ROLLUP_COARSE)))
        return
    straddle = (rows[:, ru.S0] < lo) | (rows[:, ru.S1] > hi)
    parts.append(rows[~straddle])
    for i in np.flatnonzero(straddle):
        start = (offset + int(i)) * chunk
        raw_parts.append(_slice_points(block.id, start, min(block.n, start + chunk)))


def series_json(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


# MLflow client records (runs.views.mlflow_compat)


class MlflowParamConflict(Exception):
    """MLflow params are write-once: logging a different value for a logged key is refused, as MLflow does."""


MLFLOW_PARAM_MAX = 6000  # MLflow's own limit on a param value


def run_mlflow_record(
    *,
    run: Run,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    delete_tags: Iterable[str] = (),
    info: dict[str, Any] | None = None,
) -> Run:
    """Merge what an MLflow client logged (params, tags, its run status and times) into the run's record."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        stored_params = dict(locked.mlflow_params or {})
        for key, value in (params or {}).items():
            value = str(value)[:MLFLOW_PARAM_MAX]
            if key in stored_params and stored_params[key] != value:
                raise MlflowParamConflict(
                    f"Changing param values is not allowed. Param with key={key!r} was already logged with "
                    f"value={stored_params[key]!r} for run ID={run.pk!r}. Attempted logging new value {value!r}."
                )
            stored_params[key] = value
        record = dict(locked.mlflow_run or {})
        stored_tags = dict(record.get("tags") or {})
        stored_tags.update({k: str(v) for k, v in (tags or {}).items()})
        for key in delete_tags:
            stored_tags.pop(key, None)
        record["tags"] = stored_tags
        record.update({k: v for k, v in (info or {}).items() if v is not None})
        Run.objects.filter(pk=run.pk).update(mlflow_params=stored_params, mlflow_run=record)
    run.mlflow_params, run.mlflow_run = stored_params, record
    return run


def series_latest(*, run_id: int) -> list[tuple[str, float | None, int | None]]:
    """(key, value at the highest step, that step) per series."""
    return list(
        MetricSeries.objects.filter(run_id=run_id).order_by("key").values_list("key", "last_value", "last_step")
    )
