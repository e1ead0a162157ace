"""The command lines of the control plane's own processes, shared by `manage.py up`, the test stack and benches."""

from __future__ import annotations

import sys


def web_server_argv(
    *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", workers: int | None = None
) -> list[str]:
    """uvicorn's own command line serving controlplane.asgi in `workers` processes (default: the CP_WEB_WORKERS
    setting). With more than one, uvicorn's parent holds the listening socket, its workers accept from it, and a
    worker that dies is replaced."""
    if workers is None:
        from django.conf import settings

        workers = settings.CP_WEB_WORKERS
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "controlplane.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        log_level,
        "--no-access-log",
        "--lifespan",
        "off",  # Django's ASGI application has no lifespan events
        "--timeout-graceful-shutdown",
        "5",
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
