"""The ingest endpoint, POST /api/v1/ingest/<run_id>/ with `Authorization: Bearer <run token>`.

Two front doors share `ingest_handle`: a plain Django view (WSGI, the test client, any ASGI server without the
wrapper) and `IngestFastPath`, an ASGI wrapper that answers this one path before Django's middleware stack and
hands the work to a small thread pool whose threads each keep a database connection. Reporters post hundreds
of times a second per cluster; the fast path costs a fraction of a full Django request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from runs.services.metrics import (
    MAX_BODY_BYTES,
    IngestInvalid,
    RunGone,
    ingest_parse,
    metrics_compact_due,
    metrics_record,
)
from runs.services.tokens import run_token_check_cached

log = logging.getLogger(__name__)

INGEST_PATH = re.compile(r"/api/v1/ingest/(\d{1,18})/\Z")
UNAUTHORIZED = {"error": "invalid or missing run token: send Authorization: Bearer <the run's ingest token>"}
JSON_HEADERS = [(b"content-type", b"application/json")]


def bearer_token(authorization: str) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def ingest_handle(*, run_id: int, authorization: str, body: bytes, compact: bool = True) -> tuple[int, dict, list]:
    """(HTTP status, JSON answer, series due for compaction). A wrong token and an unknown run get the same 401."""
    token = bearer_token(authorization)
    run = run_token_check_cached(run_id=run_id, token=token) if token else None
    if run is None:
        return 401, UNAUTHORIZED, []
    try:
        result = metrics_record(run=run, records=ingest_parse(body), compact=compact)
    except IngestInvalid as exc:
        return 400, exc.as_json(), []
    except RunGone:
        return 401, UNAUTHORIZED, []
    return 200, result.as_json(), result.compact


@csrf_exempt
@require_POST
def ingest(request: HttpRequest, run_id: int) -> HttpResponse:
    if len(request.body) > MAX_BODY_BYTES:
        status, payload = 413, {"error": f"body over {MAX_BODY_BYTES} bytes; send smaller batches"}
    else:
        status, payload, _ = ingest_handle(
            run_id=run_id, authorization=request.headers.get("Authorization", ""), body=request.body
        )
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("CP_INGEST_THREADS", "8")))
    except ValueError:
        return 8


class IngestFastPath:
    """ASGI wrapper: POST /api/v1/ingest/<id>/ is answered here; everything else goes to the wrapped app."""

    def __init__(self, app):
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="ingest")
        self._handle = sync_to_async(self._handle_in_thread, thread_sensitive=False, executor=self.executor)
        self._compact = sync_to_async(self._compact_in_thread, thread_sensitive=False, executor=self.executor)
        self._background: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = INGEST_PATH.match(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not self._host_allowed(headers.get(b"host", b"").decode("latin-1")):
            return await self._respond(send, 400, {"error": "host not allowed"})
        body = await self._read_body(receive)
        if body is None:
            return await self._respond(send, 413, {"error": f"body over {MAX_BODY_BYTES} bytes; send smaller batches"})
        try:
            status, payload, due = await self._handle(
                int(match.group(1)), headers.get(b"authorization", b"").decode("latin-1"), body
            )
        except Exception:
            log.exception("ingest failed")
            return await self._respond(send, 500, {"error": "ingest failed; the error was logged, retry later"})
        await self._respond(send, status, payload)
        if due:
            # After the answer is sent: the job never waits on compaction.
            task = asyncio.ensure_future(self._compact(due))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    def _host_allowed(host: str) -> bool:
        domain, _ = split_domain_port(host)
        allowed = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
        return bool(domain) and validate_host(domain, allowed)

    @staticmethod
    async def _read_body(receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""  # nothing is stored for an empty body; the closed connection gets no answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _respond(send, status: int, payload: dict) -> None:
        body = orjson.dumps(payload)
        headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _handle_in_thread(run_id: int, authorization: str, body: bytes) -> tuple[int, dict, list]:
        # The request lifecycle Django would run: drop a connection that broke or outlived CONN_MAX_AGE.
        close_old_connections()
        try:
            return ingest_handle(run_id=run_id, authorization=authorization, body=body, compact=False)
        finally:
            close_old_connections()

    @staticmethod
    def _compact_in_thread(series_ids: list[int]) -> None:
        close_old_connections()
        try:
            metrics_compact_due(series_ids)
        except Exception:  # the next ingest of the series triggers it again
            log.exception("compaction of series %s failed", series_ids)
        finally:
            close_old_connections()


def with_ingest_fast_path(app):
    """Wrap an ASGI application (controlplane.asgi's ProtocolTypeRouter) with the ingest fast path."""
    return IngestFastPath(app)
