"""The one function that moves an artifact's jobs or a deployment between states (runs.models.serving)."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models, transaction
from django.utils import timezone

from runs.models import Artifact, Deployment, DeploymentStatus, JobPhase
from runs.models.serving import DEPLOYMENT_TRANSITIONS, JOB_PHASE_TRANSITIONS
from runs.realtime.broadcast import broadcast_on_commit, run_group
from runs.services.audit import audit_record

# (model, status field) -> its allowed moves
_MACHINES: dict[tuple[type[models.Model], str], dict[str, frozenset[str]]] = {
    (Artifact, "status"): JOB_PHASE_TRANSITIONS,
    # A finished benchmark can be run again; its new report replaces the old one.
    (Artifact, "latency_status"): {
        "": frozenset({JobPhase.QUEUED}),
        **JOB_PHASE_TRANSITIONS,
        JobPhase.SUCCEEDED: frozenset({JobPhase.QUEUED}),
        JobPhase.FAILED: frozenset({JobPhase.QUEUED}),
        JobPhase.CANCELLED: frozenset({JobPhase.QUEUED}),
    },
    (Deployment, "status"): DEPLOYMENT_TRANSITIONS,
}
_TERMINAL = {JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED, DeploymentStatus.STOPPED, DeploymentStatus.FAILED}


Movable = TypeVar("Movable", Artifact, Deployment)


class IllegalMove(Exception):
    """Not in the state machine, or another actor moved the object first."""


def _run_id(obj: Artifact | Deployment) -> int:
    return obj.run_id if isinstance(obj, Artifact) else obj.artifact.run_id


def serving_event(obj: Artifact | Deployment) -> dict:
    """What the run's websocket group hears about an artifact or deployment."""
    if isinstance(obj, Artifact):
        return {
            "type": "artifact.update",
            "artifact_id": obj.pk,
            "status": obj.status,
            "progress": obj.progress,
            "latency_status": obj.latency_status,
        }
    return {"type": "deployment.update", "deployment_id": obj.pk, "status": obj.status, "url": obj.url}


def move(*, obj: Movable, to: str, actor: Any, field: str = "status", reason: str = "", **fields: Any) -> Movable:
    """Move `obj.<field>` to `to` if it still holds what we read: a conditional UPDATE, so one caller wins."""
    allowed = _MACHINES[(type(obj), field)]
    frm = getattr(obj, field)
    if to not in allowed.get(frm, frozenset()):
        raise IllegalMove(f"{obj} is {frm or 'not started'}; it cannot become {to}.")
    now = timezone.now()
    stamps: dict[str, Any] = {}
    if isinstance(obj, Deployment):
        if to == DeploymentStatus.RUNNING:
            stamps["started_at"] = now
        elif to in (DeploymentStatus.STOPPED, DeploymentStatus.FAILED):
            stamps["stopped_at"] = now
        if to == DeploymentStatus.FAILED and reason:
            stamps["failure_reason"] = reason[:2000]
    elif field == "status" and to in _TERMINAL:
        stamps["finished_at"] = now
        if to == JobPhase.FAILED and reason:
            stamps["failure_reason"] = reason[:2000]
    with transaction.atomic():
        changed = type(obj).objects.filter(pk=obj.pk, **{field: frm}).update(**{field: to}, **stamps, **fields)
        if changed != 1:
            raise IllegalMove(f"{obj} changed while you acted; reload and try again.")
        obj.refresh_from_db()
        prefix = "latency" if field == "latency_status" else type(obj).__name__.lower()
        audit_record(
            actor=actor,
            action=f"{prefix}.{to}",
            obj=obj,
            run_id=_run_id(obj),
            message=reason[:500],
            diff={field: [frm, to], **{k: ["", str(v)[:200]] for k, v in fields.items()}},
        )
        broadcast_on_commit(run_group(_run_id(obj)), serving_event(obj))
    return obj
