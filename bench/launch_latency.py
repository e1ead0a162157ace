"""Launch latency: the run form's Launch submit -> the first loss point stored, on the local backend.

  python bench/launch_latency.py [--repeats 3]

Starts the web server (uvicorn) and a Celery worker on the configured database (DATABASE_URL, else the embedded
SQLite under var/) and Redis (REDIS_URL, else the embedded one), logs in as the README's admin, creates tiny-preset
runs through the form, presses Launch and polls the series API until the first loss point is there. The tiny preset
uses torch's AdamW on CPU, so no DeepSpeed op is compiled on the way.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _form(client: httpx.Client, url: str) -> dict:
    html = client.get(url).text
    data = {}
    for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', html):
        data[name] = value
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        chosen = re.search(r'<option value="([^"]*)"[^>]*selected', body) or re.search(r'<option value="([^"]*)"', body)
        if chosen:
            data[name] = chosen.group(1)
    for name in re.findall(r'<input type="checkbox" name="([^"]+)"[^>]*checked', html):
        data[name] = "on"
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.conf import settings
    from django.core.management import call_command

    from controlplane import embedded_redis
    from controlplane.management.commands.up import ensure_default_users
    from controlplane.processes import web_server_argv, worker_argv
    from runs.services.seed import seed_defaults

    redis_proc = None
    if settings.EMBEDDED_REDIS:
        try:
            redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET, workdir=str(settings.VAR_DIR))
        except RuntimeError:
            redis_proc = None  # already served by `make up`
    call_command("migrate", interactive=False, verbosity=0)
    seed_defaults()
    ensure_default_users(sys.stdout)
    port = _port()
    env = {**os.environ, "CP_BASE_URL": f"http://127.0.0.1:{port}", "CP_CELERY_QUEUE": f"bench-{port}"}
    procs = [
        subprocess.Popen(
            web_server_argv(port=port, log_level="warning"),
            cwd=ROOT,
            env=env,
            start_new_session=True,
        ),
        subprocess.Popen(
            worker_argv(concurrency=2, queue=f"bench-{port}", log_level="WARNING"),
            cwd=ROOT,
            env=env,
            start_new_session=True,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        client = httpx.Client(base_url=base, timeout=30, follow_redirects=False)
        for _ in range(120):
            try:
                client.get("/healthz")
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        login = _form(client, "/accounts/login/")
        client.post(
            "/accounts/login/",
            data={**login, "username": "admin", "password": "admin-pass-123"},
            headers={"Referer": base},
        )
        time.sleep(5)  # the worker's start-up is not part of a launch
        for i in range(args.repeats):
            data = _form(client, "/runs/new/?preset=tiny")
            data["name"] = f"launch-bench-{i}"
            created = client.post("/runs/new/", data=data, headers={"Referer": base})
            run_id = int(created.headers["location"].rstrip("/").split("/")[-1])
            token = client.cookies.get("csrftoken")
            t0 = time.perf_counter()
            client.post(f"/runs/{run_id}/launch/", data={"csrfmiddlewaretoken": token}, headers={"Referer": base})
            first = None
            while time.perf_counter() - t0 < 120:
                keys = client.get(f"/api/v1/runs/{run_id}/keys/").json().get("keys", [])
                if any((k.get("key") if isinstance(k, dict) else k) == "loss" for k in keys):
                    first = time.perf_counter() - t0
                    break
                time.sleep(0.1)
            client.post(f"/runs/{run_id}/cancel/", data={"csrfmiddlewaretoken": token}, headers={"Referer": base})
            results.append(first)
            print(f"run #{run_id}: first loss point {first:.2f} s after Launch" if first else f"run #{run_id}: none")
            time.sleep(3)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        if redis_proc is not None:
            embedded_redis.stop(redis_proc, settings.EMBEDDED_REDIS_SOCKET)
    done = [r for r in results if r is not None]
    if done:
        print(
            f"launch -> first point: median {statistics.median(done):.2f} s, max {max(done):.2f} s "
            f"over {len(done)} launches (goal <= 10 s)"
        )


if __name__ == "__main__":
    main()
