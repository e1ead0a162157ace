"""The MFU the planner assumes, calibrated from what finished runs really reached (runs.services.versus shows each
run's planned figures beside its measured ones)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from jobs.common import hardware
from runs.models import MetricSeries, Run, RunStatus

# Used until a finished run of the accelerator type has reported its MFU. A CPU rank's nominal peak (the hardware
# table's figure) is far above what the reference trainer's small matmuls reach; GPUs are planned at the usual
# large-run figure.
DEFAULT_MFU = {"CPU": 0.06}
DEFAULT_GPU_MFU = 0.40
CALIBRATION_RUNS = 20
CACHE_S = 60


@dataclass(frozen=True)
class AssumedMfu:
    mfu: float
    source: str  # what the figure comes from, as the plan shows it


def _accelerator(gpu_type: str) -> str:
    row = hardware.accelerator(gpu_type or "")
    return row.name if row is not None else (gpu_type or "").upper()


def measured_mfu(gpu_type: str) -> list[float]:
    """The MFU the last CALIBRATION_RUNS succeeded runs on this accelerator type reported at their end."""
    name = _accelerator(gpu_type)
    runs = (
        Run.objects.filter(status=RunStatus.SUCCEEDED)
        .order_by("-finished_at")
        .values_list("pk", "config__cluster__gpu_type")[: CALIBRATION_RUNS * 10]
    )
    ids = [pk for pk, kind in runs if _accelerator(str(kind or "")) == name][:CALIBRATION_RUNS]
    values = MetricSeries.objects.filter(run_id__in=ids, key="mfu").values_list("last_value", flat=True)
    return [v for v in values if v is not None and 0 < v <= 1]


def assumed_mfu(gpu_type: str) -> AssumedMfu:
    """CP_PLAN_MFU when set; else the median MFU of finished runs on this accelerator type; else a default."""
    if settings.CP_PLAN_MFU is not None:
        return AssumedMfu(settings.CP_PLAN_MFU, "CP_PLAN_MFU")
    name = _accelerator(gpu_type)
    key = f"cp:assumed-mfu:{name}"
    found = cache.get(key)
    if found is None:
        samples = measured_mfu(gpu_type)
        if samples:
            found = (round(statistics.median(samples), 4), f"median of {len(samples)} finished {name} run(s)")
        else:
            found = (DEFAULT_MFU.get(name, DEFAULT_GPU_MFU), f"default for {name} (no finished run measured yet)")
        cache.set(key, found, CACHE_S)
    return AssumedMfu(*found)
