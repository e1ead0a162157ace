"""Failures a job reports by name, and the exit codes that carry them (docs/run-config.md).

Exit codes: 0 succeeded, 1 error, 3 out of memory, 4 NaN/Inf abort. The trainer exits with them and the control
plane's watcher reads them, so both take them from here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

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


# -- which rank failed ----------------------------------------------------------------------------------------------
# Each rank writes RUN_DIR/ranks/rank-<N>.json when it starts (pid, host) and again when it ends (status, exit code,
# error). A rank that was killed (SIGKILL, the OOM killer, a lost node) writes no end record; DeepSpeed's launcher
# then logs "... exits with return code = -9" for it. From both, the watcher names the rank that failed first,
# rather than the rank whose collective broke because of it (rank 0's gloo "Connection reset by peer").

RANKS_DIR = "ranks"
_LAUNCHER_CODE = re.compile(r"exits with return code = (-?\d+)")


def rank_record_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / RANKS_DIR / f"rank-{rank}.json"


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def rank_started(run_dir: Path, rank: int) -> None:
    _write(rank_record_path(run_dir, rank),
           {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()})  # fmt: skip


def rank_ended(run_dir: Path, rank: int, *, status: dict, exit_code: int) -> None:
    path = rank_record_path(run_dir, rank)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}
    record.update(ended_at=time.time(), exit_code=exit_code, **{k: v for k, v in status.items() if k != "rank"})
    _write(path, record)


def signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name if code < 0 else ""
    except ValueError:
        return f"signal {-code}"


def rank_records(run_dir: Path) -> list[dict]:
    records = []
    for path in sorted((Path(run_dir) / RANKS_DIR).glob("rank-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("rank", 0))


def culprit(run_dir: Path, *, world_size: int, log_text: str = "") -> dict | None:
    """The rank that failed first, with how: {"rank", "host", "pid", "how", "exit_code", "signal", "status",
    "error", "oom_ranks"}; None when every rank ended well (or no rank left a record)."""
    records = rank_records(run_dir)
    if not records:
        return None
    by_rank = {r.get("rank"): r for r in records}
    oom_ranks = sorted(r["rank"] for r in records if r.get("status") == "oom")
    codes = [int(m) for m in _LAUNCHER_CODE.findall(log_text)]
    launcher_code = next((c for c in codes if c < 0), codes[0] if codes else None)
    silent = [r for r in range(world_size) if "ended_at" not in by_rank.get(r, {})]
    failed = sorted((r for r in records if r.get("exit_code") not in (None, 0)), key=lambda r: r.get("ended_at", 0))
    killed = launcher_code is not None and launcher_code < 0
    if oom_ranks:
        first = min((by_rank[r] for r in oom_ranks), key=lambda r: r.get("ended_at", 0))
        how = "ran out of memory"
    elif silent and (killed or not failed):
        first = by_rank.get(silent[0], {"rank": silent[0]})
        if "started_at" not in first:
            how = "never started"
        elif killed:
            how = f"was killed by {signal_name(launcher_code or 0)}"
        elif launcher_code is not None:
            how = f"exited with code {launcher_code} without reporting"
        else:
            how = "died without reporting (killed by a signal, or its node was lost)"
        first = {**first, "exit_code": launcher_code, "signal": signal_name(launcher_code or 0)}
    elif failed:
        terminated = [r for r in failed if r.get("status") != "terminated"]
        first = (terminated or failed)[0]
        how = f"failed with exit code {first.get('exit_code')}"
    else:
        return None
    return {
        "rank": first.get("rank"),
        "host": first.get("host", ""),
        "pid": first.get("pid"),
        "how": how,
        "exit_code": first.get("exit_code"),
        "signal": first.get("signal", ""),
        "status": first.get("status", ""),
        "error": (first.get("error") or "")[:500],
        "step": first.get("step"),
        "oom_ranks": oom_ranks,
    }


def culprit_text(found: dict) -> str:
    where = f" on {found['host']}" if found.get("host") else ""
    text = f"rank {found['rank']}{where} {found['how']}"
    if found.get("step") is not None:
        text += f" at step {found['step']}"
    if found.get("error"):
        text += f": {found['error']}"
    return text
