"""controlplane.serve: several uvicorn workers, each with its own listening socket on one port."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _listeners(pid: int, port: int) -> set[int]:
    """Processes of pid's tree holding a listening socket on the port."""
    found = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp")):
                found.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def _start_two_workers(tmp_path: Path, port: int) -> subprocess.Popen:
    """The server with two workers, once both listen."""
    env = {**os.environ, "CP_VAR_DIR": str(tmp_path), "CP_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "controlplane.serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(_listeners(server.pid, port)) < 2:
        if server.poll() is not None:
            raise AssertionError((tmp_path / "server.log").read_text()[-2000:])
        time.sleep(0.3)
    return server


def test_two_workers_each_listen_on_the_port_and_stop_together(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    try:
        workers = _listeners(server.pid, port)
        assert len(workers) == 2 and server.pid not in workers  # the parent only supervises
        assert all(_get(port, "/healthz").startswith(b"HTTP/1.1 200") for _ in range(6))
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_one_worker_exiting_stops_the_server(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    try:
        victim = sorted(_listeners(server.pid, port))[0]
        os.kill(victim, signal.SIGKILL)
        assert server.wait(30) != 0  # the server is not whole: it stops and says so
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
