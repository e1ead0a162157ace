"""Data sources and prep runs: register and count a source, prepare a recipe version, resume, cancel.

Counting and preparing are jobs (`python -m jobs.data.prep count|run`) that a worker starts through the cluster
backends (workers/data_prep.py); this module decides what may happen, records it (audit), and tells the pages
(websocket groups `source-<id>` and `prep-<id>`, after commit). Each state change of a count or a prep run is
one conditional update on the state it had, so of two workers (or a worker and a user) exactly one wins.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.data.prep import settings as prep_settings
from runs.models import Cluster, DataMixRecipe, DataSource, JobPhase, PrepRun, SourceFormat
from runs.models.data_prep import COUNT_TRANSITIONS, PREP_TRANSITIONS
from runs.realtime.broadcast import broadcast_on_commit
from runs.services.audit import audit_record
from runs.services.enqueue import enqueue_on_commit

MAX_TASKS = 256
_GLOB = re.compile(r"[*?\[]")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*\Z|other\Z|mul\Z")
_TEXT_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")


class DataRefused(Exception):
    """A request about data that cannot go ahead; `field` names what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class IllegalMove(Exception):
    """Not an allowed change of state, or someone else changed it first."""


def source_group(source_id: int) -> str:
    return f"source-{source_id}"


def prep_group(prep_id: int) -> str:
    return f"prep-{prep_id}"


# -- sources ----------------------------------------------------------------------------------------------------


def _fixed_prefix(path: str) -> str:
    """The part of a path before its first glob character, cut back to a whole folder name."""
    match = _GLOB.search(path)
    if not match:
        return path
    return path[: match.start()].rsplit("/", 1)[0] or "/"


def check_path(path: str) -> str:
    """A source path a job may read: a URL of a configured remote scheme, or an absolute local file, folder or glob
    inside one of settings.DATA_ROOTS that matches at least one file."""
    path = (path or "").strip()
    if not path:
        raise DataRefused(
            "path", "Enter the path of the raw text: a file, a folder or a glob such as /data/zh/*.jsonl."
        )
    if "\0" in path:
        raise DataRefused("path", "The path contains a NUL character.")
    if "://" in path:
        scheme = path.split("://", 1)[0].lower()
        if scheme not in settings.DATA_REMOTE_PROTOCOLS:
            configured = ", ".join(settings.DATA_REMOTE_PROTOCOLS) or "none"
            raise DataRefused(
                "path",
                f"Remote storage {scheme}:// is not configured here (configured: {configured}); set "
                f"CP_DATA_REMOTE_PROTOCOLS, or copy the data under {settings.DATA_ROOTS[0]}.",
            )
        return path
    if not os.path.isabs(path) or ".." in Path(path).parts:
        raise DataRefused("path", f"{path!r} must be an absolute path without '..', e.g. {settings.DATA_ROOTS[0]}/zh.")
    prefix = Path(_fixed_prefix(path)).resolve()
    if not any(prefix == root or prefix.is_relative_to(root) for root in settings.DATA_ROOTS):
        roots = ", ".join(str(r) for r in settings.DATA_ROOTS)
        raise DataRefused("path", f"{path} is outside the data folders this control plane may read ({roots}); "
                                  "put the data inside one, or add its folder to CP_DATA_ROOTS.")  # fmt: skip
    if _GLOB.search(path):
        matched = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        matched = [p for p in glob.glob(os.path.join(path, "**"), recursive=True) if os.path.isfile(p)]
    else:
        matched = [path] if os.path.isfile(path) else []
    if not matched:
        raise DataRefused("path", f"No file matches {path}; check the path, or the glob's pattern.")
    return path


def _check_source_fields(*, name: str, language: str, fmt: str, text_field: str) -> None:
    if not re.fullmatch(r"[-a-zA-Z0-9_]{1,64}", name or ""):
        raise DataRefused("name", "Use 1-64 letters, digits, - and _ for the name (it names the shards' folder).")
    if DataSource.objects.filter(name=name).exists():
        raise DataRefused("name", f"A data source named {name!r} exists; pick another name.")
    if not _LANGUAGE.match(language or ""):
        raise DataRefused(
            "language", "Tag the language: zh, en, fr, de, es, it, ru (checked), 'other' (neither zh nor en) or 'mul'."
        )
    if fmt not in SourceFormat.values:
        raise DataRefused("format", f"Format must be one of {', '.join(SourceFormat.values)}.")
    if fmt != SourceFormat.TEXT and not _TEXT_FIELD.match(text_field or ""):
        raise DataRefused("text_field", "Name the field (JSONL) or column (Parquet) that holds the text, e.g. text.")


def _runnable(cluster: Cluster) -> None:
    if not cluster.runnable:
        raise DataRefused("cluster", f"Cluster {cluster.name} is for planning only; pick one with machines behind it.")


def source_register(*, actor: Any, name: str, language: str, fmt: str, path: str, cluster: Cluster,
                    text_field: str = "text", licence: str = "", description: str = "") -> DataSource:  # fmt: skip
    """Register raw text as a data source and queue the job that counts it."""
    _check_source_fields(name=name, language=language, fmt=fmt, text_field=text_field)
    path = check_path(path)
    _runnable(cluster)
    with transaction.atomic():
        source = DataSource.objects.create(
            name=name,
            language=language,
            format=fmt,
            path=path,
            text_field=text_field or "text",
            licence=licence,
            description=description,
            created_by=actor,
        )
        audit_record(
            actor=actor,
            action="datasource.register",
            obj=source,
            message=f"{fmt} at {path}",
            diff={"path": [None, path], "language": [None, language], "licence": [None, licence]},
        )
        _queue_count(source=source, actor=actor, cluster=cluster)
    return source


def source_recount(*, actor: Any, source: DataSource, cluster: Cluster) -> DataSource:
    if not source.path:
        raise DataRefused("source", f"{source.name} has no raw text to count (it names prepared shards only).")
    if source.count_status in (JobPhase.QUEUED, JobPhase.RUNNING):
        raise DataRefused("source", f"{source.name} is being counted already.")
    _runnable(cluster)
    with transaction.atomic():
        _queue_count(source=source, actor=actor, cluster=cluster)
    return source


def _queue_count(*, source: DataSource, actor: Any, cluster: Cluster) -> None:
    directory = settings.PREP_DIR / "sources" / f"s{source.pk}"
    move(obj=source, field="count_status", to=JobPhase.QUEUED, actor=actor, reason=f"count on {cluster.name}",
         count_dir=str(directory), count_cluster=cluster, count_backend="", count_job_id="", count_error="",
         count_progress={})  # fmt: skip
    enqueue_on_commit("workers.count_source", source_id=source.pk)


def count_spec(source: DataSource) -> dict:
    return {"source": {"name": source.name, "language": source.language, "format": source.format,
                       "path": source.path, "text_field": source.text_field}}  # fmt: skip


def count_event(source: DataSource) -> dict:
    return {
        "type": "source.update",
        "source_id": source.pk,
        "count_status": source.count_status,
        "progress": source.count_progress,
        "counts": source.counts,
        "error": source.count_error,
    }


def count_progress(*, source: DataSource, progress: dict) -> None:
    if progress == source.count_progress:
        return
    with transaction.atomic():
        DataSource.objects.filter(pk=source.pk).update(count_progress=progress)
        source.count_progress = progress
        broadcast_on_commit(source_group(source.pk), count_event(source))


def count_finished(*, source: DataSource, status: str, counts: dict | None = None, reason: str = "") -> DataSource:
    fields: dict[str, Any] = {"count_error": reason[:2000]}
    if counts is not None:
        fields.update(counts=counts, counted_at=timezone.now())
    try:
        return move(obj=source, field="count_status", to=status, actor="system", reason=reason, **fields)
    except IllegalMove:
        source.refresh_from_db()
        return source


# -- prep runs --------------------------------------------------------------------------------------------------


def prep_start(*, actor: Any, recipe: DataMixRecipe, cluster: Cluster, tasks: int = 2) -> PrepRun:
    """Queue the prep job of one recipe version on `cluster`, with `tasks` tasks per parallel stage."""
    if not isinstance(tasks, int) or not 1 <= tasks <= MAX_TASKS:
        raise DataRefused("tasks", f"Tasks must be a whole number from 1 to {MAX_TASKS}.")
    _runnable(cluster)
    entries = list(recipe.entries.select_related("source").order_by("-weight", "source__name"))
    raw = [e.source.name for e in entries if not e.source.path]
    if raw:
        raise DataRefused(
            "recipe",
            f"Source(s) {', '.join(raw)} of {recipe} have no raw text to prepare (only prepared shards); "
            "register their raw text as data sources and use those in the recipe.",
        )
    counting = [e.source.name for e in entries if e.source.count_status in (JobPhase.QUEUED, JobPhase.RUNNING)]
    if counting:
        raise DataRefused("recipe", f"Source(s) {', '.join(counting)} are still being counted; prepare once done.")
    broken = [e.source for e in entries if e.source.count_status == JobPhase.FAILED]
    if broken:
        raise DataRefused(
            "recipe",
            f"Counting source {broken[0].name} failed ({broken[0].count_error[:300]}); fix the data and count it "
            "again before preparing.",
        )
    try:
        settings_ = prep_settings.validate(recipe.prep_settings)
    except prep_settings.SettingsInvalid as exc:
        raise DataRefused("recipe", f"{recipe} has invalid preparation settings: {exc}") from exc
    _check_files(recipe, settings_)
    with transaction.atomic():
        if PrepRun.objects.select_for_update().filter(recipe=recipe, status__in=[JobPhase.QUEUED, JobPhase.RUNNING]):
            raise DataRefused("recipe", f"{recipe} is being prepared already; wait for it or cancel it.")
        prep = PrepRun.objects.create(recipe=recipe, cluster=cluster, tasks=tasks, created_by=actor,
                                      progress={"status": "queued", "fraction": 0.0, "message": "waiting for a worker"})  # fmt: skip
        directory = settings.PREP_DIR / f"p{prep.pk}"
        spec = prep_spec(prep, entries=entries)
        PrepRun.objects.filter(pk=prep.pk).update(directory=str(directory), spec=spec)
        prep.directory, prep.spec = str(directory), spec
        audit_record(actor=actor, action="prep.start", obj=prep, message=f"{recipe} on {cluster.name}, {tasks} tasks",
                     diff={"recipe": [None, str(recipe)], "cluster": [None, cluster.name], "tasks": [None, tasks]})  # fmt: skip
        broadcast_on_commit(prep_group(prep.pk), prep_event(prep))
        enqueue_on_commit("workers.prep_data", prep_id=prep.pk)
    return prep


def _check_files(recipe: DataMixRecipe, settings_: dict) -> None:
    """Files the recipe names for the job to read (a tokenizer to reuse, classifier models) must exist inside the
    data folders or the prep folder, like a source's path."""
    named = [("tokenizer.path", settings_["tokenizer"]["path"] if settings_["tokenizer"]["mode"] == "reuse" else None),
             ("quality.model", settings_["quality"]["model"]), ("toxicity.model", settings_["toxicity"]["model"])]  # fmt: skip
    roots = [*settings.DATA_ROOTS, settings.PREP_DIR]
    for key, path in named:
        if not path:
            continue
        resolved = Path(path).resolve()
        inside = any(resolved == r or resolved.is_relative_to(r) for r in roots)
        if not os.path.isabs(path) or not inside or not resolved.is_file():
            raise DataRefused(
                "recipe",
                f"{recipe}'s prep.{key} {path!r} is not a file inside the data folders or the prep folder; give "
                "the absolute path of one (a tokenizer a prep run made lies in its folder).",
            )


def prep_spec(prep: PrepRun, entries: list | None = None) -> dict:
    """The job's prep.json (docs/run-config.md, "Data preparation")."""
    recipe, cluster = prep.recipe, prep.cluster
    entries = entries if entries is not None else list(recipe.entries.select_related("source").order_by("-weight"))
    if cluster.backend == "slurm":
        executor: dict[str, Any] = {"kind": "slurm", "tasks": prep.tasks, "partition": cluster.partition,
                                    "cpus_per_task": 1, "mem_per_cpu_gb": 1}  # fmt: skip
    else:
        executor = {"kind": "local", "tasks": prep.tasks, "workers": min(prep.tasks, os.cpu_count() or 1)}
    return {
        "job_id": prep.pk,
        "recipe": {"id": recipe.pk, "name": recipe.name, "version": recipe.version},
        "sources": [
            {
                "name": e.source.name,
                "language": e.source.language,
                "format": e.source.format,
                "path": e.source.path,
                "text_field": e.source.text_field,
                "weight": float(e.weight),
                "documents": (e.source.counts or {}).get("documents"),
            }
            for e in entries
        ],
        "settings": prep_settings.validate(recipe.prep_settings),
        "executor": executor,
    }


def prep_event(prep: PrepRun) -> dict:
    return {"type": "prep.update", "prep_id": prep.pk, "status": prep.status, "progress": prep.progress,
            "failure_reason": prep.failure_reason}  # fmt: skip


def prep_progress(*, prep: PrepRun, progress: dict) -> None:
    if progress == prep.progress:
        return
    with transaction.atomic():
        PrepRun.objects.filter(pk=prep.pk).update(progress=progress)
        prep.progress = progress
        broadcast_on_commit(prep_group(prep.pk), prep_event(prep))


def prep_started(*, prep: PrepRun, backend: str, job_id: str) -> PrepRun:
    return move(obj=prep, field="status", to=JobPhase.RUNNING, actor="system", reason=f"{backend} job {job_id}",
                backend=backend, backend_job_id=job_id, started_at=timezone.now())  # fmt: skip


def prep_finished(*, prep: PrepRun, status: str, report: dict | None = None, reason: str = "") -> PrepRun:
    fields: dict[str, Any] = {"finished_at": timezone.now()}
    if report is not None:
        fields["report"] = report
    if status == JobPhase.FAILED:
        fields["failure_reason"] = reason[:2000]
    try:
        return move(obj=prep, field="status", to=status, actor="system", reason=reason, **fields)
    except IllegalMove:
        prep.refresh_from_db()
        return prep


def prep_cancel(*, actor: Any, prep: PrepRun) -> PrepRun:
    if not prep.is_active:
        raise DataRefused("prep", f"Prep #{prep.pk} is {prep.status}; only a queued or running one can be cancelled.")
    with transaction.atomic():
        audit_record(actor=actor, action="prep.cancel", obj=prep, message="cancel requested")
        if prep.status == JobPhase.QUEUED and not prep.backend_job_id:
            prep = move(obj=prep, field="status", to=JobPhase.CANCELLED, actor=actor, reason="cancelled before start",
                        finished_at=timezone.now())  # fmt: skip
        else:
            enqueue_on_commit("workers.stop_prep", prep_id=prep.pk)
    return prep


def prep_resume(*, actor: Any, prep: PrepRun) -> PrepRun:
    """A new attempt of a failed or cancelled prep in the same folder: finished tasks are not redone."""
    if prep.status not in (JobPhase.FAILED, JobPhase.CANCELLED):
        raise DataRefused("prep", f"Prep #{prep.pk} is {prep.status}; only a failed or cancelled one can be resumed.")
    _runnable(prep.cluster)
    with transaction.atomic():
        if PrepRun.objects.filter(recipe=prep.recipe, status__in=[JobPhase.QUEUED, JobPhase.RUNNING]).exists():
            raise DataRefused("prep", f"{prep.recipe} is being prepared by another prep run; wait for it.")
        prep = move(obj=prep, field="status", to=JobPhase.QUEUED, actor=actor, reason=f"attempt {prep.attempt + 1}",
                    attempt=prep.attempt + 1, backend_job_id="", failure_reason="", finished_at=None,
                    progress={**prep.progress, "status": "queued", "message": "resuming"})  # fmt: skip
        enqueue_on_commit("workers.prep_data", prep_id=prep.pk)
    return prep


def latest_prep(recipe: DataMixRecipe) -> PrepRun | None:
    """The newest successful prep of this recipe version: the shards and tokenizer its runs train on."""
    return recipe.prep_runs.filter(status=JobPhase.SUCCEEDED).order_by("-finished_at", "-pk").first()


# -- one state change -------------------------------------------------------------------------------------------

_MACHINES: dict[tuple[type, str], tuple[dict[str, frozenset[str]], str]] = {
    (PrepRun, "status"): (PREP_TRANSITIONS, "prep"),
    (DataSource, "count_status"): (COUNT_TRANSITIONS, "datasource.count"),
}


Movable = TypeVar("Movable", PrepRun, DataSource)


def move(*, obj: Movable, field: str, to: str, actor: Any, reason: str = "", **fields: Any) -> Movable:
    """Set `obj.<field>` to `to` if it still holds what was read: one conditional UPDATE, an audit event, and the
    page told after commit."""
    machine, prefix = _MACHINES[(type(obj), field)]
    frm = getattr(obj, field)
    if to not in machine.get(frm, frozenset()):
        raise IllegalMove(f"{obj} is {frm or 'not started'}; it cannot become {to}.")
    with transaction.atomic():
        changed = type(obj).objects.filter(pk=obj.pk, **{field: frm}).update(**{field: to}, **fields)
        if changed != 1:
            raise IllegalMove(f"{obj} changed meanwhile; reload and try again.")
        obj.refresh_from_db()
        audit_record(actor=actor, action=f"{prefix}.{to}", obj=obj, message=reason[:500],
                     diff={field: [frm, to], **{k: ["", str(v)[:200]] for k, v in fields.items()
                                                if k in ("backend_job_id", "count_job_id", "attempt")}})  # fmt: skip
        if isinstance(obj, PrepRun):
            broadcast_on_commit(prep_group(obj.pk), prep_event(obj))
        else:
            broadcast_on_commit(source_group(obj.pk), count_event(obj))
    return obj
