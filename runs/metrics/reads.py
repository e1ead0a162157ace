"""Reading series: which keys a run has, and the points of a step range, whole when they fit a chart or as a
min/max/last envelope per step bucket in which every spike survives (merged blocks' rollups where they are fine
enough, raw points elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from django.db import connection

from runs.metrics import rollups as ru
from runs.metrics.prepare import MAX_PUSH_POINTS, nonfinite_name
from runs.metrics.sql import id_in, pg_cursor
from runs.models import MetricSeries, Run


def series_keys(*, run_id: int) -> list[dict]:
    """Each key's point count, last point and version (bumped by every write to the series: a page that read a
    series at one version has every point stored until another)."""
    return [
        {"key": key, "points": points, "last_step": last_step, "last_value": last_value, "version": version}
        for key, points, last_step, last_value, version in MetricSeries.objects.filter(run_id=run_id)
        .order_by("key")
        .values_list("key", "points", "last_step", "last_value", "version")
    ]


def series_versions(*, run_id: int) -> dict[str, int]:
    """Each key's version (see series_keys)."""
    return dict(MetricSeries.objects.filter(run_id=run_id).values_list("key", "version"))


def runs_keys(*, run_ids: list[int]) -> dict[int, list[str]]:
    """Each run's metric keys, in key order (one query for all the runs)."""
    out: dict[int, list[str]] = {run_id: [] for run_id in run_ids}
    for run_id, key in MetricSeries.objects.filter(run_id__in=run_ids).order_by("key").values_list("run_id", "key"):
        out[run_id].append(key)
    return out


@dataclass
class _Block:
    id: int
    lo: int
    hi: int
    n: int
    coarse: np.ndarray | None  # rollup rows, compacted blocks only
    has_mid: bool = False  # blocks merged before ROLLUP_MID existed have no such rollup


# Rollup columns from the coarsest: a read takes the coarsest whose chunks are at most a quarter of a bucket wide.
_LEVELS = (("rollup_coarse", ru.ROLLUP_COARSE), ("rollup_mid", ru.ROLLUP_MID), ("rollup", ru.ROLLUP_FINE))


def _level(block: _Block, width: int) -> tuple[str, int] | None:
    """The rollup column and chunk size that suit buckets of `width` steps in this block, or None (raw points)."""
    span_per_point = (block.hi - block.lo + 1) / block.n
    for column, chunk in _LEVELS:
        if (column != "rollup_mid" or block.has_mid) and span_per_point * chunk * 4 <= width:
            return column, chunk
    return None


def series_read(
    *, run_id: int, keys: list[str], lo: int | None = None, hi: int | None = None, max_points: int = 1500
) -> dict:
    """{"keys": {key: series}, "last_step": N} — see `read_series` for one series' shape.

    The blocks of all the keys are found in one query, and the rollups and points the reads take whole in one more
    each: a chart page's keys cost a few round trips, not a few per block.

    Each series carries the version its row had before its blocks were read: the read holds at least every point
    written up to that version (series_keys says when there is a newer one)."""
    found = {
        key: (sid, version)
        for key, sid, version in MetricSeries.objects.filter(run_id=run_id, key__in=keys).values_list(
            "key", "id", "version"
        )
    }
    blocks = _overlapping_blocks_many([sid for sid, _ in found.values()], lo, hi)
    pre = _prefetch(blocks, lo, hi, max_points)
    out = {
        key: {**_read(blocks.get(found[key][0], []), lo, hi, max_points, pre), "version": found[key][1]}
        if key in found
        else {**_full(np.empty(0, np.int64), np.empty(0)), "version": 0}
        for key in keys
    }
    last_step = Run.objects.filter(pk=run_id).values_list("last_step", flat=True).first()
    return {"keys": out, "last_step": last_step}


@dataclass
class _Prefetched:
    """Whole mid or fine rollups and whole points of blocks, read together for several series."""

    rollups: dict[tuple[str, int], np.ndarray]  # by (column, block id)
    points: dict[int, tuple[np.ndarray, np.ndarray]]


def _prefetch(by_series: dict[int, list[_Block]], lo: int | None, hi: int | None, max_points: int) -> _Prefetched:
    """Reads, in one query each, what `_read` takes whole: the points of blocks without rollups or inside a range
    that fits a chart, and the mid or fine rollups of blocks inside an envelope's range whose buckets they suit."""
    rollup_ids: dict[str, list[int]] = {"rollup_mid": [], "rollup": []}
    point_ids: list[int] = []
    for blocks in by_series.values():
        if not blocks:
            continue
        slo = min(b.lo for b in blocks) if lo is None else lo
        shi = max(b.hi for b in blocks) if hi is None else hi
        full = sum(_points_bound(b, slo, shi) for b in blocks) <= max_points
        width = max(1, -(-(shi - slo + 1) // max_points))
        for b in blocks:
            inside = b.lo >= slo and b.hi <= shi
            if b.coarse is None or (full and inside) or (not full and b.coarse.size == 0):
                point_ids.append(b.id)
            elif not full and inside:
                level = _level(b, width)
                if level is not None and level[0] in rollup_ids:
                    rollup_ids[level[0]].append(b.id)
    rollups: dict[tuple[str, int], np.ndarray] = {}
    for column, ids in rollup_ids.items():
        if ids:
            where, params = id_in("id", ids)
            rows = _fetch(f"SELECT id, {column} FROM runs_metricblock WHERE {where}", params)
            rollups.update({(column, bid): ru.unpack_rollup(bytes(r)) for bid, r in rows if r is not None})
    return _Prefetched(rollups, _points_by_id(point_ids) if point_ids else {})


def _fetch(sql: str, params: list) -> list[tuple]:
    """The rows of a read. On PostgreSQL in binary: the blocks' arrays and rollups travel as their bytes, where
    Django's text results send each as hex, twice the bytes, and decode it again (most of a chart read's time)."""
    if connection.vendor == "postgresql":
        with pg_cursor() as cursor:
            cursor.execute(sql, params, binary=True)
            return cursor.fetchall()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


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
    return _read(_overlapping_blocks(series_id, lo, hi), lo, hi, max_points, None)


def _read(blocks: list[_Block], lo: int | None, hi: int | None, max_points: int, pre: _Prefetched | None) -> dict:
    if not blocks:
        return _full(np.empty(0, np.int64), np.empty(0))
    lo = min(b.lo for b in blocks) if lo is None else lo
    hi = max(b.hi for b in blocks) if hi is None else hi
    if sum(_points_bound(b, lo, hi) for b in blocks) <= max_points:
        steps, values = _raw_points(blocks, lo, hi, pre)
        return _full(steps, values)
    width = max(1, -(-(hi - lo + 1) // max_points))
    parts: list[np.ndarray] = []
    raw_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for block in blocks:
        _envelope_rows(block, lo, hi, width, parts, raw_parts, pre)
    raw_steps = np.concatenate([p[0] for p in raw_parts]) if raw_parts else np.empty(0, np.int64)
    raw_values = np.concatenate([p[1] for p in raw_parts]) if raw_parts else np.empty(0)
    inside = (raw_steps >= lo) & (raw_steps <= hi)
    order = np.argsort(raw_steps[inside], kind="stable")
    raw_steps, raw_values = raw_steps[inside][order], raw_values[inside][order]
    if not parts and raw_steps.size <= max_points:
        return _full(raw_steps, raw_values)
    parts.append(ru.points_bucketed(raw_steps, raw_values, lo=lo, width=width))
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
    return _overlapping_blocks_many([series_id], lo, hi).get(series_id, [])


def _overlapping_blocks_many(series_ids: list[int], lo: int | None, hi: int | None) -> dict[int, list[_Block]]:
    if not series_ids:
        return {}
    where, ids = id_in("series_id", series_ids)
    sql = (
        "SELECT series_id, id, step_lo, step_hi, n, rollup_coarse, rollup_mid IS NOT NULL FROM runs_metricblock "
        f"WHERE {where}"
    )
    params: list[Any] = list(ids)
    if lo is not None:
        sql += " AND step_hi >= %s"
        params.append(lo)
    if hi is not None:
        sql += " AND step_lo <= %s"
        params.append(hi)
    out: dict[int, list[_Block]] = {}
    for sid, bid, blo, bhi, n, coarse, has_mid in _fetch(sql, params):
        block = _Block(bid, blo, bhi, n, ru.unpack_rollup(bytes(coarse)) if coarse is not None else None, has_mid)
        out.setdefault(sid, []).append(block)
    return out


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
    rows = _fetch(
        f"SELECT substr(steps, %s, %s), substr({values_col}, %s, %s) FROM runs_metricblock WHERE id = %s",
        [start * 8 + 1, (stop - start) * 8, start * 8 + 1, (stop - start) * 8, block_id],
    )
    row = rows[0] if rows else None
    if row is None:  # compacted away since the metadata was read
        return np.empty(0, np.int64), np.empty(0)
    return ru.unpack_steps(bytes(row[0])).copy(), ru.unpack_values(bytes(row[1])).copy()


def _points_by_id(block_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    values_col = connection.ops.quote_name("values")
    where, params = id_in("id", block_ids)
    rows = _fetch(f"SELECT id, steps, {values_col} FROM runs_metricblock WHERE {where}", params)
    return {bid: (ru.unpack_steps(bytes(s)), ru.unpack_values(bytes(v))) for bid, s, v in rows}


def _whole_points(block_ids: list[int], pre: _Prefetched | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    have = [pre.points[b] for b in block_ids if b in pre.points] if pre else []
    missing = [b for b in block_ids if not pre or b not in pre.points]
    if missing:
        have.extend(_points_by_id(missing).values())
    return have


def _raw_points(
    blocks: list[_Block], lo: int, hi: int, pre: _Prefetched | None = None
) -> tuple[np.ndarray, np.ndarray]:
    whole, parts = [], []
    for block in blocks:
        if (block.lo >= lo and block.hi <= hi) or block.coarse is None:
            whole.append(block.id)
        else:
            first, last = _chunk_range(block.coarse, lo, hi)
            if last > first:
                parts.append(_slice_points(block.id, first * ru.ROLLUP_COARSE, min(block.n, last * ru.ROLLUP_COARSE)))
    parts.extend(_whole_points(whole, pre))
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    steps = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    inside = (steps >= lo) & (steps <= hi)
    steps, values = steps[inside], values[inside]
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def _rollup_rows(block_id: int, column: str, first: int, last: int, pre: _Prefetched | None = None) -> np.ndarray:
    """Rows [first, last) of a block's mid or fine rollup (`column`, one of _LEVELS' names)."""
    if pre and (column, block_id) in pre.rollups:
        return pre.rollups[(column, block_id)][first:last]
    rows = _fetch(
        f"SELECT substr({column}, %s, %s) FROM runs_metricblock WHERE id = %s",
        [first * ru.ROLLUP_ROW_BYTES + 1, (last - first) * ru.ROLLUP_ROW_BYTES, block_id],
    )
    row = rows[0] if rows else None
    return ru.unpack_rollup(bytes(row[0])) if row and row[0] is not None else ru.unpack_rollup(b"")


def _envelope_rows(
    block: _Block, lo: int, hi: int, width: int, parts: list, raw_parts: list, pre: _Prefetched | None
) -> None:
    """Add the block's contribution: rollup rows where chunks are at most a quarter of a bucket wide, raw
    points elsewhere and for the chunks that straddle lo or hi."""
    coarse = block.coarse
    if coarse is None or coarse.size == 0:
        raw_parts.extend(_whole_points([block.id], pre))
        return
    first, last = _chunk_range(coarse, lo, hi)
    if last <= first:
        return
    level = _level(block, width)
    if level is None:
        raw_parts.append(_slice_points(block.id, first * ru.ROLLUP_COARSE, min(block.n, last * ru.ROLLUP_COARSE)))
        return
    column, chunk = level
    if column == "rollup_coarse":
        rows, offset = coarse[first:last], first
    else:
        per = ru.ROLLUP_COARSE // chunk
        level_first, level_last = first * per, min(-(-block.n // chunk), last * per)
        level_rows = _rollup_rows(block.id, column, level_first, level_last, pre)
        a, b = _chunk_range(level_rows, lo, hi)
        rows, offset = level_rows[a:b], level_first + a
    straddle = (rows[:, ru.S0] < lo) | (rows[:, ru.S1] > hi)
    parts.append(rows[~straddle])
    for i in np.flatnonzero(straddle):
        start = (offset + int(i)) * chunk
        raw_parts.append(_slice_points(block.id, start, min(block.n, start + chunk)))


def series_json(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def series_latest(*, run_id: int) -> list[tuple[str, float | None, int | None]]:
    """(key, value at the highest step, that step) per series."""
    return list(
        MetricSeries.objects.filter(run_id=run_id).order_by("key").values_list("key", "last_value", "last_step")
    )


CHECKPOINT_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s")
VALUE_AT_LOOKBACK = 1000


def values_at(*, run_id: int, steps: list[int], keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict[int, dict[str, float]]:
    """For each step, each key's value at that step, or at the last logged step at most VALUE_AT_LOOKBACK before
    it (a checkpoint written between logged steps); non-finite values and keys with no such point are left out."""
    found = dict(MetricSeries.objects.filter(run_id=run_id, key__in=keys).values_list("key", "id"))
    out: dict[int, dict[str, float]] = {step: {} for step in steps}
    for key in keys:
        if key not in found:
            continue
        for step in steps:
            lo = max(0, step - VALUE_AT_LOOKBACK)
            point_steps, values = _raw_points(_overlapping_blocks(found[key], lo, step), lo, step)
            if point_steps.size and np.isfinite(values[-1]):
                out[step][key] = float(values[-1])
    return out


def series_all_points(*, run_id: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Every stored point of one series in step order (an export); empty arrays when the run has no such key."""
    series = MetricSeries.objects.filter(run_id=run_id, key=key).values_list("id", flat=True).first()
    if series is None:
        return np.empty(0, np.int64), np.empty(0)
    blocks = _overlapping_blocks(series, None, None)
    if not blocks:
        return np.empty(0, np.int64), np.empty(0)
    return _raw_points(blocks, min(b.lo for b in blocks), max(b.hi for b in blocks))
