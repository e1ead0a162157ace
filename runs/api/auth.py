"""Who is calling: a personal API token (Bearer) or the browser's session (with its CSRF token for writes), and
what their role lets them do: the same Django permissions as the pages."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer, SessionAuth

from runs.api.errors import Refused
from runs.services.api_tokens import api_token_user
from runs.services.roles import role_of


class ApiTokenAuth(HttpBearer):
    """Authorization: Bearer cpat_... (made on the API tokens page or with `manage.py api_token`)."""

    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> Any | None:
        user = api_token_user(token.strip())
        if user is not None:
            request.user = user  # the same user object the pages see, so has_perm and the audit agree
        return user


class LoggedIn(SessionAuth):
    """The browser's login; writes need the CSRF token, as the pages' forms do."""


AUTH = [ApiTokenAuth(), LoggedIn()]


def require(request: HttpRequest, perm: str, what: str) -> None:
    """Refuse with 403 unless the caller's role grants `perm`; `what` says what was refused."""
    if not request.user.has_perm(perm):
        role = role_of(request.user) or "no role"
        raise Refused(
            [("role", f"Your role ({role}) does not allow {what}; ask an admin for the role that does.")], 403
        )
