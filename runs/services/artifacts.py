"""Quantize a checkpoint into an artifact folder, follow its job, and measure its latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.models import Artifact, Checkpoint, JobPhase, Trainer, Variant
from runs.realtime.broadcast import broadcast_on_commit, run_group
from runs.services.audit import audit_record
from runs.services.enqueue import enqueue_on_commit
from runs.services.paths import inside_run
from runs.services.rundir import run_dir_path
from runs.services.serving_transitions import IllegalMove, move, serving_event

QUANT_METHODS = (Variant.NF4, Variant.INT8)


class ServingRefused(Exception):
    """A quantize, benchmark or deploy request that cannot go ahead; `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check_quantizable(checkpoint: Checkpoint) -> None:
    run = checkpoint.run
    if checkpoint.pruned_at is not None:
        raise ServingRefused("checkpoint", f"Checkpoint {checkpoint.tag} was removed by the retention policy.")
    if run.trainer != Trainer.REFERENCE:
        raise ServingRefused(
            "checkpoint", "Only checkpoints of the reference trainer can be exported; this run used its own script."
        )
    model = (run.config or {}).get("model", {})
    if model.get("arch") == "moe" and model.get("attention") == "mha":
        raise ServingRefused(
            "checkpoint",
            "A MoE model with MHA attention has no Hugging Face architecture with the same routing; "
            "use MLA attention (exported as DeepSeek-V3) or a dense model (exported as Llama).",
        )
    if not inside_run(checkpoint.path or "", run=run):
        raise ServingRefused(
            "checkpoint", f"Checkpoint {checkpoint.tag}'s files are not inside run {run.pk}'s directory."
        )
    if not run.run_dir or not Path(checkpoint.path or "").is_dir():
        raise ServingRefused("checkpoint", f"The folder of checkpoint {checkpoint.tag} is not on disk any more.")


def artifact_create(*, checkpoint: Checkpoint, methods: list[str], actor: Any) -> Artifact:
    """Queue a quantize job: an HF export of the checkpoint plus one model per method (none = export only)."""
    unknown = [m for m in methods if m not in QUANT_METHODS]
    if unknown:
        raise ServingRefused("methods", f"Unknown method {unknown[0]!r}; choose nf4, int8 or both.")
    _check_quantizable(checkpoint)
    with transaction.atomic():
        artifact = Artifact.objects.create(
            run=checkpoint.run,
            checkpoint=checkpoint,
            step=checkpoint.step,
            tag=checkpoint.tag,
            methods=sorted(set(methods), key=list(QUANT_METHODS).index),
            created_by=actor,
            progress={"stage": "queued", "fraction": 0.0, "message": "waiting for a worker"},
        )
        directory = run_dir_path(checkpoint.run) / "artifacts" / f"a{artifact.pk}"
        Artifact.objects.filter(pk=artifact.pk).update(directory=str(directory))
        artifact.directory = str(directory)
        audit_record(
            actor=actor,
            action="artifact.create",
            obj=artifact,
            run_id=checkpoint.run_id,
            message=f"quantize {checkpoint.tag}: {', '.join(artifact.methods) or 'export only'}",
        )
        broadcast_on_commit(run_group(checkpoint.run_id), serving_event(artifact))
        enqueue_on_commit("workers.quantize_artifact", artifact_id=artifact.pk)
    return artifact


def artifact_progress(*, artifact: Artifact, progress: dict) -> None:
    """The job's progress.json, pushed to the run's page when it changed."""
    if progress == artifact.progress:
        return
    with transaction.atomic():
        Artifact.objects.filter(pk=artifact.pk).update(progress=progress)
        artifact.progress = progress
        broadcast_on_commit(run_group(artifact.run_id), serving_event(artifact))


def artifact_started(*, artifact: Artifact, job_id: str) -> Artifact:
    return move(obj=artifact, to=JobPhase.RUNNING, actor="system", reason=f"job {job_id}", backend_job_id=job_id)


def artifact_finish(*, artifact: Artifact, status: str, report: dict | None = None, reason: str = "") -> Artifact:
    fields: dict[str, Any] = {"report": report} if report is not None else {}
    try:
        return move(obj=artifact, to=status, actor="system", reason=reason, **fields)
    except IllegalMove:
        artifact.refresh_from_db()
        return artifact


def latency_request(*, artifact: Artifact, actor: Any) -> Artifact:
    """Queue the benchmark job that measures prefill and decode of every variant side by side."""
    if artifact.status != JobPhase.SUCCEEDED:
        raise ServingRefused("artifact", f"Artifact #{artifact.pk} is {artifact.status}; measure it once it is ready.")
    if artifact.latency_status in (JobPhase.QUEUED, JobPhase.RUNNING):
        raise ServingRefused("artifact", "A latency benchmark of this artifact is already under way.")
    with transaction.atomic():
        artifact = move(obj=artifact, field="latency_status", to=JobPhase.QUEUED, actor=actor, reason="benchmark")
        enqueue_on_commit("workers.benchmark_artifact", artifact_id=artifact.pk)
    return artifact


def latency_started(*, artifact: Artifact, job_id: str) -> Artifact:
    return move(obj=artifact, field="latency_status", to=JobPhase.RUNNING, actor="system", latency_job_id=job_id)


LATENCY_HISTORY_KEPT = 50


def latency_finish(*, artifact: Artifact, status: str, report: dict | None = None, reason: str = "") -> Artifact:
    """Record a benchmark's outcome; a new report becomes the latest and the earlier ones are kept under
    latency["history"] (newest first), so measurements taken at different times can be compared."""
    fields: dict[str, Any] = {}
    if report is not None:
        previous = dict(artifact.latency or {})
        history = list(previous.pop("history", []))
        if previous.get("variants"):
            history.insert(0, previous)
        fields["latency"] = {
            **report,
            "measured_at": timezone.now().isoformat(),
            "history": history[:LATENCY_HISTORY_KEPT],
        }
    try:
        return move(obj=artifact, field="latency_status", to=status, actor="system", reason=reason, **fields)
    except IllegalMove:
        artifact.refresh_from_db()
        return artifact
