"""A run's planned figures beside its measured ones: tokens/s, MFU, memory per device and time to the budget."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from runs.metrics.reads import series_read
from runs.models import Run


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


def _reads(run_id: int) -> dict[str, dict]:
    """The three series the comparison needs, read together (one query for their blocks, one for their rollups)."""
    return series_read(run_id=run_id, keys=["tokens_per_s", "mfu", "mem_gb"], max_points=200)["keys"]


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean_of(read: dict) -> float | None:
    finite = _finite(read["last"] if read["mode"] == "envelope" else read["values"])
    # The first points include start-up (compilation, warm caches): the steady state is what the plan describes.
    steady = finite[len(finite) // 10 :] if len(finite) >= 10 else finite
    return statistics.median(steady) if steady else None


def _max_of(read: dict) -> float | None:
    finite = _finite(read["max"] if read["mode"] == "envelope" else read["values"])
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
    reads = _reads(run.pk)
    rows = [
        Versus("Tokens/s", compute.get("tokens_per_s"), _mean_of(reads["tokens_per_s"]), "tokens/s", True),
        Versus("MFU", compute.get("mfu"), _mean_of(reads["mfu"]), "", True),
        Versus("Memory per device", memory.get("total"), _max_of(reads["mem_gb"]), "GiB", False),
        Versus("Time to budget", compute.get("time_to_budget_s"), projected, "s", False),
    ]
    return {
        "rows": rows,
        "elapsed_s": elapsed,
        "assumed_mfu_source": compute.get("mfu_source", ""),
        "measured": any(r.actual is not None for r in rows),
    }
