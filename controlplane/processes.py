"""The command lines of the control plane's own processes, shared by `manage.py up`, the test stack and benches."""

from __future__ import annotations

import sys


def web_server_argv(*, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "controlplane.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
        "--log-level",
        log_level,
    ]


def worker_argv(
    *, concurrency: int, queue: str | None = None, name: str | None = None, log_level: str = "INFO"
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "controlplane",
        "worker",
        "--loglevel",
        log_level,
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
    ]
    if queue:
        argv += ["-Q", queue]
    if name:
        argv += ["-n", name]
    return argv
