"""Login on every page: one middleware instead of a decorator that a new view could forget."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse

# Paths reachable without a session: the login page itself, static assets, and the machine-facing ingest API,
# which authenticates each request with the run's own token instead.
PUBLIC_PREFIXES = ("/accounts/login/", "/static/", "/api/v1/ingest/", "/healthz")
API_PREFIX = "/api/v1/"
API_DOCS = "/api/v1/docs"


def _api_token_request(request: HttpRequest) -> bool:
    """An API call with a Bearer token: the REST API (runs.api) authenticates it, on every route, or answers 401."""
    return request.path.startswith(API_PREFIX) and request.headers.get("authorization", "")[:7].lower() == "bearer "


class LoginRequiredEverywhere:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated or request.path.startswith(PUBLIC_PREFIXES) or _api_token_request(request):
            return self.get_response(request)
        if (request.path.startswith("/api/") and request.path != API_DOCS) or request.headers.get(
            "accept", ""
        ).startswith("application/json"):
            fix = "log in, or send Authorization: Bearer <your API token> (API tokens page)"
            return JsonResponse(
                {
                    "error": "authentication required: log in first",
                    "errors": [{"field": "Authorization", "message": fix}],
                },
                status=401,
            )
        return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
