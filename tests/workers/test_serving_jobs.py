"""Deployments as real server processes on the local backend and on a real one-node Slurm: they come up, answer,
a dead one is marked failed with an alert, and stop stops the job."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from runs.models import AlertKind, Artifact, Checkpoint, DeploymentStatus, JobPhase, Run, RunStatus
from runs.services.artifacts import artifact_finish
from runs.services.deployments import deployment_api_key, deployment_create, deployment_stop
from runs.services.serving_transitions import move
from tests.jobs.tiny_models import export_llama
from tests.runs.factories import tiny_run
from tests.workers import process_alive
from workers import serving

pytestmark = pytest.mark.django_db


@pytest.fixture
def artifact(seeded, operator, settings, tmp_path) -> Artifact:
    settings.RUNS_DIR = tmp_path / "runs"
    run = tiny_run(owner=operator, name="to-serve")
    run_dir = settings.RUNS_DIR / f"run-{run.pk}"
    folder = run_dir / "checkpoints" / "step_000004"
    folder.mkdir(parents=True)
    Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir), status=RunStatus.SUCCEEDED)
    checkpoint = Checkpoint.objects.create(run=run, step=4, tag=folder.name, path=str(folder))
    directory = run_dir / "artifacts" / "a1"
    export_llama(directory / "base")
    made = Artifact.objects.create(
        run=run,
        checkpoint=checkpoint,
        step=4,
        tag=folder.name,
        methods=[],
        directory=str(directory),
        created_by=operator,
    )
    made = move(obj=made, to=JobPhase.RUNNING, actor="system")
    return artifact_finish(artifact=made, status=JobPhase.SUCCEEDED, report={})


def _watch_until(deployment, statuses, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serving.deploy_watch(deployment.pk)
        deployment.refresh_from_db()
        if deployment.status in statuses:
            return deployment
        time.sleep(0.5)
    log = Path(deployment.state_dir, "stderr.log")
    pytest.fail(f"deployment stayed {deployment.status}: {log.read_text()[-2000:] if log.exists() else ''}")


def _complete(url: str, key: str) -> dict:
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": "m", "prompt": "hello", "max_tokens": 3},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return {"status": response.status_code, "body": response.json()}


def test_a_local_server_comes_up_and_a_killed_one_fails_with_an_alert(artifact, operator):
    deployment = deployment_create(artifact=artifact, variant="base", engine="native", actor=operator, name="m")
    assert serving.deploy_start(deployment.pk).startswith("submitted local:")
    deployment = _watch_until(deployment, {DeploymentStatus.RUNNING, DeploymentStatus.FAILED})
    assert deployment.status == DeploymentStatus.RUNNING, deployment.failure_reason
    key = deployment_api_key(deployment)
    assert (Path(deployment.state_dir) / "api_key").stat().st_mode & 0o777 == 0o600
    answer = _complete(deployment.url, key)
    assert answer["status"] == 200 and answer["body"]["usage"]["completion_tokens"] >= 1
    assert _complete(deployment.url, "not-the-key")["status"] == 401

    # The server process dies (as if the OOM killer took it); its supervisor records how it ended.
    server = json.loads((Path(deployment.state_dir) / "child.json").read_text())
    os.killpg(server["pgid"], signal.SIGKILL)
    deployment = _watch_until(deployment, {DeploymentStatus.FAILED}, timeout=30)
    assert "exited" in deployment.failure_reason or "health" in deployment.failure_reason
    assert artifact.run.alerts.filter(kind=AlertKind.ENDPOINT_DOWN).count() == 1
    job = json.loads((Path(deployment.state_dir) / "job.json").read_text())
    assert not process_alive(job["pid"]) and not process_alive(server["pgid"])


def test_a_server_on_slurm_answers_and_stop_cancels_the_job(artifact, operator, slurm_cluster):
    from runs.models import BackendKind, Cluster

    cluster = Cluster.objects.create(
        name="slurm-serve",
        backend=BackendKind.SLURM,
        nodes=1,
        gpus_per_node=1,
        accelerator="cpu",
        gpu_type="CPU",
        gpu_memory_gb=8,
        partition=slurm_cluster.partition,
    )
    Run.objects.filter(pk=artifact.run_id).update(cluster=cluster)
    artifact = Artifact.objects.select_related("run__cluster").get(pk=artifact.pk)
    deployment = deployment_create(artifact=artifact, variant="base", engine="native", actor=operator, name="m")
    assert deployment.backend == "slurm"
    assert serving.deploy_start(deployment.pk).startswith("submitted ")
    deployment = _watch_until(deployment, {DeploymentStatus.RUNNING, DeploymentStatus.FAILED}, timeout=180)
    assert deployment.status == DeploymentStatus.RUNNING, deployment.failure_reason
    assert deployment.backend_job_id.isdigit()
    assert _complete(deployment.url, deployment_api_key(deployment))["status"] == 200

    deployment = deployment_stop(deployment=deployment, actor=operator)
    serving.deploy_stop(deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.STOPPED
    from workers.backends.slurm import SlurmBackend

    deadline = time.monotonic() + 60
    while not SlurmBackend().poll(deployment.backend_job_id, Path(deployment.state_dir)).finished:
        assert time.monotonic() < deadline, "the Slurm job outlived stop"
        time.sleep(1)
