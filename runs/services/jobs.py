"""What the launcher and watcher record about a run's job, through the same audited paths as people."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from runs.models import Run, RunStatus
from runs.services.attempts import attempt_end
from runs.services.audit import audit_record
from runs.services.transitions import IllegalTransition, transition


def run_record_job(*, run: Run, job_id: str, run_dir: str, backend: str) -> Run:
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(backend_job_id=job_id, run_dir=run_dir)
        audit_record(
            actor="system",
            action="run.submitted",
            obj=run,
            message=f"{backend} job {job_id}",
            diff={"backend_job_id": [run.backend_job_id, job_id], "run_dir": [run.run_dir, run_dir]},
        )
    run.refresh_from_db()
    return run


def run_finish(
    *, run: Run, status: str, reason: str = "", actor: Any = "system", summary: dict | None = None
) -> Run | None:
    """Move a launching/running run to its end state and end its live attempt with `summary` (how the job ended);
    None when someone else already ended the run."""
    run.refresh_from_db()
    if run.is_terminal:
        return None
    try:
        with transaction.atomic():
            if status == RunStatus.SUCCEEDED and run.status == RunStatus.LAUNCHING:
                run = transition(run=run, to=RunStatus.RUNNING, actor=actor)
            run = transition(run=run, to=status, actor=actor, action=f"run.{status}", reason=reason)
            attempt_end(run=run, state=status, summary={"reason": reason, **(summary or {})})
            return run
    except IllegalTransition:
        return None
