"""Chart reads for logged-in viewers: one run's series, its keys, or several runs overlaid."""

from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from runs.metrics.reads import series_json, series_keys, series_read
from runs.metrics.validation import KEY_RE
from runs.models import Run

MAX_KEYS = 20
MAX_OVERLAY_RUNS = 10
DEFAULT_MAX_POINTS = 1500
MAX_MAX_POINTS = 20_000


class _BadQuery(Exception):
    pass


def _int_param(request: HttpRequest, name: str, *, default=None, lo: int = 0, hi: int = 2**53):
    raw = request.GET.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadQuery(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise _BadQuery(f"{name}={value} is outside {lo}..{hi}")
    return value


def _query(request: HttpRequest) -> dict:
    keys = [k for k in request.GET.get("keys", "").split(",") if k]
    if not keys:
        raise _BadQuery("keys is required, e.g. ?keys=loss,lr")
    if len(keys) > MAX_KEYS:
        raise _BadQuery(f"{len(keys)} keys asked for; at most {MAX_KEYS} per request")
    bad = [k for k in keys if not KEY_RE.match(k)]
    if bad:
        raise _BadQuery(f"key {bad[0]!r} does not match [A-Za-z0-9_./-]{{1,100}}")
    lo = _int_param(request, "lo")
    hi = _int_param(request, "hi")
    if lo is not None and hi is not None and lo > hi:
        raise _BadQuery(f"lo={lo} is above hi={hi}")
    max_points = _int_param(request, "max_points", default=DEFAULT_MAX_POINTS, lo=10, hi=MAX_MAX_POINTS)
    return {"keys": list(dict.fromkeys(keys)), "lo": lo, "hi": hi, "max_points": max_points}


def _json(payload: dict) -> HttpResponse:
    return HttpResponse(series_json(payload), content_type="application/json")


def _bad(exc: Exception) -> JsonResponse:
    return JsonResponse({"error": str(exc)}, status=400)


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_series(request: HttpRequest, run_id: int) -> HttpResponse:
    if not Run.objects.filter(pk=run_id).exists():
        return JsonResponse({"error": f"there is no run #{run_id}"}, status=404)
    try:
        query = _query(request)
    except _BadQuery as exc:
        return _bad(exc)
    return _json(series_read(run_id=run_id, **query))


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_keys(request: HttpRequest, run_id: int) -> HttpResponse:
    if not Run.objects.filter(pk=run_id).exists():
        return JsonResponse({"error": f"there is no run #{run_id}"}, status=404)
    last_step = Run.objects.filter(pk=run_id).values_list("last_step", flat=True).first()
    return _json({"run_id": run_id, "keys": series_keys(run_id=run_id), "last_step": last_step})


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def overlay_series(request: HttpRequest) -> HttpResponse:
    """?runs=1,2,3&keys=loss: the same answer as run_series for each run, on the same bucket grid when lo/hi
    are given (so the envelopes line up)."""
    try:
        raw = [r for r in request.GET.get("runs", "").split(",") if r.strip()]
        if not raw:
            raise _BadQuery("runs is required, e.g. ?runs=1,2&keys=loss")
        if len(raw) > MAX_OVERLAY_RUNS:
            raise _BadQuery(f"{len(raw)} runs asked for; at most {MAX_OVERLAY_RUNS} per request")
        try:
            run_ids = list(dict.fromkeys(int(r) for r in raw))
        except ValueError:
            raise _BadQuery("runs must be run ids separated by commas") from None
        query = _query(request)
    except _BadQuery as exc:
        return _bad(exc)
    existing = set(Run.objects.filter(pk__in=run_ids).values_list("pk", flat=True))
    missing = [r for r in run_ids if r not in existing]
    if missing:
        return JsonResponse({"error": f"there is no run #{missing[0]}"}, status=404)
    return _json({"runs": {str(r): series_read(run_id=r, **query) for r in run_ids}})
