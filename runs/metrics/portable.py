"""The portable block store (SQLite, and any other backend Django supports): the same steps as the PostgreSQL
store, a statement at a time, inside the caller's transaction. SQLite transactions here are IMMEDIATE, so one
writer at a time holds the database's write lock while it checks which steps are present and appends its blocks.
"""

from __future__ import annotations

import datetime

import numpy as np
import orjson
from django.db import connection

from runs.metrics import rollups as ru
from runs.metrics.prepare import late_ranges, prepare_entry
from runs.metrics.rows import Entry, NewBlock, RunGone, SeriesRow, SeriesUpdate, heartbeat_at

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


def store_portable(entry: Entry, now: datetime.datetime) -> None:
    """Store one run's batch inside the caller's transaction."""
    run_id = entry.run.pk
    hb = heartbeat_at(entry.batch, now)
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
        present = {sid: _present_steps(cursor, sid, lo, hi) for sid, lo, hi in late_ranges(entry, series_by_pair)}
        blocks: list[NewBlock] = []
        updates: list[SeriesUpdate] = []
        prepare_entry(entry, series_by_pair, present, blocks, updates)
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
                [
                    u.points,
                    u.last_step,
                    u.last_value,
                    None if u.detector_state is None else orjson.dumps(u.detector_state).decode(),
                    u.detector_window,
                    u.series_id,
                ]
                for u in updates
            ],
        )


def _series_rows(cursor, run_id: int, keys: list[str]) -> dict[str, SeriesRow]:
    rows: dict[str, SeriesRow] = {}
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        cursor.execute(
            f"SELECT {_SERIES_COLUMNS} FROM runs_metricseries "
            f"WHERE run_id = %s AND key IN ({', '.join(['%s'] * len(part))})",
            [run_id, *part],
        )
        for sid, key, last_step, last_value, pending, state, window, version in cursor.fetchall():
            rows[key] = SeriesRow(sid, last_step, last_value, pending, state, window, version)
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
