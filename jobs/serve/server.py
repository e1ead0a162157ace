"""Serve one model dir over an OpenAI-compatible HTTP API (one process: FastAPI + uvicorn + the decode engine).

Usage (the control plane builds this argv):
``python -m jobs.serve --model MODEL_DIR --port PORT [--host 127.0.0.1] --state-dir DIR [--served-name NAME]
[--engine native|vllm] [--max-batch 32] [--max-seq-len 4096] [--api-key-file PATH]``

- ``native``: ``jobs.engine`` (fast Llama path with CUDA graphs, or transformers' forward for other
  architectures), the API in ``jobs.serve.app``.
- ``vllm``: ``vllm serve`` as a child (``jobs.serve.vllm``); refused at once where vLLM or a GPU is missing.

Readiness contract: once the model is loaded and the socket listens, ``DIR/endpoint.json`` is written atomically:
``{"url", "host", "port", "pid", "model", "engine", "started_at"}``; it is removed on a clean shutdown (SIGTERM or
SIGINT, exit code 0). ``--port 0`` takes a free port (endpoint.json says which). ``--served-name`` defaults to the
model dir's name, or ``<artifact>-<variant>`` for the base/nf4/int8 folders of an artifact dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from jobs.common.atomic import write_atomic

log = logging.getLogger("jobs.serve")

ENDPOINT_FILE = "endpoint.json"


def default_served_name(model_dir: str) -> str:
    path = Path(model_dir).resolve()
    if path.name in ("base", "nf4", "int8"):
        return f"{path.parent.name}-{path.name}"
    return path.name


def public_host(host: str) -> str:
    """The host to put in the URL: a wildcard bind address is not something a client can connect to."""
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


def write_endpoint(state_dir: Path, *, host: str, port: int, model: str, engine: str) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    shown = public_host(host)
    url_host = f"[{shown}]" if ":" in shown else shown
    payload = {"url": f"http://{url_host}:{port}", "host": host, "port": port, "pid": os.getpid(), "model": model,
               "engine": engine, "started_at": datetime.now(UTC).isoformat()}  # fmt: skip
    target = state_dir / ENDPOINT_FILE
    write_atomic(target, json.dumps(payload, indent=1) + "\n")
    return target


def remove_endpoint(state_dir: Path) -> None:
    """Remove endpoint.json if this process wrote it (a newer server may own the folder by now)."""
    target = state_dir / ENDPOINT_FILE
    try:
        if json.loads(target.read_text()).get("pid") == os.getpid():
            target.unlink()
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        pass


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model dir (config.json + weights + tokenizer.model)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--state-dir", required=True, help="where endpoint.json is written")
    p.add_argument("--served-name", default=None)
    p.add_argument("--engine", choices=("native", "vllm"), default="native")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--api-key-file", default=None)
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger request bodies get 413")
    p.add_argument("--public-metrics", action="store_true", help="/metrics without the API key (a Prometheus)")
    args = p.parse_args(argv)
    if args.max_batch < 1 or args.max_seq_len < 2:
        p.error("--max-batch must be >= 1 and --max-seq-len >= 2")
    return args


def _api_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"--api-key-file {path}: cannot read it ({exc.strerror})") from None
    if not key:
        raise SystemExit(f"--api-key-file {path}: the file is empty")
    return key


def _run_vllm(args: argparse.Namespace, name: str, api_key: str | None) -> int:
    from jobs.serve import vllm

    reason = vllm.unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 3
    state_dir = Path(args.state_dir)
    argv = vllm.vllm_argv(model=args.model, host=args.host, port=args.port, served_name=name,
                          max_batch=args.max_batch, max_seq_len=args.max_seq_len)  # fmt: skip
    url = f"http://{public_host(args.host)}:{args.port}"
    return vllm.supervise(
        argv=argv,
        url=url,
        api_key=api_key,
        on_ready=lambda: write_endpoint(state_dir, host=args.host, port=args.port, model=name, engine="vllm"),
        on_exit=lambda: remove_endpoint(state_dir),
    )


class KeyFile:
    """The bearer key in --api-key-file, read again when the file changes: the control plane rotates a key by
    replacing the file, and the old key stops working at the next request."""

    def __init__(self, path: str, key: str):
        self.path = Path(path)
        self.key = key
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def __call__(self) -> str:
        stamp = self._stamp()
        if stamp is not None and stamp != self.stamp:
            try:
                key = self.path.read_text().strip()
            except OSError:
                key = ""
            if key:  # an empty or unreadable file keeps the key in force
                self.key, self.stamp = key, stamp
        return self.key


def _run_native(args: argparse.Namespace, name: str, api_key: str | None) -> int:
    import uvicorn

    from jobs.engine.loading import load_engine
    from jobs.serve.app import create_app

    state_dir = Path(args.state_dir)
    started = time.perf_counter()
    engine = load_engine(args.model, max_batch=args.max_batch, max_seq_len=args.max_seq_len)
    log.info("loaded %s in %.1f s: %s", args.model, time.perf_counter() - started, engine.info())
    engine.start()
    # The socket is bound here, so that endpoint.json names the port it got (--port 0); the file is written at
    # uvicorn's start-up, and a client that connects before uvicorn serves the socket waits in its backlog.
    sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    port = sock.getsockname()[1]
    ready = []
    current_key = KeyFile(args.api_key_file, api_key) if api_key is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        path = write_endpoint(state_dir, host=args.host, port=port, model=name, engine="native")
        print(f"SERVE_READY {path}", flush=True)
        ready.append(path)
        yield

    app = create_app(
        engine=engine,
        served_name=name,
        engine_kind="native",
        api_key=current_key,
        lifespan=lifespan,
        max_body_bytes=args.max_body_bytes,
        public_metrics=args.public_metrics,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; this handler takes it so that the
    # clean-up below runs and the exit code is 0.
    stop_signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop_signals.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        remove_endpoint(state_dir)
        engine.stop()
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = args.served_name or default_served_name(args.model)
    api_key = _api_key(args.api_key_file)
    if args.engine == "vllm":
        return _run_vllm(args, name, api_key)
    if not (Path(args.model) / "config.json").exists():
        print(f"--model {args.model}: no config.json there; pass a model dir (base/, nf4/ or int8/)", file=sys.stderr)
        return 2
    return _run_native(args, name, api_key)
