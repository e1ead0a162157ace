"""Runs: list, read, plan, create, edit, launch, cancel, fork and compare; the same forms and services as the
pages, so every write is validated and audited the same way."""

from __future__ import annotations

from typing import Literal

from django.db import transaction
from django.db.models import Q
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from pydantic import Field

from runs.api.auth import require
from runs.api.errors import Refused
from runs.api.run_input import InputRefused, PlanIn, RunChanges, RunIn, build_form, form_errors
from runs.api.schemas import MAX_ID, AuditEventOut, CompareOut, ErrorOut, PathId, PlanOut, RunDetailOut, RunPage
from runs.api.serialize import audit_out, run_out
from runs.models import AuditEvent, Checkpoint, Run, RunStatus
from runs.services.artifacts import ServingRefused
from runs.services.checkpoints import run_start_from
from runs.services.diff import config_diff
from runs.services.runs import RunActionRefused, RunInvalid, run_cancel, run_create, run_launch, run_update

router = Router(tags=["runs"])
REFUSED = {400: ErrorOut, 403: ErrorOut, 404: ErrorOut}


class RunFilters(Schema):
    status: RunStatus | None = None
    owner: str | None = Field(None, max_length=150, description="The owner's username.")
    preset: str | None = Field(None, max_length=32)
    cluster: str | None = Field(None, max_length=64, description="The cluster's name.")
    parent: int | None = Field(None, ge=1, le=MAX_ID, description="Runs forked or resumed from this run.")
    q: str | None = Field(None, max_length=100, description="Part of the run's name.")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


class ForkIn(RunChanges):
    checkpoint_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="Start from this checkpoint of the run (its model shape must stay)."
    )


def _run(pk: int) -> Run:
    return get_object_or_404(Run.objects.select_related("owner", "cluster", "recipe"), pk=pk)


def _checked_form(changes: RunChanges, **kwargs):
    try:
        form = build_form(changes, **kwargs)
    except InputRefused as exc:
        raise Refused(exc.errors) from None
    if not form.is_valid():
        raise Refused(form_errors(form))
    return form


def _from_form(form, *, actor, parent: Run | None = None, checkpoint: Checkpoint | None = None) -> Run:
    data = form.cleaned_data
    try:
        with transaction.atomic():
            run = run_create(
                owner=actor,
                name=data["name"],
                preset=data["preset"],
                trainer=data["trainer"],
                cluster=data["cluster"],
                recipe=data["recipe"],
                config=form.config(),
                script_path=data.get("script_path", ""),
                parent=parent,
                fit_override_reason=data.get("fit_override_reason", ""),
            )
            if checkpoint is not None:
                run_start_from(run=run, checkpoint=checkpoint, actor=actor)
    except RunInvalid as exc:
        raise Refused([(f"overrides.{i.field}", i.message) for i in exc.issues]) from None
    except ServingRefused as exc:
        raise Refused([(exc.field, str(exc))]) from None
    return _run(run.pk)


def _base_of(run: Run) -> dict:
    return {
        "name": run.name,
        "trainer": run.trainer,
        "cluster": run.cluster,
        "recipe": run.recipe,
        "script_path": run.script_path,
    }


@router.get("/runs/", response=RunPage, summary="List runs, newest first")
def list_runs(request, filters: Query[RunFilters]):
    require(request, "runs.view_run", "reading runs")
    runs = Run.objects.select_related("owner", "cluster", "recipe")
    if filters.status:
        runs = runs.filter(status=filters.status)
    if filters.owner:
        runs = runs.filter(owner__username=filters.owner)
    if filters.preset:
        runs = runs.filter(preset=filters.preset)
    if filters.cluster:
        runs = runs.filter(cluster__name=filters.cluster)
    if filters.parent:
        runs = runs.filter(parent_id=filters.parent)
    if filters.q:
        runs = runs.filter(Q(name__icontains=filters.q))
    page = runs[filters.offset : filters.offset + filters.limit]
    return {
        "count": runs.count(),
        "limit": filters.limit,
        "offset": filters.offset,
        "items": [run_out(r) for r in page],
    }


@router.post("/runs/plan/", response={200: PlanOut, **REFUSED}, summary="Validate and plan without saving")
def plan_run(request, payload: PlanIn):
    """The run form's live plan: the same fields, validator and planner as a submit; nothing is saved."""
    require(request, "runs.view_run", "planning runs")
    try:
        form = build_form(payload, preset=payload.preset, name_required=False)
    except InputRefused as exc:
        raise Refused(exc.errors) from None
    valid = form.is_valid()
    checked = form.checked
    return {
        "valid": valid,
        "errors": [{"field": f, "message": m} for f, m in form_errors(form)],
        "plan": checked.plan if checked else None,
        "suggestions": form.issue_suggestions(),
        "config": checked.config if checked else None,
    }


@router.post("/runs/", response={201: RunDetailOut, **REFUSED}, summary="Create a draft run from a preset")
def create_run(request, payload: RunIn):
    require(request, "runs.add_run", "creating runs")
    form = _checked_form(payload, preset=payload.preset)
    return Status(201, run_out(_from_form(form, actor=request.user), detail=True))


@router.get("/runs/compare/", response={200: CompareOut, **REFUSED}, summary="Config diff of two runs")
def compare_runs(request, a: int = Query(..., ge=1, le=MAX_ID), b: int = Query(..., ge=1, le=MAX_ID)):
    require(request, "runs.view_run", "reading runs")
    run_a, run_b = _run(a), _run(b)
    diff = config_diff(run_a.config, run_b.config)
    diff.pop("run.id", None)
    return {"a": run_out(run_a), "b": run_out(run_b), "diff": diff}


@router.get("/runs/{run_id}/", response={200: RunDetailOut, **REFUSED}, summary="One run with its config and plan")
def get_run(request, run_id: PathId):
    require(request, "runs.view_run", "reading runs")
    return run_out(_run(run_id), detail=True)


@router.patch("/runs/{run_id}/", response={200: RunDetailOut, **REFUSED}, summary="Edit a draft run")
def edit_run(request, run_id: PathId, payload: RunChanges):
    require(request, "runs.change_run", "editing runs")
    run = _run(run_id)
    if run.status != RunStatus.DRAFT:
        raise Refused([("run", f"Run #{run.pk} is {run.status}; only drafts can be edited. Fork it instead.")], 409)
    form = _checked_form(payload, preset=run.preset, base_config=run.config, base=_base_of(run))
    data = form.cleaned_data
    try:
        run_update(
            actor=request.user,
            run=run,
            name=data["name"],
            trainer=data["trainer"],
            cluster=data["cluster"],
            recipe=data["recipe"],
            config=form.config(),
            script_path=data.get("script_path", ""),
            fit_override_reason=data.get("fit_override_reason", ""),
        )
    except RunInvalid as exc:
        raise Refused([(f"overrides.{i.field}", i.message) for i in exc.issues]) from None
    except RunActionRefused as exc:
        raise Refused([("run", str(exc))], 409) from None
    return run_out(_run(run_id), detail=True)


@router.post("/runs/{run_id}/launch/", response={200: RunDetailOut, 409: ErrorOut, **REFUSED}, summary="Queue a run")
def launch_run(
    request,
    run_id: PathId,
    fit_override_reason: str = Query(
        "", max_length=300, description="Only when the plan says the run does not fit: why launch it anyway (audited)."
    ),
):
    require(request, "runs.launch_run", "launching runs")
    try:
        run_launch(actor=request.user, run=_run(run_id), fit_override_reason=fit_override_reason)
    except RunActionRefused as exc:
        raise Refused([("run", str(exc))], 409) from None
    return run_out(_run(run_id), detail=True)


@router.post("/runs/{run_id}/cancel/", response={200: RunDetailOut, 409: ErrorOut, **REFUSED}, summary="Cancel a run")
def cancel_run(request, run_id: PathId, reason: str = Query("cancelled by user", min_length=1, max_length=200)):
    require(request, "runs.cancel_run", "cancelling runs")
    try:
        run_cancel(actor=request.user, run=_run(run_id), reason=reason)
    except RunActionRefused as exc:
        raise Refused([("run", str(exc))], 409) from None
    return run_out(_run(run_id), detail=True)


@router.post("/runs/{run_id}/fork/", response={201: RunDetailOut, **REFUSED}, summary="A new run from a run")
def fork_run(request, run_id: PathId, payload: ForkIn):
    """The run form pre-filled with the run's config, with `overrides` laid over it; from one of its checkpoints
    when `checkpoint_id` is given."""
    require(request, "runs.add_run", "creating runs")
    parent = _run(run_id)
    checkpoint = None
    if payload.checkpoint_id is not None:
        checkpoint = Checkpoint.objects.filter(pk=payload.checkpoint_id, run=parent, pruned_at__isnull=True).first()
        if checkpoint is None:
            raise Refused([("checkpoint_id", f"Run #{parent.pk} has no checkpoint #{payload.checkpoint_id} on disk.")])
    base = {**_base_of(parent), "name": f"{parent.name}-fork"[:100]}
    form = _checked_form(payload, preset=parent.preset, base_config=parent.config, base=base)
    return Status(201, run_out(_from_form(form, actor=request.user, parent=parent, checkpoint=checkpoint), detail=True))


class EventFilters(Schema):
    limit: int = Field(100, ge=1, le=500)


@router.get("/runs/{run_id}/events/", response={200: list[AuditEventOut], **REFUSED}, summary="The run's audit events")
def run_events(request, run_id: PathId, filters: Query[EventFilters]):
    """What the run page shows: this run's audit events, newest first."""
    require(request, "runs.view_run", "reading runs")
    run = _run(run_id)
    return [audit_out(e) for e in AuditEvent.objects.filter(run_id=run.pk).order_by("-id")[: filters.limit]]


RunStatusName = Literal["draft", "queued", "launching", "running", "remediating", "succeeded", "failed", "cancelled"]


class StateOut(Schema):
    id: int
    status: RunStatusName
    failure_reason: str
    backend_job_id: str
    last_step: int | None


@router.get("/runs/{run_id}/state/", response={200: StateOut, **REFUSED}, summary="A run's state, cheaply")
def run_state(request, run_id: PathId):
    require(request, "runs.view_run", "reading runs")
    run = get_object_or_404(Run, pk=run_id)
    fields = ("failure_reason", "backend_job_id", "last_step")
    return {"id": run.pk, "status": run.status, **{f: getattr(run, f) for f in fields}}
