from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from runs.forms import RunForm
from runs.forms.run_form import format_curriculum
from runs.models import AuditEvent, Checkpoint, Run, RunStatus
from runs.planning.presets import PRESETS
from runs.services.artifacts import ServingRefused
from runs.services.checkpoints import run_start_from
from runs.services.data_reports import consumed_mix, prep_of_run
from runs.services.diff import config_diff
from runs.services.runs import (
    RunActionRefused,
    RunInvalid,
    launch_blocker,
    run_cancel,
    run_create,
    run_launch,
    run_update,
)


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
    runs = Run.objects.select_related("owner", "cluster", "recipe")
    status = request.GET.get("status", "")
    owner = request.GET.get("owner", "")
    if status in RunStatus.values:
        runs = runs.filter(status=status)
    if owner:
        runs = runs.filter(owner__username=owner)
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    owners = get_user_model().objects.filter(runs__isnull=False).distinct().order_by("username")
    return render(
        request,
        "runs/list.html",
        {
            "page": page,
            "statuses": RunStatus.choices,
            "status": status,
            "owner": owner,
            "owners": owners,
        },
    )


@permission_required("runs.add_run", raise_exception=True)
def run_new(request: HttpRequest) -> HttpResponse:
    fork_of = start_from = None
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


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("owner", "cluster", "recipe", "parent"), pk=pk)
    events = AuditEvent.objects.filter(run_id=run.pk).order_by("-id")[:100]
    return render(
        request,
        "runs/detail.html",
        {
            "run": run,
            "events": events,
            "alerts": run.alerts.all()[:50],
            "alert_steps": [a for a in run.alerts.exclude(step=None).values_list("step", flat=True)[:200]],
            "checkpoints": run.checkpoints.all()[:50],
            "launch_blocker": launch_blocker(run),
            "has_metrics": run.status != RunStatus.DRAFT or run.series.exists(),
            "can_launch": request.user.has_perm("runs.launch_run") and run.status == RunStatus.DRAFT,
            "can_cancel": request.user.has_perm("runs.cancel_run") and not run.is_terminal,
            "can_edit": request.user.has_perm("runs.change_run") and run.status == RunStatus.DRAFT,
            "consumed": consumed_mix(run),
            "mix_prep": prep_of_run(run),
        },
    )


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


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_compare(request: HttpRequest) -> HttpResponse:
    # Ids past a 64-bit integer match no run, and the databases refuse them in an IN list.
    ids = [i for i in request.GET.getlist("run") if i.isdigit() and int(i) < 2**63][:2]
    runs = list(Run.objects.filter(pk__in=ids).select_related("cluster", "recipe"))
    runs.sort(key=lambda r: ids.index(str(r.pk)))
    diff = None
    if len(runs) == 2:
        a, b = runs
        diff = config_diff(a.config, b.config)
        diff.pop("run.id", None)
    choices = Run.objects.order_by("-id").values_list("pk", "name")[:200]
    return render(request, "runs/compare.html", {"runs": runs, "diff": diff, "choices": choices, "ids": ids})


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_state(request: HttpRequest, pk: int) -> JsonResponse:
    """What a page re-reads after its websocket (re)connects, so no status change is missed."""
    run = get_object_or_404(Run, pk=pk)
    return JsonResponse(
        {
            "id": run.pk,
            "status": run.status,
            "status_label": run.get_status_display(),
            "failure_reason": run.failure_reason,
            "backend_job_id": run.backend_job_id,
        }
    )
