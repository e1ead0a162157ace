"""Every refusal the API gives has one shape: {"error": "...", "errors": [{"field", "message"}]}, where `field`
names the input to fix (a body field's dotted path, or query./path. and the parameter's name)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from runs.text import NUL_MESSAGE, NulRefused, json_nul_fields, params_nul_fields

log = logging.getLogger(__name__)


class Refused(Exception):
    """An input refused with a list of (field, message), answered with `status` (400 unless said)."""

    def __init__(self, errors: list[tuple[str, str]], status: int = 400):
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors, self.status = errors, status


MLFLOW_CODES = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}


def _answer(api: NinjaAPI, request: HttpRequest, status: int, errors: list[tuple[str, str]], summary: str = ""):
    summary = summary or "; ".join(f"{f}: {m}" for f, m in errors[:3])
    if "/mlflow/api/" in request.path:  # MLflow's client reads its own error shape
        body: dict = {"error_code": MLFLOW_CODES.get(status, "RESOURCE_DOES_NOT_EXIST"), "message": summary}
    else:
        body = {"error": summary, "errors": [{"field": f, "message": m} for f, m in errors]}
    return api.create_response(request, body, status=status)


def _location(loc: tuple | list) -> str:
    """pydantic's error location as the field a person would fix: ('body', 'payload', 'overrides') -> overrides."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body" and len(parts) > 1 and parts[1] == "payload":
        parts = parts[2:] or ["body"]
    return ".".join(parts) or "body"


def parses_own_body(view: Callable) -> Callable:
    """Marks a route whose handler reads the raw body itself (ingest): it refuses NUL in its own error shape."""
    view.parses_own_body = True  # type: ignore[attr-defined]
    return view


def refuse_nul_text(view: Callable) -> Callable:
    """Every route's text inputs checked for NUL once, after authentication and validation (PostgreSQL cannot store
    it): the query string, a posted form and a JSON body, each offending field named."""
    own_body = getattr(view, "parses_own_body", False)

    @functools.wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        fields = params_nul_fields(request.GET, "query")
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
                fields += params_nul_fields(request.POST, "form")
            elif not own_body:
                fields += json_nul_fields(request.body)
        if fields:
            raise Refused([(field, NUL_MESSAGE) for field in fields])
        return view(request, *args, **kwargs)

    return checked


def install(api: NinjaAPI) -> None:
    api.add_decorator(refuse_nul_text, mode="operation")

    @api.exception_handler(Refused)
    def refused(request: HttpRequest, exc: Refused) -> HttpResponse:
        return _answer(api, request, exc.status, exc.errors)

    @api.exception_handler(NulRefused)
    def nul(request: HttpRequest, exc: NulRefused) -> HttpResponse:
        return _answer(api, request, 400, [(field, NUL_MESSAGE) for field in exc.fields])

    @api.exception_handler(ValidationError)
    def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        errors = [(_location(e.get("loc", ())), str(e.get("msg", "is not valid"))) for e in exc.errors]
        return _answer(api, request, 400, errors or [("body", "is not valid")])

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return _answer(
            api,
            request,
            401,
            [("Authorization", "log in, or send Authorization: Bearer <your API token> (API tokens page)")],
            "authentication required",
        )

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        field = "csrf" if "CSRF" in str(exc) else "request"
        return _answer(api, request, exc.status_code, [(field, str(exc))])

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return _answer(api, request, 404, [("path", "There is no such object; it may have been removed.")])

    @api.exception_handler(PermissionDenied)
    def forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
        return _answer(api, request, 403, [("role", str(exc) or "Your role does not allow this.")])
