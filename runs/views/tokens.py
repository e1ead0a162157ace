"""The API tokens page: a person makes, sees and revokes their own tokens (runs.services.api_tokens)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from runs.models import ApiToken
from runs.services.api_tokens import TokenRefused, api_token_create, api_token_revoke


@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    user = request.user
    if isinstance(user, AnonymousUser):  # LoginRequiredEverywhere sends anonymous visitors to the login page first
        raise PermissionDenied
    issued = None
    if request.method == "POST":
        try:
            issued = api_token_create(user=user, name=request.POST.get("name", ""))
        except TokenRefused as exc:
            messages.error(request, f"{exc.field}: {exc}")
    tokens = ApiToken.objects.filter(user=user)
    can_create = user.has_perm("runs.add_run")
    return render(request, "account/tokens.html", {"tokens": tokens, "issued": issued, "can_create": can_create})


@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    try:
        api_token_revoke(token=token, actor=request.user)
    except TokenRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Token {token.name} revoked.")
    return redirect("token-list")
