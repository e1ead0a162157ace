"""``python -m controlplane.serve --port P [--host H] [--workers N] [--log-level L]``: the web server.

With one worker this is uvicorn serving ``controlplane.asgi:application``, with an HTTP protocol that answers
ingest posts before ASGI (runs.views.ingest_http). With several, the parent holds the listening socket, accepts
each connection and hands it (SCM_RIGHTS over a socket pair) to the worker serving the fewest open connections;
a worker says when one of its connections closes. Keep-alive connections (the reporters of running jobs) are few
and long-lived, so where they land decides each worker's load: a listening socket shared by the workers (uvicorn's
``--workers``) let whichever process was awake accept them all, and a socket per worker (SO_REUSEPORT) let the
kernel's hash of the addresses split 8 connections 5/3 or 6/2 over 2 workers. The parent passes SIGTERM/SIGINT on
and stops every worker when one of them exits. CP_WEB_WORKERS sets the default count (1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import uvicorn


@dataclass
class _Worker:
    process: subprocess.Popen
    channel: socket.socket  # the parent's end of the worker's socket pair
    serving: int = 0  # connections handed over and not yet reported closed


def _worker(args: argparse.Namespace) -> int:
    from controlplane.asgi import application  # sets Django up, which the protocol's module needs
    from runs.views.ingest_http import IngestHttpProtocol

    config = uvicorn.Config(
        application,
        http=IngestHttpProtocol,
        host=args.host,
        port=args.port,
        access_log=False,
        timeout_graceful_shutdown=5,
        log_level=args.log_level,
    )
    server = (
        uvicorn.Server(config)
        if args.channel_fd is None
        else _HandedServer(config, socket.socket(fileno=args.channel_fd))
    )
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C's signal again once it has shut down, as its own CLI expects
        pass
    return 0


class _HandedServer(uvicorn.Server):
    """uvicorn's server without a listening socket of its own: it serves the connections its parent hands over."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket):
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=[])  # uvicorn makes a server per socket given: none
        if self.should_exit:
            return
        self.channel.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.channel.fileno(), self._take, loop, _counted_protocol(self))

    def _take(self, loop: asyncio.AbstractEventLoop, protocol) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 16, 16)
            except BlockingIOError:
                return
            if not data:  # the parent is gone
                loop.remove_reader(self.channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                connection = socket.socket(fileno=fd)
                connection.setblocking(False)
                loop.create_task(loop.connect_accepted_socket(protocol, connection))


def _counted_protocol(server: _HandedServer):
    """The configured protocol, telling the parent when each connection closes (one byte per close; the closes a
    full channel refused ride on the next message)."""
    base = server.config.http_protocol_class
    unsent = {"closes": 0}

    class Counted(base):  # type: ignore[misc, valid-type]
        def connection_lost(self, exc):
            super().connection_lost(exc)
            unsent["closes"] += 1
            try:
                server.channel.send(b"-" * unsent["closes"])
                unsent["closes"] = 0
            except (BlockingIOError, OSError):
                pass

    def protocol() -> asyncio.Protocol:
        return Counted(config=server.config, server_state=server.server_state, app_state=server.lifespan.state)

    return protocol


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _supervise(args: argparse.Namespace) -> int:
    listener = _listen(args.host, args.port)
    argv = [sys.executable, "-m", "controlplane.serve", "--host", args.host, "--port", str(args.port)]
    argv += ["--workers", str(args.workers), "--log-level", args.log_level, "--worker"]
    workers = []
    for _ in range(args.workers):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = subprocess.Popen([*argv, "--channel-fd", str(theirs.fileno())], pass_fds=[theirs.fileno()])
        theirs.close()
        ours.setblocking(False)
        workers.append(_Worker(process, ours))
    stopping = {"signal": 0}

    def stop(signum, frame):
        stopping["signal"] = signum
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    for worker in workers:
        selector.register(worker.channel, selectors.EVENT_READ, worker)
    code, turn = 0, 0
    while any(worker.process.poll() is None for worker in workers):
        for worker in workers:
            if worker.process.returncode is not None and not stopping["signal"]:
                code = worker.process.returncode or 1
                stop(signal.SIGTERM, None)  # one worker gone: the server is not whole
        if stopping["signal"] and listener.fileno() != -1:
            selector.unregister(listener)
            listener.close()  # new clients are refused rather than left waiting on a server that stops
        for key, _ in selector.select(timeout=0.2):
            if key.data is None:
                turn = _hand_over(listener, workers, turn)
            else:
                _note_closes(selector, key.data)
    return code


def _hand_over(listener: socket.socket, workers: list[_Worker], turn: int) -> int:
    """Accept what is waiting; each connection goes to the live worker serving the fewest (ties taken in turn)."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return turn
        with connection:
            live = [(index, w) for index, w in enumerate(workers) if w.process.poll() is None]
            if not live:
                return turn
            turn += 1
            _, worker = min(live, key=lambda pair: (pair[1].serving, (pair[0] - turn) % len(workers)))
            try:
                socket.send_fds(worker.channel, [b"+"], [connection.fileno()])
                worker.serving += 1
            except OSError:
                pass  # the worker is going; the client sees its connection closed


def _note_closes(selector: selectors.BaseSelector, worker: _Worker) -> None:
    while True:
        try:
            data = worker.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker is gone
            selector.unregister(worker.channel)
            worker.channel.close()
            return
        worker.serving = max(0, worker.serving - len(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane.serve", description=__doc__.split("\n\n")[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("CP_WEB_WORKERS") or 1))
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channel-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers == 1 or args.worker:
        return _worker(args)
    return _supervise(args)


if __name__ == "__main__":
    sys.exit(main())
