"""Failures a job reports by name, and the exit codes that carry them (docs/run-config.md).

Exit codes: 0 succeeded, 1 error, 3 out of memory, 4 NaN/Inf abort. The trainer exits with them and the control
plane's watcher reads them, so both take them from here.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_OOM = 3
EXIT_NAN = 4

_OOM_MARKERS = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory")


def is_oom(exc: BaseException) -> bool:
    # torch is looked up, not imported: a process that never imported it cannot hold its error, and the control
    # plane imports this module without paying for torch.
    torch = sys.modules.get("torch")
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _OOM_MARKERS)


class NonFiniteLoss(Exception):
    """A step's loss was NaN/Inf on some rank and nan_policy is 'abort'."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step
