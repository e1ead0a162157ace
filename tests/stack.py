"""The real stack for end-to-end tests: uvicorn (HTTP + websockets) and a Celery worker, as separate processes,
on the test database and the suite's Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controlplane.processes import web_server_argv, worker_argv

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


@dataclass
class Stack:
    url: str
    runs_dir: Path
    procs: list[subprocess.Popen]
    logs: Path
    env: dict | None = None
    port: int = 0

    def kill_web(self) -> None:
        """SIGKILL the web server (procs[0]) and its children, as a crash would."""
        os.killpg(self.procs[0].pid, signal.SIGKILL)
        self.procs[0].wait()

    def start_web(self) -> None:
        """Start the web server again on the same port; returns once it answers."""
        log = open(self.logs / "web.log", "ab")
        self.procs[0] = subprocess.Popen(
            web_server_argv(port=self.port),
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        pytest.fail("the web server did not come back within 60 s:\n" + self.log_tail())

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for log in [*sorted(self.logs.glob("*.log")), *sorted(self.runs_dir.glob("run-*/std*.log"))]:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.relative_to(log.parents[1])}\n" + "\n".join(text))
        return "\n".join(out)


def start_stack(*, tmp: Path, extra_env: dict[str, str] | None = None, worker: bool = True) -> Stack:
    """The web server and (unless worker=False: what is queued stays queued) a Celery worker."""
    from django.conf import settings
    from django.db import connection

    port = free_port()
    runs_dir = tmp / "runs"
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "CP_BASE_URL": f"http://127.0.0.1:{port}",
        "CP_RUNS_DIR": str(runs_dir),
        "CP_VAR_DIR": str(settings.VAR_DIR),
        # The audit anchor this test's database goes with (tests/conftest.py gives each test its own).
        "CP_AUDIT_ANCHOR": str(settings.AUDIT_ANCHOR),
        "OMP_NUM_THREADS": "1",
        "CP_CELERY_QUEUE": f"e2e-{port}",  # tasks other tests left in Redis never reach this worker
        **(extra_env or {}),
    }
    if not settings.EMBEDDED_REDIS:
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    web_log = open(logs / "web.log", "wb")
    worker_log = open(logs / "worker.log", "wb")
    procs = [
        subprocess.Popen(
            web_server_argv(port=port),
            cwd=ROOT,
            env=env,
            stdout=web_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    if worker:
        procs.append(
            subprocess.Popen(
                worker_argv(concurrency=2, queue=f"e2e-{port}", name=f"e2e-{port}@%h"),
                cwd=ROOT,
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    stack = Stack(url=f"http://127.0.0.1:{port}", runs_dir=runs_dir, procs=procs, logs=logs, env=env, port=port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            stop_stack(stack)
            pytest.fail("the web server or worker died at start:\n" + stack.log_tail())
        try:
            if httpx.get(f"{stack.url}/healthz", timeout=1).status_code == 200:
                return stack
        except httpx.HTTPError:
            time.sleep(0.3)
    stop_stack(stack)
    pytest.fail("the web server did not answer within 60 s:\n" + stack.log_tail())


def stop_stack(stack: Stack) -> None:
    _stop_jobs(stack.runs_dir)
    for proc in stack.procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in stack.procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_jobs(runs_dir: Path) -> None:
    """Jobs a failed test left running must not outlive it (they hold ports and cores)."""
    import json

    from workers.backends.procs import stop_group

    # Runs, and the quantize, benchmark and server jobs under their artifact folders.
    for job in runs_dir.rglob("job.json"):
        record = json.loads(job.read_text())
        if "pgid" not in record:
            continue
        stop_group(record["pgid"], pid=record["pid"], ticks=record["start_ticks"], grace_s=5)
        child = job.parent / "child.json"
        if child.exists():
            try:
                os.killpg(json.loads(child.read_text())["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
