"""The command lines of the control plane's own processes, shared by `manage.py up`, the test stack and benches."""

from __future__ import annotations

import sys


def web_server_argv(
    *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", workers: int | None = None
) -> list[str]:
    """controlplane.serve: uvicorn, in `workers` processes (default CP_WEB_WORKERS, else 1)."""
    argv = [sys.executable, "-m", "controlplane.serve", "--host", host, "--port", str(port), "--log-level", log_level]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


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
