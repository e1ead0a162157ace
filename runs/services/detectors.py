"""Streaming detectors that run on every ingested batch: NaN/Inf loss, loss spike, grad-norm blow-up, throughput drop.

Each watched series keeps a small state in its row: the last WINDOW finite values (MetricSeries.detector_window,
packed) and, per detector, whether an episode is open (MetricSeries.detector_state). Ingest holds the series row's
lock while it reads and writes that state, so any number of web processes see one consistent stream. A detector
reports a finding when an episode opens and a resolution when it has been quiet for QUIET points; the caller turns
these into one Alert per episode.
Work is O(points): the rolling median/MAD of a batch is one vectorised numpy pass over its sliding windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

WINDOW = 64  # points of history for the rolling median / MAD
MIN_WINDOW = 16  # no verdict on spikes or drops before this much history
QUIET = 10  # consecutive normal points that end an episode
MAD_SCALE = 1.4826  # MAD of a normal distribution -> standard deviation
MAD_FLOOR_REL = 0.005  # a nearly constant series still needs a 0.5 % change per unit of z
GRAD_NORM_FACTOR = 10.0  # grad norm above this many times its rolling median is a blow-up
THROUGHPUT_MIN_POINTS = 5  # consecutive low points before a throughput drop is reported

_FLOAT_MAX = np.finfo(np.float64).max

LOSS_KEY, GRAD_NORM_KEY, THROUGHPUT_KEY = "loss", "grad_norm", "tokens_per_s"
WATCHED_KEYS = frozenset({LOSS_KEY, GRAD_NORM_KEY, THROUGHPUT_KEY})


@dataclass(frozen=True)
class Thresholds:
    loss_spike_z: float = 6.0
    grad_norm_max: float = 100.0
    throughput_drop_pct: float = 50.0

    @classmethod
    def from_config(cls, config: dict) -> Thresholds:
        alerts = (config or {}).get("alerts") or {}

        def number(name: str, default: float) -> float:
            value = alerts.get(name, default)
            try:
                value = float(value)
            except (TypeError, ValueError):
                return default
            return value if math.isfinite(value) and value > 0 else default

        return cls(
            loss_spike_z=number("loss_spike_z", cls.loss_spike_z),
            grad_norm_max=number("grad_norm_max", cls.grad_norm_max),
            throughput_drop_pct=min(100.0, number("throughput_drop_pct", cls.throughput_drop_pct)),
        )


@dataclass
class Finding:
    kind: str  # an AlertKind value
    severity: str
    step: int
    message: str
    evidence: dict[str, Any]


@dataclass
class Verdict:
    state: dict
    findings: list[Finding] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # alert kinds whose episode ended
    # Both of the above in the order they happened: an episode can open and close within one batch.
    sequence: list[Finding | str] = field(default_factory=list)


def _nan_to(x: np.ndarray, fill: float) -> np.ndarray:
    """np.nan_to_num(x, nan=fill): NaN becomes fill, +-inf the largest finite float of that sign (a few ufuncs
    instead of its per-call Python overhead)."""
    return np.where(np.isnan(x), fill, np.minimum(np.maximum(x, -_FLOAT_MAX), _FLOAT_MAX))


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """np.median(rows, axis=1) for rows of finite values, bit for bit, without its per-call overhead (most of the
    cost on the one-step batches of stepwise reporters); a sort of 64 values is quicker than np.partition's select."""
    ordered = np.sort(rows, axis=1)
    half = rows.shape[1] // 2
    if rows.shape[1] % 2:
        return ordered[:, half]
    return (ordered[:, half - 1] + ordered[:, half]) / 2


def _rolling(window: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each new finite value: median and MAD of the WINDOW values before it, and how many there were."""
    combined = np.concatenate([window, new])
    m, start = new.size, window.size
    if m == 0:
        return np.empty(0), np.empty(0), np.empty(0, dtype=np.int64)
    if start >= WINDOW:
        # Row j: the WINDOW values before new[j] (sliding_window_view's rows, without its per-call overhead).
        step = combined.strides[0]
        views = as_strided(combined[start - WINDOW :], shape=(m, WINDOW), strides=(step, step), writeable=False)
        med = _row_medians(views)
        mad = _row_medians(np.abs(views - med[:, None]))
        return med, mad, np.full(m, WINDOW, dtype=np.int64)
    med, mad, count = np.full(m, np.nan), np.full(m, np.nan), np.zeros(m, dtype=np.int64)
    for j in range(m):  # the first WINDOW points of a series only
        hist = combined[max(0, start + j - WINDOW) : start + j]
        count[j] = hist.size
        if hist.size:
            med[j] = _row_medians(hist[None])[0]
            mad[j] = _row_medians(np.abs(hist - med[j])[None])[0]
    return med, mad, count


class _Episodes:
    """Open/quiet bookkeeping for one detector over one batch, persisted in the series state."""

    def __init__(self, state: dict, kind: str):
        self.kind = kind
        self.slot = state.setdefault("ep", {}).setdefault(kind, {"open": False, "quiet": 0})

    def feed(self, triggered: np.ndarray, steps: np.ndarray, verdict: Verdict, describe) -> None:
        slot = self.slot
        if not slot["open"] and not triggered.any():
            return
        for j in range(triggered.size):
            if triggered[j]:
                slot["quiet"] = 0
                if not slot["open"]:
                    slot["open"] = True
                    slot["since"] = int(steps[j])
                    finding = describe(j)
                    verdict.findings.append(finding)
                    verdict.sequence.append(finding)
            elif slot["open"]:
                slot["quiet"] += 1
                if slot["quiet"] >= QUIET:
                    slot["open"] = False
                    slot["quiet"] = 0
                    slot.pop("since", None)
                    verdict.resolved.append(self.kind)
                    verdict.sequence.append(self.kind)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def detect(*, key: str, steps: np.ndarray, values: np.ndarray, state: dict, thresholds: Thresholds) -> Verdict:
    """Run the detectors that watch `key` over newly stored points (sorted by step); returns the new state."""
    state = {
        "w": state.get("w", ()),
        "ep": {k: dict(v) for k, v in state.get("ep", {}).items()},
        "low_run": int(state.get("low_run", 0)),
    }
    verdict = Verdict(state=state)
    if key not in WATCHED_KEYS or steps.size == 0:
        state["w"] = list(state["w"])
        return verdict
    window = np.asarray(state["w"], dtype=np.float64)
    finite = np.isfinite(values)
    fsteps, fvals = steps[finite], values[finite]
    med, mad, count = _rolling(window, fvals)

    if key == LOSS_KEY:
        _loss(steps, values, finite, fsteps, fvals, med, mad, count, state, thresholds, verdict)
    elif key == GRAD_NORM_KEY:
        _grad_norm(steps, values, finite, med, count, state, thresholds, verdict)
    else:
        _throughput(fsteps, fvals, med, count, state, thresholds, verdict)

    state["w"] = np.concatenate([window, fvals])[-WINDOW:].tolist()
    return verdict


def _loss(steps, values, finite, fsteps, fvals, med, mad, count, state, th: Thresholds, verdict: Verdict) -> None:
    def nan_finding(j: int) -> Finding:
        value = float(values[j])
        return Finding(
            kind="nan",
            severity="critical",
            step=int(steps[j]),
            message=f"Loss is {_fmt(value)} at step {int(steps[j])}.",
            evidence={"key": LOSS_KEY, "value": str(value), "step": int(steps[j]), "last_finite": _last(state)},
        )

    _Episodes(state, "nan").feed(~finite, steps, verdict, nan_finding)

    scale = MAD_SCALE * np.maximum(mad, MAD_FLOOR_REL * np.abs(med) + 1e-12)
    z = np.where(count >= MIN_WINDOW, (fvals - med) / scale, 0.0)
    z = _nan_to(z, 0.0)

    def spike_finding(j: int) -> Finding:
        return Finding(
            kind="loss_spike",
            severity="warning",
            step=int(fsteps[j]),
            message=(
                f"Loss spiked to {_fmt(float(fvals[j]))} at step {int(fsteps[j])} against a rolling median of "
                f"{_fmt(float(med[j]))} (robust z {z[j]:.1f} >= {th.loss_spike_z:g})."
            ),
            evidence={
                "key": LOSS_KEY,
                "value": float(fvals[j]),
                "median": float(med[j]),
                "mad": float(mad[j]),
                "z": round(float(z[j]), 3),
                "threshold": th.loss_spike_z,
                "window": int(count[j]),
            },
        )

    _Episodes(state, "loss_spike").feed(z >= th.loss_spike_z, fsteps, verdict, spike_finding)


def _grad_norm(steps, values, finite, med, count, state, th: Thresholds, verdict: Verdict) -> None:
    # Judged on every point (a NaN grad norm is a blow-up too); the rolling median covers finite points only.
    rel = np.full(steps.size, np.nan)
    rel_count = np.zeros(steps.size, dtype=np.int64)
    rel[finite] = med
    rel_count[finite] = count
    over_max = finite & (np.where(finite, values, 0.0) > th.grad_norm_max)
    over_median = finite & (rel_count >= MIN_WINDOW) & (values > GRAD_NORM_FACTOR * _nan_to(rel, np.inf))
    triggered = ~finite | over_max | over_median

    def finding(j: int) -> Finding:
        value = float(values[j])
        if not finite[j]:
            why = "is not finite"
        elif over_max[j]:
            why = f"exceeds alerts.grad_norm_max {th.grad_norm_max:g}"
        else:
            why = f"is over {GRAD_NORM_FACTOR:g}x its rolling median {_fmt(float(rel[j]))}"
        return Finding(
            kind="grad_norm",
            severity="warning",
            step=int(steps[j]),
            message=f"Grad norm {_fmt(value)} at step {int(steps[j])} {why}.",
            evidence={
                "key": GRAD_NORM_KEY,
                "value": value if math.isfinite(value) else str(value),
                "median": None if math.isnan(rel[j]) else float(rel[j]),
                "grad_norm_max": th.grad_norm_max,
                "factor": GRAD_NORM_FACTOR,
            },
        )

    _Episodes(state, "grad_norm").feed(triggered, steps, verdict, finding)


def _throughput(fsteps, fvals, med, count, state, th: Thresholds, verdict: Verdict) -> None:
    floor = (100.0 - th.throughput_drop_pct) / 100.0 * med
    low = (count >= MIN_WINDOW) & (fvals < floor)
    # A drop counts once THROUGHPUT_MIN_POINTS consecutive points are low; the run length crosses batches.
    run_len = state["low_run"]
    sustained = np.zeros(low.size, dtype=bool)
    for j in range(low.size):
        run_len = run_len + 1 if low[j] else 0
        sustained[j] = run_len >= THROUGHPUT_MIN_POINTS
    state["low_run"] = run_len

    def finding(j: int) -> Finding:
        return Finding(
            kind="throughput",
            severity="warning",
            step=int(fsteps[j]),
            message=(
                f"Throughput fell to {_fmt(float(fvals[j]))} tokens/s at step {int(fsteps[j])}, below "
                f"{100 - th.throughput_drop_pct:g} % of its rolling median {_fmt(float(med[j]))} "
                f"for {THROUGHPUT_MIN_POINTS} steps."
            ),
            evidence={
                "key": THROUGHPUT_KEY,
                "value": float(fvals[j]),
                "median": float(med[j]),
                "drop_pct": th.throughput_drop_pct,
                "points": THROUGHPUT_MIN_POINTS,
            },
        )

    _Episodes(state, "throughput").feed(sustained, fsteps, verdict, finding)


def _last(state: dict) -> float | None:
    window = state.get("w")
    return float(window[-1]) if window is not None and len(window) else None
