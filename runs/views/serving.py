"""Checkpoints, artifacts and deployments pages: thin views over runs.services.{checkpoints,artifacts,deployments}."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from runs.metrics.reads import values_at
from runs.models import Artifact, Checkpoint, Deployment, Engine, Run, Variant
from runs.services.artifacts import ServingRefused, artifact_create, latency_request
from runs.services.checkpoints import checkpoint_resume, checkpoint_retention_apply, retention_policy
from runs.services.deployments import (
    deployment_create,
    deployment_key_reveal,
    deployment_key_rotate,
    deployment_stop,
)


def _int_field(request: HttpRequest, name: str) -> int:
    raw = request.POST.get(name, "").strip()
    if not raw.lstrip("-").isdigit():
        raise ServingRefused(name, f"{name.replace('_', ' ')} must be a whole number; got {raw or 'nothing'!r}.")
    return int(raw)


def _refused(request: HttpRequest, exc: ServingRefused) -> None:
    messages.error(request, f"{exc.field}: {exc}")


@require_GET
@permission_required("runs.view_checkpoint", raise_exception=True)
def checkpoint_list(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("cluster"), pk=pk)
    keep_last, keep_every = retention_policy(run)
    artifacts = list(
        Artifact.objects.filter(run=run).select_related("checkpoint").prefetch_related("deployments").order_by("-id")
    )
    can_operate = request.user.has_perm("runs.add_artifact")
    checkpoints: list[Any] = list(run.checkpoints.all())  # given the metrics the page shows (shown_metrics)
    # The job records none at save time; the metrics store has the run's values at (or just before) each step.
    measured = values_at(run_id=run.pk, steps=[c.step for c in checkpoints if not c.metrics])
    for c in checkpoints:
        c.shown_metrics = c.metrics or measured.get(c.step, {})
    return render(
        request,
        "runs/checkpoints.html",
        {
            "run": run,
            "checkpoints": checkpoints,
            "artifacts": artifacts,
            "keep_last": keep_last,
            "keep_every": keep_every,
            "can_operate": can_operate,
            "can_deploy": request.user.has_perm("runs.add_deployment"),
            "variants": Variant.choices,
            "engines": Engine.choices,
        },
    )


@require_POST
@permission_required("runs.change_run", raise_exception=True)
def checkpoint_retention(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run, pk=pk)
    try:
        pruned = checkpoint_retention_apply(
            run=run,
            actor=request.user,
            keep_last=_int_field(request, "keep_last"),
            keep_every=_int_field(request, "keep_every"),
        )
    except ServingRefused as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Retention applied: {len(pruned)} checkpoint(s) removed.")
    return redirect("run-checkpoints", pk=pk)


@require_POST
@permission_required("runs.launch_run", raise_exception=True)
def checkpoint_resume_view(request: HttpRequest, pk: int, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("run__cluster"), pk=checkpoint_id, run_id=pk)
    try:
        child = checkpoint_resume(checkpoint=checkpoint, actor=request.user)
    except ServingRefused as exc:
        _refused(request, exc)
        return redirect("run-checkpoints", pk=pk)
    messages.success(request, f"Run #{child.pk} attempt {child.attempt} resumes from {checkpoint.tag} and is queued.")
    return redirect("run-detail", pk=child.pk)


@require_POST
@permission_required("runs.add_artifact", raise_exception=True)
def checkpoint_quantize(request: HttpRequest, pk: int, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("run"), pk=checkpoint_id, run_id=pk)
    try:
        artifact = artifact_create(checkpoint=checkpoint, methods=request.POST.getlist("methods"), actor=request.user)
    except ServingRefused as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Artifact #{artifact.pk}: quantizing {checkpoint.tag}.")
    return redirect("run-checkpoints", pk=pk)


@require_POST
@permission_required("runs.add_artifact", raise_exception=True)
def artifact_benchmark(request: HttpRequest, artifact_id: int) -> HttpResponse:
    artifact = get_object_or_404(Artifact, pk=artifact_id)
    try:
        latency_request(artifact=artifact, actor=request.user)
    except ServingRefused as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Latency benchmark of artifact #{artifact.pk} queued.")
    return redirect("run-checkpoints", pk=artifact.run_id)


@require_POST
@permission_required("runs.add_deployment", raise_exception=True)
def artifact_deploy(request: HttpRequest, artifact_id: int) -> HttpResponse:
    artifact = get_object_or_404(Artifact.objects.select_related("run__cluster"), pk=artifact_id)
    try:
        deployment = deployment_create(
            artifact=artifact,
            variant=request.POST.get("variant", ""),
            engine=request.POST.get("engine", Engine.NATIVE),
            name=request.POST.get("name", ""),
            actor=request.user,
        )
    except ServingRefused as exc:
        _refused(request, exc)
        return redirect("run-checkpoints", pk=artifact.run_id)
    messages.success(request, f"Deployment #{deployment.pk} is starting.")
    return redirect("deployment-detail", pk=deployment.pk)


@require_GET
@permission_required("runs.view_deployment", raise_exception=True)
def deployment_list(request: HttpRequest) -> HttpResponse:
    deployments = Deployment.objects.select_related("artifact__run", "created_by")[:200]
    return render(request, "runs/deployments.html", {"deployments": deployments})


def _deployment_page(request: HttpRequest, deployment: Deployment, *, key: str = "") -> HttpResponse:
    response = render(
        request,
        "runs/deployment.html",
        {
            "deployment": deployment,
            "artifact": deployment.artifact,
            "can_stop": request.user.has_perm("runs.change_deployment") and deployment.is_live,
            "can_manage_key": request.user.has_perm("runs.change_deployment"),
            "can_prompt": request.user.has_perm("runs.use_playground"),
            "revealed_key": key,
        },
    )
    if key:  # a page that shows the key once is never kept by a cache or the browser's history
        response["Cache-Control"] = "no-store"
    return response


@require_GET
@permission_required("runs.view_deployment", raise_exception=True)
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_or_404(Deployment.objects.select_related("artifact__run__cluster", "created_by"), pk=pk)
    return _deployment_page(request, deployment)


@require_POST
@permission_required("runs.change_deployment", raise_exception=True)
def deployment_key_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Shows the endpoint's key once (action=show), or a new one that replaces it (action=rotate)."""
    deployment = get_object_or_404(Deployment.objects.select_related("artifact__run__cluster", "created_by"), pk=pk)
    action = request.POST.get("action", "show")
    try:
        if action == "rotate":
            key = deployment_key_rotate(deployment=deployment, actor=request.user)
        elif action == "show":
            key = deployment_key_reveal(deployment=deployment, actor=request.user)
        else:
            raise ServingRefused("action", f"action must be show or rotate, not {action!r}.")
    except ServingRefused as exc:
        _refused(request, exc)
        return redirect("deployment-detail", pk=pk)
    return _deployment_page(request, deployment, key=key)


@require_POST
@permission_required("runs.change_deployment", raise_exception=True)
def deployment_stop_view(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_or_404(Deployment, pk=pk)
    try:
        deployment_stop(deployment=deployment, actor=request.user)
    except ServingRefused as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Deployment #{deployment.pk} is stopping.")
    return redirect("deployment-detail", pk=pk)
