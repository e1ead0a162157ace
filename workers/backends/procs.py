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
from jobs.launch.reap import ATTEMPT_KEY_ENV

# Boot time is whole seconds and the attempt's start a database timestamp: this much earlier still counts as after.
START_SLACK_S = 2.0


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


def _process_uid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), None)


def started_at(ticks: int) -> float:
    """Wall-clock time of a process start given in ticks since boot (boot time from /proc/stat's btime)."""
    btime = next(
        int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
    )
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def _carries_key(pid: int, attempt_key: str) -> bool:
    """Whether the process was exec'd with CP_ATTEMPT_KEY=key in its environment or the key on its command line."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{ATTEMPT_KEY_ENV}={attempt_key}".encode() in environ or attempt_key.encode() in cmdline


def carried_key(pid: int) -> str | None:
    """The CP_ATTEMPT_KEY the process was exec'd with, or None (a job without an attempt, a warm-forked leader)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{ATTEMPT_KEY_ENV}=".encode()
    return next((item[len(prefix) :].decode(errors="replace") for item in environ if item.startswith(prefix)), None)


def may_signal(pid: int, run_dir: Path, keys: set[str]) -> bool:
    """Whether cancel may signal the group of the job's leader `pid` (its id recorded by this control plane): it
    runs as the run directory's owner, leads its group, and carries no attempt key or one the job's records name
    (a job id of one attempt never stops a process of another's)."""
    try:
        if os.getpgid(pid) != pid:
            return False
    except ProcessLookupError:
        return False
    carried = carried_key(pid)
    return owned_by(pid, run_dir) and (carried is None or carried in keys)


def _forked_by_warm_launcher(pid: int) -> bool:
    """A job forked by the warm launcher keeps the launcher's own exec-time environment (no key in /proc): its
    parent, a process of this worker's user running jobs.launch.warm, vouches for it instead."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        parent = int(fields[1])
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    return _process_uid(parent) == os.geteuid() and b"jobs.launch.warm" in cmdline


def verified_leader(record: dict, run_dir: Path, attempt_key: str, *, not_before: float = 0.0) -> bool:
    """Whether a job record (job.json or leader.json: files in a folder the job owns, so possibly forged) names a
    process this control plane may follow and signal as the attempt's job.

    A process that is gone (or whose pid now belongs to a later process) is harmless: poll reads exit.json and
    cancel signals nothing once the start time differs. A live one must run as the run directory's owner (the job's
    user), lead its own process group, have started after the attempt began, and carry the attempt's key (or have
    been forked by the warm launcher): otherwise a job could make the control plane watch or kill someone else's
    processes (the web server's, another run's) by writing their pid into its own job.json."""
    pid, ticks = record.get("pid"), record.get("start_ticks")
    if not isinstance(pid, int) or not isinstance(ticks, int) or pid <= 1:
        return False
    if not alive(pid, ticks):
        return True
    try:
        if os.getpgid(pid) != pid:
            return False
    except ProcessLookupError:
        return True
    if not owned_by(pid, run_dir):
        return False
    if not_before and started_at(ticks) < not_before - START_SLACK_S:
        return False
    return _carries_key(pid, attempt_key) or _forked_by_warm_launcher(pid)


def owned_by(pid: int, run_dir: Path) -> bool:
    """Whether process `pid` runs as the owner of `run_dir` (the job's user), or this worker owns both."""
    real_uid = _process_uid(pid)
    return real_uid is not None and real_uid == run_dir.stat().st_uid


def spawn_group(argv: list[str], *, run_dir: Path, env: dict[str, str], cwd: Path, user: Any = None, **extra) -> dict:
    """Start argv as a new session (its own process group) with logs in run_dir; return the job record.

    `user` (a JobUser): the job runs as that user and group with no supplementary groups, with its umask (077: files
    private).
    """
    stdout = open(run_dir / "stdout.log", "ab")
    stderr = open(run_dir / "stderr.log", "ab")
    drop: dict[str, Any] = {}
    if user is not None:
        drop = {"user": user.uid, "group": user.gid, "extra_groups": [], "umask": user.umask}
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
