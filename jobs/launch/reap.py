"""``python -m jobs.launch.reap KEY``: stop, on this host, every process of this user whose environment carries
``CP_ATTEMPT_KEY=KEY`` — one attempt's launcher and ranks — and nothing else.

This replaces DeepSpeed's own pdsh clean-up (``pkill -f deepspeed.launcher.launch`` on every host), which stops
every DeepSpeed launch of the user on those hosts, other runs included. SIGTERM first, SIGKILL after the grace.
Runs on job nodes: standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

ATTEMPT_KEY_ENV = "CP_ATTEMPT_KEY"


def tagged_pids(key: str, *, uid: int | None = None) -> list[int]:
    """Live processes (readable by this user) whose initial environment holds CP_ATTEMPT_KEY=key exactly; with
    `uid`, only those whose real user is uid (a job's user: the key alone is something the job could name)."""
    if not key:
        return []
    wanted = f"{ATTEMPT_KEY_ENV}={key}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
            owner = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue  # gone, or another user's
        if state != b"Z" and wanted in environ.split(b"\0") and (uid is None or owner == uid):
            found.append(int(entry))
    return found


def reap(key: str, *, grace_s: float = 10.0, first_signal: int = signal.SIGTERM, uid: int | None = None) -> int:
    """Signal every tagged process (of `uid`, if given); those left after `grace_s` get SIGKILL. Returns how many
    were signalled."""
    pids = tagged_pids(key, uid=uid)
    for sig, wait_s in ((first_signal, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and tagged_pids(key, uid=uid):
            time.sleep(0.1)
        if not tagged_pids(key, uid=uid):
            break
        pids = tagged_pids(key, uid=uid)
    return len(pids)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.launch.reap")
    parser.add_argument("key")
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    reap(args.key, grace_s=args.grace)
    left = tagged_pids(args.key)
    if left:
        print(f"processes of {args.key} survived SIGKILL: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
