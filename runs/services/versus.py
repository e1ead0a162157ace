"""A run's planned figures beside its measured ones: tokens/s, MFU, memory per device and time to the budget."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from runs.metrics.reads import read_series
from runs.models import MetricSeries, Run


@dataclass(frozen=True)
class Versus:
    label: str
    planned: float | None
    actual: float | None
    unit: str
    higher_is_better: bool

    @property
    def ratio(self) -> float | None:
        if not self.planned or self.actual is None:
            return None
        return self.actual / self.planned


def _mean_of(run_id: int, key: str) -> float | None:
    series = MetricSeries.objects.filter(run_id=run_id, key=key).values_list("id", flat=True).first()
    if series is None:
        return None
    read = read_series(series_id=series, lo=None, hi=None, max_points=200)
    values = read["last"] if read["mode"] == "envelope" else read["values"]
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    # The first points include start-up (compilation, warm caches): the steady state is what the plan describes.
    steady = finite[len(finite) // 10 :] if len(finite) >= 10 else finite
    return statistics.median(steady) if steady else None


def _max_of(run_id: int, key: str) -> float | None:
    row = MetricSeries.objects.filter(run_id=run_id, key=key).values_list("id", flat=True).first()
    if row is None:
        return None
    read = read_series(series_id=row, lo=None, hi=None, max_points=200)
    values = read["max"] if read["mode"] == "envelope" else read["values"]
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


def planned_vs_actual(run: Run) -> dict[str, Any]:
    """The plan's tokens/s, MFU, memory per device and time beside what the run measured."""
    plan = run.plan or {}
    compute, memory = plan.get("compute") or {}, plan.get("memory_gib") or {}
    elapsed = None
    if run.started_at:
        end = run.finished_at or run.last_heartbeat_at or run.started_at
        elapsed = max(0.0, (end - run.started_at).total_seconds())
    total = plan.get("total_steps") or (run.config.get("training") or {}).get("total_steps")
    done = (run.last_step or 0) + 1 if run.last_step is not None else 0
    # Time the whole budget would take at the pace measured so far.
    projected = elapsed * total / done if elapsed and total and done else None
    rows = [
        Versus("Tokens/s", compute.get("tokens_per_s"), _mean_of(run.pk, "tokens_per_s"), "tokens/s", True),
        Versus("MFU", compute.get("mfu"), _mean_of(run.pk, "mfu"), "", True),
        Versus("Memory per device", memory.get("total"), _max_of(run.pk, "mem_gb"), "GiB", False),
        Versus("Time to budget", compute.get("time_to_budget_s"), projected, "s", False),
    ]
    return {
        "rows": rows,
        "elapsed_s": elapsed,
        "assumed_mfu_source": compute.get("mfu_source", ""),
        "measured": any(r.actual is not None for r in rows),
    }
