"""The local backend's pre-started DeepSpeed launcher (``jobs.launch.warm``): start it, ask it for a job.

A worker starts one at start-up (tasks.reattach) for its interpreter. A local CPU launch asks it to fork the job;
when none answers, the launch starts DeepSpeed's launcher itself as before (and one is started for the next
launch). A launcher that is still importing is waited for: starting another one beside it would only share the
same cores for the same import.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from jobs.launch.warm import frame, read_message
from workers.backends.commands import inherited_env
from workers.backends.procs import alive, job_record, start_ticks

log = logging.getLogger(__name__)

STARTING_WAIT_S = 30.0  # the import takes 3-8 s on a small machine
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def _paths(python: str) -> tuple[Path, Path] | None:
    """(socket, pid file) of the warm launcher for this interpreter, or None when the path is too long."""
    folder = settings.VAR_DIR / "launcher"
    name = "cpu-" + hashlib.sha256(python.encode()).hexdigest()[:12]
    sock = folder / f"{name}.sock"
    if len(str(sock)) > MAX_SOCKET_PATH:
        return None
    return sock, folder / f"{name}.pid"


def _in_use(python: str) -> tuple[Path, Path] | None:
    """_paths when the warm launcher is switched on (settings.WARM_LAUNCHER), else None."""
    return _paths(python) if settings.WARM_LAUNCHER else None


def ensure_started(python: str) -> bool:
    """Start a warm launcher for `python` unless one is serving or starting; True when one was started."""
    where = _in_use(python)
    if where is None:
        return False
    sock, pid_file = where
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.parent.chmod(0o700)  # the socket starts jobs as this user: no one else may reach it
    with open(pid_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _starting_pid(pid_file) is not None:
            return False
        # The launcher forks jobs: it holds none of the worker's secrets (the allow-list of the local backend).
        env = {
            **inherited_env(os.environ),
            "DS_ACCELERATOR": "cpu",
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": str(settings.BASE_DIR),
        }
        with open(sock.parent / "warm-launcher.log", "ab") as out:
            proc = subprocess.Popen(
                [python, "-m", "jobs.launch.warm", str(sock)],
                cwd=settings.BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        pid_file.write_text(f"{proc.pid} {start_ticks(proc.pid)}")
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it leaves
    return True


def _starting_pid(pid_file: Path) -> int | None:
    """The pid of the warm launcher this pid file names, while it lives."""
    try:
        pid, ticks = (int(x) for x in pid_file.read_text().split())
    except (OSError, ValueError):
        return None
    return pid if alive(pid, ticks) else None


def spawn(
    *,
    python: str,
    run_dir: Path,
    cwd: Path,
    env: dict[str, str],
    launcher_args: list[str],
    attempt_key: str = "",
    user: Any = None,
) -> dict | None:
    """Have the warm launcher start a job; its job.json record, or None when the caller must start it itself.

    `user` (a JobUser): the forked job drops to that user and group before it runs anything of the job's."""
    where = _in_use(python)
    if where is None:
        return None
    sock_path, pid_file = where
    deadline = time.monotonic() + STARTING_WAIT_S
    while True:
        conn = _connect(sock_path)
        if conn is not None:
            break
        if _starting_pid(pid_file) is None:
            ensure_started(python)  # for the next launch; this one goes on without
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    request = {"run_dir": str(run_dir), "cwd": str(cwd), "env": env, "args": launcher_args}
    if user is not None:
        request.update({"uid": user.uid, "gid": user.gid})
    with (
        conn,
        open(run_dir / "stdout.log", "ab") as stdout,
        open(run_dir / "stderr.log", "ab") as stderr,
    ):
        try:
            socket.send_fds(conn, [frame(request)], [stdout.fileno(), stderr.fileno()])
            answer, _ = read_message(conn)
        except (OSError, ValueError) as exc:
            log.warning("the warm launcher did not take the job (%s); starting the launcher directly", exc)
            return None
    if "pid" not in answer:
        log.warning("the warm launcher refused the job: %s", answer.get("error"))
        return None
    argv = [python, "-m", "jobs.launch.warm", "(fork)", "-m", "deepspeed.launcher.launch", *launcher_args]
    ticks = answer.get("start_ticks")
    return job_record(
        run_dir=run_dir,
        pid=int(answer["pid"]),
        argv=argv,
        ticks=int(ticks) if ticks is not None else None,
        warm=True,
        attempt_key=attempt_key,
    )


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn
