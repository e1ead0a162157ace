"""Source-counting and data-prep jobs: one process each (`python -m jobs.data.prep count|run`), started through
the cluster's backend, watched through the files the job writes (progress.json, report.json) and the backend.

The prep driver on Slurm is a one-CPU job that submits each stage as a job array through datatrove's Slurm
executor, so the node's other CPUs stay free for those arrays. Every function takes an id and re-reads the
database, so a redelivered or re-attached task is harmless.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.common.atomic import read_json, write_json
from runs.models import Cluster, DataSource, JobPhase, PrepRun
from runs.services.data_prep import (
    IllegalMove,
    count_finished,
    count_progress,
    count_spec,
    move,
    prep_finished,
    prep_progress,
    prep_started,
)
from runs.services.deployments import serving_backend
from workers.backends import JobState, LaunchSpec, get_backend
from workers.backends.base import LaunchError
from workers.backends.jobuser import JobUser, data_user, give_data_dir
from workers.launching import job_python

REPO_ROOT = Path(__file__).resolve().parent.parent


def _user(backend: str, folder: Path) -> JobUser | None:
    """The data user (jobuser.data_user) for a job on this machine, its folder handed over; None on Slurm or when
    jobs run as the control plane's account."""
    user = data_user() if backend == "local" else None
    if user is not None:
        give_data_dir(folder, user)
    return user


def _spec(
    *, cluster: Cluster, job_dir: Path, argv: list[str], name: str, hours: int, user: JobUser | None = None
) -> LaunchSpec:
    return LaunchSpec(
        run_id=0,
        run_dir=job_dir,
        module_argv=["-m", "jobs.data.prep", *argv],
        env={"OMP_NUM_THREADS": "1"},
        nodes=1,
        gpus_per_node=1,
        accelerator="cpu",
        python=job_python() if cluster.backend != "slurm" else sys.executable,
        workdir=REPO_ROOT,
        partition=cluster.partition,
        time_limit_min=hours * 60,
        master_port=0 if cluster.backend == "slurm" else 29500,
        job_name=name,
        single_process=True,
        cpus_per_task=1 if cluster.backend == "slurm" else 0,
        job_uid=user.uid if user else None,
        job_gid=user.gid if user else None,
        job_umask=user.umask if user else 0o077,
    )


def _log_tail(job_dir: Path) -> str:
    try:
        lines = [ln.strip() for ln in (job_dir / "stderr.log").read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    said = [ln for ln in lines if ln.startswith(("prep: error:", "count: error:"))]
    if said:
        return said[-1].split("error:", 1)[1].strip()[:2000]
    lines = [ln for ln in lines if ln and not ln.startswith(("warnings.warn", "  "))]
    return lines[-1][:500] if lines else ""


# -- counting a source ------------------------------------------------------------------------------------------


def count_start(source_id: int) -> str:
    source = DataSource.objects.select_related("count_cluster").filter(pk=source_id).first()
    if source is None or source.count_status != JobPhase.QUEUED:
        return "nothing to do"
    cluster = source.count_cluster
    if cluster is None:
        count_finished(source=source, status=JobPhase.FAILED, reason="the cluster chosen for counting was removed")
        return "no cluster"
    folder = Path(source.count_dir)
    write_json(folder / "count.json", count_spec(source))
    (folder / "report.json").unlink(missing_ok=True)
    (folder / "progress.json").unlink(missing_ok=True)
    backend = serving_backend(cluster.backend)
    try:
        (folder / "job").mkdir(parents=True, exist_ok=True)
        spec = _spec(cluster=cluster, job_dir=folder / "job", argv=["count", "--job-dir", str(folder)],
                     name=f"cp-count-{source.pk}", hours=24, user=_user(backend, folder))  # fmt: skip
        job_id = get_backend(backend).submit(spec).job_id
    except (LaunchError, OSError) as exc:
        count_finished(source=source, status=JobPhase.FAILED, reason=f"could not start the count job: {exc}")
        return "launch failed"
    try:
        move(obj=source, field="count_status", to=JobPhase.RUNNING, actor="system", reason=f"{backend} job {job_id}",
             count_backend=backend, count_job_id=job_id)  # fmt: skip
    except IllegalMove:
        get_backend(backend).cancel(job_id, folder / "job")
        return "cancelled"
    return f"submitted {job_id}"


def count_watch(source_id: int) -> bool:
    """One look at a running count; True while it should be looked at again."""
    source = DataSource.objects.filter(pk=source_id).first()
    if source is None or source.count_status != JobPhase.RUNNING:
        return False
    folder = Path(source.count_dir)
    progress = read_json(folder / "progress.json")
    if progress:
        count_progress(source=source, progress=progress)
    status = get_backend(source.count_backend).poll(source.count_job_id, folder / "job")
    if not status.finished:
        return True
    report = read_json(folder / "report.json")
    if status.state == JobState.SUCCEEDED and report:
        count_finished(source=source, status=JobPhase.SUCCEEDED, counts=report)
    elif status.state == JobState.CANCELLED:
        count_finished(source=source, status=JobPhase.CANCELLED, reason="cancelled")
    else:
        said = (progress or {}).get("message", "") if (progress or {}).get("status") == "failed" else ""
        reason = said or _log_tail(folder / "job") or status.reason or "the count job ended without a result"
        count_finished(source=source, status=JobPhase.FAILED, reason=reason)
    return False


# -- preparing a recipe version ---------------------------------------------------------------------------------


def _job_dir(prep: PrepRun) -> Path:
    """The backend's folder of this attempt (its logs, job.json, exit.json): one per attempt."""
    return Path(prep.directory) / f"attempt-{prep.attempt}"


def prep_start(prep_id: int) -> str:
    prep = PrepRun.objects.select_related("cluster").filter(pk=prep_id).first()
    if prep is None or prep.status != JobPhase.QUEUED or prep.backend_job_id:
        return "nothing to do"
    folder = Path(prep.directory)
    write_json(folder / "prep.json", prep.spec)
    backend = serving_backend(prep.cluster.backend)
    try:
        _job_dir(prep).mkdir(parents=True, exist_ok=True)
        spec = _spec(cluster=prep.cluster, job_dir=_job_dir(prep), argv=["run", "--job-dir", str(folder)],
                     name=f"cp-prep-{prep.pk}", hours=48, user=_user(backend, folder))  # fmt: skip
        job_id = get_backend(backend).submit(spec).job_id
    except (LaunchError, OSError) as exc:
        prep_finished(prep=prep, status=JobPhase.FAILED, reason=f"could not start the prep job: {exc}")
        return "launch failed"
    try:
        prep_started(prep=prep, backend=backend, job_id=job_id)
    except IllegalMove:  # cancelled meanwhile
        get_backend(backend).cancel(job_id, _job_dir(prep))
        return "cancelled"
    return f"submitted {job_id}"


def prep_watch(prep_id: int) -> bool:
    """One look at a running prep job; True while it should be looked at again."""
    prep = PrepRun.objects.filter(pk=prep_id).first()
    if prep is None or prep.status != JobPhase.RUNNING:
        return False
    folder = Path(prep.directory)
    progress = read_json(folder / "progress.json")
    if progress:
        prep_progress(prep=prep, progress=progress)
    status = get_backend(prep.backend).poll(prep.backend_job_id, _job_dir(prep))
    if not status.finished:
        return True
    report = read_json(folder / "report.json")
    if status.state == JobState.SUCCEEDED and report:
        prep_finished(prep=prep, status=JobPhase.SUCCEEDED, report=report)
    elif status.state == JobState.CANCELLED:
        prep_finished(prep=prep, status=JobPhase.CANCELLED, reason="cancelled")
    else:
        said = (progress or {}).get("message", "") if (progress or {}).get("status") == "failed" else ""
        reason = said or _log_tail(_job_dir(prep)) or status.reason or "the prep job ended without a report"
        prep_finished(prep=prep, status=JobPhase.FAILED, reason=reason)
    return False


def prep_stop(prep_id: int) -> str:
    prep = PrepRun.objects.filter(pk=prep_id).first()
    if prep is None or not prep.is_active:
        return "nothing to do"
    if prep.backend_job_id:
        get_backend(prep.backend).cancel(prep.backend_job_id, _job_dir(prep))
    prep_finished(prep=PrepRun.objects.get(pk=prep_id), status=JobPhase.CANCELLED, reason="cancelled")
    return f"stopped {prep.backend_job_id or 'before it started'}"


def in_flight() -> dict[str, list]:
    """What a (re)started worker must pick up again."""
    return {
        "count_queued": list(DataSource.objects.filter(count_status=JobPhase.QUEUED).values_list("pk", flat=True)),
        "count_running": list(DataSource.objects.filter(count_status=JobPhase.RUNNING).values_list("pk", flat=True)),
        "prep_queued": list(PrepRun.objects.filter(status=JobPhase.QUEUED).values_list("pk", flat=True)),
        "prep_running": list(PrepRun.objects.filter(status=JobPhase.RUNNING).values_list("pk", flat=True)),
    }
