"""Checkpoints (list, retention, resume), quantized artifacts (quantize, latency), deployments (deploy, stop)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from pydantic import Field

from runs.api.auth import require
from runs.api.errors import Refused
from runs.api.schemas import (
    MAX_ID,
    ArtifactOut,
    CheckpointOut,
    DeploymentOut,
    ErrorOut,
    PathId,
    RetentionOut,
    RunDetailOut,
)
from runs.api.serialize import artifact_out, checkpoint_out, deployment_out, run_out
from runs.models import Artifact, Checkpoint, Deployment, DeploymentStatus, Engine, Run, Variant
from runs.services.artifacts import ServingRefused, artifact_create, latency_request
from runs.services.checkpoints import checkpoint_resume, checkpoint_retention_apply, retention_policy
from runs.services.deployments import deployment_create, deployment_stop

router = Router(tags=["checkpoints and serving"])
REFUSED = {400: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


def _refused(exc: ServingRefused) -> Refused:
    # A request that is well formed but that the object's state refuses (not ready, already stopped) is a conflict.
    status = 400 if exc.field in ("methods", "variant", "engine", "name", "keep_last", "keep_every") else 409
    return Refused([(exc.field, str(exc))], status)


@router.get(
    "/runs/{run_id}/checkpoints/", response={200: list[CheckpointOut], **REFUSED}, summary="A run's checkpoints"
)
def list_checkpoints(request, run_id: PathId, include_pruned: bool = False):
    require(request, "runs.view_checkpoint", "reading checkpoints")
    run = get_object_or_404(Run, pk=run_id)
    checkpoints = run.checkpoints.all()
    if not include_pruned:
        checkpoints = checkpoints.filter(pruned_at__isnull=True)
    return [checkpoint_out(c) for c in checkpoints]


class RetentionIn(Schema):
    keep_last: int | None = Field(None, description="Keep the last N checkpoints (1 to 1,000,000).")
    keep_every: int | None = Field(None, description="Also keep every step that is a multiple of M (0: none).")


@router.post("/runs/{run_id}/checkpoints/retention/", response={200: RetentionOut, **REFUSED}, summary="Retention")
def apply_retention(request, run_id: PathId, payload: RetentionIn):
    """Set the run's retention policy (the fields given) and remove what it does not keep."""
    require(request, "runs.change_run", "changing retention")
    run = get_object_or_404(Run, pk=run_id)
    try:
        pruned = checkpoint_retention_apply(
            run=run, actor=request.user, keep_last=payload.keep_last, keep_every=payload.keep_every
        )
    except ServingRefused as exc:
        raise _refused(exc) from None
    run.refresh_from_db()
    keep_last, keep_every = retention_policy(run)
    return {"keep_last": keep_last, "keep_every": keep_every, "pruned": [checkpoint_out(c) for c in pruned]}


def _checkpoint(checkpoint_id: int) -> Checkpoint:
    return get_object_or_404(Checkpoint.objects.select_related("run__cluster"), pk=checkpoint_id)


@router.get("/checkpoints/{checkpoint_id}/", response={200: CheckpointOut, **REFUSED}, summary="One checkpoint")
def get_checkpoint(request, checkpoint_id: PathId):
    require(request, "runs.view_checkpoint", "reading checkpoints")
    return checkpoint_out(_checkpoint(checkpoint_id))


@router.post("/checkpoints/{checkpoint_id}/resume/", response={201: RunDetailOut, **REFUSED}, summary="Resume")
def resume_checkpoint(request, checkpoint_id: PathId):
    """A new attempt of the checkpoint's run, same config, starting from this checkpoint, queued at once."""
    require(request, "runs.launch_run", "resuming runs")
    try:
        child = checkpoint_resume(checkpoint=_checkpoint(checkpoint_id), actor=request.user)
    except ServingRefused as exc:
        raise _refused(exc) from None
    return Status(201, run_out(Run.objects.select_related("owner", "cluster", "recipe").get(pk=child.pk), detail=True))


class QuantizeIn(Schema):
    methods: list[Variant] = Field(
        default_factory=lambda: [Variant.NF4, Variant.INT8],
        description="nf4, int8, both, or none (an export in Hugging Face format only).",
    )


@router.post("/checkpoints/{checkpoint_id}/quantize/", response={201: ArtifactOut, **REFUSED}, summary="Quantize")
def quantize_checkpoint(request, checkpoint_id: PathId, payload: QuantizeIn):
    """Export the checkpoint in Hugging Face format and quantize it (NF4, int8); the artifact's progress follows."""
    require(request, "runs.add_artifact", "quantizing")
    try:
        artifact = artifact_create(
            checkpoint=_checkpoint(checkpoint_id), methods=[str(m) for m in payload.methods], actor=request.user
        )
    except ServingRefused as exc:
        raise _refused(exc) from None
    return Status(201, artifact_out(artifact))


class ArtifactFilters(Schema):
    run: int | None = Field(None, ge=1, le=MAX_ID, description="Only this run's artifacts.")
    limit: int = Field(100, ge=1, le=500)


@router.get("/artifacts/", response=list[ArtifactOut], summary="Quantized artifacts")
def list_artifacts(request, filters: Query[ArtifactFilters]):
    require(request, "runs.view_artifact", "reading artifacts")
    artifacts = Artifact.objects.select_related("created_by")
    if filters.run:
        artifacts = artifacts.filter(run_id=filters.run)
    return [artifact_out(a) for a in artifacts[: filters.limit]]


def _artifact(artifact_id: int) -> Artifact:
    return get_object_or_404(Artifact.objects.select_related("run__cluster", "created_by"), pk=artifact_id)


@router.get("/artifacts/{artifact_id}/", response={200: ArtifactOut, **REFUSED}, summary="One artifact")
def get_artifact(request, artifact_id: PathId):
    require(request, "runs.view_artifact", "reading artifacts")
    return artifact_out(_artifact(artifact_id))


@router.post("/artifacts/{artifact_id}/latency/", response={200: ArtifactOut, **REFUSED}, summary="Measure latency")
def measure_latency(request, artifact_id: PathId):
    """Queue the benchmark of prefill and decode of every variant side by side."""
    require(request, "runs.add_artifact", "measuring latency")
    try:
        artifact = latency_request(artifact=_artifact(artifact_id), actor=request.user)
    except ServingRefused as exc:
        raise _refused(exc) from None
    return artifact_out(artifact)


class DeployIn(Schema):
    variant: Variant = Field(Variant.NF4, description="base, nf4 or int8 (one the artifact holds).")
    engine: Engine = Engine.NATIVE
    name: str = Field("", max_length=64, description="The served model's name; empty: run<id>-<tag>-<variant>.")


@router.post("/artifacts/{artifact_id}/deploy/", response={201: DeploymentOut, **REFUSED}, summary="Deploy")
def deploy_artifact(request, artifact_id: PathId, payload: DeployIn):
    """Serve one variant as an OpenAI-compatible endpoint."""
    require(request, "runs.add_deployment", "deploying")
    try:
        deployment = deployment_create(
            artifact=_artifact(artifact_id),
            variant=str(payload.variant),
            engine=str(payload.engine),
            name=payload.name,
            actor=request.user,
        )
    except ServingRefused as exc:
        raise _refused(exc) from None
    return Status(
        201, deployment_out(Deployment.objects.select_related("artifact", "created_by").get(pk=deployment.pk))
    )


class DeploymentFilters(Schema):
    status: DeploymentStatus | None = None
    run: int | None = Field(None, ge=1, le=MAX_ID)
    limit: int = Field(100, ge=1, le=500)


@router.get("/deployments/", response=list[DeploymentOut], summary="Inference endpoints")
def list_deployments(request, filters: Query[DeploymentFilters]):
    require(request, "runs.view_deployment", "reading deployments")
    deployments = Deployment.objects.select_related("artifact", "created_by")
    if filters.status:
        deployments = deployments.filter(status=filters.status)
    if filters.run:
        deployments = deployments.filter(artifact__run_id=filters.run)
    return [deployment_out(d) for d in deployments[: filters.limit]]


def _deployment(pk: int) -> Deployment:
    return get_object_or_404(Deployment.objects.select_related("artifact", "created_by"), pk=pk)


@router.get("/deployments/{deployment_id}/", response={200: DeploymentOut, **REFUSED}, summary="One deployment")
def get_deployment(request, deployment_id: PathId):
    require(request, "runs.view_deployment", "reading deployments")
    return deployment_out(_deployment(deployment_id))


@router.post("/deployments/{deployment_id}/stop/", response={200: DeploymentOut, **REFUSED}, summary="Stop")
def stop_deployment(request, deployment_id: PathId):
    require(request, "runs.change_deployment", "stopping deployments")
    try:
        deployment_stop(deployment=_deployment(deployment_id), actor=request.user)
    except ServingRefused as exc:
        raise _refused(exc) from None
    return deployment_out(_deployment(deployment_id))
