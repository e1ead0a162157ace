"""Fault injection for tests: a real out-of-memory error or a NaN loss at a chosen step, on a chosen rank.

Read once at start from environment variables:
- ``CP_INJECT_OOM_AT_STEP=N``: during step N's first forward pass, allocate a tensor larger than any memory (2**62
  bytes) on the training device, so the real allocator raises its real error (torch.OutOfMemoryError on CUDA,
  "DefaultCPUAllocator: can't allocate memory" on CPU).
- ``CP_INJECT_NAN_AT_STEP=N``: multiply step N's first micro-batch loss by NaN (its gradients become NaN too).
- ``CP_INJECT_RANK=R``: inject on rank R only (default: every rank).
"""

from __future__ import annotations

import os

import torch


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


class FaultInjector:
    def __init__(self, rank: int) -> None:
        target = _env_int("CP_INJECT_RANK")
        active = target is None or target == rank
        self.oom_step = _env_int("CP_INJECT_OOM_AT_STEP") if active else None
        self.nan_step = _env_int("CP_INJECT_NAN_AT_STEP") if active else None

    def maybe_oom(self, step: int, micro_step: int, device: torch.device) -> None:
        if step == self.oom_step and micro_step == 0:
            torch.empty(1 << 62, dtype=torch.uint8, device=device)

    def poison(self, loss: torch.Tensor, step: int, micro_step: int) -> torch.Tensor:
        if step == self.nan_step and micro_step == 0:
            return loss * float("nan")
        return loss
