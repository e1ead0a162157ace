"""The run page's connect panel (issue and revoke a run's tokens) and its job-output panel (the log tail)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from runs.models import Run, RunToken, TokenKind
from runs.services.joblogs import LogRefused, log_tail
from runs.services.tokens import TokenRefused, run_token_issue, run_token_revoke
from runs.views.runs import detail_context


def _int_param(request: HttpRequest, name: str, default: int | None) -> int | None:
    raw = request.GET.get(name, "").strip()
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise LogRefused(name, f"must be a whole number, got {raw[:40]!r}") from None


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_logs(request: HttpRequest, pk: int) -> JsonResponse:
    """GET ?stream=stdout|stderr&rank=N&q=TEXT&limit=N: the job's output, newest last."""
    run = get_object_or_404(Run, pk=pk)
    try:
        tail = log_tail(
            run=run,
            stream=request.GET.get("stream", "stdout"),
            rank=_int_param(request, "rank", None),
            query=request.GET.get("q", "")[:200],
            limit=_int_param(request, "limit", 500) or 0,
        )
    except LogRefused as exc:
        return JsonResponse({"error": str(exc), "field": exc.field}, status=400)
    return JsonResponse(
        {
            "stream": tail.stream,
            "lines": [{"text": line.text, "rank": line.rank} for line in tail.lines],
            "matched": tail.matched,
            "size": tail.size,
            "partial": tail.partial,
        }
    )


@require_http_methods(["GET", "POST"])
@permission_required("runs.add_run", raise_exception=True)
def run_token_issue_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Issue an operator token and show the run page with it, once: only its digest is kept. A GET (the page's
    address after the POST, opened again) goes to the run page: a token is issued only by the button."""
    if request.method == "GET":
        return redirect("run-detail", pk=pk)
    run = get_object_or_404(Run.objects.select_related("owner", "cluster", "recipe", "parent"), pk=pk)
    try:
        issued = run_token_issue(
            run=run, kind=TokenKind.OPERATOR, actor=request.user, label=request.POST.get("label", "").strip()
        )
    except TokenRefused as exc:
        messages.error(request, f"token: {exc}")
        return redirect("run-detail", pk=pk)
    response = render(request, "runs/detail.html", detail_context(request, run, issued=issued.secret))
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@permission_required("runs.add_run", raise_exception=True)
def run_token_revoke_view(request: HttpRequest, pk: int, token_id: int) -> HttpResponse:
    token = get_object_or_404(RunToken.objects.select_related("run"), pk=token_id, run_id=pk)
    if run_token_revoke(token=token, actor=request.user):
        messages.success(request, f"Token …{token.hint} revoked; scripts using it are refused from now on.")
    else:
        messages.info(request, f"Token …{token.hint} was already revoked.")
    return redirect("run-detail", pk=pk)
