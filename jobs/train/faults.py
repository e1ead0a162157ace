"""Fault injection for tests: a real out-of-memory error, a NaN or spiking loss, or a hang, at a chosen step.

Read once at start from environment variables:
- ``CP_INJECT_OOM_AT_STEP=N``: during step N's first forward pass, allocate a tensor larger than any memory (2**62
  bytes) on the training device, so the real allocator raises its real error (torch.OutOfMemoryError on CUDA,
  "DefaultCPUAllocator: can't allocate memory" on CPU).
- ``CP_INJECT_OOM_MIN_MICRO_BATCH=M``: the OOM above happens only while ``batch.micro_batch >= M`` and activation
  checkpointing is off, as a job too large for its device would (a halved micro-batch then fits).
- ``CP_INJECT_NAN_AT_STEP=N``: multiply the first micro-batch loss of data step N by NaN (its gradients become NaN
  too). Data step N is the data step N of a run without skipped windows (run.json ``relaunch.skip_data``), so a
  relaunch that skips the window holding N never meets it again, as with a real bad batch.
- ``CP_INJECT_SPIKE_AT_STEP=N`` (with ``CP_INJECT_SPIKE_FACTOR``, default 30): multiply the loss of data step N's
  micro-batches by the factor: a real loss spike (gradients grow with it; clipping bounds the update).
- ``CP_INJECT_HANG_AT_STEP=N``: before step N, stop making progress (no steps, no heartbeat) and sleep forever.
- ``CP_INJECT_RANK=R``: inject on rank R only (default: every rank).
- ``CP_INJECT_ONCE=1``: each fault fires once per run directory (a marker ``RUN_DIR/faults/<kind>`` records it),
  so a relaunch of the same run does not meet it again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


class FaultInjector:
    def __init__(self, rank: int, run_dir: Path | None = None) -> None:
        target = _env_int("CP_INJECT_RANK")
        active = target is None or target == rank
        self.oom_step = _env_int("CP_INJECT_OOM_AT_STEP") if active else None
        self.oom_min_micro = _env_int("CP_INJECT_OOM_MIN_MICRO_BATCH")
        self.nan_step = _env_int("CP_INJECT_NAN_AT_STEP") if active else None
        self.spike_step = _env_int("CP_INJECT_SPIKE_AT_STEP") if active else None
        self.spike_factor = float(os.environ.get("CP_INJECT_SPIKE_FACTOR", "") or 30.0)
        self.hang_step = _env_int("CP_INJECT_HANG_AT_STEP") if active else None
        once = os.environ.get("CP_INJECT_ONCE", "").strip() not in ("", "0")
        self.marker_dir = run_dir / "faults" if once and run_dir is not None else None
        self._spiking = False

    def _fire(self, kind: str) -> bool:
        """Whether the fault fires now; with CP_INJECT_ONCE only the first time in this run directory."""
        if self.marker_dir is None:
            return True
        marker = self.marker_dir / kind
        if marker.exists():
            return False
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(time.time()))
        return True

    def maybe_oom(self, step: int, micro_step: int, device: torch.device, *, micro_batch: int = 0,
                  checkpointing: bool = False) -> None:  # fmt: skip
        if step != self.oom_step or micro_step != 0:
            return
        if self.oom_min_micro is not None and (micro_batch < self.oom_min_micro or checkpointing):
            return
        if self._fire("oom"):
            torch.empty(1 << 62, dtype=torch.uint8, device=device)

    def maybe_hang(self, step: int) -> None:
        if step == self.hang_step and self._fire("hang"):
            while True:
                time.sleep(3600)

    def poison(self, loss: torch.Tensor, data_step: int, micro_step: int) -> torch.Tensor:
        if data_step == self.nan_step and micro_step == 0 and self._fire("nan"):
            return loss * float("nan")
        if data_step == self.spike_step:
            if micro_step == 0:
                self._spiking = self._fire("spike")
            if self._spiking:
                return loss * self.spike_factor
        return loss
