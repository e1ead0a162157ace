"""The fault suite's harness: a whole control plane on its own PostgreSQL and Redis, faults by real signals.

`python -m tests.faults.harness [--only NAME ...] [--out table.json]` starts, under a temporary folder, a private
PostgreSQL cluster (initdb with the machine's binaries, its own port and socket folder), a private redis-server, the
web server (uvicorn) and a Celery worker, all as killable processes; the machine's 5432/6379 are never touched.
Each scenario launches a small run of the tiny preset on one CPU rank, injects its fault (SIGKILL of the worker,
web server, Redis or PostgreSQL and a restart; SIGSTOP of the trainer; OOM, NaN or a loss spike inside the job;
a cancel during remediation) and waits for the run to end. Then it checks the invariants:
- the run is in the state its job is in (the scenario's expected final state);
- exactly one job per attempt (each attempt's job starts once: one `started` event per attempt with a job);
- every step of metrics.jsonl is stored once (the loss series holds exactly the steps the file's last attempt
  logged, nothing lost, nothing twice) and each alert kind is open at most once per attempt;
- automatic relaunches within the policy's bounds.
It prints and writes the table: fault, detection time, recovery time, points lost, final state, verdict.
Django is set up inside this process against the private database (so it is not a pytest-django test itself;
tests/faults/test_faults.py runs it as a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANG_TIMEOUT_S = 15  # the scenarios' alerts.hang_timeout_s
PG_BIN = Path(os.environ.get("CP_FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # a dependency being down is what the suite is about
            pass
        time.sleep(step)
    return False


def _as_pg(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, run its programs as the machine's postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class Postgres:
    def __init__(self, root: Path):
        home = root / "pgroot"
        self.data, self.sock, self.port = home / "data", home / "sock", free_port()
        self.sock.mkdir(parents=True, exist_ok=True)
        self.log = home / "pg.log"
        if os.geteuid() == 0:
            root.chmod(0o755)
            shutil.chown(home, "postgres")
            shutil.chown(self.sock, "postgres")
        subprocess.run(_as_pg([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8"]), check=True, capture_output=True)  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/cp_faults"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                               "start"]), check=True, capture_output=True)  # fmt: skip

    def kill(self) -> None:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _alive(pid), 10)
        # The backends of a SIGKILLed postmaster exit by themselves; a stale pid file is handled by pg_ctl start.

    def createdb(self) -> None:
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "cp_faults"], check=True, capture_output=True)  # fmt: skip


class Redis:
    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.root / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        _wait(lambda: _redis_ping(self.port), 10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _redis_ping(port: int) -> bool:
    import redis

    return bool(redis.Redis(port=port, socket_timeout=0.5).ping())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Row:
    fault: str
    scenario: str = ""
    detection_s: float | None = None
    recovery_s: float | None = None
    points_lost: int = 0
    points_duplicated: int = 0
    final_state: str = ""
    expected_state: str = ""
    attempts: int = 0
    min_attempts: int = 1  # a remedied fault must show the relaunch
    max_detection_s: float | None = None  # the bound for this fault, where it names one
    max_recovery_s: float | None = None
    jobs_per_attempt_ok: bool = True
    alerts_once: bool = True
    ok: bool = False
    detail: str = ""
    notes: list[str] = field(default_factory=list)


class ControlPlane:
    """The web server and a worker on the private services; restartable one by one."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.web_port = int(env["CP_BASE_URL"].rsplit(":", 1)[1])
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, argv: list[str], name: str, extra: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        return subprocess.Popen(argv, cwd=ROOT, env={**self.env, **(extra or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def start_web(self) -> None:
        from controlplane.processes import web_server_argv

        self.web = self._spawn(web_server_argv(port=self.web_port, workers=1), "web")
        import httpx

        _wait(lambda: httpx.get(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1).status_code == 200, 60)

    def kill_web(self) -> None:
        if self.web is not None:
            os.killpg(self.web.pid, signal.SIGKILL)
            self.web.wait()

    def start_worker(self, inject: dict | None = None, name: str = "w1") -> subprocess.Popen:
        from controlplane.processes import worker_argv

        proc = self._spawn(worker_argv(concurrency=2, name=f"{name}@faults"), f"worker-{name}", inject)
        self.workers.append(proc)
        return proc

    def kill_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers = []

    def stop(self) -> None:
        self.kill_workers()
        self.kill_web()


# --- one scenario ----------------------------------------------------------------------------------------------


def _config(steps: int = 12, **overrides) -> dict:
    from runs.planning.presets import preset_config

    cfg = preset_config("tiny")
    cfg["batch"].update(micro_batch=8, grad_accum=2, seq_len=64, global_batch_tokens=8 * 2 * 64)
    cfg["training"].update(token_budget=1024 * steps, checkpoint_interval=3, log_interval=1, keep_checkpoints=5)
    cfg["optimizer"]["warmup_steps"] = 2
    cfg["curriculum"] = [{"start_step": 0, "seq_len": 64}]
    cfg["remediation"].update(max_attempts=3, backoff_s=1.0)
    cfg["alerts"]["hang_timeout_s"] = HANG_TIMEOUT_S
    for path, value in overrides.items():
        section, key = path.split(".")
        cfg[section][key] = value
    return cfg


def launch(cfg: dict, name: str, cluster: str = "faults-cpu-1"):
    from django.contrib.auth import get_user_model

    from runs.models import Cluster, DataMixRecipe
    from runs.services.runs import run_create, run_launch

    owner = get_user_model().objects.get(username="faults")
    run = run_create(owner=owner, name=name, preset="tiny", trainer="reference",
                     cluster=Cluster.objects.get(name=cluster),
                     recipe=DataMixRecipe.objects.get(name="bilingual-demo"), config=cfg)  # fmt: skip
    return run_launch(actor=owner, run=run)


def status(run_id: int) -> str:
    from django.db import close_old_connections

    from runs.models import Run

    close_old_connections()
    return Run.objects.filter(pk=run_id).values_list("status", flat=True).first() or ""


def wait_step(run_dir: Path, step: int, timeout: float = 180) -> bool:
    """Until the job's own file shows `step` (independent of the database and the web server)."""

    def reached() -> bool:
        path = run_dir / "metrics.jsonl"
        if not path.exists():
            return False
        for line in path.read_text().splitlines()[::-1]:
            if '"kind": "heartbeat"' in line or '"kind":"heartbeat"' in line:
                return json.loads(line)["step"] >= step
        return False

    return _wait(reached, timeout, 0.1)


def wait_final(run_id: int, timeout: float = 300) -> str:
    from runs.models.run import TERMINAL_STATUSES

    _wait(lambda: status(run_id) in TERMINAL_STATUSES, timeout, 0.5)
    return status(run_id)


def check(row: Row, run_id: int, run_dir: Path) -> Row:
    from django.db import close_old_connections

    from runs.metrics.reads import series_all_points
    from runs.models import Alert, Attempt

    close_old_connections()
    attempts = list(Attempt.objects.filter(run_id=run_id).order_by("number"))
    row.attempts = len(attempts)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    # The steps the file's attempts logged, each attempt's replacing the ones after its checkpoint.
    expected: dict[int, float] = {}
    started = 0
    for r in records:
        if r.get("kind") == "event" and r.get("type") == "started":
            started += 1
            cut = int(r.get("step") or 0)
            expected = {s: v for s, v in expected.items() if s <= cut}
        elif r.get("kind") == "metrics" and "loss" in r.get("values", {}):
            expected[int(r["step"])] = r["values"]["loss"]
    steps, _values = series_all_points(run_id=run_id, key="loss")
    stored = [int(s) for s in steps]
    row.points_lost = len(set(expected) - set(stored))
    row.points_duplicated = len(stored) - len(set(stored)) + len(set(stored) - set(expected))
    with_job = sum(1 for a in attempts if a.backend_job_id)
    row.jobs_per_attempt_ok = started == with_job
    if not row.jobs_per_attempt_ok:
        row.notes.append(f"{started} job starts for {with_job} attempts with a job")
    kinds = list(Alert.objects.filter(run_id=run_id, resolved_at__isnull=True).values_list("kind", "attempt"))
    row.alerts_once = len(kinds) == len(set(kinds))
    row.ok = (
        row.final_state == row.expected_state
        and row.points_lost == 0
        and row.points_duplicated == 0
        and row.jobs_per_attempt_ok
        and row.alerts_once
        and row.min_attempts <= row.attempts <= 4
        and _within(row.detection_s, row.max_detection_s, "detection", row)
        and _within(row.recovery_s, row.max_recovery_s, "recovery", row)
    )
    return row


def _within(seconds: float | None, bound: float | None, what: str, row: Row) -> bool:
    if bound is None:
        return True
    if seconds is None or seconds > bound:
        row.detail += f" {what} {seconds} s over its bound {bound} s"
        return False
    return True


def _first_change(run_id: int, frm: set[str], t0: float, timeout: float = 120) -> float | None:
    """Seconds from t0 until the run leaves the states `frm` (the control plane noticed)."""
    if _wait(lambda: status(run_id) not in frm, timeout, 0.1):
        return round(time.monotonic() - t0, 2)
    return None


def _attempt_running(run_id: int, number: int, t0: float, timeout: float = 180) -> float | None:
    return _attempt_state(run_id, number, ("running",), t0, timeout)


def _attempt_state(run_id: int, number: int, states: tuple[str, ...], t0: float, timeout: float = 180) -> float | None:
    """Seconds from t0 until attempt `number` of the run is in one of `states`; None when it never was."""
    from runs.models import Attempt

    def up() -> bool:
        from django.db import close_old_connections

        close_old_connections()
        return Attempt.objects.filter(run_id=run_id, number=number, state__in=states).exists()

    return round(time.monotonic() - t0, 2) if _wait(up, timeout, 0.2) else None


# --- scenarios ---------------------------------------------------------------------------------------------------


def scenario_in_job(cp: ControlPlane, name: str, inject: dict, cfg: dict, expected: str) -> Row:
    """A fault inside the job (OOM, NaN, spike, hang): detected and remedied by the control plane alone."""
    from django.conf import settings

    cp.kill_workers()
    cp.start_worker(inject)
    run = launch(cfg, name)
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    row = Row(fault=name, expected_state=expected, min_attempts=2)
    fault_step = int(next(iter(v for k, v in inject.items() if k.endswith("_AT_STEP"))))
    if not wait_step(run_dir, fault_step - 1, 240):
        row.detail = "never reached the fault step"
    t0 = time.monotonic()
    row.detection_s = _first_change(run_id=run.pk, frm={"queued", "launching", "running"}, t0=t0, timeout=120)
    row.recovery_s = _attempt_running(run.pk, 2, t0)
    row.final_state = wait_final(run.pk)
    return check(row, run.pk, run_dir)


def scenario_cancel_in_remediation(cp: ControlPlane) -> Row:
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from runs.models import Run
    from runs.services.runs import run_cancel

    cp.kill_workers()
    cp.start_worker({"CP_INJECT_OOM_AT_STEP": "5"})
    cfg = _config(**{"remediation.backoff_s": 20.0})
    run = launch(cfg, "cancel during remediation")
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    row = Row(fault="cancel during remediation", expected_state="cancelled")
    wait_step(run_dir, 4, 240)
    t0 = time.monotonic()
    row.detection_s = _first_change(run.pk, {"queued", "launching", "running"}, t0)
    run_cancel(actor=get_user_model().objects.get(username="faults"), run=Run.objects.get(pk=run.pk))
    time.sleep(25)  # past the back-off: the relaunch task must find nothing to do
    row.final_state = status(run.pk)
    row.recovery_s = round(time.monotonic() - t0, 2)
    row = check(row, run.pk, run_dir)
    if row.attempts != 1:
        row.ok, row.detail = False, f"{row.attempts} attempts after the cancel"
    return row


def scenario_dependency(cp: ControlPlane, name: str, kill: Callable[[], None], restart: Callable[[], None]) -> Row:
    """Kill a dependency mid-run, bring it back after a few seconds; the run must end in its job's state."""
    from django.conf import settings

    cp.kill_workers()
    cp.start_worker()
    run = launch(_config(steps=20), name)
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    row = Row(fault=name, expected_state="succeeded")
    wait_step(run_dir, 4, 240)
    kill()
    time.sleep(3)
    t0 = time.monotonic()
    restart()
    row.detection_s = 0.0  # the kill itself; the metric that matters is the time back to the job's state
    row.final_state = wait_final(run.pk, 240)
    row.recovery_s = round(time.monotonic() - t0, 2)
    return check(row, run.pk, run_dir)


def scenario_sigstop(cp: ControlPlane) -> Row:
    """SIGSTOP the trainer: no steps, no heartbeat; after the hang timeout it is relaunched from its checkpoint."""
    from django.conf import settings

    cp.kill_workers()
    cp.start_worker()
    run = launch(_config(steps=24), "SIGSTOP the trainer")
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    # Detected within the hang timeout + 5 s (the bound) of the job going silent.
    row = Row(fault="SIGSTOP the trainer (hang, timeout 15 s)", expected_state="succeeded", min_attempts=2,
              max_detection_s=HANG_TIMEOUT_S + 5)  # fmt: skip
    wait_step(run_dir, 4, 240)
    stopped = _stop_job(run.pk, run_dir)
    t0 = time.monotonic()
    assert stopped, "nothing of the job was stopped"
    row.detection_s = _first_change(run.pk, {"running"}, t0, 120)
    row.recovery_s = _attempt_running(run.pk, 2, t0)
    row.final_state = wait_final(run.pk)
    return check(row, run.pk, run_dir)


def _stop_job(run_id: int, run_dir: Path) -> list[int]:
    """SIGSTOP the whole job: the session leader's group (job.json), the DeepSpeed launcher's group (child.json),
    and every process tagged with the attempt's key (the ranks), so the training itself stops, not just its
    launcher. Returns the pids/groups stopped."""
    from jobs.launch.reap import tagged_pids
    from runs.models import Attempt

    stopped: list[int] = []
    for record in ("job.json", "child.json"):
        path = run_dir / record
        if path.exists():
            pgid = int(json.loads(path.read_text())["pgid"])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGSTOP)
                stopped.append(-pgid)
    key = Attempt.objects.filter(run_id=run_id, number=1).values_list("idempotency_key", flat=True).first()
    for pid in tagged_pids(key) if key else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
    return stopped


def scenario_kill_worker_in_launch(cp: ControlPlane, repeats: int = 3) -> Row:
    """SIGKILL the worker while it launches (the run queued or launching), `repeats` times; one job in the end."""
    from django.conf import settings

    cp.kill_workers()
    run = launch(_config(steps=8), "kill -9 worker during launch")
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    # The job recorded within 30 s of a worker being back (the bound for a dependency's return).
    row = Row(fault=f"kill -9 worker during launch (x{repeats})", expected_state="succeeded", max_recovery_s=30)
    for i in range(repeats):
        cp.start_worker(name=f"l{i}")
        log = cp.root / f"worker-l{i}.log"
        _wait(lambda: "ready." in log.read_text(errors="replace"), 120, 0.1)  # noqa: B023
        time.sleep(0.5 * i)  # before the claim, between claim and submit, after submit
        cp.kill_workers()
    cp.start_worker(name="last")
    log = cp.root / "worker-last.log"
    _wait(lambda: "ready." in log.read_text(errors="replace"), 120, 0.1)
    # From the last worker being ready: a claim a killed launcher held runs out within its short lease (15 s),
    # the reconciler re-queues the launch, and the job is followed (attempt 1 running).
    t0 = time.monotonic()
    row.detection_s = 0.0
    row.recovery_s = _attempt_state(run.pk, 1, ("submitted", "running", "succeeded"), t0, 120)
    running = _attempt_running(run.pk, 1, t0, 120)
    row.notes.append(f"job recorded after {row.recovery_s} s, running (DeepSpeed up) after {running} s")
    row.final_state = wait_final(run.pk, 300)
    return check(row, run.pk, run_dir)


def scenario_two_workers(cp: ControlPlane) -> Row:
    """Two workers take the same launch (the run's task delivered twice): exactly one job."""
    from django.conf import settings

    from runs.services.enqueue import enqueue_on_commit

    cp.kill_workers()
    cp.start_worker(name="a")
    cp.start_worker(name="b")
    time.sleep(2)
    run = launch(_config(steps=8), "two workers racing one launch")
    from django.db import transaction

    with transaction.atomic():
        for _ in range(4):  # duplicate deliveries on top of the launch's own
            enqueue_on_commit("workers.launch_run", run_id=run.pk)
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    row = Row(fault="two workers racing one launch (5 deliveries)", expected_state="succeeded", detection_s=0.0)
    t0 = time.monotonic()
    row.final_state = wait_final(run.pk, 300)
    row.recovery_s = round(time.monotonic() - t0, 2)
    return check(row, run.pk, run_dir)


def scenario_kill_rank(cp: ControlPlane) -> Row:
    """SIGKILL rank 1 of a two-rank job: a node failure, relaunched from the last checkpoint."""
    from django.conf import settings

    cp.kill_workers()
    cp.start_worker()
    cfg = _config(steps=12)
    cfg["batch"]["global_batch_tokens"] = 2 * 8 * 2 * 64
    cfg["training"]["token_budget"] = 2048 * 12
    run = launch(cfg, "kill one non-zero rank", cluster="local-cpu")
    run_dir = Path(settings.RUNS_DIR) / f"run-{run.pk}"
    row = Row(fault="kill -9 rank 1 of 2", expected_state="succeeded", min_attempts=2)
    wait_step(run_dir, 5, 240)
    out = subprocess.run(["pgrep", "-f", "--", f"--local_rank=1 --run-dir {run_dir}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    if not pids:
        row.detail = "rank 1 not found"
        return row
    os.kill(pids[0], signal.SIGKILL)
    t0 = time.monotonic()
    row.detection_s = _first_change(run.pk, {"running"}, t0, 120)
    row.recovery_s = _attempt_running(run.pk, 2, t0)
    row.final_state = wait_final(run.pk)
    return check(row, run.pk, run_dir)


def _setup(root: Path) -> tuple[Postgres, Redis, dict]:
    pg, rd = Postgres(root), Redis(root)
    pg.start()
    pg.createdb()
    rd.start()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "REDIS_URL": rd.url,
        "CP_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "CP_RUNS_DIR": str(root / "runs"),
        "CP_VAR_DIR": str(root / "var"),
        "OMP_NUM_THREADS": "1",
        "CP_CELERY_QUEUE": "celery",
    }
    for key in [k for k in env if k.startswith("CP_INJECT_")]:
        del env[key]
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from runs.models import Cluster
    from runs.services.roles import ensure_roles
    from runs.services.seed import seed_defaults

    call_command("migrate", verbosity=0)
    seed_defaults()
    ensure_roles()
    base = Cluster.objects.get(name="local-cpu")
    Cluster.objects.get_or_create(
        name="faults-cpu-1",
        defaults={f.name: getattr(base, f.name) for f in Cluster._meta.concrete_fields if f.name not in ("id", "name")}
        | {"gpus_per_node": 1},
    )
    user = get_user_model().objects.create_superuser("faults", "faults@example.com", "faults")
    del user
    return pg, rd, env


SCENARIOS = ("oom", "nan", "spike", "cancel_remediation", "kill_worker_launch", "kill_worker", "kill_web",
             "kill_redis", "kill_postgres", "kill_rank", "sigstop", "two_workers")  # fmt: skip


def run_suite(only: list[str] | None, root: Path) -> list[Row]:
    pg, rd, env = _setup(root)
    cp = ControlPlane(root, env)
    cp.start_web()
    rows: list[Row] = []
    chosen = [s for s in SCENARIOS if not only or s in only]
    try:
        for name in chosen:
            t = time.monotonic()
            try:
                row = _one(name, cp, pg, rd)
            except Exception as exc:  # a scenario that breaks is a failed row, not a lost table
                row = Row(fault=name, detail=f"{type(exc).__name__}: {exc}"[:300])
            row.scenario = name
            row.notes.append(f"{time.monotonic() - t:.0f} s")
            rows.append(row)
            print(format_row(row), flush=True)
    finally:
        cp.stop()
        _stop_jobs(root / "runs")
        rd.kill()
        try:
            pg.kill()
        except (OSError, ValueError):
            pass
    return rows


def _one(name: str, cp: ControlPlane, pg: Postgres, rd: Redis) -> Row:
    if name == "oom":
        inject = {"CP_INJECT_OOM_AT_STEP": "5", "CP_INJECT_OOM_MIN_MICRO_BATCH": "8"}
        return scenario_in_job(cp, "OOM at step 5 (tiny preset)", inject, _config(), "succeeded")
    if name == "nan":
        cfg = _config(**{"remediation.on_spike": "rollback", "remediation.rewind_steps": 1,
                         "remediation.skip_batches": 2})  # fmt: skip
        return scenario_in_job(cp, "NaN at step 7", {"CP_INJECT_NAN_AT_STEP": "7"}, cfg, "succeeded")
    if name == "spike":
        # The spike detector gives no verdict before 16 points of history (runs.metrics.detectors.MIN_WINDOW).
        cfg = _config(steps=24, **{"remediation.on_spike": "rollback", "remediation.rewind_steps": 1,
                                   "remediation.skip_batches": 2})  # fmt: skip
        inject = {"CP_INJECT_SPIKE_AT_STEP": "20", "CP_INJECT_SPIKE_FACTOR": "50"}
        return scenario_in_job(cp, "loss spike x50 at step 20", inject, cfg, "succeeded")
    if name == "cancel_remediation":
        return scenario_cancel_in_remediation(cp)
    if name == "kill_worker":
        return scenario_dependency(cp, "kill -9 worker during a run", cp.kill_workers, lambda: cp.start_worker())
    if name == "kill_web":
        return scenario_dependency(cp, "kill -9 web server", cp.kill_web, cp.start_web)
    if name == "kill_redis":
        return scenario_dependency(cp, "kill -9 Redis, restart", rd.kill, rd.start)
    if name == "kill_postgres":
        return scenario_dependency(cp, "kill -9 PostgreSQL, restart", pg.kill, pg.start)
    if name == "sigstop":
        return scenario_sigstop(cp)
    if name == "kill_worker_launch":
        return scenario_kill_worker_in_launch(cp)
    if name == "two_workers":
        return scenario_two_workers(cp)
    if name == "kill_rank":
        return scenario_kill_rank(cp)
    raise ValueError(name)


def _stop_jobs(runs_dir: Path) -> None:
    from workers.backends.procs import stop_group

    for job in runs_dir.rglob("job.json"):
        record = json.loads(job.read_text())
        if "pgid" in record:
            try:
                os.killpg(record["pgid"], signal.SIGCONT)
            except OSError:
                pass
            stop_group(record["pgid"], pid=record["pid"], ticks=record["start_ticks"], grace_s=2)


HEADER = f"{'fault':44} {'detect s':>9} {'recover s':>10} {'lost':>5} {'dup':>4} {'final':>11} {'att':>4}  verdict"


def format_row(row: Row) -> str:
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    verdict = "ok" if row.ok else f"FAIL (expected {row.expected_state}) {row.detail}"
    return (f"{row.fault[:44]:44} {num(row.detection_s):>9} {num(row.recovery_s):>10} {row.points_lost:>5} "
            f"{row.points_duplicated:>4} {row.final_state:>11} {row.attempts:>4}  {verdict} {' '.join(row.notes)}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=SCENARIOS)
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, run directories)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cp-faults-"))
    print(f"fault suite in {root}\n{HEADER}", flush=True)
    started = time.monotonic()
    rows = run_suite(args.only, root)
    total = time.monotonic() - started
    print(f"{len([r for r in rows if r.ok])}/{len(rows)} scenarios ok in {total:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": [asdict(r) for r in rows], "seconds": total}, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
