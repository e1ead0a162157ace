"""Streaming detectors that run on every ingested batch: NaN/Inf loss, loss spike, grad-norm blow-up, throughput drop.

Each watched series keeps a small state in its row: the last WINDOW finite values (MetricSeries.detector_window,
packed) and, per detector, whether an episode is open (MetricSeries.detector_state). Ingest writes that state back
only from the state it read under the series row's lock or at the row's current version, so any number of web
processes see one consistent stream. A detector reports a finding when an episode opens and a resolution when it has
been quiet for QUIET points; the caller turns these into one Alert per episode.
Work is O(points): the rolling median/MAD of a batch is one vectorised numpy pass over its sliding windows, skipped
for grad norms and throughput when bounds alone show that no point can trigger; a batch of one point (a reporter
posting every step) is judged in plain Python, where numpy's per-call cost would dominate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

WINDOW = 64  # points of history for the rolling median / MAD
MIN_WINDOW = 16  # no verdict on spikes or drops before this much history
QUIET = 10  # consecutive normal points that end an episode
MAD_SCALE = 1.4826  # MAD of a normal distribution -> standard deviation
MAD_FLOOR_REL = 0.005  # a nearly constant series still needs a 0.5 % change per unit of z
GRAD_NORM_FACTOR = 10.0  # grad norm above this many times its rolling median is a blow-up
THROUGHPUT_MIN_POINTS = 5  # consecutive low points before a throughput drop is reported

_FLOAT_MAX = float(np.finfo(np.float64).max)
_HALF_MAX = _FLOAT_MAX / 2

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


def _rolling(combined: np.ndarray, start: int, *, with_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each new finite value combined[start:]: median and (with_mad, else NaN) MAD of the WINDOW values before
    it, and how many there were."""
    m = combined.size - start
    if m == 0:
        return np.empty(0), np.empty(0), np.empty(0, dtype=np.int64)
    if start >= WINDOW:
        # Row j: the WINDOW values before new[j] (sliding_window_view's rows, without its per-call overhead).
        views = np.ndarray((m, WINDOW), dtype=np.float64, buffer=combined, offset=(start - WINDOW) * 8, strides=(8, 8))
        med = _row_medians(views)
        mad = _row_medians(np.abs(views - med[:, None])) if with_mad else np.full(m, np.nan)
        return med, mad, np.full(m, WINDOW, dtype=np.int64)
    med, mad, count = np.full(m, np.nan), np.full(m, np.nan), np.zeros(m, dtype=np.int64)
    for j in range(m):  # the first WINDOW points of a series only
        hist = combined[max(0, start + j - WINDOW) : start + j]
        count[j] = hist.size
        if hist.size:
            med[j] = _row_medians(hist[None])[0]
            if with_mad:
                mad[j] = _row_medians(np.abs(hist - med[j])[None])[0]
    return med, mad, count


def _quiet(key: str, fvals: np.ndarray, history: np.ndarray, all_finite: bool, th: Thresholds) -> bool:
    """Whether no point of the batch can trigger the grad-norm or throughput detector, judged from bounds alone.

    A point's rolling median lies between the smallest and the largest value its window can hold (`history`: every
    finite value before the batch's last one), so a batch whose values all stay within GRAD_NORM_FACTOR times that
    smallest value, or above the drop floor of that largest one, needs no medians: most batches of a healthy run.
    Values beyond half the float range are left to the exact path (a median of two of them can overflow)."""
    if key == GRAD_NORM_KEY:
        if not all_finite or not fvals.size:
            return False  # a grad norm that is not finite is a blow-up
        top = float(fvals.max())
        if top > th.grad_norm_max:
            return False
        if not history.size:
            return True  # no window yet: no ratio to judge
        lo = float(history.min())
        return lo >= -_HALF_MAX and top <= GRAD_NORM_FACTOR * lo
    if not fvals.size or not history.size:
        return True
    hi = float(history.max())
    return hi <= _HALF_MAX and float(fvals.min()) >= (100.0 - th.throughput_drop_pct) / 100.0 * hi


def _median(ordered: list[float]) -> float:
    """The median of sorted finite values, as _row_medians computes it."""
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


class _Episodes:
    """Open/quiet bookkeeping for one detector over one batch, persisted in the series state."""

    def __init__(self, state: dict, kind: str):
        self.kind = kind
        self.slot = state.setdefault("ep", {}).setdefault(kind, {"open": False, "quiet": 0})

    def feed(self, triggered: np.ndarray, steps: np.ndarray, verdict: Verdict, describe) -> None:
        """A batch: describe(j) builds the finding of the point j that opens an episode."""
        if not self.slot["open"] and not triggered.any():
            return
        for j in range(triggered.size):
            self.point(bool(triggered[j]), int(steps[j]), verdict, partial(describe, j))

    def calm(self, points: int, verdict: Verdict) -> None:
        """A batch of which no point triggers: an open episode counts them towards its QUIET end."""
        if self.slot["open"]:
            self.slot["quiet"] += points
            if self.slot["quiet"] >= QUIET:
                self._close(verdict)

    def point(self, triggered: bool, step: int, verdict: Verdict, describe) -> None:
        """One point: describe() builds the finding if this point opens an episode."""
        slot = self.slot
        if triggered:
            slot["quiet"] = 0
            if not slot["open"]:
                slot["open"] = True
                slot["since"] = step
                finding = describe()
                verdict.findings.append(finding)
                verdict.sequence.append(finding)
        elif slot["open"]:
            slot["quiet"] += 1
            if slot["quiet"] >= QUIET:
                self._close(verdict)

    def _close(self, verdict: Verdict) -> None:
        self.slot.update(open=False, quiet=0)
        self.slot.pop("since", None)
        verdict.resolved.append(self.kind)
        verdict.sequence.append(self.kind)


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def detect(*, key: str, steps: np.ndarray, values: np.ndarray, state: dict, thresholds: Thresholds) -> Verdict:
    """Run the detectors that watch `key` over newly stored points (sorted by step); returns the new state.

    A batch of one point (a reporter that posts every step) is judged in plain Python, a larger one in one numpy
    pass; both give the same verdicts and state, bit for bit (tests/runs/test_detectors.py feeds both)."""
    state = {
        "w": state.get("w", ()),
        "ep": {k: dict(v) for k, v in state.get("ep", {}).items()},
        "low_run": int(state.get("low_run", 0)),
    }
    verdict = Verdict(state=state)
    if key not in WATCHED_KEYS or steps.size == 0:
        state["w"] = list(state["w"])
        return verdict
    if steps.size == 1:
        _detect_point(key, int(steps[0]), float(values[0]), state, thresholds, verdict)
        return verdict
    window = np.asarray(state["w"], dtype=np.float64)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    fsteps, fvals = (steps, values) if all_finite else (steps[finite], values[finite])
    combined = np.concatenate([window, fvals])
    if key != LOSS_KEY and _quiet(key, fvals, combined[:-1], all_finite, thresholds):
        if key == THROUGHPUT_KEY and fvals.size:
            state["low_run"] = 0  # no point of the batch is low
        _Episodes(state, "grad_norm" if key == GRAD_NORM_KEY else "throughput").calm(fsteps.size, verdict)
    else:
        med, mad, count = _rolling(combined, window.size, with_mad=key == LOSS_KEY)
        if key == LOSS_KEY:
            _loss(steps, values, finite, fsteps, fvals, med, mad, count, state, thresholds, verdict)
        elif key == GRAD_NORM_KEY:
            _grad_norm(steps, values, finite, med, count, state, thresholds, verdict)
        else:
            _throughput(fsteps, fvals, med, count, state, thresholds, verdict)

    state["w"] = combined[-WINDOW:].tolist()
    return verdict


def _detect_point(key: str, step: int, value: float, state: dict, th: Thresholds, verdict: Verdict) -> None:
    """detect() for one point: the same arithmetic on Python floats, without numpy's per-call cost."""
    raw = state["w"]
    window = (raw.tolist() if isinstance(raw, np.ndarray) else list(raw))[-WINDOW:]
    finite = math.isfinite(value)
    count = len(window)
    med = mad = math.nan
    if finite and count:
        med = _median(sorted(window))
        if key == LOSS_KEY:
            mad = _median(sorted([abs(x - med) for x in window]))
    if key == LOSS_KEY:
        _Episodes(state, "nan").point(
            not finite, step, verdict, partial(_nan_finding, step, value, window[-1] if window else None)
        )
        if finite:
            z = 0.0
            if count >= MIN_WINDOW:
                z = (value - med) / (MAD_SCALE * max(mad, MAD_FLOOR_REL * abs(med) + 1e-12))
                z = 0.0 if math.isnan(z) else min(max(z, -_FLOAT_MAX), _FLOAT_MAX)
            describe = partial(_spike_finding, step, value, med, mad, z, th, count)
            _Episodes(state, "loss_spike").point(z >= th.loss_spike_z, step, verdict, describe)
    elif key == GRAD_NORM_KEY:
        over_max = finite and value > th.grad_norm_max
        over_median = finite and count >= MIN_WINDOW and value > GRAD_NORM_FACTOR * med
        describe = partial(_grad_norm_finding, step, value, finite, over_max, med, th)
        _Episodes(state, "grad_norm").point(not finite or over_max or over_median, step, verdict, describe)
    elif finite:
        low = count >= MIN_WINDOW and value < (100.0 - th.throughput_drop_pct) / 100.0 * med
        state["low_run"] = state["low_run"] + 1 if low else 0
        describe = partial(_throughput_finding, step, value, med, th)
        _Episodes(state, "throughput").point(state["low_run"] >= THROUGHPUT_MIN_POINTS, step, verdict, describe)
    state["w"] = (window + [value])[-WINDOW:] if finite else window


def _nan_finding(step: int, value: float, last_finite: float | None) -> Finding:
    return Finding(
        kind="nan",
        severity="critical",
        step=step,
        message=f"Loss is {_fmt(value)} at step {step}.",
        evidence={"key": LOSS_KEY, "value": str(value), "step": step, "last_finite": last_finite},
    )


def _spike_finding(step: int, value: float, med: float, mad: float, z: float, th: Thresholds, count: int) -> Finding:
    return Finding(
        kind="loss_spike",
        severity="warning",
        step=step,
        message=(
            f"Loss spiked to {_fmt(value)} at step {step} against a rolling median of {_fmt(med)} "
            f"(robust z {z:.1f} >= {th.loss_spike_z:g})."
        ),
        evidence={
            "key": LOSS_KEY,
            "value": value,
            "median": med,
            "mad": mad,
            "z": round(z, 3),
            "threshold": th.loss_spike_z,
            "window": count,
        },
    )


def _grad_norm_finding(step: int, value: float, finite: bool, over_max: bool, med: float, th: Thresholds) -> Finding:
    if not finite:
        why = "is not finite"
    elif over_max:
        why = f"exceeds alerts.grad_norm_max {th.grad_norm_max:g}"
    else:
        why = f"is over {GRAD_NORM_FACTOR:g}x its rolling median {_fmt(med)}"
    return Finding(
        kind="grad_norm",
        severity="warning",
        step=step,
        message=f"Grad norm {_fmt(value)} at step {step} {why}.",
        evidence={
            "key": GRAD_NORM_KEY,
            "value": value if math.isfinite(value) else str(value),
            "median": None if math.isnan(med) else med,
            "grad_norm_max": th.grad_norm_max,
            "factor": GRAD_NORM_FACTOR,
        },
    )


def _throughput_finding(step: int, value: float, med: float, th: Thresholds) -> Finding:
    return Finding(
        kind="throughput",
        severity="warning",
        step=step,
        message=(
            f"Throughput fell to {_fmt(value)} tokens/s at step {step}, below {100 - th.throughput_drop_pct:g} % "
            f"of its rolling median {_fmt(med)} for {THROUGHPUT_MIN_POINTS} steps."
        ),
        evidence={
            "key": THROUGHPUT_KEY,
            "value": value,
            "median": med,
            "drop_pct": th.throughput_drop_pct,
            "points": THROUGHPUT_MIN_POINTS,
        },
    )


def _loss(steps, values, finite, fsteps, fvals, med, mad, count, state, th: Thresholds, verdict: Verdict) -> None:
    def nan_finding(j: int) -> Finding:
        before = values[:j][finite[:j]]  # the last finite value is this batch's, if it has one before j
        last = float(before[-1]) if before.size else _last(state)
        return _nan_finding(int(steps[j]), float(values[j]), last)

    if fvals.size == values.size:
        _Episodes(state, "nan").calm(values.size, verdict)
    else:
        _Episodes(state, "nan").feed(~finite, steps, verdict, nan_finding)
    scale = MAD_SCALE * np.maximum(mad, MAD_FLOOR_REL * np.abs(med) + 1e-12)
    with np.errstate(over="ignore", invalid="ignore"):  # values near the float limit: _nan_to settles them
        z = (fvals - med) / scale
    if count.size and count[0] < MIN_WINDOW:  # counts never fall along a batch: only a series' first points
        z = np.where(count >= MIN_WINDOW, z, 0.0)
    z = _nan_to(z, 0.0)

    def spike_finding(j: int) -> Finding:
        return _spike_finding(
            int(fsteps[j]), float(fvals[j]), float(med[j]), float(mad[j]), float(z[j]), th, int(count[j])
        )

    _Episodes(state, "loss_spike").feed(z >= th.loss_spike_z, fsteps, verdict, spike_finding)


def _grad_norm(steps, values, finite, med, count, state, th: Thresholds, verdict: Verdict) -> None:
    # Judged on every point (a NaN grad norm is a blow-up too); the rolling median covers finite points only.
    if finite.all():  # the usual batch: the finite points are all of them
        rel, rel_count = med, count
        over_max = values > th.grad_norm_max
    else:
        rel = np.full(steps.size, np.nan)
        rel_count = np.zeros(steps.size, dtype=np.int64)
        rel[finite] = med
        rel_count[finite] = count
        over_max = finite & (np.where(finite, values, 0.0) > th.grad_norm_max)
    over_median = finite & (rel_count >= MIN_WINDOW) & (values > GRAD_NORM_FACTOR * _nan_to(rel, np.inf))
    triggered = ~finite | over_max | over_median

    def finding(j: int) -> Finding:
        return _grad_norm_finding(
            int(steps[j]), float(values[j]), bool(finite[j]), bool(over_max[j]), float(rel[j]), th
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
        return _throughput_finding(int(fsteps[j]), float(fvals[j]), float(med[j]), th)

    _Episodes(state, "throughput").feed(sustained, fsteps, verdict, finding)


def _last(state: dict) -> float | None:
    window = state.get("w")
    return float(window[-1]) if window is not None and len(window) else None
