"""Queued run -> prepared run directory -> job on its cluster's backend. Idempotent: a redelivered task is harmless."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from runs.models import Cluster, Run, RunStatus, Trainer
from runs.services.jobs import run_finish, run_record_job
from runs.services.rundir import run_dir_prepare
from runs.services.transitions import IllegalTransition, transition
from workers.backends import LaunchSpec, get_backend
from workers.backends.base import LaunchError

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def _master_port(backend: str) -> int:
    """A rendezvous port free right now on this machine (local/hostfile jobs rendezvous here); Slurm jobs derive
    theirs from the job id on their own first node (0)."""
    if backend == "slurm":
        return 0
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def has_local_cpu_cluster() -> bool:
    return Cluster.objects.filter(backend="local", accelerator="cpu").exists()


def launch_spec(run: Run, run_dir: Path) -> LaunchSpec:
    cluster = run.cluster
    if run.trainer == Trainer.OWN_SCRIPT:
        program = [run.script_path, "--deepspeed_config", str(run_dir / "ds_config.json")]
    else:
        program = ["-m", "jobs.train", "--run-dir", str(run_dir)]
        if run.resume_from:
            program += ["--resume", run.resume_from]
    return LaunchSpec(
        run_id=run.pk,
        run_dir=run_dir,
        module_argv=program,
        env={"CP_RUN_DIR": str(run_dir), "OMP_NUM_THREADS": "1"},
        nodes=cluster.nodes,
        gpus_per_node=cluster.gpus_per_node,
        accelerator=cluster.accelerator,
        python=sys.executable,
        workdir=REPO_ROOT,
        partition=cluster.partition,
        time_limit_min=int(run.config.get("training", {}).get("time_limit_min", 24 * 60)),
        hostfile=cluster.hostfile,
        master_port=_master_port(cluster.backend),
        job_name=f"cp-run-{run.pk}",
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
    """Returns what happened, for the task's log line."""
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None:
        return "gone"
    if run.status == RunStatus.QUEUED:
        try:
            run = transition(run=run, to=RunStatus.LAUNCHING, actor="system")
        except IllegalTransition:
            return "taken by another worker"
    elif run.status == RunStatus.LAUNCHING and run.backend_job_id:
        return "already submitted"
    elif run.status == RunStatus.LAUNCHING:
        job_file = Path(run.run_dir or "") / "job.json"
        # A worker died between starting the job and recording it: the job's own record names it.
        if run.cluster.backend in ("local", "hostfile") and run.run_dir and job_file.exists():
            record = json.loads(job_file.read_text())
            run_record_job(
                run=run,
                job_id=f"local:{record['pid']}:{record['start_ticks']}",
                run_dir=run.run_dir,
                backend=run.cluster.backend,
            )
            return "re-attached"
    else:
        return f"nothing to do for a {run.status} run"

    backend = get_backend(run.cluster.backend)
    try:
        run_dir = run_dir_prepare(run=run)
        Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir))
        if run.trainer == Trainer.OWN_SCRIPT:
            _write_ds_config(run, run_dir)
        handle = backend.submit(launch_spec(run, run_dir))
    except (LaunchError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        run_finish(run=run, status=RunStatus.FAILED, reason=f"launch failed: {exc} {detail}".strip()[:2000])
        return "launch failed"
    run_record_job(run=run, job_id=handle.job_id, run_dir=str(run_dir), backend=backend.name)
    return f"submitted {handle.job_id}"


def stop_run(run_id: int) -> str:
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None or not run.backend_job_id:
        return "no job to stop"
    get_backend(run.cluster.backend).cancel(run.backend_job_id, Path(run.run_dir))
    return f"stopped {run.backend_job_id}"


def runs_to_reattach() -> tuple[list[int], list[int]]:
    """(runs whose job a watcher must follow, queued runs whose launch message may have been lost)."""
    watch = list(Run.objects.filter(status__in=[RunStatus.LAUNCHING, RunStatus.RUNNING]).values_list("pk", flat=True))
    queued = list(Run.objects.filter(status=RunStatus.QUEUED).values_list("pk", flat=True))
    return watch, queued
