"""Data pages: sources (register, count), prep runs (start, watch, cancel, resume), recipe comparison.

Thin views over runs.services.data_prep and runs.services.data_reports. A refused request renders the form
again with status 400 and the message on the field to change.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from jobs.data.prep import settings as prep_settings
from runs.forms.data_forms import CountForm, PrepForm, SourceForm
from runs.models import DataMixRecipe, DataSource, JobPhase, PrepRun
from runs.services import data_reports
from runs.services.data_prep import (
    DataRefused,
    prep_cancel,
    prep_resume,
    prep_start,
    source_recount,
    source_register,
)


@require_GET
@permission_required("runs.view_datasource", raise_exception=True)
def source_list(request: HttpRequest) -> HttpResponse:
    sources = DataSource.objects.select_related("created_by").order_by("name")
    return render(
        request,
        "data/sources.html",
        {"sources": sources, "can_register": request.user.has_perm("runs.add_datasource")},
    )


@permission_required("runs.add_datasource", raise_exception=True)
def source_new(request: HttpRequest) -> HttpResponse:
    form = SourceForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                source = source_register(
                    actor=request.user,
                    name=data["name"],
                    language=data["language"],
                    fmt=data["format"],
                    path=data["path"],
                    text_field=data["text_field"] or "text",
                    licence=data["licence"],
                    description=data["description"],
                    cluster=data["cluster"],
                )
            except DataRefused as exc:
                form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            else:
                messages.success(request, f"Source {source.name} registered; counting it on {data['cluster']}.")
                return redirect("source-detail", pk=source.pk)
    return render(request, "data/source_form.html", {"form": form}, status=status)


@require_GET
@permission_required("runs.view_datasource", raise_exception=True)
def source_detail(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_object_or_404(DataSource.objects.select_related("created_by", "count_cluster"), pk=pk)
    recipes = DataMixRecipe.objects.filter(entries__source=source).order_by("name", "-version").distinct()
    can_count = request.user.has_perm("runs.add_datasource") and bool(source.path)
    return render(
        request,
        "data/source_detail.html",
        {
            "source": source,
            "recipes": recipes,
            "count_form": CountForm() if can_count else None,
            "counting": source.count_status in (JobPhase.QUEUED, JobPhase.RUNNING),
        },  # fmt: skip
    )


@require_POST
@permission_required("runs.add_datasource", raise_exception=True)
def source_recount_view(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_object_or_404(DataSource, pk=pk)
    form = CountForm(request.POST)
    if not form.is_valid():
        messages.error(request, "cluster: pick a cluster to count on.")
        return redirect("source-detail", pk=pk)
    try:
        source_recount(actor=request.user, source=source, cluster=form.cleaned_data["cluster"])
    except DataRefused as exc:
        messages.error(request, f"{exc.field}: {exc}")
    else:
        messages.success(request, f"Counting {source.name} again.")
    return redirect("source-detail", pk=pk)


@require_GET
@permission_required("runs.view_preprun", raise_exception=True)
def prep_list(request: HttpRequest) -> HttpResponse:
    preps = PrepRun.objects.select_related("recipe", "cluster", "created_by").order_by("-id")[:200]
    return render(request, "data/preps.html", {"preps": preps})


@require_POST
@permission_required("runs.add_preprun", raise_exception=True)
def prep_start_view(request: HttpRequest, recipe_id: int) -> HttpResponse:
    recipe = get_object_or_404(DataMixRecipe, pk=recipe_id)
    form = PrepForm(request.POST)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        messages.error(request, f"{field}: {errors[0]}")
        return redirect("recipe-detail", pk=recipe.pk)
    try:
        prep = prep_start(
            actor=request.user, recipe=recipe, cluster=form.cleaned_data["cluster"], tasks=form.cleaned_data["tasks"]
        )
    except DataRefused as exc:
        messages.error(request, f"{exc.field}: {exc}")
        return redirect("recipe-detail", pk=recipe.pk)
    messages.success(request, f"Preparing {recipe} on {prep.cluster}.")
    return redirect("prep-detail", pk=prep.pk)


@require_GET
@permission_required("runs.view_preprun", raise_exception=True)
def prep_detail(request: HttpRequest, pk: int) -> HttpResponse:
    prep = get_object_or_404(PrepRun.objects.select_related("recipe", "cluster", "created_by"), pk=pk)
    report = prep.report or {}
    counts = {name: info["stages"] for name, info in (report.get("sources") or {}).items()}
    if not counts:  # still running: what the job has counted so far
        counts = (prep.progress or {}).get("counts") or {}
    levels = {name: info.get("levels") for name, info in (report.get("sources") or {}).items()}
    can_act = request.user.has_perm("runs.change_preprun")
    return render(
        request,
        "data/prep_detail.html",
        {
            "prep": prep,
            "report": report,
            "rows": data_reports.stage_rows(counts, report.get("stage_order")),
            "removals": data_reports.removal_rows(report),
            "mix": data_reports.mix_rows(report),
            "levels": levels,
            "level_names": prep_settings.QUALITY_LEVELS,
            "tokenizer": report.get("tokenizer") or {},
            "can_cancel": can_act and prep.is_active,
            "can_resume": can_act and prep.status in (JobPhase.FAILED, JobPhase.CANCELLED),
        },
    )


@require_POST
@permission_required("runs.change_preprun", raise_exception=True)
def prep_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    prep = get_object_or_404(PrepRun, pk=pk)
    try:
        prep_cancel(actor=request.user, prep=prep)
    except DataRefused as exc:
        messages.error(request, f"{exc.field}: {exc}")
    else:
        messages.success(request, f"Cancelling prep #{prep.pk}.")
    return redirect("prep-detail", pk=pk)


@require_POST
@permission_required("runs.change_preprun", raise_exception=True)
def prep_resume_view(request: HttpRequest, pk: int) -> HttpResponse:
    prep = get_object_or_404(PrepRun.objects.select_related("cluster", "recipe"), pk=pk)
    try:
        prep = prep_resume(actor=request.user, prep=prep)
    except DataRefused as exc:
        messages.error(request, f"{exc.field}: {exc}")
    else:
        messages.success(request, f"Resuming prep #{prep.pk} (attempt {prep.attempt}); finished tasks are kept.")
    return redirect("prep-detail", pk=pk)


@require_GET
@permission_required("runs.view_datamixrecipe", raise_exception=True)
def recipe_compare(request: HttpRequest) -> HttpResponse:
    recipes = list(DataMixRecipe.objects.order_by("name", "-version"))
    picked = []
    for key in ("a", "b"):
        raw = request.GET.get(key, "")
        picked.append(next((r for r in recipes if str(r.pk) == raw), None))
    a, b = picked
    if (request.GET.get("a") or request.GET.get("b")) and (a is None or b is None):
        return render(
            request,
            "data/compare.html",
            {"recipes": recipes, "a": a, "b": b, "error": "Pick two recipe versions that exist (a and b)."},
            status=400,
        )
    comparison = data_reports.recipe_comparison(a, b) if a and b else None
    return render(request, "data/compare.html", {"recipes": recipes, "a": a, "b": b, "cmp": comparison})
