"""Quantize, benchmark and inference-server jobs: one process each, started through the run's cluster backend.

Each job gets its own folder (the backend's job.json, exit.json and logs go there) under the artifact folder.
Every function takes an id and re-reads the database, so a redelivered or re-attached task is harmless.
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from pathlib import Path

import httpx

from jobs.common.atomic import read_json, write_atomic
from runs.models import Artifact, Cluster, Deployment, DeploymentStatus, JobPhase, Run
from runs.services.artifacts import (
    artifact_finish,
    artifact_progress,
    artifact_started,
    latency_finish,
    latency_started,
)
from runs.services.deployments import (
    API_KEY_FILE,
    KEY_SHOWN_FILE,
    deployment_failed,
    deployment_health,
    deployment_running,
    deployment_stopped,
    deployment_submitted,
    serving_backend,
)
from runs.services.serving_transitions import IllegalMove
from workers.backends import JobState, JobStatus, LaunchSpec, get_backend
from workers.backends.base import LaunchError
from workers.backends.jobuser import JobUser, give_run_dir, job_user
from workers.launching import job_python

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 600
STARTING_POLL_S = 1.0  # while a server loads: how soon a user sees it running
HEALTH_INTERVAL_S = 5.0  # once it runs: how often /health is asked
HEALTH_TIMEOUT_S = 3.0


def run_user(run: Run, backend: str) -> JobUser | None:
    """The user a run's quantize, benchmark or server job runs as on this machine: the run's own (None when jobs
    run as the control plane's account, or on Slurm, whose jobs run as the scheduler makes them).

    Not the control plane: the quantize job torch-loads a checkpoint the run's own script may have written, and the
    server loads what that produced. Not a separate serving user either: everything these jobs read and write lies
    in the run's directory (artifacts/aN, artifacts/aN/deployments/dN), which is the run's user's alone, so the
    run's user is the one account that needs no other folder opened to it. The run directory (with the folders the
    control plane made in it for this job) is handed to that user before launch."""
    if backend != "local":
        return None
    user = job_user(run.pk)
    if user is not None and run.run_dir:
        give_run_dir(Path(run.run_dir), user)
    return user


def _spec(
    *, cluster: Cluster, job_dir: Path, module_argv: list[str], name: str, hours: int, user: JobUser | None = None
) -> LaunchSpec:
    return LaunchSpec(
        run_id=0,
        run_dir=job_dir,
        module_argv=module_argv,
        env={"OMP_NUM_THREADS": "1"},
        nodes=1,
        gpus_per_node=1,
        accelerator=cluster.accelerator,
        python=job_python() if cluster.backend != "slurm" else sys.executable,
        workdir=REPO_ROOT,
        partition=cluster.partition,
        time_limit_min=hours * 60,
        master_port=0 if cluster.backend == "slurm" else 29500,
        job_name=name,
        single_process=True,
        job_uid=user.uid if user else None,
        job_gid=user.gid if user else None,
    )


def _log_tail(job_dir: Path) -> str:
    """The last meaningful line the job wrote to stderr, for a failure reason a person can act on."""
    try:
        lines = [ln.strip() for ln in (job_dir / "stderr.log").read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith(("warnings.warn", "  "))]
    return lines[-1][:500] if lines else ""


def _outcome(status: JobStatus, *, report: dict | None, job_dir: Path, missing: str,
             said: str = "") -> tuple[str, dict | None, str]:  # fmt: skip
    """How a finished one-process job ended: (phase, its report, a reason a person can act on)."""
    if status.state == JobState.SUCCEEDED and report:
        return JobPhase.SUCCEEDED, report, ""
    if status.state == JobState.CANCELLED:
        return JobPhase.CANCELLED, None, "cancelled"
    return JobPhase.FAILED, None, said or _log_tail(job_dir) or status.reason or missing


def _submit(backend_kind: str, spec: LaunchSpec) -> str:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    return get_backend(backend_kind).submit(spec).job_id


def _poll(backend_kind: str, job_id: str, job_dir: Path):
    return get_backend(backend_kind).poll(job_id, job_dir)


# -- quantize ---------------------------------------------------------------------------------------------------


def quantize_start(artifact_id: int) -> str:
    artifact = Artifact.objects.select_related("run__cluster").filter(pk=artifact_id).first()
    if artifact is None or artifact.status != JobPhase.QUEUED:
        return "nothing to do"
    run = artifact.run
    out = Path(artifact.directory)
    argv = ["-m", "jobs.export.quantize", "--run-dir", run.run_dir, "--tag", artifact.tag, "--out", str(out)]
    argv += ["--methods", ",".join(artifact.methods)]
    backend = serving_backend(run.cluster.backend)
    try:
        (out / "job").mkdir(parents=True, exist_ok=True)
        spec = _spec(
            cluster=run.cluster, job_dir=out / "job", module_argv=argv, name=f"cp-quant-{artifact.pk}", hours=6,
            user=run_user(run, backend),
        )  # fmt: skip
        job_id = _submit(backend, spec)
    except (LaunchError, OSError) as exc:
        artifact_finish(artifact=artifact, status=JobPhase.FAILED, reason=f"could not start the quantize job: {exc}")
        return "launch failed"
    try:
        artifact_started(artifact=artifact, job_id=job_id)
    except IllegalMove:  # cancelled meanwhile
        get_backend(backend).cancel(job_id, out / "job")
        return "cancelled"
    return f"submitted {job_id}"


def quantize_watch(artifact_id: int) -> bool:
    """One look at a running quantize job; True while it should be looked at again."""
    artifact = Artifact.objects.select_related("run__cluster").filter(pk=artifact_id).first()
    if artifact is None or artifact.status != JobPhase.RUNNING:
        return False
    out = Path(artifact.directory)
    progress = read_json(out / "progress.json")
    if progress:
        artifact_progress(artifact=artifact, progress=progress)
    status = _poll(serving_backend(artifact.run.cluster.backend), artifact.backend_job_id, out / "job")
    if not status.finished:
        return True
    said = (progress or {}).get("message", "") if (progress or {}).get("stage") == "failed" else ""
    phase, report, reason = _outcome(
        status, report=read_json(out / "report.json"), job_dir=out / "job", said=said,
        missing="the quantize job ended without a report",
    )  # fmt: skip
    artifact_finish(artifact=artifact, status=phase, report=report, reason=reason)
    return False


# -- latency benchmark ------------------------------------------------------------------------------------------


def benchmark_start(artifact_id: int) -> str:
    artifact = Artifact.objects.select_related("run__cluster").filter(pk=artifact_id).first()
    if artifact is None or artifact.latency_status != JobPhase.QUEUED:
        return "nothing to do"
    out = Path(artifact.directory)
    (out / "latency.json").unlink(missing_ok=True)
    argv = ["-m", "jobs.export.latency", "--artifact-dir", str(out), "--out", str(out / "latency.json")]
    argv += ["--variants", ",".join(artifact.variants())]
    cluster = artifact.run.cluster
    if cluster.accelerator == "cpu":
        # A CPU node is measured with a shorter prompt: the tiny models' context and a 2-core box make 2,048
        # tokens of prefill per variant and repeat a matter of minutes.
        argv += ["--prefill-tokens", "256", "--decode-tokens", "32"]
    backend = serving_backend(cluster.backend)
    try:
        (out / "latency-job").mkdir(parents=True, exist_ok=True)
        spec = _spec(
            cluster=cluster, job_dir=out / "latency-job", module_argv=argv, name=f"cp-lat-{artifact.pk}", hours=2,
            user=run_user(artifact.run, backend),
        )  # fmt: skip
        job_id = _submit(backend, spec)
    except (LaunchError, OSError) as exc:
        latency_finish(artifact=artifact, status=JobPhase.FAILED, reason=f"could not start the benchmark: {exc}")
        return "launch failed"
    latency_started(artifact=artifact, job_id=job_id)
    return f"submitted {job_id}"


def benchmark_watch(artifact_id: int) -> bool:
    artifact = Artifact.objects.select_related("run__cluster").filter(pk=artifact_id).first()
    if artifact is None or artifact.latency_status != JobPhase.RUNNING:
        return False
    out = Path(artifact.directory)
    status = _poll(serving_backend(artifact.run.cluster.backend), artifact.latency_job_id, out / "latency-job")
    if not status.finished:
        return True
    phase, report, reason = _outcome(
        status, report=read_json(out / "latency.json"), job_dir=out / "latency-job",
        missing="the benchmark ended without a report",
    )  # fmt: skip
    latency_finish(artifact=artifact, status=phase, report=report, reason=reason)
    return False


# -- inference server -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_key(path: Path) -> None:
    write_atomic(path, secrets.token_urlsafe(32), mode=0o600)


def deploy_start(deployment_id: int) -> str:
    deployment = Deployment.objects.select_related("artifact__run__cluster").filter(pk=deployment_id).first()
    if deployment is None or deployment.status != DeploymentStatus.STARTING or deployment.backend_job_id:
        return "nothing to do"
    cluster = deployment.artifact.run.cluster
    state = Path(deployment.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    (state / "endpoint.json").unlink(missing_ok=True)
    _write_key(state / API_KEY_FILE)
    (state / KEY_SHOWN_FILE).unlink(missing_ok=True)  # a new key, not shown to anyone yet
    if deployment.backend == "slurm":
        host, port = "0.0.0.0", 20000 + deployment.pk % 20000
    else:
        host, port = "127.0.0.1", _free_port()
    argv = ["-m", "jobs.serve", "--model", str(Path(deployment.artifact.directory) / deployment.variant)]
    argv += ["--host", host, "--port", str(port), "--state-dir", str(state), "--served-name", deployment.name]
    argv += ["--engine", deployment.engine, "--api-key-file", str(state / API_KEY_FILE)]
    try:
        # The key file (0600) goes to the run's user with the rest of the run directory: the server reads it.
        user = run_user(deployment.artifact.run, deployment.backend)
        spec = _spec(cluster=cluster, job_dir=state, module_argv=argv, name=f"cp-serve-{deployment.pk}", hours=24 * 7,
                     user=user)  # fmt: skip
        job_id = _submit(deployment.backend, spec)
    except (LaunchError, OSError) as exc:
        deployment_failed(deployment=deployment, reason=f"could not start the server: {exc}")
        return "launch failed"
    deployment_submitted(deployment=deployment, job_id=job_id)
    return f"submitted {job_id}"


def _endpoint_url(state: Path) -> str | None:
    info = read_json(state / "endpoint.json")
    if not info or not info.get("port"):
        return None
    # The server names a host clients can reach, also when it listens on every interface (a Slurm node).
    url = str(info.get("url") or "")
    return url.rstrip("/") if url.startswith("http") else f"http://{info.get('host', '127.0.0.1')}:{int(info['port'])}"


def _healthy(url: str) -> tuple[bool, str]:
    try:
        response = httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}"
    return response.status_code == 200, f"HTTP {response.status_code}"


def deploy_watch(deployment_id: int) -> float | None:
    """One look at a deployment; seconds until the next one, None once it is no longer live."""
    deployment = Deployment.objects.select_related("artifact__run").filter(pk=deployment_id).first()
    if deployment is None or not deployment.is_live or not deployment.backend_job_id:
        return None
    state = Path(deployment.state_dir)
    backend = get_backend(deployment.backend)
    status = backend.poll(deployment.backend_job_id, state)
    if status.finished:
        reason = _log_tail(state) or status.reason or "the server process ended"
        deployment_failed(deployment=deployment, reason=f"the server exited: {reason}")
        # Whatever the job left behind (a server whose supervisor died) must not keep its port and memory.
        backend.cancel(deployment.backend_job_id, state)
        return None
    if deployment.status == DeploymentStatus.STARTING:
        url = _endpoint_url(state)
        if url and _healthy(url)[0]:
            deployment_running(deployment=deployment, url=url)
        elif deployment.created_at.timestamp() + SERVER_START_TIMEOUT_S < time.time():
            backend.cancel(deployment.backend_job_id, state)
            deployment_failed(deployment=deployment, reason="the server did not answer /health within 10 minutes")
            return None
        return STARTING_POLL_S
    ok, detail = _healthy(deployment.url)
    deployment = deployment_health(deployment=deployment, ok=ok, detail=detail)
    if deployment.status == DeploymentStatus.FAILED:
        backend.cancel(deployment.backend_job_id, state)  # a hung server is stopped, not left holding the GPU
    return HEALTH_INTERVAL_S if deployment.is_live else None


def deploy_stop(deployment_id: int) -> str:
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None:
        return "gone"
    if deployment.backend_job_id:
        get_backend(deployment.backend).cancel(deployment.backend_job_id, Path(deployment.state_dir))
    if deployment.status == DeploymentStatus.STOPPING:
        deployment_stopped(deployment=deployment)
    return f"stopped {deployment.backend_job_id or 'nothing'}"


def in_flight() -> dict[str, list[int]]:
    """What a (re)started worker must pick up again."""
    return {
        "quantize_queued": list(Artifact.objects.filter(status=JobPhase.QUEUED).values_list("pk", flat=True)),
        "quantize_running": list(Artifact.objects.filter(status=JobPhase.RUNNING).values_list("pk", flat=True)),
        "latency_queued": list(Artifact.objects.filter(latency_status=JobPhase.QUEUED).values_list("pk", flat=True)),
        "latency_running": list(Artifact.objects.filter(latency_status=JobPhase.RUNNING).values_list("pk", flat=True)),
        "deploy_live": list(
            Deployment.objects.filter(status__in=[DeploymentStatus.STARTING, DeploymentStatus.RUNNING])
            .exclude(backend_job_id="")
            .values_list("pk", flat=True)
        ),
        "deploy_queued": list(
            Deployment.objects.filter(status=DeploymentStatus.STARTING, backend_job_id="").values_list("pk", flat=True)
        ),
        "deploy_stopping": list(
            Deployment.objects.filter(status=DeploymentStatus.STOPPING).values_list("pk", flat=True)
        ),
    }
