"""Checkpoint retention, resume, artifacts and deployments through their services: rules, refusals and audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.train.checkpoint import kept_steps
from runs.models import (
    Alert,
    AlertKind,
    Artifact,
    AuditEvent,
    Checkpoint,
    Deployment,
    DeploymentStatus,
    JobPhase,
    Run,
    RunStatus,
)
from runs.services.artifacts import ServingRefused, artifact_create, artifact_finish, latency_request
from runs.services.checkpoints import checkpoint_resume, checkpoint_retention_apply, retention_kept
from runs.services.deployments import (
    HEALTH_FAILURES_TO_FAIL,
    deployment_create,
    deployment_health,
    deployment_running,
    deployment_stop,
)
from runs.services.serving_transitions import IllegalMove, move
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def run_with_checkpoints(seeded, operator, settings, tmp_path):
    settings.RUNS_DIR = tmp_path / "runs"
    run = tiny_run(owner=operator, name="ckpt")
    run_dir = settings.RUNS_DIR / f"run-{run.pk}"
    Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir), status=RunStatus.SUCCEEDED)
    run.refresh_from_db()
    for step in (10, 20, 30, 40, 50):
        folder = run_dir / "checkpoints" / f"step_{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"x")
        Checkpoint.objects.create(run=run, step=step, tag=folder.name, path=str(folder), metrics={"loss": 1.0})
    return run


def _ready_artifact(run, operator, methods=("nf4", "int8")) -> Artifact:
    checkpoint = run.checkpoints.get(step=50)
    artifact = artifact_create(checkpoint=checkpoint, methods=list(methods), actor=operator)
    artifact = move(obj=artifact, to=JobPhase.RUNNING, actor="system")
    return artifact_finish(artifact=artifact, status=JobPhase.SUCCEEDED, report={"base": {"bytes": 1}})


@pytest.mark.parametrize(
    ("keep_last", "keep_every", "kept"),
    [(2, 0, {40, 50}), (2, 20, {20, 40, 50}), (1, 30, {30, 50}), (10, 0, {10, 20, 30, 40, 50})],
)
def test_retention_keeps_the_last_n_plus_every_mth_the_same_way_as_the_job(keep_last, keep_every, kept):
    steps = [10, 20, 30, 40, 50]
    assert retention_kept(steps, keep_last=keep_last, keep_every=keep_every) == kept
    assert kept_steps(steps, keep=keep_last, keep_every=keep_every) == kept


def test_applying_a_policy_prunes_folders_and_audits_each_removal(
    run_with_checkpoints, operator, django_capture_on_commit_callbacks
):
    run = run_with_checkpoints
    with django_capture_on_commit_callbacks(execute=True):
        pruned = checkpoint_retention_apply(run=run, actor=operator, keep_last=2, keep_every=20)
    assert sorted(c.step for c in pruned) == [10, 30]
    for checkpoint in run.checkpoints.all():
        gone = checkpoint.step in (10, 30)
        assert (checkpoint.pruned_at is not None) == gone
        assert (not Path(checkpoint.path).exists()) == gone
    run.refresh_from_db()
    assert run.config["training"]["keep_checkpoints"] == 2 and run.config["training"]["keep_every"] == 20
    actions = list(AuditEvent.objects.filter(run_id=run.pk).values_list("action", flat=True))
    assert actions.count("checkpoint.pruned") == 2 and "checkpoint.retention" in actions


def test_a_checkpoint_being_quantized_is_not_pruned(run_with_checkpoints, operator):
    run = run_with_checkpoints
    artifact_create(checkpoint=run.checkpoints.get(step=10), methods=["nf4"], actor=operator)
    pruned = checkpoint_retention_apply(run=run, actor=operator, keep_last=1, keep_every=0)
    assert sorted(c.step for c in pruned) == [20, 30, 40]


@pytest.mark.parametrize(("field", "value"), [("keep_last", 0), ("keep_every", -1)])
def test_a_bad_policy_names_the_field(run_with_checkpoints, operator, field, value):
    with pytest.raises(ServingRefused) as exc:
        checkpoint_retention_apply(run=run_with_checkpoints, actor=operator, **{field: value})
    assert exc.value.field == field
    assert not Checkpoint.objects.filter(pruned_at__isnull=False).exists()


def test_resume_queues_the_next_attempt_of_the_same_run_from_the_checkpoint(run_with_checkpoints, operator):
    checkpoint = run_with_checkpoints.checkpoints.get(step=30)
    resumed = checkpoint_resume(checkpoint=checkpoint, actor=operator)
    assert resumed.pk == run_with_checkpoints.pk and resumed.attempt == 2
    assert resumed.status == RunStatus.QUEUED and resumed.resume_from == checkpoint.path
    attempt = resumed.attempts.get(number=2)
    assert attempt.cause == "resume" and attempt.checkpoint_step == 30 and attempt.state == "pending"
    assert AuditEvent.objects.filter(run_id=resumed.pk, action="run.attempt").exists()


def test_quantize_is_queued_and_audited(run_with_checkpoints, operator, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        artifact = artifact_create(
            checkpoint=run_with_checkpoints.checkpoints.get(step=50), methods=["int8", "nf4"], actor=operator
        )
    assert artifact.methods == ["nf4", "int8"] and artifact.status == JobPhase.QUEUED
    assert artifact.directory.endswith(f"run-{run_with_checkpoints.pk}/artifacts/a{artifact.pk}")
    assert artifact.variants() == ["base", "nf4", "int8"]
    assert AuditEvent.objects.filter(action="artifact.create", object_id=str(artifact.pk)).exists()
    assert len(callbacks) >= 2  # the page's push and the task


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"methods": ["fp4"]}, "methods", "nf4, int8"),
        ({"pruned": True}, "checkpoint", "retention"),
        ({"own_script": True}, "checkpoint", "reference trainer"),
        ({"moe_mha": True}, "checkpoint", "MLA"),
    ],
)
def test_quantize_refusals_name_the_field_and_the_fix(run_with_checkpoints, operator, change, field, words):
    run = run_with_checkpoints
    checkpoint = run.checkpoints.get(step=50)
    if change.get("pruned"):
        Checkpoint.objects.filter(pk=checkpoint.pk).update(pruned_at="2026-01-01T00:00Z")
        checkpoint.refresh_from_db()
    if change.get("own_script"):
        Run.objects.filter(pk=run.pk).update(trainer="own_script")
    if change.get("moe_mha"):
        config = run.config
        config["model"].update(arch="moe", attention="mha")
        Run.objects.filter(pk=run.pk).update(config=config)
    checkpoint = Checkpoint.objects.select_related("run").get(pk=checkpoint.pk)
    with pytest.raises(ServingRefused) as exc:
        artifact_create(checkpoint=checkpoint, methods=change.get("methods", ["nf4"]), actor=operator)
    assert exc.value.field == field and words in str(exc.value)
    assert not Artifact.objects.exists()


def test_latency_needs_a_finished_artifact_and_can_be_measured_again(run_with_checkpoints, operator):
    queued = artifact_create(checkpoint=run_with_checkpoints.checkpoints.get(step=50), methods=[], actor=operator)
    with pytest.raises(ServingRefused):
        latency_request(artifact=queued, actor=operator)
    artifact = _ready_artifact(run_with_checkpoints, operator)
    artifact = latency_request(artifact=artifact, actor=operator)
    assert artifact.latency_status == JobPhase.QUEUED
    with pytest.raises(ServingRefused, match="already"):
        latency_request(artifact=artifact, actor=operator)
    artifact = move(obj=artifact, field="latency_status", to=JobPhase.RUNNING, actor="system")
    artifact = move(obj=artifact, field="latency_status", to=JobPhase.SUCCEEDED, actor="system")
    assert latency_request(artifact=artifact, actor=operator).latency_status == JobPhase.QUEUED


def test_illegal_moves_are_refused(run_with_checkpoints, operator):
    artifact = _ready_artifact(run_with_checkpoints, operator)
    with pytest.raises(IllegalMove):
        move(obj=artifact, to=JobPhase.RUNNING, actor="system")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "fp4"}, "variant"),
        ({"engine": "vllm"}, "engine"),
        ({"engine": "tgi"}, "engine"),
        ({"name": "no spaces please"}, "name"),
    ],
)
def test_deploy_refusals_name_the_field(run_with_checkpoints, operator, kwargs, field):
    artifact = _ready_artifact(run_with_checkpoints, operator)
    args = {"variant": "nf4", "engine": "native", **kwargs}
    with pytest.raises(ServingRefused) as exc:
        deployment_create(artifact=artifact, actor=operator, **args)
    assert exc.value.field == field
    assert not Deployment.objects.exists()


def test_an_endpoint_that_stops_answering_fails_and_raises_one_alert(run_with_checkpoints, operator):
    artifact = _ready_artifact(run_with_checkpoints, operator)
    deployment = deployment_create(artifact=artifact, variant="nf4", engine="native", actor=operator)
    assert deployment.backend == "local" and deployment.name == f"run{artifact.run_id}-step_000050-nf4"
    deployment = deployment_running(deployment=deployment, url="http://127.0.0.1:9")
    for _ in range(HEALTH_FAILURES_TO_FAIL - 1):
        deployment = deployment_health(deployment=deployment, ok=False, detail="ConnectError")
        assert deployment.status == DeploymentStatus.RUNNING
    deployment = deployment_health(deployment=deployment, ok=False, detail="ConnectError")
    assert deployment.status == DeploymentStatus.FAILED and "health checks" in deployment.failure_reason
    alerts = Alert.objects.filter(run=artifact.run, kind=AlertKind.ENDPOINT_DOWN)
    assert alerts.count() == 1 and alerts[0].severity == "critical"
    with pytest.raises(ServingRefused, match="already failed"):
        deployment_stop(deployment=deployment, actor=operator)


def test_a_healthy_check_resets_the_miss_count(run_with_checkpoints, operator):
    artifact = _ready_artifact(run_with_checkpoints, operator)
    deployment = deployment_create(artifact=artifact, variant="base", engine="native", actor=operator)
    deployment = deployment_running(deployment=deployment, url="http://127.0.0.1:9")
    deployment = deployment_health(deployment=deployment, ok=False)
    deployment = deployment_health(deployment=deployment, ok=True)
    assert deployment.health_failures == 0 and deployment.status == DeploymentStatus.RUNNING
    stopping = deployment_stop(deployment=deployment, actor=operator)
    assert stopping.status == DeploymentStatus.STOPPING
    actions = set(AuditEvent.objects.filter(object_type="deployment").values_list("action", flat=True))
    assert {"deployment.create", "deployment.running", "deployment.stopping"} <= actions
