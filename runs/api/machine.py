"""The machine-facing routes in the schema: ingest (run token), chart reads (login or API token)."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.gzip import GZipMiddleware
from ninja import Query, Router, Schema
from ninja.security import HttpBearer
from pydantic import Field, field_validator, model_validator

from runs.api.auth import require
from runs.api.errors import Refused, parses_own_body
from runs.api.ingest_schema import IngestBody, IngestRefused, IngestStored, TokenRefused
from runs.api.schemas import ErrorOut, PathId, is_id
from runs.metrics.ingest import answer_now
from runs.metrics.reads import series_all_points, series_json, series_keys, series_read
from runs.metrics.validation import KEY_RE, MAX_STEP
from runs.models import Run
from runs.services.tokens import run_token_check_cached
from runs.views.ingest import bearer_token

MAX_KEYS = 20
MAX_OVERLAY_RUNS = 10
DEFAULT_MAX_POINTS = 1500
MAX_MAX_POINTS = 20_000

router = Router(tags=["metrics"])


class RunTokenAuth(HttpBearer):
    """The run's own ingest token (run.json's ingest.token_file), valid for that run's routes only."""

    def authenticate(self, request: HttpRequest, token: str) -> Run | None:
        raw = (request.resolver_match.kwargs if request.resolver_match else {}).get("run_id")
        run_id = int(raw) if isinstance(raw, int | str) and str(raw).isdigit() else 0
        return run_token_check_cached(run_id=run_id, token=token) if is_id(run_id) and token else None


def ingest_body_schema() -> dict[str, Any]:
    """IngestBody's JSON schema, its definitions moved to the OpenAPI components (runs.api's schema)."""
    return IngestBody.model_json_schema(ref_template="#/components/schemas/{model}")


@router.post(
    "/ingest/{run_id}/",
    auth=None,  # the run's token, checked by the ingest handler itself (the same 401 for a wrong run or token)
    response={200: IngestStored, 400: IngestRefused, 401: TokenRefused, 413: TokenRefused},
    summary="Send metrics, events and heartbeats of a run",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestBody"}}},
        },
        "security": [{"RunToken": []}],
    },
)
@parses_own_body
def ingest(request: HttpRequest, run_id: PathId):
    """What `jobs.reporter` posts (docs/run-config.md). On the production server this path is answered in front of
    Django by the ingest endpoint (runs.views.ingest); this route hands a request that reaches Django to the same
    handler."""
    token = bearer_token(request.headers.get("Authorization", ""))
    answer = answer_now(run_id=run_id, token=token, body=request.body)
    return HttpResponse(orjson.dumps(answer.payload), status=answer.status, content_type="application/json")


def _keys(raw: str) -> list[str]:
    keys = [k for k in raw.split(",") if k]
    if not keys:
        raise ValueError("keys is required, e.g. ?keys=loss,lr")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"{len(keys)} keys asked for; at most {MAX_KEYS} per request")
    bad = [k for k in keys if not KEY_RE.match(k)]
    if bad:
        raise ValueError(f"key {bad[0]!r} does not match [A-Za-z0-9_./-]{{1,100}}")
    return list(dict.fromkeys(keys))


class SeriesQuery(Schema):
    keys: str = Field(description=f"Metric keys separated by commas, at most {MAX_KEYS}.")
    lo: int | None = Field(None, ge=0, le=MAX_STEP, description="First step of the window.")
    hi: int | None = Field(None, ge=0, le=MAX_STEP, description="Last step of the window.")
    max_points: int = Field(DEFAULT_MAX_POINTS, ge=10, le=MAX_MAX_POINTS, description="Above this, an envelope.")

    @field_validator("keys")
    @classmethod
    def _known_shape(cls, value: str) -> str:
        _keys(value)
        return value

    @model_validator(mode="after")
    def _window(self) -> SeriesQuery:
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ValueError(f"lo={self.lo} is above hi={self.hi}")
        return self

    def read_args(self) -> dict:
        return {"keys": _keys(self.keys), "lo": self.lo, "hi": self.hi, "max_points": self.max_points}


class OverlayQuery(SeriesQuery):
    runs: str = Field(description=f"Run ids separated by commas, at most {MAX_OVERLAY_RUNS}.")

    @field_validator("runs")
    @classmethod
    def _run_ids(cls, value: str) -> str:
        cls.run_ids_of(value)
        return value

    @staticmethod
    def run_ids_of(value: str) -> list[int]:
        raw = [r.strip() for r in value.split(",") if r.strip()]
        if not raw:
            raise ValueError("runs is required, e.g. ?runs=1,2&keys=loss")
        if len(raw) > MAX_OVERLAY_RUNS:
            raise ValueError(f"{len(raw)} runs asked for; at most {MAX_OVERLAY_RUNS} per request")
        if not all(r.isdigit() and is_id(int(r)) for r in raw):
            raise ValueError("runs must be run ids separated by commas")
        return list(dict.fromkeys(int(r) for r in raw))


class SeriesOut(Schema):
    keys: dict[str, dict[str, Any]] = Field(
        description="Key -> {mode: full, steps, values, nonfinite, nonfinite_kinds} when the window holds at most "
        "max_points points, else {mode: envelope, bucket, steps, min, max, last, nonfinite}; NaN and infinities "
        "are null, listed in nonfinite. Each has the series' version: the read holds every point written up to it."
    )
    last_step: int | None


class KeyOut(Schema):
    key: str
    points: int
    last_step: int | None
    last_value: float | None
    version: int = Field(description="Bumped by every write to the series (compare with a read's version).")


class KeysOut(Schema):
    run_id: int
    keys: list[KeyOut]
    last_step: int | None


class OverlayOut(Schema):
    runs: dict[str, SeriesOut]


_GZIP = GZipMiddleware(lambda request: HttpResponse())


def _json(payload: dict, request: HttpRequest | None = None) -> HttpResponseBase:
    """Chart reads compressed when the browser accepts it (a zoomed-out read of many series is mostly digits,
    which compress well); only these JSON answers, which carry no secret a compression oracle could leak."""
    response = HttpResponse(series_json(payload), content_type="application/json")
    return _GZIP.process_response(request, response) if request is not None else response


def _existing(run_id: int) -> None:
    if not Run.objects.filter(pk=run_id).exists():
        raise Refused([("run_id", f"there is no run #{run_id}")], 404)


@router.get("/runs/{run_id}/series/", response={200: SeriesOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut})
def run_series(request, run_id: PathId, query: Query[SeriesQuery]):
    """One run's series: every point of the window, or a min/max envelope that keeps every spike."""
    require(request, "runs.view_run", "reading runs")
    _existing(run_id)
    return _json(series_read(run_id=run_id, **query.read_args()), request)


@router.get("/runs/{run_id}/keys/", response={200: KeysOut, 403: ErrorOut, 404: ErrorOut})
def run_keys(request, run_id: PathId):
    """The run's metric keys with their point counts and last values."""
    require(request, "runs.view_run", "reading runs")
    _existing(run_id)
    last_step = Run.objects.filter(pk=run_id).values_list("last_step", flat=True).first()
    return _json({"run_id": run_id, "keys": series_keys(run_id=run_id), "last_step": last_step})


@router.get("/series/", response={200: OverlayOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut})
def overlay_series(request, query: Query[OverlayQuery]):
    """Several runs' series overlaid, on one bucket grid when lo and hi are given (so the envelopes line up)."""
    require(request, "runs.view_run", "reading runs")
    run_ids = OverlayQuery.run_ids_of(query.runs)
    existing = set(Run.objects.filter(pk__in=run_ids).values_list("pk", flat=True))
    missing = [r for r in run_ids if r not in existing]
    if missing:
        raise Refused([("runs", f"there is no run #{missing[0]}")], 404)
    return _json({"runs": {str(r): series_read(run_id=r, **query.read_args()) for r in run_ids}}, request)


class ExportQuery(Schema):
    keys: str = Field(description=f"Metric keys separated by commas, at most {MAX_KEYS}.")
    format: str = Field("csv", pattern="^(csv|json)$", description="csv (key,step,value rows) or json.")

    @field_validator("keys")
    @classmethod
    def _known_shape(cls, value: str) -> str:
        _keys(value)
        return value


def _csv_rows(run_id: int, keys: list[str]):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["key", "step", "value"])
    for key in keys:
        steps, values = series_all_points(run_id=run_id, key=key)
        for start in range(0, len(steps), 10_000):
            chunk = zip(steps[start : start + 10_000].tolist(), values[start : start + 10_000].tolist(), strict=True)
            writer.writerows([key, step, "" if value != value else repr(value)] for step, value in chunk)
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


@router.get("/runs/{run_id}/export/", response={200: None, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut})
def run_export(request, run_id: PathId, query: Query[ExportQuery]):
    """Every stored point of the keys, at full resolution: CSV rows key,step,value (a NaN is an empty value) or
    JSON {run_id, keys: {key: {steps, values}}} (NaN as null), as a download."""
    require(request, "runs.view_run", "reading runs")
    _existing(run_id)
    keys = _keys(query.keys)
    name = f"run-{run_id}-{'-'.join(keys)[:80].replace('/', '_')}.{query.format}"
    if query.format == "json":
        payload = {}
        for key in keys:
            steps, values = series_all_points(run_id=run_id, key=key)
            payload[key] = {"steps": steps, "values": values}
        response: HttpResponseBase = _json({"run_id": run_id, "keys": payload})
    else:
        response = StreamingHttpResponse(_csv_rows(run_id, keys), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
