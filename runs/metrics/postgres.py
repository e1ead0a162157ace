"""The PostgreSQL block store: ingest's statements and the per-process caches that let most batches skip the locks.

Two ways in. The locking path (`store_locked`, inside the caller's transaction) creates and locks the batches'
series rows in id order, reads the stored steps a late batch overlaps, and writes blocks, series rows and the runs'
progress in one statement. The unlocked path (`cached_series`, `prepare_unlocked`, `write_unlocked`) serves the
usual batch (series this process wrote last, only new steps, no event, no alert): one autocommitted statement that
writes only if every series row is still at the version this process committed and every run still exists, and
says whether it wrote; when it did not, the caller stores the batch through the locking path.

Rows travel as one JSON parameter per statement (orjson writes it, json_to_recordset reads it) and the blocks'
packed arrays as bytea parameters that each row slices: every statement has one text whatever the batch, so
psycopg converts it once and PostgreSQL parses and plans it once per connection (server-side binding,
prepare=True). Binding hundreds of scalars or arrays instead costs more in psycopg's Python code than the rest of
a request.
"""

from __future__ import annotations

import datetime
from functools import partial

import numpy as np
import psycopg
from django.db import connection, transaction

from runs.metrics import rollups as ru
from runs.metrics.prepare import NeedsLocks, late_ranges, prepare_entry
from runs.metrics.rows import Entry, NewBlock, RunGone, SeriesRow, SeriesUpdate, heartbeat_at
from runs.metrics.sql import bigint_array, json_rows, pg_cursor

# Series known to exist, per process: a batch whose keys are all here skips the create step. Series are only
# ever deleted with their run, and a stale entry costs one retry of the create step (see _lock_series).
_known_series: set[tuple[int, str]] = set()
_KNOWN_SERIES_MAX = 200_000

# Series rows as this process last committed or read them under their lock, by (run id, key). Entries are only
# ever set after a commit, so a version here always belongs to the state beside it.
series_cache: dict[tuple[int, str], SeriesRow] = {}
_SERIES_CACHE_MAX = 20_000  # ~1 KB each (a detector window is 512 bytes)

_CREATE_SERIES = (
    "INSERT INTO runs_metricseries (run_id, key, points, pending_blocks, detector_state, version) "
    "SELECT k.run_id, k.key, 0, 0, '{}', 0 FROM json_to_recordset(%s::json) AS k(run_id bigint, key text) "
    "ORDER BY k.run_id, k.key ON CONFLICT (run_id, key) DO NOTHING"
)
_LOCK_SERIES = (
    "SELECT s.id, s.run_id, s.key, s.last_step, s.last_value, s.pending_blocks, s.detector_state, "
    "s.detector_window, s.version "
    "FROM runs_metricseries AS s JOIN json_to_recordset(%s::json) AS k(run_id bigint, key text) "
    "ON s.run_id = k.run_id AND s.key = k.key ORDER BY s.id FOR UPDATE OF s"
)
_PRESENT = (
    "SELECT b.series_id, b.steps FROM runs_metricblock AS b "
    "JOIN json_to_recordset(%s::json) AS q(series_id bigint, lo bigint, hi bigint) "
    "ON b.series_id = q.series_id AND b.step_hi >= q.lo AND b.step_lo <= q.hi"
)
# Series-row updates (sv), the runs' progress (r), blocks (b) and series rows (u) in one statement: one round trip.
# {checks} adds CTEs before r, and {gate} a condition to each write.
_WRITE = (
    "WITH sv AS (SELECT * FROM json_to_recordset(%s::json) AS v(id bigint, n bigint, ls bigint, lv float8, "
    "ds jsonb, wat integer, wn integer, ver bigint, run bigint, key text)), {checks}"
    "r AS (UPDATE runs_run AS r SET "
    "last_step = CASE WHEN t.ms IS NULL THEN r.last_step "
    "WHEN r.last_step IS NULL OR r.last_step < t.ms THEN t.ms ELSE r.last_step END, "
    "last_heartbeat_at = CASE WHEN t.hb IS NULL THEN r.last_heartbeat_at "
    "WHEN r.last_heartbeat_at IS NULL OR r.last_heartbeat_at < t.hb THEN t.hb ELSE r.last_heartbeat_at END "
    "FROM json_to_recordset(%s::json) AS t(id bigint, ms bigint, hb timestamptz) WHERE r.id = t.id{gate} "
    "RETURNING r.id, r.last_step), "
    'b AS (INSERT INTO runs_metricblock (series_id, step_lo, step_hi, n, vmin, vmax, steps, "values", nonfinite, '
    "tier) SELECT v.id, v.lo, v.hi, v.n, v.vmin, v.vmax, substring(%s::bytea FROM v.at * 8 + 1 FOR v.n * 8), "
    "substring(%s::bytea FROM v.at * 8 + 1 FOR v.n * 8), v.bad, 0 FROM json_to_recordset(%s::json) "
    "AS v(id bigint, lo bigint, hi bigint, n integer, vmin float8, vmax float8, at integer, bad integer) "
    "WHERE true{gate}), "
    "u AS (UPDATE runs_metricseries AS s SET points = s.points + v.n, last_step = v.ls, last_value = v.lv, "
    "pending_blocks = s.pending_blocks + 1, detector_state = COALESCE(v.ds, s.detector_state), "
    "detector_window = CASE WHEN v.wn IS NULL THEN s.detector_window "
    "ELSE substring(%s::bytea FROM v.wat + 1 FOR v.wn) END, version = s.version + 1 "
    "FROM sv AS v WHERE s.id = v.id{gate} RETURNING s.id, s.pending_blocks) "
)
_WRITE_LOCKED = _WRITE.format(checks="", gate="") + "SELECT id, last_step FROM r"
# The same write without locks held beforehand. `lk` locks the series rows that are still at the version the batch
# was prepared from (and whose run and key are the batch's: a database restored under a running server may hold
# the same id and version for another series), in id order; `lr` then locks the run rows, in id order: the order in
# which the locking path and compaction take them, so that none of them can deadlock with this. Every write is
# gated on `ok`, which holds only if every series row and every run row was found: otherwise nothing is written and
# the statement says so in its last row.
_WRITE_CHECKED = (
    _WRITE.format(
        checks=(
            "lk AS MATERIALIZED (SELECT s.id FROM runs_metricseries AS s JOIN sv ON s.id = sv.id "
            "AND s.version = sv.ver AND s.run_id = sv.run AND s.key = sv.key ORDER BY s.id FOR NO KEY UPDATE OF s), "
            "lr AS MATERIALIZED (SELECT id FROM runs_run WHERE id = ANY(%s::bigint[]) ORDER BY id "
            "FOR NO KEY UPDATE), "
            "ok AS MATERIALIZED (SELECT (SELECT count(*) FROM lk) = %s AND (SELECT count(*) FROM lr) = %s AS ok), "
        ),
        gate=" AND (SELECT ok FROM ok)",
    )
    + "SELECT 'u', id, pending_blocks FROM u UNION ALL SELECT 'r', id, last_step FROM r UNION ALL "
    "SELECT 'ok', 0, ok::int FROM ok"
)


def store_locked(work: list[Entry], now: datetime.datetime) -> None:
    """Store the batches inside the caller's transaction, their series rows locked (created first if new)."""
    with pg_cursor() as cursor:
        wanted = [(entry.run.pk, key) for entry in work for key in entry.points]
        series = _lock_series(cursor, wanted) if wanted else {}
        late = [r for entry in work for r in late_ranges(entry, series)]
        present: dict[int, np.ndarray] = {}
        if late:
            cursor.execute(_PRESENT, [json_rows(("series_id", "lo", "hi"), late)], prepare=True)
            for sid, blob in cursor.fetchall():
                steps = ru.unpack_steps(blob)
                present[sid] = np.concatenate([present[sid], steps]) if sid in present else steps
        blocks: list[NewBlock] = []
        updates: list[SeriesUpdate] = []
        for entry in work:
            prepare_entry(entry, series, present, blocks, updates)
        cursor.execute(_WRITE_LOCKED, _write_params(work, blocks, updates, now), prepare=True)
        last_steps: dict[int, int] = dict(cursor.fetchall())
    _last_steps(work, last_steps)
    after = {pair: row for entry in work for pair, row in entry.after.items()}
    transaction.on_commit(partial(series_cache.update, after))


def cached_series(work: list[Entry]) -> dict[tuple[int, str], SeriesRow] | None:
    """The cached series rows of the batches, if they may be written without locks: outside a transaction, no
    events, every series cached here, and only steps past each series' last one. Else None."""
    if connection.in_atomic_block or any(entry.batch.events for entry in work):
        return None  # inside a caller's transaction, or events to apply: the locking path
    if len(series_cache) > _SERIES_CACHE_MAX:
        series_cache.clear()
    series: dict[tuple[int, str], SeriesRow] = {}
    for entry in work:
        for key, points in entry.points.items():
            row = series_cache.get((entry.run.pk, key))
            if row is None or (row.last_step is not None and points.steps[0] <= row.last_step):
                return None  # a series not known here, or steps that may be stored already
            series[(entry.run.pk, key)] = row
    return series


def prepare_unlocked(
    work: list[Entry], series: dict[tuple[int, str], SeriesRow]
) -> tuple[list[NewBlock], list[SeriesUpdate]] | None:
    """The blocks and series-row updates of the batches, from the given series rows; None when one of them has an
    alert to raise or resolve, which only the locking path writes."""
    blocks: list[NewBlock] = []
    updates: list[SeriesUpdate] = []
    try:
        for entry in work:
            prepare_entry(entry, series, {}, blocks, updates, alerts=False)
    except NeedsLocks:
        return None
    return blocks, updates


def write_unlocked(
    work: list[Entry],
    series: dict[tuple[int, str], SeriesRow],
    blocks: list[NewBlock],
    updates: list[SeriesUpdate],
    now: datetime.datetime,
) -> bool:
    """Write prepared batches in one autocommitted statement; False, with nothing written, when a series row
    changed since it was cached (another process wrote it) or a run is gone."""
    windows, rows = _series_updates(updates)
    touches, steps, values, block_rows = _touch_and_block_params(work, blocks, now)
    run_ids = bigint_array(sorted(entry.run.pk for entry in work))
    params = [rows, run_ids, len(updates), len(work), touches, steps, values, block_rows, windows]
    try:
        with pg_cursor() as cursor:
            cursor.execute(_WRITE_CHECKED, params, prepare=True)
            answer = cursor.fetchall()
    except psycopg.errors.DeadlockDetected:  # should it happen: nothing was written
        answer = []
    if [value for kind, _, value in answer if kind == "ok"] != [1]:
        for pair in series:
            series_cache.pop(pair, None)
        return False
    _last_steps(work, {row_id: value for kind, row_id, value in answer if kind == "r"})
    pending = {row_id: value for kind, row_id, value in answer if kind == "u"}
    for entry in work:
        for pair, row in entry.after.items():
            series_cache[pair] = row._replace(pending_blocks=pending.get(row.id, row.pending_blocks))
    return True


def _write_params(work: list[Entry], blocks: list[NewBlock], updates: list[SeriesUpdate], now) -> list:
    windows, rows = _series_updates(updates)
    return [rows, *_touch_and_block_params(work, blocks, now), windows]


def _touch_and_block_params(work: list[Entry], blocks: list[NewBlock], now) -> tuple[str, bytes, bytes, str]:
    """The runs' progress (in id order, the order their rows are locked in), the blocks' packed steps and values,
    and the blocks' rows that slice them."""
    touches = sorted((e.run.pk, e.batch.max_step, heartbeat_at(e.batch, now)) for e in work)
    at, rows = 0, []
    for block in blocks:
        rows.append((block.series_id, block.lo, block.hi, block.n, block.vmin, block.vmax, at, block.bad))
        at += block.n
    return (
        json_rows(("id", "ms", "hb"), touches),
        b"".join(block.steps for block in blocks),
        b"".join(block.values for block in blocks),
        json_rows(("id", "lo", "hi", "n", "vmin", "vmax", "at", "bad"), rows),
    )


def _last_steps(work: list[Entry], last_steps: dict[int, int]) -> None:
    for entry in work:
        if entry.run.pk not in last_steps:
            raise RunGone(f"run {entry.run.pk} no longer exists")
        entry.result.last_step = last_steps[entry.run.pk]


def _series_updates(updates: list[SeriesUpdate]) -> tuple[bytes, str]:
    """The series rows to write, as the packed windows (one bytea) and a JSON recordset that slices them."""
    windows: list[bytes] = []
    rows: list[tuple] = []
    at = 0
    for u in updates:
        window = u.detector_window
        if window is None:
            wat = wn = None
        else:
            windows.append(window)
            wat, wn = at, len(window)
            at += len(window)
        rows.append(
            (u.series_id, u.points, u.last_step, u.last_value, u.detector_state, wat, wn, u.version, u.run_id, u.key)
        )
    return b"".join(windows), json_rows(("id", "n", "ls", "lv", "ds", "wat", "wn", "ver", "run", "key"), rows)


def _lock_series(cursor, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], SeriesRow]:
    """Lock the series rows of (run id, key) pairs in id order, creating missing ones first.

    Creation comes before any row lock: two batches that both add a new key then wait on each other's insert
    without holding locks the other needs (rows are inserted in (run, key) order). Under READ COMMITTED, FOR
    UPDATE returns each row as last committed, so the steps and detector state read here are current even when
    this batch waited for another.
    """
    if len(_known_series) > _KNOWN_SERIES_MAX:
        _known_series.clear()
    if any(pair not in _known_series for pair in wanted):
        cursor.execute(_CREATE_SERIES, [json_rows(("run_id", "key"), wanted)], prepare=True)
    series = _locked_rows(cursor, wanted)
    if len(series) < len(wanted):
        # A stale cache entry (the database was emptied or restored): create what is missing after all. A run
        # deleted meanwhile is found when its row is updated (RunGone).
        missing = [pair for pair in wanted if pair not in series]
        _known_series.difference_update(missing)
        cursor.execute(_CREATE_SERIES, [json_rows(("run_id", "key"), missing)], prepare=True)
        series.update(_locked_rows(cursor, missing))
    _known_series.update(wanted)
    return series


def _locked_rows(cursor, wanted: list[tuple[int, str]]) -> dict[tuple[int, str], SeriesRow]:
    cursor.execute(_LOCK_SERIES, [json_rows(("run_id", "key"), wanted)], prepare=True)
    return {
        (run_id, key): SeriesRow(sid, last_step, last_value, pending, state, window, version)
        for sid, run_id, key, last_step, last_value, pending, state, window, version in cursor.fetchall()
    }
