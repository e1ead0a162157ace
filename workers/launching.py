"""Queued run -> prepared run directory -> job on its cluster's backend. Idempotent: a redelivered task is harmless."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

from jobs.common.failures import RANKS_DIR
from jobs.common.run_config import parse_own_script
from runs.models import Attempt, AttemptState, Cluster, Run, RunStatus, Trainer
from runs.services import connect
from runs.services.attempts import (
    CLAIM_RENEW_S,
    Claim,
    attempt_claim,
    attempt_current,
    attempt_end,
    attempt_live,
    attempt_record_job,
    attempt_renew_claim,
)
from runs.services.jobs import run_finish, run_record_job
from runs.services.rundir import run_dir_path, run_dir_prepare
from runs.services.scripts import roots_text, script_in_roots
from runs.services.transitions import IllegalTransition, transition
from workers.backends import LaunchSpec, get_backend
from workers.backends.base import LaunchError
from workers.backends.jobuser import job_user, stage_checkpoint

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _master_port(backend: str, key: str = "") -> int:
    """A rendezvous port free right now on this machine (local/hostfile jobs rendezvous here); Slurm jobs derive
    theirs from the job id on their own first node (0).

    Chosen below the kernel's ephemeral range: a port the kernel handed out (bind to 0) is handed out again to the
    next outgoing connection — gloo opens many — so between this check and the rendezvous's own bind it was often
    taken (EADDRINUSE under load). Ports outside that range are only taken by explicit binds. The attempt key
    spreads concurrent launches over the range."""
    if backend == "slurm":
        return 0
    low, _ = _ephemeral_range()
    first, last = (20000, low - 1) if low > 21000 else (10000, 19999)
    span = last - first + 1
    start = int(hashlib.sha256((key or str(os.getpid())).encode()).hexdigest(), 16) % span
    for i in range(span):
        port = first + (start + i) % span
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        return port
    with socket.socket() as sock:  # every one taken: the kernel's choice, as before
        sock.bind(("", 0))
        return sock.getsockname()[1]


def has_local_cpu_cluster() -> bool:
    return Cluster.objects.filter(backend="local", accelerator="cpu").exists()


def job_python() -> str:
    """The interpreter jobs run with: settings.JOB_PYTHON (one the job users can reach), else this worker's."""
    return settings.JOB_PYTHON or sys.executable


def own_script_argv(run: Run, run_dir: Path) -> list[str]:
    """The user's script with its DeepSpeed config in the form it parses (own_script.ds_config_arg), then its own
    arguments (own_script.args); the run's config was validated against the same definition when it was saved."""
    options = parse_own_script(run.config)
    argv = [run.script_path]
    if options.ds_config_arg != "env":
        argv += [options.ds_config_arg, str(run_dir / "ds_config.json")]
    return argv + list(options.args)


def launch_spec(run: Run, run_dir: Path, attempt: Attempt | None = None) -> LaunchSpec:
    cluster = run.cluster
    key = attempt.idempotency_key if attempt is not None else ""
    number = attempt.number if attempt is not None else run.attempt
    env = {"CP_RUN_DIR": str(run_dir), "OMP_NUM_THREADS": "1"}
    cwd = None
    # Local jobs run as their run's own user; a cluster's jobs run as whoever the scheduler or ssh makes them.
    user = job_user(run.pk) if cluster.backend == "local" else None
    if run.trainer == Trainer.OWN_SCRIPT:
        script = script_in_roots(run.script_path)
        if script is None:
            raise LaunchError(
                f"the script {run.script_path} is not inside the script folders ({roots_text()}); "
                "copy it into one, or add its folder to CP_SCRIPT_ROOTS"
            )
        program = [script, *own_script_argv(run, run_dir)[1:]]
        token_file = run_dir / "token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        env.update(connect.job_env(run=run, run_dir=run_dir, token=token))
        # A script writes its outputs (HF's output_dir, checkpoints, mlruns) relative to where it starts: its run.
        cwd = run_dir
    else:
        program = ["-m", "jobs.train", "--run-dir", str(run_dir)]
        if run.resume_from:
            resume = run.resume_from if user is None else stage_checkpoint(run.resume_from, run_dir, user)
            program += ["--resume", resume]
    return LaunchSpec(
        run_id=run.pk,
        run_dir=run_dir,
        module_argv=program,
        env=env,
        cwd=cwd,
        nodes=cluster.nodes,
        gpus_per_node=cluster.gpus_per_node,
        accelerator=cluster.accelerator,
        python=job_python() if cluster.backend == "local" else sys.executable,
        workdir=REPO_ROOT,
        partition=cluster.partition,
        time_limit_min=int(run.config.get("training", {}).get("time_limit_min", 24 * 60)),
        hostfile=cluster.hostfile,
        master_port=_master_port(cluster.backend, key),
        job_name=f"cp-run-{run.pk}-a{number}",
        attempt_key=key,
        job_uid=user.uid if user else None,
        job_gid=user.gid if user else None,
    )


def _write_ds_config(run: Run, run_dir: Path) -> None:
    """A user's script gets the DeepSpeed config generated from the run, written by the jobs package itself."""
    world = run.cluster.nodes * run.cluster.gpus_per_node
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train.ds_config",
            "--run-dir",
            str(run_dir),
            "--world-size",
            str(world),
            "--accelerator",
            run.cluster.accelerator,
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def launch_run(run_id: int) -> str:
    """Start the job of the run's live attempt, exactly once however many deliveries of this task race: the attempt
    is claimed in the database first (one winner), and the backend is asked for a job carrying the attempt's key
    before it starts one (a launcher that died after submitting). Returns what happened, for the task's log line."""
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None:
        return "gone"
    if run.status not in (RunStatus.QUEUED, RunStatus.LAUNCHING):
        return f"nothing to do for a {run.status} run"
    claim = attempt_claim(run=run)
    if claim is None:
        live = attempt_live(run=run)
        if live is not None and live.backend_job_id:
            return "already submitted"
        return "taken by another worker"
    attempt = claim.attempt
    if run.status == RunStatus.QUEUED:
        try:
            run = transition(run=run, to=RunStatus.LAUNCHING, actor="system")
        except IllegalTransition:
            run.refresh_from_db()
            if run.status != RunStatus.LAUNCHING:
                attempt_end(run=run, state=AttemptState.CANCELLED, summary={"reason": f"run became {run.status}"})
                return f"nothing to do for a {run.status} run"

    backend = get_backend(run.cluster.backend)
    try:
        with _claim_heartbeat(claim):
            run_dir = run_dir_path(run)
            # The attempt's job may exist already (its launcher died before recording it): follow it, start nothing.
            handle = backend.find(attempt.idempotency_key, run_dir, not_before=attempt.created_at.timestamp())
            if handle is None:
                _supersede_redone_steps(run, attempt)
                run_dir = run_dir_prepare(run=run, attempt=attempt)
                Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir))
                if run.trainer == Trainer.OWN_SCRIPT:
                    _write_ds_config(run, run_dir)
                shutil.rmtree(run_dir / RANKS_DIR, ignore_errors=True)  # the previous attempt's rank records
                if not attempt_renew_claim(claim=claim):
                    # This launcher was stopped past its lease and another took the attempt over: submit nothing.
                    return "claim lost before submitting"
                handle = backend.submit(launch_spec(run, run_dir, attempt))
    except (LaunchError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        run_finish(run=run, status=RunStatus.FAILED, reason=f"launch failed: {exc} {detail}".strip()[:2000])
        return "launch failed"
    found = bool(handle.detail.get("existing"))
    if not attempt_record_job(claim=claim, job_id=handle.job_id, handle=_jsonable(handle.detail)):
        return f"claim lost after {'finding' if found else 'submitting'} {handle.job_id}"
    run = run_record_job(run=run, job_id=handle.job_id, run_dir=str(run_dir), backend=backend.name)
    if run.is_terminal:
        # Cancelled while the job was being submitted: the cancel found no job to stop, so stop it here.
        backend.cancel(handle.job_id, run_dir)
        attempt_end(run=run, state=AttemptState.CANCELLED, summary={"reason": "cancelled during launch"})
        return f"cancelled {handle.job_id}"
    return f"{'re-attached' if found else 'submitted'} {handle.job_id}"


def _supersede_redone_steps(run: Run, attempt: Attempt) -> None:
    """Before a later attempt's job starts (a person's Resume or an automatic relaunch alike): store what the
    previous attempt wrote and remove the stored points after the restored checkpoint, so the steps this attempt
    redoes are stored from it (one continuous curve, each step once). Idempotent: a remediation has done it
    already, and a launch that re-attaches to a found job never gets here."""
    if attempt.number <= 1:
        return
    from workers.remediating import settle_metrics

    superseded = settle_metrics(run, after_step=int(attempt.checkpoint_step or 0))
    if superseded:
        log.info("run %s attempt %s: %d stored points after step %s superseded", run.pk, attempt.number,
                 superseded, attempt.checkpoint_step or 0)  # fmt: skip


@contextmanager
def _claim_heartbeat(claim: Claim) -> Iterator[None]:
    """Renew the claim's short lease while this launcher finds or submits the job. A launcher that dies (kill -9 of
    its worker) stops renewing, so the reconciler re-queues the launch once the lease runs out, seconds later."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(CLAIM_RENEW_S):
                try:
                    if not attempt_renew_claim(claim=claim):
                        return  # lost or recorded: nothing left to keep
                except Exception:  # a database blip: the next beat tries again; the lease still has seconds
                    log.warning("could not renew the launch claim of attempt %s", claim.attempt.pk, exc_info=True)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"cp-claim-{claim.attempt.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _jsonable(detail: dict) -> dict:
    return json.loads(json.dumps(detail, default=str))


def stop_run(run_id: int) -> str:
    """Stop every process of the run's current attempt (and only those), then end the attempt as cancelled."""
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None:
        return "no job to stop"
    attempt = attempt_current(run=run)
    backend = get_backend(run.cluster.backend)
    job_id = (attempt.backend_job_id if attempt else "") or run.backend_job_id
    run_dir = Path(run.run_dir) if run.run_dir else run_dir_path(run)
    if not job_id and attempt is not None:
        # submitted, not yet recorded
        found = backend.find(attempt.idempotency_key, run_dir, not_before=attempt.created_at.timestamp())
        job_id = found.job_id if found else ""
    if not job_id:
        return "no job to stop"
    backend.cancel(job_id, run_dir)
    attempt_end(run=run, state=AttemptState.CANCELLED, summary={"reason": run.failure_reason or "cancelled"})
    return f"stopped {job_id}"


def runs_to_reattach() -> tuple[list[int], list[int]]:
    """(runs whose job a watcher must follow, queued runs whose launch message may have been lost)."""
    watch = list(Run.objects.filter(status__in=[RunStatus.LAUNCHING, RunStatus.RUNNING]).values_list("pk", flat=True))
    queued = list(Run.objects.filter(status=RunStatus.QUEUED).values_list("pk", flat=True))
    return watch, queued
