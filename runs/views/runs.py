from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from runs.forms import RunForm
from runs.forms.run_form import format_curriculum
from runs.metrics.reads import runs_keys, series_keys, series_versions
from runs.models import AuditEvent, Checkpoint, Cluster, Run, RunStatus, Trainer
from runs.planning.presets import PRESETS
from runs.services import joblogs
from runs.services.annotations import AnnotationRefused, drafts_delete, run_annotate, runs_archive
from runs.services.artifacts import ServingRefused
from runs.services.checkpoints import run_start_from
from runs.services.connect import connect_context
from runs.services.data_reports import consumed_mix, prep_of_run
from runs.services.diff import configs_diff
from runs.services.mlflow_summary import mlflow_rows
from runs.services.run_table import METRIC, PAGE_SIZE, TableQuery, page_metrics, table_queryset
from runs.services.runs import (
    RunActionRefused,
    RunInvalid,
    launch_blocker,
    plan_fits,
    run_cancel,
    run_create,
    run_launch,
    run_update,
)
from runs.services.timeline import replaced_ranges, run_timeline
from runs.services.versus import planned_vs_actual
from runs.text import NUL


def _run_or_none(raw: str | None) -> Run | None:
    """The run a query or form parameter names, or None for anything that is not a run id."""
    return Run.objects.filter(pk=int(raw)).first() if raw and raw.isdigit() else None


def _checkpoint_or_none(run: Run | None, raw: str | None) -> Checkpoint | None:
    """A checkpoint of `run` named by a query or form parameter, or None."""
    if run is None or not raw or not raw.isdigit():
        return None
    return Checkpoint.objects.filter(pk=int(raw), run=run, pruned_at__isnull=True).first()


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_list(request: HttpRequest) -> HttpResponse:
    query = TableQuery.from_params(request.GET)
    page = Paginator(table_queryset(query), PAGE_SIZE).get_page(request.GET.get("page"))
    rows: list[Any] = list(page.object_list)  # runs, given the figures the table shows beside their fields
    metrics = page_metrics(rows)
    now = timezone.now()
    for run in rows:
        run.metric = metrics.get(run.pk)
        total = (run.config.get("training") or {}).get("total_steps") if isinstance(run.config, dict) else None
        run.total_steps = total
        run.progress_pct = (
            min(100.0, 100.0 * (run.last_step + 1) / total) if total and run.last_step is not None else None
        )
        run.duration = ((run.finished_at or now) - run.started_at) if run.started_at else None
    owners = get_user_model().objects.filter(pk__in=Run.objects.values("owner_id")).order_by("username")
    params = request.GET.copy()
    params.pop("page", None)
    params.pop("sort", None)
    return render(
        request,
        "runs/list.html",
        {
            "page": page,
            "rows": rows,
            "query": query,
            "statuses": RunStatus.choices,
            "status": query.status[0] if len(query.status) == 1 else "",
            "owner": query.owner,
            "owners": owners,
            "clusters": Cluster.objects.order_by("name").values_list("name", flat=True),
            "presets": PRESETS,
            "keep": params.urlencode(),
            "metric": METRIC,
            "columns": [
                ("id", "#", "num"),
                ("name", "Name", ""),
                ("status", "Status", ""),
                ("step", "Progress", "num"),
                ("duration", "Duration", "num"),
                ("final", f"Final {METRIC}", "num"),
                ("best", f"Best {METRIC}", "num"),
                ("", "Preset · cluster", "hide-narrow"),
                ("owner", "Owner", "hide-narrow"),
                ("created", "Created", "hide-narrow"),
            ],
            "can_operate": request.user.has_perm("runs.add_run"),
        },
    )


@require_POST
@permission_required("runs.change_run", raise_exception=True)
def run_bulk(request: HttpRequest) -> HttpResponse:
    """Archive, bring back or delete the runs ticked in the table."""
    ids = [int(i) for i in request.POST.getlist("run") if i.isdigit()]
    runs = list(Run.objects.filter(pk__in=ids))
    action = request.POST.get("action", "")
    try:
        if not runs:
            raise AnnotationRefused("run", "Tick at least one run first.")
        if action == "archive":
            done = runs_archive(actor=request.user, runs=runs, archived=True)
            messages.success(request, f"{done} run(s) archived; show them with the archived filter.")
        elif action == "unarchive":
            done = runs_archive(actor=request.user, runs=runs, archived=False)
            messages.success(request, f"{done} run(s) back in the table.")
        elif action == "delete":
            done = drafts_delete(actor=request.user, runs=runs)
            messages.success(request, f"{done} draft(s) deleted.")
        else:
            raise AnnotationRefused("action", f"action must be archive, unarchive or delete, not {action!r}.")
    except AnnotationRefused as exc:
        messages.error(request, str(exc))
    back = request.POST.get("next", "")
    return redirect(back if back.startswith("/runs/") else "run-list")


@require_POST
@permission_required("runs.change_run", raise_exception=True)
def run_annotate_view(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    try:
        run_annotate(
            actor=request.user, run=run, tags=request.POST.get("tags", ""), notes=request.POST.get("notes", "")
        )
    except AnnotationRefused as exc:
        messages.error(request, f"{exc.field}: {exc}")
    else:
        messages.success(request, "Tags and notes saved.")
    return redirect("run-detail", pk=pk)


def _form_from_config(text: str) -> tuple[RunForm, str]:
    """The run form filled from a pasted config (a run page's JSON), or the preset's with the reason it was not."""
    from runs.models import Cluster, DataMixRecipe

    try:
        cfg = json.loads(text)
    except ValueError as exc:
        return RunForm(preset="tiny"), f"config: not JSON ({exc}); paste the config exactly as a run page shows it."
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        message = "config: a run config is a JSON object with model, parallel, batch, ... sections."
        return RunForm(preset="tiny"), message
    run_part, cluster_part = _section(cfg, "run"), _section(cfg, "cluster")
    recipe_part = _section(_section(cfg, "data"), "recipe")
    initial: dict = {"name": f"{run_part.get('name') or 'imported'}-copy"[:100]}
    trainer = _name(run_part.get("trainer"))
    if trainer in Trainer.values:
        initial["trainer"] = trainer
    cluster_name = _name(cluster_part.get("name"))
    cluster = Cluster.objects.filter(name=cluster_name).first() if cluster_name else None
    if cluster:
        initial["cluster"] = cluster.pk
    recipe_name, version = _name(recipe_part.get("name")), recipe_part.get("version")
    if recipe_name and isinstance(version, int) and not isinstance(version, bool) and 1 <= version < 2**31:
        recipe = DataMixRecipe.objects.filter(name=recipe_name, version=version).first()
        if recipe:
            initial["recipe"] = recipe.pk
    preset = _name(run_part.get("preset"))
    return RunForm(preset=preset if preset in PRESETS else "tiny", base_config=cfg, initial=initial), ""


def _section(cfg: dict, key: str) -> dict:
    value = cfg.get(key)
    return value if isinstance(value, dict) else {}


def _name(value: Any) -> str | None:
    """A name a pasted config gives, fit to look up (a string PostgreSQL can compare), or None."""
    return value if isinstance(value, str) and NUL not in value else None


@permission_required("runs.add_run", raise_exception=True)
def run_new(request: HttpRequest) -> HttpResponse:
    fork_of = start_from = None
    if request.method == "POST" and "config_json" in request.POST:
        form, problem = _form_from_config(request.POST["config_json"])
        if problem:
            messages.error(request, problem)
        context = {"form": form, "presets": PRESETS, "fork_of": None, "editing": None, "start_from": None}
        return render(request, "runs/form.html", context)
    if request.method == "POST":
        form = RunForm(request.POST)
        # A form sent back with errors keeps what it was forked from.
        fork_of = parent = _run_or_none(request.POST.get("parent"))
        start_from = _checkpoint_or_none(parent, request.POST.get("checkpoint"))
        if form.is_valid():
            data = form.cleaned_data
            try:
                with transaction.atomic():
                    run = run_create(
                        owner=request.user,
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
                    if start_from is not None:
                        run_start_from(run=run, checkpoint=start_from, actor=request.user)
            except RunInvalid as exc:
                for issue in exc.issues:
                    form.add_error(None, f"{issue.field}: {issue.message}")
            except ServingRefused as exc:
                form.add_error(None, f"{exc.field}: {exc}")
            else:
                messages.success(request, f"Run #{run.pk} created as a draft.")
                return redirect("run-detail", pk=run.pk)
    else:
        fork_of = _run_or_none(request.GET.get("fork"))
        start_from = _checkpoint_or_none(fork_of, request.GET.get("checkpoint"))
        if fork_of is not None:
            form = RunForm(
                preset=fork_of.preset,
                base_config=fork_of.config,
                initial={
                    "name": f"{fork_of.name}-fork",
                    "cluster": fork_of.cluster_id,
                    "recipe": fork_of.recipe_id,
                    "trainer": fork_of.trainer,
                    "script_path": fork_of.script_path,
                },
            )
        else:
            form = RunForm(preset=request.GET.get("preset", "tiny"))
    context = {"form": form, "presets": PRESETS, "fork_of": fork_of, "editing": None, "start_from": start_from}
    return render(request, "runs/form.html", context)


@permission_required("runs.change_run", raise_exception=True)
def run_edit(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    if run.status != RunStatus.DRAFT:
        messages.error(request, f"Run #{run.pk} is {run.status}; only drafts can be edited. Fork it instead.")
        return redirect("run-detail", pk=run.pk)
    if request.method == "POST":
        form = RunForm(request.POST)
        if form.is_valid():
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
            except (RunInvalid, RunActionRefused) as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Run #{run.pk} saved.")
                return redirect("run-detail", pk=run.pk)
    else:
        form = RunForm(
            preset=run.preset,
            base_config=run.config,
            initial={
                "name": run.name,
                "cluster": run.cluster_id,
                "recipe": run.recipe_id,
                "trainer": run.trainer,
                "script_path": run.script_path,
                "curriculum": format_curriculum(run.config.get("curriculum", [])),
            },
        )
    return render(request, "runs/form.html", {"form": form, "presets": PRESETS, "fork_of": None, "editing": run})


@require_POST
@permission_required("runs.view_run", raise_exception=True)
def run_plan(request: HttpRequest) -> JsonResponse:
    """The live pre-flight plan: the same form and checks as a submit, nothing saved."""
    form = RunForm(request.POST)
    valid = form.is_valid()
    # The plan does not need a name; "required" under an empty name field while typing elsewhere is noise.
    errors = {name: [str(m) for m in msgs] for name, msgs in form.errors.items() if name != "name"}
    plan = form.checked.plan if form.checked else None
    valid = valid or (set(form.errors) == {"name"})
    return JsonResponse({"valid": valid, "errors": errors, "plan": plan, "suggestions": form.issue_suggestions()})


def _progress(run: Run) -> dict:
    """Step N of total, and the time left at the pace the run has kept since it started."""
    total = run.plan.get("total_steps") or (run.config.get("training") or {}).get("total_steps")
    step = run.last_step
    out: dict = {"total": total, "step": step, "pct": 0.0, "eta_text": ""}
    if not total:
        return out
    done = (step + 1) if step is not None else 0
    out["pct"] = min(100.0, 100.0 * done / total)
    if run.is_terminal:
        out["eta_text"] = f"· {run.get_status_display().lower()}"
    elif run.started_at and done:
        elapsed = (timezone.now() - run.started_at).total_seconds()
        left = max(0.0, elapsed * (total - done) / done)
        out["eta_text"] = f"· about {_duration(left)} left"
        out["eta_s"] = left
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("owner", "cluster", "recipe", "parent"), pk=pk)
    return render(request, "runs/detail.html", detail_context(request, run))


def detail_context(request: HttpRequest, run: Run, *, issued: str = "") -> dict:
    """What the run page shows; `issued` is a token secret just issued, shown this once in the connect panel."""
    events = AuditEvent.objects.filter(run_id=run.pk).order_by("-id")[:100]
    can_operate = request.user.has_perm("runs.add_run")
    timeline = run_timeline(run)
    return {
        "run": run,
        # The charts' keys with the page, so that its scripts read the series at once (no keys request first).
        "metric_keys": [k["key"] for k in series_keys(run_id=run.pk)],
        "config_json": json.dumps(run.config, indent=2),
        "events": events,
        "alerts": run.alerts.all()[:50],
        "alert_steps": [a for a in run.alerts.exclude(step=None).values_list("step", flat=True)[:200]],
        "checkpoints": run.checkpoints.all()[:50],
        "launch_blocker": launch_blocker(run),
        "needs_fit_override": not plan_fits(run.plan) and not run.plan.get("fit_override"),
        "progress": _progress(run),
        "versus": planned_vs_actual(run),
        "can_operate": can_operate,
        "can_annotate": request.user.has_perm("runs.change_run"),
        "can_launch": request.user.has_perm("runs.launch_run") and run.status == RunStatus.DRAFT,
        "can_cancel": request.user.has_perm("runs.cancel_run") and not run.is_terminal,
        "can_edit": request.user.has_perm("runs.change_run") and run.status == RunStatus.DRAFT,
        "consumed": consumed_mix(run),
        "mix_prep": prep_of_run(run),
        "timeline": timeline if len(timeline) > 1 or any(t.attempt.cause != "launch" for t in timeline) else [],
        "replaced": replaced_ranges(timeline),
        "compiling": joblogs.compiling_now(run),
        "log_streams": list(joblogs.STREAMS),
        **(connect_context(run, issued=issued) if can_operate else {}),
    }


@require_POST
@permission_required("runs.launch_run", raise_exception=True)
def run_launch_view(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    try:
        run_launch(actor=request.user, run=run, fit_override_reason=request.POST.get("fit_override_reason", ""))
    except RunActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run #{run.pk} queued for launch.")
    return redirect("run-detail", pk=pk)


@require_POST
@permission_required("runs.cancel_run", raise_exception=True)
def run_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    try:
        run_cancel(actor=request.user, run=run)
    except RunActionRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run #{run.pk} cancelled.")
    return redirect("run-detail", pk=pk)


MAX_COMPARED = 20


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_compare(request: HttpRequest) -> HttpResponse:
    """Any number of runs side by side: what differs in their configs, a parallel-coordinates view of the numeric
    settings that differ against final metrics, and their curves overlaid."""
    # Ids past a 64-bit integer match no run, and the databases refuse them in an IN list.
    ids = list(dict.fromkeys(i for i in request.GET.getlist("run") if i.isdigit() and int(i) < 2**63))[:MAX_COMPARED]
    runs = list(Run.objects.filter(pk__in=ids).select_related("cluster", "recipe", "owner"))
    runs.sort(key=lambda r: ids.index(str(r.pk)))
    diff = configs_diff([r.config for r in runs]) if len(runs) >= 2 else None
    metrics = page_metrics(runs)
    coordinates = []
    if diff:
        for path, values in diff.items():
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                coordinates.append({"label": path, "values": values})
        for label, attr in ((f"final {METRIC}", "final"), (f"best {METRIC}", "best")):
            values = [getattr(metrics[r.pk], attr) for r in runs]
            if all(v is not None for v in values):
                coordinates.append({"label": label, "values": values})
    choices = Run.objects.order_by("-id").values_list("pk", "name")[:500]
    return render(
        request,
        "runs/compare.html",
        {
            "runs": runs,
            "rows": [(path, values) for path, values in (diff or {}).items()],
            "mlflow_rows": mlflow_rows(runs) if len(runs) >= 2 else [],
            "metrics": [metrics[r.pk] for r in runs],
            "diff": diff,
            "choices": choices,
            "ids": ids,
            "metric": METRIC,
            "compare_data": {
                "runs": [r.pk for r in runs],
                "names": [f"#{r.pk} {r.name}" for r in runs],
                "coordinates": coordinates,
                "tokens_per_step": {r.pk: r.plan.get("tokens_per_step") for r in runs},
                "keys": runs_keys(run_ids=[r.pk for r in runs]),
            },
        },
    )


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_state(request: HttpRequest, pk: int) -> JsonResponse:
    """What a page re-reads after its websocket (re)connects, so no status change is missed, with its series'
    versions, so that its charts are read again only if a point was stored meanwhile."""
    run = get_object_or_404(Run, pk=pk)
    return JsonResponse(
        {
            "id": run.pk,
            "status": run.status,
            "status_label": run.get_status_display(),
            "failure_reason": run.failure_reason,
            "backend_job_id": run.backend_job_id,
            "versions": series_versions(run_id=run.pk),
        }
    )
