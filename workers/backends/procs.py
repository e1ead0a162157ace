"""Process-group jobs on this machine, identified by pid + kernel start time so a reused pid is never mistaken."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from jobs.common.atomic import write_atomic


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has finished
    return int(fields[19])


def alive(pid: int, ticks: int) -> bool:
    return start_ticks(pid) == ticks


def owned_by(pid: int, run_dir: Path) -> bool:
    """Whether process `pid` runs as the owner of `run_dir` (the job's user), or this worker owns both."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    real_uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
    return real_uid == run_dir.stat().st_uid


def spawn_group(argv: list[str], *, run_dir: Path, env: dict[str, str], cwd: Path, user: Any = None, **extra) -> dict:
    """Start argv as a new session (its own process group) with logs in run_dir; return the job record.

    `user` (a JobUser): the job runs as that user and group with no supplementary groups, files private (umask 077).
    """
    stdout = open(run_dir / "stdout.log", "ab")
    stderr = open(run_dir / "stderr.log", "ab")
    drop: dict[str, Any] = {}
    if user is not None:
        drop = {"user": user.uid, "group": user.gid, "extra_groups": [], "umask": 0o077}
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **drop,
        )
    finally:
        stdout.close()
        stderr.close()
    record = job_record(run_dir=run_dir, pid=proc.pid, argv=argv, **extra)
    # Reap the child in the background so it never lingers as a zombie while this worker lives.
    threading.Thread(target=proc.wait, daemon=True).start()
    return record


def job_record(*, run_dir: Path, pid: int, argv: list[str], ticks: int | None = None, **extra) -> dict:
    """Write run_dir/job.json for a job whose session leader is `pid`: what a restarted worker re-attaches to."""
    ticks = start_ticks(pid) if ticks is None else ticks
    record = {"pid": pid, "pgid": pid, "start_ticks": ticks, "argv": argv, "started_at": time.time()}
    record.update(extra)
    write_atomic(run_dir / "job.json", json.dumps(record))
    return record


def stop_group(pgid: int, *, pid: int, ticks: int, grace_s: float = 10.0) -> None:
    if not alive(pid, ticks):
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not alive(pid, ticks):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_attempt_leader(run_dir: Path, attempt_key: str) -> dict | None:
    """The job record (job.json, written by the launcher, or leader.json, written by the job's own session leader)
    of the attempt with this key in run_dir; None when this run directory holds no job of that attempt."""
    if not attempt_key:
        return None
    for name in ("job.json", "leader.json"):
        record = read_record(run_dir / name)
        if record.get("attempt_key") == attempt_key and record.get("pid") and record.get("start_ticks") is not None:
            return record
    return None


# What a DeepSpeed op build runs (torch.utils.cpp_extension drives ninja, which runs the compilers).
_BUILD_TOOLS = frozenset({"ninja", "cc1plus", "c++", "g++", "gcc", "nvcc", "cicc", "ptxas", "hipcc"})


def building_op(session: int) -> str | None:
    """The op a process of the job's session `session` is compiling right now (ninja's working directory is
    torch's build folder for it, ~/.cache/torch_extensions/<python>/<op>), "" when one is compiling an unknown op,
    None when nothing is. Reads /proc, so it sees jobs on this machine only."""
    found: str | None = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, _, tail = stat.rpartition(")")
        comm = head.partition("(")[2]
        fields = tail.split()
        if len(fields) < 4 or int(fields[3]) != session or comm not in _BUILD_TOOLS:
            continue
        if comm == "ninja":
            try:
                return os.path.basename(os.readlink(entry / "cwd"))
            except OSError:
                pass
        found = found or ""
    return found
