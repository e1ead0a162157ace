"""Ingest throughput: this control plane against MLflow 3's tracking server, both on the same PostgreSQL.

    .venv/bin/python bench/ingest.py [--seconds 6] [--workers 2] [--skip-mlflow] [--runs 1 8 32]
                                     [--modes batched stepwise] [--body columns|records|both]

Simulated runs post like a trainer's reporter: one keep-alive connection each, one request at a time, 4 metrics
per step (loss, lr, grad_norm, tokens_per_s, so the detectors run), either 50 steps per request or one, in the
body form the reporter sends (columns: jobs.reporter.ingest_body), or as records (`--body records`), or each cell
in both forms one after the other on the same server (`--body both`). Every
phase is bounded in time (--seconds) and runs against 127.0.0.1 only. Needs PostgreSQL at 127.0.0.1:5432 (user
postgres) and Redis at 127.0.0.1:6379; it creates and drops the databases cp_bench and mlflow_bench. MLflow goes
into bench/.venv-mlflow (created on first use; keep it out of git).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psycopg
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from jobs.reporter import ingest_body as reporter_body  # noqa: E402  (the repository on the path first)

PG = "postgresql://postgres@127.0.0.1:5432"
CP_DB, MLFLOW_DB = "cp_bench", "mlflow_bench"
MLFLOW_VENV = ROOT / "bench" / ".venv-mlflow"
MLFLOW_PIN = ["mlflow==3.17.2", "psycopg2-binary==2.9.11"]
KEYS = ("loss", "lr", "grad_norm", "tokens_per_s")
RUN_COUNTS = (1, 8, 32)
WARM_RUNS = 2  # runs of their own for the warm-up, so a measured run never starts behind its own last step
MODES = (("batched", 50), ("stepwise", 1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recreate_database(name: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def vacuum(database: str) -> None:
    """VACUUM a database, as autovacuum would have by now. This machine's PostgreSQL runs with autovacuum off, and
    row versions left by updates and deletes pile up from cell to cell: without it, this control plane's
    PostgreSQL CPU per request doubled within a minute of load (its series and block tables churn)."""
    with psycopg.connect(f"{PG}/{database}", autocommit=True) as conn:
        conn.execute("VACUUM")


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited at start:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit(f"server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _stat(pid: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (raises OSError once the process is gone)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat(entry)
            except OSError:
                continue
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        if current in stats:
            total += _cpu_seconds(stats[current])
    return total


def backends_cpu(database: str) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend connected to `database` (their titles name it)."""
    used = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
            if f" {database} ".encode() not in title or not title.startswith(b"postgres:"):
                continue
            used[int(entry)] = _cpu_seconds(_stat(entry))
        except OSError:
            continue
    return used


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two backends_cpu readings; a backend that exited meanwhile is not counted."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def wait_idle(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the server's processes are idle. controlplane.asgi imports DeepSpeed's planners in a background
    thread of every worker at start (seconds of CPU each): that start-up must not be measured as ingest."""
    deadline = time.monotonic() + timeout
    used = process_tree_cpu(proc.pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = process_tree_cpu(proc.pid)
        if now - used < 0.05:
            return
        used = now


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# The load: raw HTTP/1.1 over asyncio streams, so the client's own cost stays small beside the servers'.


class Conn:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def head(port: int, path: str, token: str, length: int) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def values_at(step: int) -> dict:
    return {
        "loss": 3.0 / (1 + step / 1000) + (step % 7) * 1e-3,
        "lr": 1e-3,
        "grad_norm": 0.8 + (step % 5) * 0.01,
        "tokens_per_s": 18000.0 + (step % 11),
    }


def cp_body(start: int, steps: int, form: str) -> bytes:
    now = time.time()
    records = [{"kind": "metrics", "step": s, "time": now, "values": values_at(s)} for s in range(start, start + steps)]
    return reporter_body(records) if form == "columns" else orjson.dumps({"records": records})


def mlflow_body(run_id: str, start: int, steps: int) -> bytes:
    ms = int(time.time() * 1000)
    metrics = [
        {"key": k, "value": v, "timestamp": ms, "step": s}
        for s in range(start, start + steps)
        for k, v in values_at(s).items()
    ]
    return orjson.dumps({"run_id": run_id, "metrics": metrics})


def request_bytes(target: dict, run_index: int, step: int, steps_per_req: int) -> bytes:
    """One request of a run's reporter, head and body."""
    if target["kind"] == "cp":
        run_id, token = target["runs"][run_index]
        body = cp_body(step, steps_per_req, target["body"])
        path = f"/api/v1/ingest/{run_id}/"
    else:
        run_id, token = target["runs"][run_index], ""
        body = mlflow_body(run_id, step, steps_per_req)
        path = "/api/2.0/mlflow/runs/log-batch"
    return head(target["port"], path, token, len(body)) + body


# The requests of a cell are built before it starts, up to more than any server here answered in that time (and at
# most PREBUILT_BYTES): building a batch of 50 steps took ~30 us of the 2 cores that the servers measured share,
# which on a cluster are the reporters' own. A run that runs out has the rest built as it goes.
PREBUILT_RATE = {"batched": 6000, "stepwise": 20000}  # requests per second, over all runs
PREBUILT_BYTES = 400 * 2**20


def prebuild(target: dict, runs: int, steps_per_req: int, seconds: float, start_step: int) -> list[list[bytes]]:
    rate = PREBUILT_RATE["batched" if steps_per_req > 1 else "stepwise"]
    size = len(request_bytes(target, 0, start_step, steps_per_req))
    per_run = int(min(seconds * rate, PREBUILT_BYTES / size) / runs) + 1
    return [
        [request_bytes(target, i, start_step + k * steps_per_req, steps_per_req) for k in range(per_run)]
        for i in range(runs)
    ]


async def simulate(
    target: dict, run_index: int, steps_per_req: int, until: float, stats: dict, start_step: int, built: list[bytes]
):
    conn = Conn(target["port"])
    sent = 0  # requests of this run answered with success
    try:
        while time.monotonic() < until:
            if sent < len(built):
                data = built[sent]
            else:
                data = request_bytes(target, run_index, start_step + sent * steps_per_req, steps_per_req)
                stats["built_live"] += 1
            t0 = time.perf_counter()
            try:
                status = await asyncio.wait_for(conn.request(data), 30)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                stats["errors"] += 1
                conn.close()
                await asyncio.sleep(0.05)
                continue
            elapsed = time.perf_counter() - t0
            if 200 <= status < 300:
                stats["points"] += steps_per_req * len(KEYS)
                stats["latency"].append(elapsed)
                sent += 1
            else:
                stats["errors"] += 1
                stats.setdefault("statuses", set()).add(status)
    finally:
        conn.close()


def load(target: dict, runs: int, steps_per_req: int, seconds: float, start_step: int) -> dict:
    stats: dict = {"points": 0, "errors": 0, "latency": [], "built_live": 0}
    built = prebuild(target, runs, steps_per_req, seconds, start_step)

    async def main():
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(simulate(target, i, steps_per_req, until, stats, start_step, built[i]) for i in range(runs))
        )

    server0, backends0, load0 = process_tree_cpu(target["pid"]), backends_cpu(target["database"]), time.process_time()
    t0 = time.monotonic()
    uvloop.run(main())  # the client's own CPU is taken from the same 2 cores: the leaner loop
    wall = time.monotonic() - t0
    used = (
        process_tree_cpu(target["pid"]) - server0,
        cpu_used(backends0, backends_cpu(target["database"])),
        time.process_time() - load0,
    )
    lat = sorted(stats["latency"])
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {
        "pps": stats["points"] / wall,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "errors": stats["errors"],
        "requests": len(lat),
        "statuses": sorted(stats.get("statuses", ())),
        "built_live": stats["built_live"],
        # CPU ms per answered request: the server's processes, its PostgreSQL backends, this load generator
        "cpu": [seconds * 1000 / max(1, len(lat)) for seconds in used],
    }


# This control plane


def setup_cp(n_runs: int) -> list[tuple[int, str]]:
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{CP_DB}"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    script = (
        "import django, json; django.setup()\n"
        "from django.contrib.auth import get_user_model\n"
        "from runs.services.seed import seed_defaults\n"
        "from runs.services.tokens import run_token_issue\n"
        "from tests.runs.factories import tiny_run\n"
        "seed_defaults()\n"
        "user = get_user_model().objects.create_user('bench', password='bench-pass-123')\n"
        f"runs = [tiny_run(owner=user, name=f'bench-{{i}}') for i in range({n_runs})]\n"
        "print(json.dumps([[r.pk, run_token_issue(run=r, kind='operator').secret] for r in runs]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "controlplane.settings"},
        check=True,
        capture_output=True,
        text=True,
    )
    return [tuple(x) for x in orjson.loads(out.stdout.strip().splitlines()[-1])]


def wait_ready(proc: subprocess.Popen, port: int, path: str, timeout: float, log: Path) -> None:
    """Until the server answers on path and its processes are idle; a server that never got there is stopped, as it
    would otherwise outlive the bench."""
    try:
        wait_http(port, path, proc, timeout, log)
        wait_idle(proc)
    except BaseException:
        stop(proc)
        raise


def start_cp(workers: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{CP_DB}",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"),
        "OMP_NUM_THREADS": "1",
        "CP_LOG_LEVEL": "WARNING",
    }
    sys.path.insert(0, str(ROOT))
    from controlplane.processes import web_server_argv

    proc = subprocess.Popen(
        web_server_argv(port=port, log_level="warning", workers=workers),
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_ready(proc, port, "/healthz", 120, log)
    return proc, port


# MLflow


def ensure_mlflow() -> Path:
    mlflow = MLFLOW_VENV / "bin" / "mlflow"
    if not mlflow.exists():
        print("installing MLflow into bench/.venv-mlflow ...", flush=True)
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", *MLFLOW_PIN], check=True)
    return mlflow


def start_mlflow(extra: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(ensure_mlflow()),
            "server",
            "--backend-store-uri",
            f"postgresql+psycopg2://postgres@127.0.0.1:5432/{MLFLOW_DB}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        cwd=ROOT / "bench",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_ready(proc, port, "/health", 180, log)
    return proc, port


def mlflow_runs(port: int, n: int, label: str) -> list[str]:
    async def main():
        conn = Conn(port)
        body = orjson.dumps({"name": f"bench-{label}-{time.time_ns()}"})
        ids = []
        conn_reader = await _json_call(conn, port, "/api/2.0/mlflow/experiments/create", body)
        exp = conn_reader["experiment_id"]
        for i in range(n):
            out = await _json_call(
                conn,
                port,
                "/api/2.0/mlflow/runs/create",
                orjson.dumps({"experiment_id": exp, "run_name": f"r{i}", "start_time": 0}),
            )
            ids.append(out["run"]["info"]["run_id"])
        conn.close()
        return ids

    return asyncio.run(main())


async def _json_call(conn: Conn, port: int, path: str, body: bytes) -> dict:
    reader_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = reader_writer
    writer.write(head(port, path, "", len(body)).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + body)
    raw = await reader.read()
    writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    if b"chunked" in header.lower():
        chunks, rest = [], payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2 :]
        payload = b"".join(chunks)
    return orjson.loads(payload)


def run_matrix(targets: dict[str, dict], seconds: float, results: dict, counts, modes) -> None:
    """Each cell for each target (several targets: the same server in turn, cell by cell)."""
    step = 0
    # Warm-up (connection pools, imports, first compactions) on runs that are not measured.
    for target in targets.values():
        load({**target, "runs": target["runs"][-WARM_RUNS:]}, WARM_RUNS, 50, 2.0, step)
        step += 10**6
    for runs in counts:
        for mode, steps_per_req in modes:
            for name, target in targets.items():
                vacuum(target["database"])  # both systems alike, outside the timed window
                results[(name, runs, mode)] = r = load(target, runs, steps_per_req, seconds, step)
                step += 10**6
                print(
                    f"  {name:<24} {runs:>2} runs {mode:<8} {r['pps']:>11,.0f} points/s  p50 {r['p50']:7.1f} ms  "
                    f"p99 {r['p99']:7.1f} ms  errors {r['errors']}{' ' + str(r['statuses']) if r['statuses'] else ''}  "
                    + (f"requests built during the cell {r['built_live']}  " if r["built_live"] else "")
                    + "CPU ms/request: server {:.2f}, PostgreSQL {:.2f}, load {:.2f}".format(*r["cpu"]),
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="load time per configuration (default 6)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers for this control plane")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--runs", type=int, nargs="+", choices=RUN_COUNTS, default=RUN_COUNTS, help="run counts")
    parser.add_argument("--modes", nargs="+", choices=[m for m, _ in MODES], default=[m for m, _ in MODES])
    parser.add_argument(
        "--body", choices=["columns", "records", "both"], default="columns", help="our body form (default columns)"
    )
    args = parser.parse_args()
    counts, modes = args.runs, [m for m in MODES if m[0] in args.modes]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    results: dict = {}
    forms = ["columns", "records"] if args.body == "both" else [args.body]
    systems = [f"controlplane x{args.workers} {form}" for form in forms]

    print(f"PostgreSQL {PG}; {os.cpu_count()} CPUs; {args.seconds:g} s per configuration", flush=True)
    recreate_database(CP_DB)
    try:
        runs = setup_cp(max(RUN_COUNTS) + WARM_RUNS)
        proc, port = start_cp(args.workers, out / "cp-server.log")
        try:
            target = {"kind": "cp", "port": port, "runs": runs, "pid": proc.pid, "database": CP_DB}
            run_matrix(
                {name: {**target, "body": form} for name, form in zip(systems, forms, strict=True)},
                args.seconds,
                results,
                counts,
                modes,
            )
        finally:
            stop(proc)
    finally:
        drop_database(CP_DB)

    if not args.skip_mlflow:
        for label, extra in (
            ("mlflow default (uvicorn x4)", []),
            ("mlflow gunicorn x4", ["--workers", "4", "--gunicorn-opts", "--log-level warning"]),
        ):
            recreate_database(MLFLOW_DB)
            try:
                proc, port = start_mlflow(extra, out / f"mlflow-{len(systems)}.log")
                try:
                    ids = mlflow_runs(port, max(RUN_COUNTS) + WARM_RUNS, str(len(systems)))
                    run_matrix(
                        {label: {"kind": "mlflow", "port": port, "runs": ids, "pid": proc.pid, "database": MLFLOW_DB}},
                        args.seconds,
                        results,
                        counts,
                        modes,
                    )
                    systems.append(label)
                finally:
                    stop(proc)
            finally:
                drop_database(MLFLOW_DB)

    print()
    ours, theirs = systems[: len(forms)], systems[len(forms) :]
    print(
        f"{'configuration':<22}"
        + "".join(f"{s:>32}" for s in systems)
        + ("".join(f"   {form} / best MLflow" for form in forms) if theirs else "")
    )
    for runs in counts:
        for mode, _ in modes:
            row = [results[(s, runs, mode)] for s in systems]
            cells = "".join(
                f"{r['pps']:>14,.0f} pts/s {r['p50']:>5.1f}/{r['p99']:<5.0f}ms e{r['errors']:<3}" for r in row
            )
            ratio = ""
            if theirs:
                best = max(results[(s, runs, mode)]["pps"] for s in theirs)
                for name in ours:
                    ratio += f"   {results[(name, runs, mode)]['pps'] / best:>13.1f}x" if best else "   (MLflow: 0)"
            print(f"{f'{runs} runs, {mode}':<22}{cells}{ratio}")
    print("cells: points/s, p50/p99 request latency, errors (non-2xx answers or failed connections)")


if __name__ == "__main__":
    main()
