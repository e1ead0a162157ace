"""``python -m controlplane.serve --port P [--host H] [--workers N] [--log-level L]``: the web server.

With one worker this is uvicorn serving ``controlplane.asgi:application``, with an HTTP protocol that answers
ingest posts before ASGI (runs.views.ingest_http). With several, each worker is a uvicorn
process with a listening socket of its own on the same address (SO_REUSEPORT), so the kernel spreads new
connections across them evenly. uvicorn's own ``--workers`` shares one listening socket, and whichever process is
awake accepts: a handful of busy keep-alive connections (the reporters of running jobs) all landed on one process
while the others idled. The parent passes SIGTERM/SIGINT on and stops every worker when one of them exits.
CP_WEB_WORKERS sets the default count (1).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _worker(args: argparse.Namespace) -> int:
    import uvicorn

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
    server = uvicorn.Server(config)
    if args.workers == 1:
        server.run()
    else:
        server.run(sockets=[_listen(args.host, args.port)])
    return 0


def _supervise(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "controlplane.serve", "--host", args.host, "--port", str(args.port)]
    argv += ["--workers", str(args.workers), "--log-level", args.log_level, "--worker"]
    children = [subprocess.Popen(argv) for _ in range(args.workers)]
    stopping = {"signal": 0}

    def stop(signum, frame):
        stopping["signal"] = signum
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while any(child.poll() is None for child in children):
        for child in children:
            if child.returncode is not None and not stopping["signal"]:
                code = child.returncode or 1
                stop(signal.SIGTERM, None)  # one worker gone: the server is not whole
        time.sleep(0.2)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane.serve", description=__doc__.split("\n\n")[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("CP_WEB_WORKERS") or 1))
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers == 1 or args.worker:
        return _worker(args)
    return _supervise(args)


if __name__ == "__main__":
    sys.exit(main())
