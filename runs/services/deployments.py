"""Deploy an artifact's variant as an inference endpoint, follow its health, stop it."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.common.atomic import write_atomic
from runs.models import AlertKind, Artifact, Deployment, DeploymentStatus, Engine, JobPhase, Severity
from runs.realtime.broadcast import broadcast_on_commit, run_group
from runs.services.alerts import alert_raise
from runs.services.artifacts import ServingRefused
from runs.services.audit import audit_record
from runs.services.enqueue import enqueue_on_commit
from runs.services.serving_transitions import IllegalMove, move, serving_event

# A dead endpoint is declared failed after this many health checks in a row go unanswered.
HEALTH_FAILURES_TO_FAIL = 3
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


API_KEY_FILE = "api_key"
# Present once the key in API_KEY_FILE has been shown to someone: a key is shown once, then only a new one is.
KEY_SHOWN_FILE = "api_key.shown"


def deployment_api_key(deployment: Deployment) -> str:
    """The endpoint's bearer key, kept in its state folder (mode 0600, written by the deploy task), never in the
    database; empty when the folder is gone."""
    try:
        return (Path(deployment.state_dir) / API_KEY_FILE).read_text().strip()
    except OSError:
        return ""


def _key_path(deployment: Deployment) -> Path:
    return Path(deployment.state_dir) / API_KEY_FILE


def deployment_key_reveal(*, deployment: Deployment, actor: Any) -> str:
    """The endpoint's key, shown once: later requests are refused and must rotate it to see a new one."""
    key = deployment_api_key(deployment)
    if not key:
        raise ServingRefused("key", "The endpoint has no key yet; it is written when the server starts.")
    shown = Path(deployment.state_dir) / KEY_SHOWN_FILE
    try:
        # O_EXCL: of two requests racing to see the key, exactly one does.
        os.close(os.open(shown, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise ServingRefused(
            "key", "This key was shown once already; rotate it to get a new one (the old one stops working)."
        ) from None
    audit_record(
        actor=actor, action="deployment.key_shown", obj=deployment, run_id=deployment.artifact.run_id, message=""
    )
    return key


def deployment_key_rotate(*, deployment: Deployment, actor: Any) -> str:
    """A new key replaces the old at once (the server reads the key file again when it changes); shown once."""
    if not Path(deployment.state_dir).is_dir():
        raise ServingRefused("key", "The endpoint's state folder is gone; deploy the artifact again.")
    if deployment.engine == Engine.VLLM and deployment.is_live:
        raise ServingRefused("key", "vLLM reads its key only at start; stop the deployment and deploy it again.")
    key = secrets.token_urlsafe(32)
    write_atomic(_key_path(deployment), key, mode=0o600)
    shown = Path(deployment.state_dir) / KEY_SHOWN_FILE
    write_atomic(shown, "", mode=0o600)
    audit_record(
        actor=actor,
        action="deployment.key_rotated",
        obj=deployment,
        run_id=deployment.artifact.run_id,
        message="the previous key no longer works",
    )
    return key


def serving_backend(cluster_backend: str) -> str:
    """Where one-process jobs run: a hostfile cluster's launcher starts multi-node DeepSpeed jobs only, so its
    quantize, benchmark and server jobs run on the control plane's own machine, next to the run directory."""
    return "local" if cluster_backend == "hostfile" else cluster_backend


def deployment_create(*, artifact: Artifact, variant: str, engine: str, actor: Any, name: str = "") -> Deployment:
    if artifact.status != JobPhase.SUCCEEDED:
        raise ServingRefused("artifact", f"Artifact #{artifact.pk} is {artifact.status}; deploy it once it is ready.")
    if variant not in artifact.variants():
        raise ServingRefused(
            "variant",
            f"Artifact #{artifact.pk} has no {variant!r} model; choose one of {', '.join(artifact.variants())}.",
        )
    if engine not in Engine.values:
        raise ServingRefused("engine", f"Unknown engine {engine!r}; choose native or vllm.")
    cluster = artifact.run.cluster
    if engine == Engine.VLLM and cluster.accelerator != "cuda":
        raise ServingRefused(
            "engine", f"vLLM needs a GPU node; cluster {cluster.name!r} is a CPU cluster. Use the built-in engine."
        )
    name = name.strip() or f"run{artifact.run_id}-{artifact.tag}-{variant}"
    if not NAME.match(name):
        raise ServingRefused("name", "The model name may use letters, digits, '.', '_' and '-' (at most 64).")
    with transaction.atomic():
        deployment = Deployment.objects.create(
            artifact=artifact,
            variant=variant,
            engine=engine,
            name=name,
            backend=serving_backend(cluster.backend),
            created_by=actor,
        )
        state_dir = Path(artifact.directory) / "deployments" / f"d{deployment.pk}"
        Deployment.objects.filter(pk=deployment.pk).update(state_dir=str(state_dir))
        deployment.state_dir = str(state_dir)
        audit_record(
            actor=actor,
            action="deployment.create",
            obj=deployment,
            run_id=artifact.run_id,
            message=f"{variant} of {artifact.tag} with the {engine} engine on {cluster.name}",
        )
        broadcast_on_commit(run_group(artifact.run_id), serving_event(deployment))
        enqueue_on_commit("workers.deploy", deployment_id=deployment.pk)
    return deployment


def deployment_submitted(*, deployment: Deployment, job_id: str) -> None:
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(backend_job_id=job_id)
        audit_record(
            actor="system",
            action="deployment.submitted",
            obj=deployment,
            run_id=deployment.artifact.run_id,
            message=f"{deployment.backend} job {job_id}",
        )
    deployment.backend_job_id = job_id


def deployment_running(*, deployment: Deployment, url: str) -> Deployment:
    return move(obj=deployment, to=DeploymentStatus.RUNNING, actor="system", reason=f"serving at {url}", url=url)


def deployment_stop(*, deployment: Deployment, actor: Any) -> Deployment:
    if not deployment.is_live:
        raise ServingRefused("deployment", f"Deployment #{deployment.pk} is already {deployment.status}.")
    with transaction.atomic():
        deployment = move(obj=deployment, to=DeploymentStatus.STOPPING, actor=actor, reason="stop requested")
        enqueue_on_commit("workers.stop_deployment", deployment_id=deployment.pk)
    return deployment


def deployment_stopped(*, deployment: Deployment) -> Deployment:
    try:
        return move(obj=deployment, to=DeploymentStatus.STOPPED, actor="system", reason="job stopped")
    except IllegalMove:
        deployment.refresh_from_db()
        return deployment


def deployment_failed(*, deployment: Deployment, reason: str) -> Deployment:
    """The endpoint died or never came up: mark it failed and raise an alert on its run."""
    try:
        with transaction.atomic():
            deployment = move(obj=deployment, to=DeploymentStatus.FAILED, actor="system", reason=reason)
            alert_raise(
                run=deployment.artifact.run,
                kind=AlertKind.ENDPOINT_DOWN,
                severity=Severity.CRITICAL,
                step=deployment.artifact.step,
                message=f"Deployment {deployment.name} is down: {reason}",
                evidence={"deployment_id": deployment.pk, "url": deployment.url, "reason": reason},
            )
    except IllegalMove:
        deployment.refresh_from_db()
    return deployment


def deployment_health(*, deployment: Deployment, ok: bool, detail: str = "") -> Deployment:
    """Record one health check; enough misses in a row fail the deployment."""
    failures = 0 if ok else deployment.health_failures + 1
    Deployment.objects.filter(pk=deployment.pk).update(health_failures=failures, last_health_at=timezone.now())
    deployment.health_failures = failures
    if failures >= HEALTH_FAILURES_TO_FAIL and deployment.status == DeploymentStatus.RUNNING:
        return deployment_failed(
            deployment=deployment, reason=f"{failures} health checks in a row failed ({detail or 'no answer'})"
        )
    return deployment


def deployment_prompt_audit(*, deployment: Deployment, actor: Any, params: dict) -> None:
    audit_record(
        actor=actor,
        action="deployment.prompt",
        obj=deployment,
        run_id=deployment.artifact.run_id,
        message="playground prompt",
        diff={"params": params},
    )
