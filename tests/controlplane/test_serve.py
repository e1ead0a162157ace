"""The web server: uvicorn's own command line (controlplane.processes.web_server_argv) in several processes."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from controlplane.processes import web_server_argv

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> bytes:
    # A worker's first request loads the URLconf (the REST API's schemas among it): seconds on a loaded machine.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _workers(server: subprocess.Popen) -> set[int]:
    """The server's worker processes (uvicorn starts them with multiprocessing's spawn)."""
    found = set()
    for child in psutil.Process(server.pid).children():
        try:
            if "multiprocessing.spawn" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def _answers(port: int) -> bool:
    try:
        return _get(port, "/healthz").startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _start_two_workers(tmp_path: Path, port: int) -> subprocess.Popen:
    """The server with two workers, once both serve."""
    env = {**os.environ, "CP_VAR_DIR": str(tmp_path), "CP_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        web_server_argv(port=port, workers=2, log_level="warning"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError((tmp_path / "server.log").read_text()[-2000:])
        if len(_workers(server)) == 2 and _answers(port):
            break
        time.sleep(0.3)
    return server


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_web_server_is_uvicorns_own_command_with_the_configured_workers(settings):
    settings.CP_WEB_WORKERS = 3
    argv = web_server_argv(port=8123)
    assert argv[1:4] == ["-m", "uvicorn", "controlplane.asgi:application"]
    assert argv[argv.index("--workers") + 1] == "3" and argv[argv.index("--port") + 1] == "8123"


def test_two_workers_serve_and_stop_together(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    try:
        workers = _workers(server)
        assert len(workers) == 2
        assert all(_get(port, "/healthz").startswith(b"HTTP/1.1 200") for _ in range(6))
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_worker_that_dies_is_replaced_and_the_server_keeps_answering(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    try:
        before = _workers(server)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(server)
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.2)
        assert victim not in now and len(now) == 2 and server.poll() is None
        assert all(_answers(port) for _ in range(6))
    finally:
        _stop(server)
