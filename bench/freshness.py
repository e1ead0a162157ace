"""Freshness of live charts: a metric point emitted by a trainer -> that point drawn on a run page in the browser.

    .venv/bin/python bench/freshness.py [--runs 32] [--pages 4] [--seconds 30] [--warmup 5] [--metrics 4]
                                        [--charts-js FILE] [--json FILE]

Starts our web server as `make up` does (controlplane.processes.web_server_argv: uvicorn's command, one process,
ingest endpoint and websockets) on PostgreSQL at 127.0.0.1:5432 (user postgres; database cp_fresh, created and dropped) and
Redis at 127.0.0.1:6379 db 3 (BENCH_REDIS_URL overrides). Creates 32 RUNNING runs with ingest tokens and a few
seed points each, opens headless Chromium (/usr/bin/chromium, or CHROMIUM_PATH) logged in as a viewer with one
page per watched run (/runs/<id>/, charts loaded, websocket open), then 32 simulated trainers each post one step
(loss, lr, grad_norm, tokens_per_s) every 100 ms over their own keep-alive connection, one request per step.

Per loss point of the watched runs, all on this machine's wall clock:
  emitted  time.time() just before the POST           (trainer)
  acked    the ingest answer received                   (trainer; the server broadcasts before it answers)
  layer    the `run.points` message off the channel layer (a listener of this process in the run's group)
  socket   the frame received by a websocket client of this process on /ws/runs/<id>/ (the page's consumer path)
  ws       the websocket message event in the page       (Date.now(), a listener added before the page's own)
  drawn    the loss chart drew it                        (window.cpOnDrawn, the hook in static/js/charts.js: the
           new points appended to the drawn line, or Plotly's redraw with them resolved)
Freshness = drawn - emitted. A step drawn as part of a batch counts at that batch's draw time. It also reports the
CPU used in the measured window by the web server, its PostgreSQL connections, Chromium and itself, Chromium's
CPU per chart draw, and how many draws were Plotly's full redraws (a wrapper on Plotly.extendTraces). Each page is
a window of its own, as if each run were watched on its own screen. `--charts-js FILE` serves FILE in place of
static/js/charts.js (to compare client versions; it needs the same cpOnDrawn hook); `--metrics 1` posts loss only
(one chart per page). Results go to bench/results/freshness.json (or --json); the server's log to
bench/out/freshness-web.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import Conn, drop_database, free_port, head, recreate_database, stop, values_at, wait_http  # noqa: E402
from tests.chromium import CHROMIUM_ARGS, chromium_path  # noqa: E402

DB = "cp_fresh"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
SEED_STEPS = 10
PERIOD_S = 0.1  # 10 steps/s per run
GOAL_P99_MS = 250.0
USER, PASSWORD = "fresh-viewer", "fresh-pass-123"

# Runs in every page before its own scripts: records when loss steps arrive on the websocket and when they are drawn.
PAGE_PROBE = """
(() => {
  window.cpDrawn = {}; window.cpWs = {}; window.cpBatches = []; window.cpDraws = []; window.cpWsOpen = false;
  window.cpOnDrawn = (runId, key, steps) => {
    const t = Date.now();
    window.cpDraws.push(t);
    if (key !== "loss") return;
    window.cpBatches.push(steps.length);
    for (const s of steps) if (!(s in window.cpDrawn)) window.cpDrawn[s] = t;
  };
  // Plotly's full redraws of live points (any chart), and how long the loss chart's run synchronously.
  window.cpSync = []; window.cpRedraws = [];
  let plotly;
  Object.defineProperty(window, "Plotly", {configurable: true, get: () => plotly, set: (v) => {
    plotly = v;
    const extend = v.extendTraces;
    v.extendTraces = function (gd, update, ...rest) {
      const t = Date.now();
      const out = extend.call(this, gd, update, ...rest);
      window.cpRedraws.push(t);
      if (gd && gd.id === "chart-loss") window.cpSync.push(Date.now() - t);
      return out;
    };
  }});
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("open", () => { window.cpWsOpen = true; });
      this.addEventListener("message", (ev) => {
        const t = Date.now();
        try {
          const m = JSON.parse(ev.data);
          const pairs = m.type === "run.points" && m.points && m.points.loss;
          if (pairs) for (const p of pairs) if (!(p[0] in window.cpWs)) window.cpWs[p[0]] = t;
        } catch (e) {}
      });
    }
  };
})();
"""


def setup(n_runs: int, metrics: int) -> list[tuple[int, str]]:
    """Migrate, seed, a viewer login, n RUNNING runs with tokens and SEED_STEPS points each: [(run id, token)]."""
    os.environ.update(DATABASE_URL=DATABASE_URL, REDIS_URL=REDIS_URL, DJANGO_SETTINGS_MODULE="controlplane.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connections

    from runs.metrics.store import metrics_record
    from runs.models import RunStatus
    from runs.services.roles import ensure_roles
    from runs.services.seed import seed_defaults
    from runs.services.tokens import run_token_issue
    from runs.services.transitions import transition
    from tests.runs.factories import tiny_run

    call_command("migrate", interactive=False, verbosity=0)
    seed_defaults()
    ensure_roles()
    user = get_user_model().objects.create_user(username=USER, password=PASSWORD)
    user.groups.add(Group.objects.get(name="viewer"))
    out = []
    for i in range(n_runs):
        run = tiny_run(owner=user, name=f"fresh-{i}")
        for status in (RunStatus.QUEUED, RunStatus.LAUNCHING, RunStatus.RUNNING):
            run = transition(run=run, to=status, actor="system")
        token = run_token_issue(run=run, kind="job").secret
        seed = [
            {"kind": "metrics", "step": s, "time": time.time(), "values": values(s, metrics)} for s in range(SEED_STEPS)
        ]
        metrics_record(run=run, records=seed)
        out.append((run.pk, token))
    connections.close_all()
    return out


def start_web(log: Path) -> tuple[subprocess.Popen, int]:
    from controlplane.processes import web_server_argv

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "CP_BASE_URL": f"http://127.0.0.1:{port}",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        web_server_argv(port=port, log_level="warning"),
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(port, "/healthz", proc, 120, log)
    return proc, port


def values(step: int, metrics: int) -> dict:
    return dict(list(values_at(step).items())[:metrics])  # loss first, then lr, grad_norm, tokens_per_s


async def trainer(port: int, run_id: int, token: str, start: float, until: float, posted: dict, stats: dict):
    """One step every PERIOD_S on a fixed schedule, one request at a time; behind schedule (a slow answer), the next
    step goes at once and the missed time is not made up."""
    conn = Conn(port)
    path = f"/api/v1/ingest/{run_id}/"
    step, due = SEED_STEPS, start
    try:
        while due < until:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            emitted = time.time()
            record = {"kind": "metrics", "step": step, "time": emitted, "values": values(step, stats["metrics"])}
            body = orjson.dumps({"records": [record]})
            try:
                status = await asyncio.wait_for(conn.request(head(port, path, token, len(body)) + body), 10)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                status = None
                conn.close()
            if status is not None and 200 <= status < 300:
                posted[run_id][step] = (emitted, time.time())
                step += 1
            else:
                stats["errors"] += 1
            due = max(due + PERIOD_S, time.monotonic())
    finally:
        conn.close()


async def ws_listener(port: int, run_id: int, cookie: str, seen: dict, ready: asyncio.Event):
    """A websocket client of this process on the run's page socket: when the server's frames leave uvicorn."""
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://127.0.0.1:{port}/ws/runs/{run_id}/",
        additional_headers={"Cookie": cookie},
        origin=f"http://127.0.0.1:{port}",
    ) as ws:
        ready.set()
        async for frame in ws:
            now = time.time()
            msg = orjson.loads(frame)
            if msg.get("type") == "run.points":
                for pair in (msg.get("points") or {}).get("loss", []):
                    seen.setdefault(pair[0], now)


async def layer_listener(run_ids: list[int], seen: dict, ready: asyncio.Event):
    """Joins the watched runs' groups on the server's channel layer and stamps each loss step as it comes off."""
    from channels_redis.core import RedisChannelLayer

    from runs.realtime.listeners import group_join

    layer = RedisChannelLayer(hosts=[{"address": REDIS_URL, "socket_timeout": 30}], capacity=2000, expiry=30)
    channel = await layer.new_channel()
    for run_id in run_ids:
        await group_join(layer, f"run-{run_id}", channel)  # as a page's consumer joins: the server hears of it
    ready.set()
    try:
        while True:
            msg = await layer.receive(channel)
            now = time.time()
            if msg.get("type") == "run.points":
                for pair in (msg.get("points") or {}).get("loss", []):
                    seen[msg["run_id"]].setdefault(pair[0], now)
    finally:
        for run_id in run_ids:
            await layer.group_discard(f"run-{run_id}", channel)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict:
    figures = {"p50": pct(values, 0.50), "p90": pct(values, 0.90), "p99": pct(values, 0.99)}
    figures["max"] = max(values) if values else float("nan")
    return {"n": len(values), **{k: round(v, 1) for k, v in figures.items()}}


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _is_renderer(proc: psutil.Process) -> bool:
    try:
        return "--type=renderer" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _backends(db: str) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter():
        try:
            if proc.name() == "postgres" and f" {db} " in " ".join(proc.cmdline()):
                out.append(proc)
        except psutil.Error:
            pass
    return out


def machine_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


async def measure(args, runs: list[tuple[int, str]], port: int, web_pid: int) -> dict:
    from playwright.async_api import async_playwright

    base = f"http://127.0.0.1:{port}"
    watched = [run_id for run_id, _ in runs[: args.pages]]
    posted: dict[int, dict] = {run_id: {} for run_id, _ in runs}
    layer_seen: dict[int, dict] = {run_id: {} for run_id in watched}
    socket_seen: dict[int, dict] = {run_id: {} for run_id in watched}
    stats = {"errors": 0, "metrics": args.metrics}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        script = Path(args.charts_js).read_text() if args.charts_js else ""

        async def serve_charts_js(route):
            await route.fulfill(body=script, content_type="application/javascript")

        login_context = await browser.new_context()
        login = await login_context.new_page()
        await login.goto(f"{base}/accounts/login/")
        await login.fill("#id_username", USER)
        await login.fill("#id_password", PASSWORD)
        await login.click("button[type=submit]")
        await login.wait_for_load_state()
        session = await login_context.storage_state()
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in await login_context.cookies(base))
        await login_context.close()
        pages = {}
        for run_id in watched:
            # A context of its own per page, so each page is a window of its own in front: a tab behind another
            # in one window is not on screen, and Chromium then holds its animation frames back for up to a second.
            context = await browser.new_context(storage_state=session)
            await context.add_init_script(PAGE_PROBE)
            if args.charts_js:
                await context.route("**/static/js/charts.js*", serve_charts_js)
            page = await context.new_page()
            await page.goto(f"{base}/runs/{run_id}/")
            await page.wait_for_function(
                "n => window.cpWsOpen && Number(document.querySelector('#chart-loss')?.dataset.points || 0) >= n",
                arg=SEED_STEPS,
                timeout=60_000,
            )
            pages[run_id] = page
        visibility = [await p.evaluate("document.visibilityState") for p in pages.values()]

        readies = [asyncio.Event() for _ in range(len(watched) + 1)]
        listeners = [asyncio.ensure_future(layer_listener(watched, layer_seen, readies[0]))]
        listeners += [
            asyncio.ensure_future(ws_listener(port, run_id, cookie, socket_seen[run_id], ready))
            for run_id, ready in zip(watched, readies[1:], strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)

        web_proc = psutil.Process(web_pid)
        web = [web_proc, *web_proc.children(recursive=True)]
        chrome = [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]
        renderers = sum(1 for p in chrome if _is_renderer(p))
        postgres: list[psutil.Process] = []  # the server's connections, as open at the window's start
        start = time.monotonic() + 0.2
        t_measure = time.time() + 0.2 + args.warmup
        until = start + args.warmup + args.seconds
        n = len(runs)
        trainers = [
            trainer(port, run_id, token, start + i * PERIOD_S / n, until, posted, stats)
            for i, (run_id, token) in enumerate(runs)
        ]
        cpu0, t_window = None, [0.0, 0.0]  # wall-clock bounds of the CPU window

        def snapshot():
            return (
                cpu_seconds(web),
                cpu_seconds(chrome),
                time.process_time(),
                machine_busy(),
                time.monotonic(),
                cpu_seconds(postgres),
            )

        async def mark_window():
            nonlocal cpu0
            await asyncio.sleep(max(0.0, start + args.warmup - time.monotonic()))
            postgres.extend(_backends(DB))
            cpu0 = snapshot()
            t_window[0] = time.time()

        await asyncio.gather(mark_window(), *trainers)
        t_end = time.time()
        cpu1 = snapshot()
        t_window[1] = time.time()
        await asyncio.sleep(args.drain)
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        page_data = {
            run_id: await page.evaluate(
                "({drawn: cpDrawn, ws: cpWs, sync: cpSync, redraws: cpRedraws, draws: cpDraws, batches: cpBatches})"
            )
            for run_id, page in pages.items()
        }
        await browser.close()

    wall = cpu1[4] - cpu0[4]
    busy0, total0 = cpu0[3]
    busy1, total1 = cpu1[3]
    cpu = {
        "web_server_cores": (cpu1[0] - cpu0[0]) / wall,
        "chromium_cores": (cpu1[1] - cpu0[1]) / wall,
        "bench_process_cores": (cpu1[2] - cpu0[2]) / wall,
        "postgres_cores": (cpu1[5] - cpu0[5]) / wall,
        "machine_busy_cores": (busy1 - busy0) / (total1 - total0) * psutil.cpu_count(),
        "cores": psutil.cpu_count(),
    }
    cpu = {k: round(v, 3) for k, v in cpu.items()} | {"chromium_renderers": renderers}

    fresh, stages = [], {"ack": [], "layer": [], "socket": [], "ws": [], "ws_to_drawn": []}
    missing, batches, sync_ms, redraws, draws = 0, [], [], 0, 0
    for run_id in watched:
        drawn = {int(k): v / 1000 for k, v in page_data[run_id]["drawn"].items()}
        ws = {int(k): v / 1000 for k, v in page_data[run_id]["ws"].items()}
        batches += page_data[run_id]["batches"]
        sync_ms += page_data[run_id]["sync"]
        redraws += sum(1 for t in page_data[run_id]["redraws"] if t_window[0] <= t / 1000 <= t_window[1])
        draws += sum(1 for t in page_data[run_id]["draws"] if t_window[0] <= t / 1000 <= t_window[1])
        for step, (emitted, acked) in posted[run_id].items():
            if not t_measure <= emitted <= t_end:
                continue
            stages["ack"].append((acked - emitted) * 1000)
            if step in layer_seen[run_id]:
                stages["layer"].append((layer_seen[run_id][step] - emitted) * 1000)
            if step in socket_seen[run_id]:
                stages["socket"].append((socket_seen[run_id][step] - emitted) * 1000)
            if step in ws:
                stages["ws"].append((ws[step] - emitted) * 1000)
            if step not in drawn:
                missing += 1
                continue
            fresh.append((drawn[step] - emitted) * 1000)
            if step in ws:
                stages["ws_to_drawn"].append((drawn[step] - ws[step]) * 1000)
    posted_window = sum(1 for steps in posted.values() for e, _ in steps.values() if t_measure <= e <= t_end)
    return {
        "config": {
            "runs": n,
            "pages": args.pages,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "steps_per_s_per_run": 1 / PERIOD_S,
            "metrics_per_step": args.metrics,
            "charts_js": args.charts_js or "static/js/charts.js",
        },
        "freshness_ms": summary(fresh),
        "stages_ms": {k: summary(v) for k, v in stages.items()},
        "watched_steps_never_drawn": missing,
        "loss_extendtraces_sync_ms": summary(sync_ms),
        "chart_draws_per_s": draws / wall,
        "plotly_redraws_per_s": redraws / wall,
        "chromium_cpu_ms_per_draw": cpu["chromium_cores"] * wall * 1000 / draws if draws else float("nan"),
        "steps_per_draw_max": max(batches) if batches else 0,
        "draws_with_more_than_one_step": sum(1 for b in batches if b > 1),
        "steps_posted": posted_window,
        "points_posted": posted_window * 4,
        "steps_per_s_per_run": posted_window / n / args.seconds,
        "post_errors": stats["errors"],
        "page_visibility": visibility,
        "cpu_during_window": cpu,
        "goal_p99_ms": GOAL_P99_MS,
        "goal_met": bool(fresh) and pct(fresh, 0.99) <= GOAL_P99_MS and missing == 0,
        "load_average": os.getloadavg(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def report(r: dict) -> None:
    f, s, c = r["freshness_ms"], r["stages_ms"], r["cpu_during_window"]
    cfg = r["config"]
    print(
        f"{cfg['runs']} runs x {cfg['steps_per_s_per_run']:g} steps/s x {cfg['metrics_per_step']} metrics, "
        f"{cfg['pages']} watched pages, "
        f"{cfg['seconds']:g} s measured after {cfg['warmup']:g} s warm-up"
    )
    print(
        f"points drawn {f['n']}: freshness p50 {f['p50']:.0f} ms  p90 {f['p90']:.0f} ms  p99 {f['p99']:.0f} ms  "
        f"max {f['max']:.0f} ms"
    )
    print(
        f"points posted {r['points_posted']} ({r['steps_posted']} steps, {r['steps_per_s_per_run']:.2f} steps/s "
        f"per run), post errors {r['post_errors']}, watched steps never drawn {r['watched_steps_never_drawn']}"
    )
    print("stages from emit (p50 / p99 ms):")
    for name, label in (
        ("ack", "ingest answered (after commit + broadcast)"),
        ("layer", "off the channel layer (listener here)"),
        ("socket", "websocket frame at a Python client here"),
        ("ws", "websocket message event in the page"),
        ("ws_to_drawn", "page: message event -> drawn"),
    ):
        print(f"  {label:<50} {s[name]['p50']:7.0f} / {s[name]['p99']:.0f}")
    sync = r["loss_extendtraces_sync_ms"]
    print(
        f"chart draws in the pages: {r['chart_draws_per_s']:.0f}/s, of them Plotly redraws "
        f"{r['plotly_redraws_per_s']:.0f}/s (the rest appended to the drawn line); chromium CPU per draw "
        f"{r['chromium_cpu_ms_per_draw']:.1f} ms; up to {r['steps_per_draw_max']} steps per draw"
    )
    print(f"loss chart's Plotly redraw, synchronous part: p50 {sync['p50']:.0f} ms, p99 {sync['p99']:.0f} ms")
    print(
        f"CPU in the window (cores of {c['cores']}): web server {c['web_server_cores']:.2f}, PostgreSQL "
        f"{c['postgres_cores']:.2f}, chromium {c['chromium_cores']:.2f} ({c['chromium_renderers']} renderers), "
        f"this bench {c['bench_process_cores']:.2f}; machine busy {c['machine_busy_cores']:.2f} (others' work too)"
    )
    verdict = "met" if r["goal_met"] else "missed"
    print(f"goal: p99 <= {r['goal_p99_ms']:.0f} ms and nothing undrawn: {verdict} (p99 {f['p99']:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--pages", type=int, default=4, help="runs watched in a browser page each (default 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time after the warm-up (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--metrics", type=int, default=4, choices=range(1, 5), help="metrics per step (1: loss only)")
    parser.add_argument("--charts-js", help="serve this file as static/js/charts.js (compare client versions)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "freshness.json"), help="results file")
    parser.add_argument("--drain", type=float, default=3.0, help="wait after the last post before reading pages")
    args = parser.parse_args()
    args.pages = min(args.pages, args.runs)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    print(f"PostgreSQL 127.0.0.1:5432/{DB}, Redis {REDIS_URL}; {os.cpu_count()} CPUs", flush=True)
    recreate_database(DB)
    try:
        runs = setup(args.runs, args.metrics)
        proc, port = start_web(out / "freshness-web.log")
        try:
            result = asyncio.run(measure(args, runs, port, proc.pid))
        finally:
            stop(proc)
    finally:
        drop_database(DB)
    report(result)
    dest = Path(args.json).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
