"""Packed block encoding, chunk rollups and the min/max envelope a zoomed-out chart shows.

A rollup row summarises one chunk of consecutive points of a block: first and last step, the finite min and max
with the step where each occurs, the last value, and how many values were NaN/infinite. Because the steps of the
extremes are kept, an envelope built from rollups puts every spike in the bucket where it happened, exactly as an
envelope built from the raw points would; only a bucket's "other side" of a chunk that straddles a bucket edge is
approximated, and the readers use rollups only where chunks are several times narrower than buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROLLUP_FINE = 64
# A zoomed-out chart of 1 M steps at one bucket per pixel has buckets of ~1,000-2,000 steps: too narrow for coarse
# chunks, and 4 times as many rows to read in fine ones as in these.
ROLLUP_MID = 256
ROLLUP_COARSE = 4096
# Rollup columns, all stored as float64 (steps below 2**53 are exact).
S0, S1, MN, MN_STEP, MX, MX_STEP, LAST, BAD = range(8)
ROLLUP_COLS = 8
ROLLUP_ROW_BYTES = ROLLUP_COLS * 8


def pack_steps(steps: np.ndarray) -> bytes:
    return np.ascontiguousarray(steps, dtype="<i8").tobytes()


def pack_values(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f8").tobytes()


def unpack_steps(blob) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i8") if blob else np.empty(0, dtype="<i8")


def unpack_values(blob) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8") if blob else np.empty(0, dtype="<f8")


def finite_min_max(values: np.ndarray) -> tuple[float | None, float | None, int]:
    """(min, max) over finite values (None when there are none) and the count of non-finite values."""
    if values.size == 1:  # a stepwise reporter's block: no numpy calls for one value
        value = float(values[0])
        return (value, value, 0) if math.isfinite(value) else (None, None, 1)
    finite = np.isfinite(values)
    bad = int(values.size - np.count_nonzero(finite))
    if bad == values.size:
        return None, None, bad
    good = values[finite] if bad else values
    return float(good.min()), float(good.max()), bad


def rollup(steps: np.ndarray, values: np.ndarray, chunk: int) -> np.ndarray:
    """One summary row per `chunk` consecutive points (the last chunk may be shorter); steps must be sorted."""
    n = steps.size
    starts = np.arange(0, n, chunk)
    ends = np.minimum(starts + chunk, n) - 1
    finite = np.isfinite(values)
    lo_vals = np.where(finite, values, np.inf)
    hi_vals = np.where(finite, values, -np.inf)
    out = np.empty((starts.size, ROLLUP_COLS), dtype="<f8")
    out[:, S0] = steps[starts]
    out[:, S1] = steps[ends]
    out[:, LAST] = values[ends]
    out[:, BAD] = np.add.reduceat((~finite).astype(np.int64), starts)
    pad = (-n) % chunk
    # argmin/argmax per chunk on a padded (chunks, chunk) view: one vectorised pass, no Python loop per chunk.
    lo2 = np.concatenate([lo_vals, np.full(pad, np.inf)]).reshape(-1, chunk)
    hi2 = np.concatenate([hi_vals, np.full(pad, -np.inf)]).reshape(-1, chunk)
    imin = lo2.argmin(axis=1) + starts
    imax = hi2.argmax(axis=1) + starts
    mn = lo_vals[imin]
    mx = hi_vals[imax]
    out[:, MN] = np.where(np.isfinite(mn), mn, np.nan)
    out[:, MX] = np.where(np.isfinite(mx), mx, np.nan)
    out[:, MN_STEP] = steps[imin]
    out[:, MX_STEP] = steps[imax]
    return out


def pack_rollup(rows: np.ndarray) -> bytes:
    return np.ascontiguousarray(rows, dtype="<f8").tobytes()


def unpack_rollup(blob) -> np.ndarray:
    if not blob:
        return np.empty((0, ROLLUP_COLS), dtype="<f8")
    return np.frombuffer(blob, dtype="<f8").reshape(-1, ROLLUP_COLS)


def points_as_rows(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Raw points as one-point rollup rows, so raw data and summaries go through one envelope function."""
    rows = np.empty((steps.size, ROLLUP_COLS), dtype="<f8")
    finite = np.isfinite(values)
    rows[:, S0] = rows[:, S1] = rows[:, MN_STEP] = rows[:, MX_STEP] = steps
    rows[:, LAST] = values
    clean = np.where(finite, values, np.nan)
    rows[:, MN] = clean
    rows[:, MX] = clean
    rows[:, BAD] = ~finite
    return rows


def points_bucketed(steps: np.ndarray, values: np.ndarray, *, lo: int, width: int) -> np.ndarray:
    """Raw points (sorted by step) as one summary row per bucket of `width` steps from `lo` that holds any: the
    envelope of these rows is exactly the envelope of the points, at a row per bucket instead of a row per point
    (unmerged blocks of many points, a 1 M-step chart's tail, cost a few hundred rows)."""
    n = steps.size
    if n == 0:
        return points_as_rows(steps, values)
    bucket = (steps - lo) // width
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    ends = np.concatenate([starts[1:], [n]]) - 1
    finite = np.isfinite(values)
    lo_vals = np.where(finite, values, np.inf)
    hi_vals = np.where(finite, values, -np.inf)
    segment = np.repeat(np.arange(starts.size), np.diff(np.concatenate([starts, [n]])))

    def first_index_of(vals: np.ndarray, per_segment: np.ndarray) -> np.ndarray:
        hit = np.flatnonzero(vals == per_segment[segment])
        return hit[np.unique(segment[hit], return_index=True)[1]]

    mn = np.minimum.reduceat(lo_vals, starts)
    mx = np.maximum.reduceat(hi_vals, starts)
    out = np.empty((starts.size, ROLLUP_COLS), dtype="<f8")
    out[:, S0] = steps[starts]
    out[:, S1] = steps[ends]
    out[:, LAST] = values[ends]
    out[:, BAD] = np.add.reduceat((~finite).astype(np.int64), starts)
    out[:, MN_STEP] = steps[first_index_of(lo_vals, mn)]
    out[:, MX_STEP] = steps[first_index_of(hi_vals, mx)]
    out[:, MN] = np.where(np.isfinite(mn), mn, np.nan)
    out[:, MX] = np.where(np.isfinite(mx), mx, np.nan)
    return out


@dataclass
class Envelope:
    steps: np.ndarray  # bucket start steps (non-empty buckets only)
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray
    nonfinite: np.ndarray  # indexes (into steps) of buckets holding a NaN/infinite value
    bucket: int  # steps per bucket


def envelope(rows: np.ndarray, *, lo: int, hi: int, buckets: int) -> Envelope:
    """Min/max/last per step bucket over rollup rows (or raw points as rows) that lie within [lo, hi]."""
    width = max(1, -(-(hi - lo + 1) // buckets))
    nb = -(-(hi - lo + 1) // width)
    mn = np.full(nb, np.inf)
    mx = np.full(nb, -np.inf)
    bad = np.zeros(nb, dtype=bool)
    filled = np.zeros(nb, dtype=bool)
    last_step = np.full(nb, -1, dtype=np.int64)
    last = np.full(nb, np.nan)
    if rows.size:
        # Steps as integers once per column: floor division of float64 columns cost more than the rest together.
        s0 = rows[:, S0].astype(np.int64)
        s1 = rows[:, S1].astype(np.int64)

        def place(steps: np.ndarray, also: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            """Which steps lie within [lo, hi] (and `also`), and their buckets."""
            ok = (steps >= lo) & (steps <= hi)
            if also is not None:
                ok &= also
            return ok, (steps[ok] - lo) // width

        values = rows[:, MN]
        ok, b = place(rows[:, MN_STEP].astype(np.int64), np.isfinite(values))
        np.minimum.at(mn, b, values[ok])
        values = rows[:, MX]
        ok, b = place(rows[:, MX_STEP].astype(np.int64), np.isfinite(values))
        np.maximum.at(mx, b, values[ok])
        flagged = rows[:, BAD] > 0
        ok0, b0 = place(s0)
        filled[b0] = True
        bad[b0[flagged[ok0]]] = True
        ok1, b1 = place(s1)
        filled[b1] = True
        bad[b1[flagged[ok1]]] = True
        ends = s1[ok1]
        np.maximum.at(last_step, b1, ends)
        winner = ends == last_step[b1]
        last[b1[winner]] = rows[ok1, LAST][winner]
    keep = np.flatnonzero(filled)
    mn, mx = mn[keep], mx[keep]
    mn[~np.isfinite(mn)] = np.nan
    mx[~np.isfinite(mx)] = np.nan
    return Envelope(
        steps=lo + keep.astype(np.int64) * width,
        min=mn,
        max=mx,
        last=last[keep],
        nonfinite=np.flatnonzero(bad[keep]),
        bucket=width,
    )
