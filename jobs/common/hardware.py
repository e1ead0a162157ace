"""The one hardware table: dense peak TFLOP/s per accelerator and precision, and memory per device.

The planner's time-to-budget (runs.planning) and the trainer's reported MFU (jobs.train.trainer) both divide by
these figures, so a plan and the run it launches speak of the same peak.

Peaks are the vendors' datasheet figures for dense math (no structured sparsity), SXM parts where there are several.
A run's precision picks the math: ``bf16`` is BF16 tensor cores; ``fp32`` on a GPU is TF32 tensor cores, the fastest
math an fp32 run can use (PyTorch uses it for matmuls only where TF32 is allowed; without it MFU reads lower).
"""

from __future__ import annotations

from typing import NamedTuple


class Accelerator(NamedTuple):
    name: str  # matched as a substring of a device or GPU type name, e.g. "NVIDIA H100 80GB HBM3"
    peak_tflops: dict[str, float]  # dense TFLOP/s of one device, by run precision ("bf16", "fp32")
    memory_gib: float | None  # what one process can allocate on one device


# Order matters where one name contains another (A100 before A10).
ACCELERATORS: tuple[Accelerator, ...] = (
    # H200: 141 GB nominal; memory_gib is what the device reports as allocatable.
    Accelerator("H200", {"bf16": 989.0, "fp32": 494.5}, 139.0),
    Accelerator("H100", {"bf16": 989.0, "fp32": 494.5}, 80.0),
    Accelerator("A100", {"bf16": 312.0, "fp32": 156.0}, 80.0),
    Accelerator("L40S", {"bf16": 362.0, "fp32": 183.0}, 48.0),
    Accelerator("A10", {"bf16": 125.0, "fp32": 62.5}, 24.0),
    # Nothing to look up for a CPU: a nominal figure for one rank on one core, so that MFU stays comparable between
    # CPU runs: 2 AVX2 FMA units x 8 fp32 lanes x 2 FLOPs x about 3 GHz = 96 GFLOP/s (bf16 is no faster there).
    # Its memory is the cluster's per-rank budget, not a property of the device.
    Accelerator("CPU", {"bf16": 0.1, "fp32": 0.1}, None),
)
# The same peaks by accelerator name, then precision.
PEAK_TFLOPS: dict[str, dict[str, float]] = {a.name: a.peak_tflops for a in ACCELERATORS}


def accelerator(name: str) -> Accelerator | None:
    """The table's row for a device or GPU type name ("NVIDIA H100 80GB HBM3", "h200", "CPU"), or None."""
    upper = name.upper()
    for row in ACCELERATORS:
        if row.name in upper:
            return row
    return None


def peak_tflops(name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of one device named `name` at a run's `precision`, or None when the table has none."""
    row = accelerator(name)
    return row.peak_tflops.get(precision) if row is not None else None


def memory_gib(name: str) -> float | None:
    """What one process can allocate on one device named `name`, in GiB, or None when the table has none."""
    row = accelerator(name)
    return row.memory_gib if row is not None else None
