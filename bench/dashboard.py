"""The dashboard's pages in Chromium on large histories: run page cold load with 12 charts over 1 M steps, the runs
table of 10,000 runs filtered and sorted, and the compare page of 8 runs x 1 M steps.

    .venv/bin/python bench/dashboard.py [--steps 1000000] [--runs 10000] [--repeat 5]

Goals (issue 20): run page interactive <= 1.0 s and transfer <= 1.5 MB; runs table <= 200 ms server time; compare
page <= 1.5 s.

Uses PostgreSQL at 127.0.0.1:5432 (database cp_bench_dashboard, created and dropped) when it answers, else SQLite,
in a state folder under bench/out/dashboard/ (its collected static files are kept between runs: collecting and
compressing them takes minutes). Points are written through the metrics store in batches, as ingest writes them.
The pages are served by the project's own web server command (`controlplane.processes.web_server_argv`) with
the static files collected and compressed as `manage.py up` serves them, and loaded by the machine's Chromium through Playwright:
- run page: a new browser context per load (cold cache), from navigation start until all 12 charts are drawn
  (each chart's data-points set by static/js/charts.js), and the bytes transferred (navigation + resources);
- runs table: the server's time for the page (Django's test client in-process, so no network), several filters
  and sorts, median of --repeat;
- compare page: 8 runs overlaid, from navigation start until every overlay chart is drawn;
- a run of 200 metric keys (--wide-steps steps each; no goal of its own, printed beside the others): from
  navigation start until the charts of the open sections are drawn (a section of more charts than charts.js's
  OPEN_SECTION_MAX starts closed), then from opening its 192-chart section (scrolled to) until the charts in the
  window are drawn (the others are drawn as they are scrolled near).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "bench" / "out" / "dashboard"
DB = os.environ.get("CP_BENCH_DB", "cp_bench_dashboard")  # overridable so two checkouts can measure at once
RUN_PAGE_KEYS = [
    "loss", "lr", "grad_norm", "aux_loss", "tokens_per_s", "mfu", "step_time_s", "mem_gb",
    "sys/cpu_pct", "sys/mem_gb", "sys/gpu0/util_pct", "sys/gpu0/temp_c",
]  # fmt: skip
COMPARE_KEYS = ["loss", "lr", "grad_norm", "tokens_per_s"]
WIDE_KEYS = RUN_PAGE_KEYS[:8] + [f"layer_{i:03d}/grad_norm" for i in range(192)]
USER, PASSWORD = "dash-bench", "dash-bench-pass-1"


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


def write_series(run, keys: list[str], steps: int, seed: int) -> None:
    import numpy as np

    import runs.metrics.store as metrics

    rng = np.random.default_rng(seed)
    x = np.arange(steps)
    curves = {}
    for i, key in enumerate(keys):
        base = 3.0 / (1 + x / (20000 + 1000 * i)) + 0.5 * i
        curves[key] = (base + 0.02 * rng.standard_normal(steps)).tolist()
    from runs.metrics.validation import MAX_POINTS, MAX_RECORDS

    batch = min(MAX_RECORDS, MAX_POINTS // len(keys))  # the most one ingest request may carry
    for lo in range(0, steps, batch):
        hi = min(lo + batch, steps)
        records = [{"kind": "metrics", "step": s, "values": {k: curves[k][s] for k in keys}} for s in range(lo, hi)]
        metrics.metrics_record(run=run, records=records)


def make_table_runs(template, count: int) -> None:
    """`count` runs beside the benchmark's own, with statuses, tags, notes and a loss series each."""
    import numpy as np
    from django.utils import timezone

    from runs.metrics import rollups as ru
    from runs.models import MetricBlock, MetricSeries, Run, RunStatus

    statuses = [s for s, _ in RunStatus.choices]
    now = timezone.now()
    rows = [
        Run(
            name=f"table-{i:05d}-{['sweep', 'baseline', 'ablation'][i % 3]}",
            owner_id=template.owner_id,
            preset="tiny",
            trainer=template.trainer,
            config=template.config,
            plan=template.plan,
            recipe_id=template.recipe_id,
            cluster_id=template.cluster_id,
            status=statuses[i % len(statuses)],
            tags=f",{['lr', 'moe', 'dense', 'long'][i % 4]},",
            notes="kept for the comparison" if i % 10 == 0 else "",
            last_step=i % 300,
            started_at=now - timezone.timedelta(minutes=i % 500 + 1),
            finished_at=now if i % 2 else None,
        )
        for i in range(count)
    ]
    created = Run.objects.bulk_create(rows, batch_size=2000)
    series = MetricSeries.objects.bulk_create(
        [MetricSeries(run=r, key="loss", points=1, last_step=0, last_value=2.0 + (r.pk % 97) / 100) for r in created],
        batch_size=2000,
    )
    one = np.zeros(1, np.int64)
    blocks = [
        MetricBlock(
            series=s,
            step_lo=0,
            step_hi=0,
            n=1,
            vmin=s.last_value - 0.1,
            vmax=s.last_value,
            steps=ru.pack_steps(one),
            values=ru.pack_values(np.array([s.last_value])),
        )  # fmt: skip
        for s in series
    ]
    MetricBlock.objects.bulk_create(blocks, batch_size=2000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--compare-runs", type=int, default=8)
    parser.add_argument("--wide-steps", type=int, default=20_000, help="steps of the 200-key run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=8653)
    args = parser.parse_args()

    use_pg = pg_available()
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "db.sqlite3").unlink(missing_ok=True)
    os.environ["CP_VAR_DIR"] = str(STATE)
    os.environ["DATABASE_URL"] = (
        f"postgres://postgres@127.0.0.1:5432/{DB}" if use_pg else f"sqlite:///{STATE}/db.sqlite3"
    )
    os.environ["REDIS_URL"] = f"unix://{STATE}/redis.sock"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    os.environ["CP_LOG_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import logging

    logging.getLogger("runs.realtime.broadcast").setLevel(logging.ERROR)
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    import runs.metrics.store as metrics
    import runs.services.alerts as alerts
    from controlplane import embedded_redis
    from controlplane.processes import web_server_argv
    from controlplane.staticfiles import collect_static
    from runs.services.roles import ensure_roles
    from runs.services.seed import seed_defaults
    from tests.runs.factories import tiny_run

    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]
    alerts.broadcast_on_commit = lambda group, message: None  # nothing listens while the data is written
    metrics.broadcast_many_on_commit = lambda messages: None
    redis_proc = embedded_redis.start(str(STATE / "redis.sock"), workdir=str(STATE))
    web = None
    try:
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        if collect_static():
            print(f"collected and compressed the static files in {time.perf_counter() - started:.0f} s", flush=True)
        ensure_roles()
        seed_defaults()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        user = get_user_model().objects.create_user(USER, password=PASSWORD)
        user.groups.add(Group.objects.get(name="viewer"))
        started = time.perf_counter()
        page_run = tiny_run(owner=user, name="dash-bench-12-charts")
        write_series(page_run, RUN_PAGE_KEYS, args.steps, seed=1)
        compared = [page_run]
        for i in range(1, args.compare_runs):
            run = tiny_run(owner=user, name=f"dash-bench-compare-{i}")
            write_series(run, COMPARE_KEYS, args.steps, seed=1 + i)
            compared.append(run)
        wide_run = tiny_run(owner=user, name="dash-bench-200-keys")
        write_series(wide_run, WIDE_KEYS, args.wide_steps, seed=99)
        wrote = time.perf_counter() - started
        make_table_runs(page_run, args.runs)
        print(
            f"database: {'PostgreSQL' if use_pg else 'SQLite'}; wrote {args.steps:,} steps x {len(RUN_PAGE_KEYS)} keys "
            f"+ {args.compare_runs - 1} runs x {args.steps:,} steps x {len(COMPARE_KEYS)} keys "
            f"+ {args.wide_steps:,} steps x {len(WIDE_KEYS)} keys in {wrote:.0f} s; {args.runs:,} more runs for the table",
            flush=True,
        )

        # Runs table: the server's time, in-process.
        client = Client()
        client.force_login(user)
        cases = [
            ("newest first (default)", "/runs/"),
            ("status=running, sort by name", "/runs/?status=running&sort=name"),
            ("search 'sweep', newest first", "/runs/?q=sweep"),
            ("tag=moe, sort by duration", "/runs/?tag=moe&sort=-duration"),
            ("sort by final loss", "/runs/?sort=final"),
            ("sort by best loss, search 'baseline'", "/runs/?sort=best&q=baseline"),
        ]
        print(f"\nruns table, {args.runs + args.compare_runs:,} runs: server time (median of {args.repeat})")
        table = {}
        for label, url in cases:
            times = []
            for _ in range(args.repeat + 1):
                t0 = time.perf_counter()
                answer = client.get(url)
                times.append(time.perf_counter() - t0)
                assert answer.status_code == 200, answer.content[:300]
            table[label] = statistics.median(times[1:]) * 1000
            print(f"  {label:<40}{table[label]:8.1f} ms", flush=True)

        # Pages in Chromium, served by the project's web server.
        env = {**os.environ, "CP_BASE_URL": f"http://127.0.0.1:{args.port}"}
        web = subprocess.Popen(web_server_argv(port=args.port), cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=open(STATE / "web.log", "wb"))  # fmt: skip
        base = f"http://127.0.0.1:{args.port}"
        import httpx

        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        measure_pages(args, base, page_run.pk, [r.pk for r in compared], wide_run.pk)
    finally:
        if web is not None:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=20)
        embedded_redis.stop(redis_proc, str(STATE / "redis.sock"))


DRAWN = """(n) => { const charts = [...document.querySelectorAll('.chart[id^="chart-"]')];
  return charts.length >= n && charts.every((c) => c.dataset.points && Number(c.dataset.points) > 0); }"""
OPEN_DRAWN = """(n) => { const charts = [...document.querySelectorAll('details.chart-group[open] .chart[id^="chart-"]')];
  return charts.length >= n && charts.every((c) => c.dataset.points && Number(c.dataset.points) > 0); }"""
IN_VIEW_DRAWN = """(id) => { const charts = [...document.querySelectorAll(`#${id} .chart[id^="chart-"]`)].filter((c) => {
    const r = c.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; });
  return charts.length > 0 && charts.every((c) => c.dataset.points && Number(c.dataset.points) > 0); }"""
TRANSFER = """() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
  .reduce((n, e) => n + (e.transferSize || 0), 0)"""


def measure_pages(args, base: str, run_id: int, compared: list[int], wide_id: int) -> None:
    from playwright.sync_api import sync_playwright

    from tests.chromium import CHROMIUM_ARGS, chromium_path

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        login = browser.new_context()
        page = login.new_page()
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", USER)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/runs/")
        cookies = login.cookies()
        login.close()

        def cold(url: str, charts: int) -> tuple[float, float, int]:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies(cookies)
            page = context.new_page()
            page.goto(url, wait_until="commit")
            page.wait_for_function(DRAWN, arg=charts, timeout=60_000, polling="raf")
            drawn_ms = page.evaluate("() => performance.now()")
            page.wait_for_load_state("load")
            transfer = page.evaluate(TRANSFER)
            n = page.locator('.chart[id^="chart-"]').count()
            context.close()
            return drawn_ms, transfer, n

        print(f"\nChromium, cold cache, median of {args.repeat} loads (first load not counted)")
        for label, url, charts, goal_ms in (
            (f"run page, {len(RUN_PAGE_KEYS)} charts x {args.steps:,} steps", f"{base}/runs/{run_id}/", 12, 1000),
            (
                f"compare page, {len(compared)} runs x {args.steps:,} steps",
                f"{base}/runs/compare/?" + "&".join(f"run={r}" for r in compared),
                len(COMPARE_KEYS),
                1500,
            ),
        ):
            loads = [cold(url, charts) for _ in range(args.repeat + 1)][1:]
            ms = statistics.median(x[0] for x in loads)
            kb = statistics.median(x[1] for x in loads) / 1024
            print(f"  {label:<44} drawn {ms:7.0f} ms (goal {goal_ms}), transfer {kb:7.0f} KB, {loads[0][2]} charts")

        def wide() -> tuple[float, float, int]:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies(cookies)
            page = context.new_page()
            page.goto(f"{base}/runs/{wide_id}/", wait_until="commit")
            page.wait_for_function(OPEN_DRAWN, arg=8, timeout=60_000, polling="raf")
            shown_ms = page.evaluate("() => performance.now()")
            section = page.evaluate("() => document.querySelector('details.chart-group:not([open])').id")
            started = page.evaluate(
                f"""() => {{ const s = document.getElementById('{section}'); s.open = true; s.scrollIntoView();
                return performance.now(); }}"""
            )
            page.wait_for_function(IN_VIEW_DRAWN, arg=section, timeout=120_000, polling="raf")
            opened_ms = page.evaluate("() => performance.now()") - started
            n = page.locator(f"#{section} .chart").count()
            context.close()
            return shown_ms, opened_ms, n

        loads = [wide() for _ in range(args.repeat + 1)][1:]
        shown = statistics.median(x[0] for x in loads)
        opened = statistics.median(x[1] for x in loads)
        print(
            f"  {f'run page, {len(WIDE_KEYS)} keys x {args.wide_steps:,} steps':<44} open sections drawn {shown:7.0f} ms; "
            f"opening the closed section ({loads[0][2]} charts) until those in the window are drawn {opened:7.0f} ms"
        )
        browser.close()


if __name__ == "__main__":
    main()
