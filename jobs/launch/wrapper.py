"""``python -m jobs.launch.wrapper RUN_DIR -- COMMAND...``: run COMMAND and record how it ended.

A control-plane worker that restarts cannot wait() for a job it did not start, so the job's own session leader
writes RUN_DIR/exit.json ({"exit_code", "signal", "finished_at"}) when the command ends. The command runs in its
own process group (recorded in RUN_DIR/child.json); SIGTERM/SIGINT are passed on to that whole group, so
cancelling the wrapper stops every rank. `supervise` is the same session leader for a command started otherwise
(jobs.launch.warm forks it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.common.atomic import write_atomic


def write_leader_record(run_dir: Path) -> None:
    """RUN_DIR/leader.json: this session leader's pid, start time and attempt key, written by the job itself, so a
    launcher that died between starting the job and recording it is followed by one that finds the job."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        ticks = None
    record = {"pid": os.getpid(), "start_ticks": ticks, "attempt_key": os.environ.get("CP_ATTEMPT_KEY", "")}
    write_atomic(run_dir / "leader.json", json.dumps(record))


def supervise(run_dir: Path, child_pid: int) -> int:
    """Wait for this process's child `child_pid` (the leader of its own process group) and write exit.json;
    returns the exit status to leave with."""
    write_atomic(run_dir / "child.json", json.dumps({"pid": child_pid, "pgid": child_pid}))
    write_leader_record(run_dir)
    stopping = {"signal": None}

    def forward(signum, frame):
        stopping["signal"] = signum
        try:
            os.killpg(child_pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    _, status = os.waitpid(child_pid, 0)
    code = os.waitstatus_to_exitcode(status)  # -N when a signal ended it, like Popen.returncode
    # Ranks the launcher left behind (it died first) must not outlive the job.
    try:
        os.killpg(child_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    write_atomic(
        run_dir / "exit.json",
        json.dumps({"exit_code": code, "signal": stopping["signal"], "finished_at": time.time()}),
    )
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m jobs.launch.wrapper RUN_DIR -- COMMAND...", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv[2:], start_new_session=True)
    code = supervise(Path(argv[0]), child.pid)
    child.returncode = code  # reaped by supervise; Popen must not wait for it again
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
