"""controlplane.serve: several uvicorn workers behind a parent that accepts and hands each connection to the worker
serving the fewest."""

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


def _served(pid: int, port: int) -> dict[int, set[int]]:
    """Each worker of the server: the client ports of the connections to the port it holds open."""
    return {
        worker.pid: {
            c.raddr.port
            for c in worker.net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        }
        for worker in psutil.Process(pid).children()
    }


def _keep_alive_get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock.recv(65536)


def _start_two_workers(tmp_path: Path, port: int) -> subprocess.Popen:
    """The server with two workers, once it answers."""
    env = {**os.environ, "CP_VAR_DIR": str(tmp_path), "CP_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "controlplane.serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError((tmp_path / "server.log").read_text()[-2000:])
        try:
            if _get(port, "/healthz").startswith(b"HTTP/1.1 200"):
                break
        except OSError:
            pass
        time.sleep(0.3)
    return server


def test_two_workers_behind_one_listening_socket_stop_together(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    try:
        workers = {child.pid for child in psutil.Process(server.pid).children()}
        assert len(workers) == 2
        assert _listeners(server.pid, port) == {server.pid}  # the parent accepts; the workers only serve
        assert all(_get(port, "/healthz").startswith(b"HTTP/1.1 200") for _ in range(6))
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_keep_alive_connections_are_spread_evenly_and_closed_ones_make_room(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    clients = []
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
        assert all(_keep_alive_get(c).startswith(b"HTTP/1.1 200") for c in clients)
        served = _served(server.pid, port)
        assert sorted(len(ports) for ports in served.values()) == [4, 4]

        # The first worker's four clients leave: the next four connections all go to it.
        emptied = min(served)
        for client in [c for c in clients if c.getsockname()[1] in served[emptied]]:
            clients.remove(client)
            client.close()
        deadline = time.monotonic() + 10
        while _served(server.pid, port)[emptied] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the worker's word of the closes reaches the parent
        newcomers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        clients += newcomers
        assert all(_keep_alive_get(c).startswith(b"HTTP/1.1 200") for c in newcomers)
        assert {c.getsockname()[1] for c in newcomers} == _served(server.pid, port)[emptied]
    finally:
        for client in clients:
            client.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    workers = [child.pid for child in psutil.Process(server.pid).children()]
    server.kill()
    server.wait()
    deadline = time.monotonic() + 30
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        time.sleep(0.2)
    assert alive == []  # each saw its channel to the parent close


def test_one_worker_exiting_stops_the_server(tmp_path):
    port = _port()
    server = _start_two_workers(tmp_path, port)
    try:
        victim = sorted(child.pid for child in psutil.Process(server.pid).children())[0]
        os.kill(victim, signal.SIGKILL)
        assert server.wait(30) != 0  # the server is not whole: it stops and says so
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
