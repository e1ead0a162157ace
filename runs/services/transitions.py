"""The one function that moves a run between states."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.models import Run, RunStatus
from runs.models.run import ALLOWED_TRANSITIONS, TERMINAL_STATUSES
from runs.realtime.broadcast import RUN_LIST_GROUP, broadcast_on_commit, run_group
from runs.services.audit import audit_record


class IllegalTransition(Exception):
    """The move is not in the state machine, or another actor moved the run first."""


def transition(*, run: Run, to: str, actor: Any, action: str | None = None, reason: str = "", **fields: Any) -> Run:
    """Move `run` to `to` if it is still in the state we read; audit and broadcast on commit.

    The guard is a conditional UPDATE on the old status, so of two concurrent callers exactly one wins.
    """
    frm = run.status
    if to not in ALLOWED_TRANSITIONS.get(frm, frozenset()):
        raise IllegalTransition(
            f"Run #{run.pk} is {RunStatus(frm).label.lower()}; it cannot become {RunStatus(to).label.lower()}."
        )
    now = timezone.now()
    stamps: dict[str, Any] = {}
    if to == RunStatus.QUEUED:
        stamps["queued_at"] = now
    elif to == RunStatus.RUNNING and run.started_at is None:
        stamps["started_at"] = now
    elif to in TERMINAL_STATUSES:
        stamps["finished_at"] = now
    if to == RunStatus.FAILED and reason:
        stamps["failure_reason"] = reason
    with transaction.atomic():
        changed = Run.objects.filter(pk=run.pk, status=frm).update(status=to, updated_at=now, **stamps, **fields)
        if changed != 1:
            current = Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()
            raise IllegalTransition(
                f"Run #{run.pk} changed while you acted: it is now {current}, not {frm}. Reload and try again."
            )
        audit_record(
            actor=actor,
            action=action or f"run.{to}",
            obj=run,
            message=reason,
            diff={"status": [frm, to], **{k: [getattr(run, k, None), v] for k, v in fields.items()}},
        )
        message = {"type": "run.status", "run_id": run.pk, "status": to, "previous": frm, "reason": reason}
        broadcast_on_commit(run_group(run.pk), message)
        broadcast_on_commit(RUN_LIST_GROUP, message)
    run.refresh_from_db()
    return run
