"""What people do to keep the runs table usable: tags and notes, archiving, deleting drafts never launched."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.models import Run, RunStatus
from runs.services.audit import audit_record

TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,39}\Z")
MAX_TAGS = 12


class AnnotationRefused(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def parse_tags(text: str) -> list[str]:
    """Comma- or space-separated tags, each checked; duplicates dropped, order kept."""
    tags = list(dict.fromkeys(t.strip() for t in re.split(r"[,\s]+", text or "") if t.strip()))
    bad = [t for t in tags if not TAG.match(t)]
    if bad:
        raise AnnotationRefused(
            "tags", f"Tag {bad[0]!r} is not allowed; use up to 40 letters, digits and _ . : / + - (no spaces)."
        )
    if len(tags) > MAX_TAGS:
        raise AnnotationRefused("tags", f"{len(tags)} tags given; keep at most {MAX_TAGS}.")
    return tags


def stored_tags(tags: list[str]) -> str:
    return f",{','.join(tags)}," if tags else ""


def run_annotate(*, actor: Any, run: Run, tags: str, notes: str) -> Run:
    new_tags = stored_tags(parse_tags(tags))
    notes = (notes or "").strip()
    if len(notes) > 5000:
        raise AnnotationRefused("notes", f"Notes are {len(notes)} characters; keep them under 5,000.")
    with transaction.atomic():
        before = Run.objects.select_for_update().get(pk=run.pk)
        diff: dict[str, list] = {}
        if before.tags != new_tags:
            diff["tags"] = [before.tag_list, [t for t in new_tags.split(",") if t]]
        if before.notes != notes:
            diff["notes"] = [before.notes, notes]
        if diff:
            Run.objects.filter(pk=run.pk).update(tags=new_tags, notes=notes)
            audit_record(actor=actor, action="run.annotate", obj=before, diff=diff)
    run.refresh_from_db()
    return run


def runs_archive(*, actor: Any, runs: list[Run], archived: bool) -> int:
    """Archive (or bring back) runs; active runs stay in view until they end."""
    changed = 0
    with transaction.atomic():
        for run in runs:
            if archived and run.status in (
                RunStatus.QUEUED,
                RunStatus.LAUNCHING,
                RunStatus.RUNNING,
                RunStatus.REMEDIATING,
            ):
                raise AnnotationRefused("runs", f"Run #{run.pk} is {run.status}; archive it once it has ended.")
            if bool(run.archived_at) == archived:
                continue
            Run.objects.filter(pk=run.pk).update(archived_at=timezone.now() if archived else None)
            audit_record(actor=actor, action="run.archive" if archived else "run.unarchive", obj=run)
            changed += 1
    return changed


def drafts_delete(*, actor: Any, runs: list[Run]) -> int:
    """Delete drafts that were never launched and nothing depends on; the audit keeps what they were."""
    with transaction.atomic():
        for run in runs:
            if run.status != RunStatus.DRAFT:
                raise AnnotationRefused(
                    "runs", f"Run #{run.pk} is {run.status}; only drafts are deleted (archive the others)."
                )
            if Run.objects.filter(parent=run).exists() or run.series.exists() or run.checkpoints.exists():
                raise AnnotationRefused(
                    "runs", f"Run #{run.pk} has forks, metrics or checkpoints; archive it instead of deleting it."
                )
        for run in runs:
            audit_record(actor=actor, action="run.delete", obj=run, message=f"draft {run.name} deleted")
            run.delete()
    return len(runs)
