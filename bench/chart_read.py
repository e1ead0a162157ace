"""Chart reads of a 1,000,000-step series: server time, answer size, and whether every injected spike shows.

    .venv/bin/python bench/chart_read.py [--steps 1000000] [--spikes 40]

Uses PostgreSQL at 127.0.0.1:5432 (database cp_bench_chart, created and dropped) when it answers, else SQLite in a
temporary directory. Points are written through the ingest service in batches of 5,000 steps, then compacted as
ingest would; reads go through the full Django stack (middleware, login, the series view) in-process, so the time
is the server's time without the network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB = "cp_bench_chart"


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [DB],
            )
            c.execute(f'DROP DATABASE IF EXISTS "{DB}"')
            c.execute(f'CREATE DATABASE "{DB}"')
        return True
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--spikes", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    use_pg = pg_available()
    tmp = tempfile.mkdtemp(prefix="chart-bench-")
    os.environ["CP_VAR_DIR"] = tmp
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB}" if use_pg else f"sqlite:///{tmp}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ["CP_LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import logging

    # No channel layer runs here (nothing is pushed: reads are measured); the failed pushes need not print.
    logging.getLogger("runs.realtime.broadcast").setLevel(logging.ERROR)
    import numpy as np
    import orjson
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    import runs.metrics.store as metrics
    import runs.services.alerts as alerts
    from runs.models import MetricBlock
    from runs.services.roles import ensure_roles
    from runs.services.seed import seed_defaults
    from tests.runs.factories import tiny_run

    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]
    # No browser listens here, so Redis is not needed: pushes of points and of the spikes' alerts are dropped.
    alerts.broadcast_on_commit = lambda group, message: None
    metrics.broadcast_many_on_commit = lambda messages: None
    try:
        call_command("migrate", verbosity=0)
        ensure_roles()
        seed_defaults()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        user = get_user_model().objects.create_user("chart-bench", password="chart-bench-1")
        user.groups.add(Group.objects.get(name="viewer"))
        run = tiny_run(owner=user, name="chart-bench")

        rng = np.random.default_rng(11)
        steps = np.arange(args.steps)
        loss = 3.0 / (1 + steps / 20000) + 0.02 * rng.standard_normal(args.steps)
        lr = np.full(args.steps, 1e-3)
        spike_steps = np.sort(rng.choice(args.steps, args.spikes, replace=False))
        loss[spike_steps] = 10.0 + np.arange(args.spikes)
        started = time.perf_counter()
        batch = 5000
        for lo in range(0, args.steps, batch):
            records = [
                {"kind": "metrics", "step": s, "values": {"loss": a, "lr": b}}
                for s, a, b in zip(
                    range(lo, min(lo + batch, args.steps)),
                    loss[lo : lo + batch].tolist(),
                    lr[lo : lo + batch].tolist(),
                    strict=True,
                )
            ]
            metrics.metrics_record(run=run, records=records)
        build = time.perf_counter() - started
        blocks = MetricBlock.objects.filter(series__run=run).count()
        print(
            f"database: {'PostgreSQL' if use_pg else 'SQLite'}; wrote {args.steps:,} steps x 2 keys with "
            f"{args.spikes} spikes in {build:.1f} s; {blocks} blocks",
            flush=True,
        )

        client = Client()
        client.force_login(user)

        def timed(url: str) -> tuple[float, float, dict]:
            times, body = [], b""
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                answer = client.get(url)
                times.append(time.perf_counter() - t0)
                assert answer.status_code == 200, answer.content[:200]
                body = answer.content
            return statistics.median(times) * 1000, len(body) / 1024, orjson.loads(body)

        base = f"/api/v1/runs/{run.pk}/series/"
        cases = [
            ("zoomed out, loss", f"{base}?keys=loss&max_points=1500"),
            ("zoomed out, loss+lr", f"{base}?keys=loss,lr&max_points=1500"),
            ("zoom 100k steps, loss", f"{base}?keys=loss&lo=400000&hi=499999&max_points=1500"),
            ("zoom 1,500 steps, loss", f"{base}?keys=loss&lo=500000&hi=501499&max_points=1500"),
        ]
        print(f"{'read':<26}{'server ms (median)':>20}{'JSON KB':>10}  mode      spikes shown")
        for label, url in cases:
            ms, kb, body = timed(url)
            series = body["keys"]["loss"]
            lo = int(url.split("lo=")[1].split("&")[0]) if "lo=" in url else 0
            hi = int(url.split("hi=")[1].split("&")[0]) if "hi=" in url else args.steps - 1
            expected = [int(s) for s in spike_steps if lo <= s <= hi]
            shown = 0
            if series["mode"] == "envelope":
                width, starts = series["bucket"], series["steps"]
                index = {s: i for i, s in enumerate(starts)}
                for s in expected:
                    i = index.get(lo + (s - lo) // width * width)
                    shown += i is not None and series["max"][i] >= 10.0 + float(np.flatnonzero(spike_steps == s)[0])
            else:
                index = {s: i for i, s in enumerate(series["steps"])}
                shown = sum(series["values"][index[s]] >= 10.0 for s in expected if s in index)
            print(f"{label:<26}{ms:>20.1f}{kb:>10.1f}  {series['mode']:<9} {shown}/{len(expected)}")
    finally:
        if use_pg:
            from django.db import connections

            connections.close_all()
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{DB}"')


if __name__ == "__main__":
    main()
