"""``jobs.serve --engine vllm``: run ``vllm serve`` as a child process and stand in for it towards the control plane.

The control plane only knows ``jobs.serve``'s contract (endpoint.json once ready, removed on SIGTERM), so this
module keeps it for vLLM: start the child with an argv list, wait for its ``/health``, write endpoint.json, forward
SIGTERM/SIGINT, and clean up when the child ends. Where vLLM cannot run (not installed, no GPU) it refuses at once
with one line, so a deploy fails fast instead of waiting for a server that never comes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

NOT_INSTALLED = "vllm is not installed on this node; deploy with the native engine"
NO_GPU = "vllm needs a GPU and this node has none; deploy with the native engine"


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return NOT_INSTALLED
    import torch

    if not torch.cuda.is_available():
        return NO_GPU
    return None


def vllm_argv(*, model: str, host: str, port: int, served_name: str, max_batch: int, max_seq_len: int) -> list[str]:
    exe = shutil.which("vllm")
    head = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    return [*head, "serve", model, "--host", host, "--port", str(port), "--served-model-name", served_name,
            "--max-num-seqs", str(max_batch), "--max-model-len", str(max_seq_len)]  # fmt: skip


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def supervise(*, argv: list[str], url: str, on_ready: Callable[[], object], on_exit: Callable[[], object],
              api_key: str | None = None, ready_timeout: float = 1800.0) -> int:  # fmt: skip
    """Run the child until it exits; call on_ready once its /health answers, on_exit at the end. Returns its code."""
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key  # not on the command line, where `ps` would show it
    child = subprocess.Popen(argv, env=env)
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = time.monotonic() + ready_timeout
        ready = False
        while child.poll() is None and not stopping:
            if not ready and _healthy(url):
                on_ready()
                ready = True
            if not ready and time.monotonic() > deadline:
                print(f"vllm did not answer {url}/health within {ready_timeout:.0f} s; stopping it", file=sys.stderr)
                child.terminate()
                break
            time.sleep(0.5 if not ready else 1.0)
        try:
            code = child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        return 0 if stopping else code
    finally:
        on_exit()
        for s, handler in previous.items():
            signal.signal(s, handler)
