"""The ingest endpoint, POST /api/v1/ingest/<run_id>/ with `Authorization: Bearer <run token>`.

`IngestEndpoint` wraps the ASGI application (controlplane.asgi) and answers this one path itself, before Django's
middleware stack: reporters post hundreds of times a second per cluster, and a full Django request costs several
times what the checks here do. It refuses a host outside ALLOWED_HOSTS and a body over MAX_BODY_BYTES, and hands
the rest to the process's group commit (runs.metrics.ingest), which checks the token and the body and stores
requests that arrive together in one transaction. Every other request goes to the wrapped application.
"""

from __future__ import annotations

import logging
import re

import orjson
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from runs.metrics.ingest import FAILED, HOST_REFUSED, TOO_LARGE, Answer, GroupCommit, refusal
from runs.metrics.validation import MAX_BODY_BYTES

log = logging.getLogger(__name__)

INGEST_PATH = re.compile(r"/api/v1/ingest/(\d{1,18})/\Z")
JSON_HEADERS = [(b"content-type", b"application/json")]
_HOSTS_KNOWN = 64  # host headers whose verdict is kept: a few names per deployment


def bearer_token(authorization: str) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class IngestEndpoint:
    """ASGI middleware: POST /api/v1/ingest/<id>/ is answered here; everything else goes to the wrapped app."""

    def __init__(self, app):
        self.app = app
        self.commits = GroupCommit()
        self._hosts: dict[bytes, bool] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = INGEST_PATH.match(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        host = authorization = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"authorization":
                authorization = value
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        if not self.host_allowed(host):
            return await _respond(send, refusal(400, HOST_REFUSED))
        if length > MAX_BODY_BYTES:
            return await _respond(send, refusal(413, TOO_LARGE))
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return  # before its body arrived: nothing to store, nobody to answer
        if body is None:
            return await _respond(send, refusal(413, TOO_LARGE))
        request = self.commits.submit(int(match.group(1)), bearer_token(authorization.decode("latin-1")), body)
        assert request.answer is not None  # submit gives every request its future (answer_now's have none)
        try:
            answer = await request.answer
        except Exception:
            log.exception("ingest failed")
            return await _respond(send, refusal(500, FAILED))
        await _respond(send, answer)
        self.commits.answered(request, answer)

    def host_allowed(self, host: bytes) -> bool:
        """Django's ALLOWED_HOSTS rule (the ingest path bypasses its middleware), remembered per Host header."""
        allowed = self._hosts.get(host)
        if allowed is None:
            domain, _ = split_domain_port(host.decode("latin-1"))
            hosts = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
            allowed = bool(domain) and validate_host(domain, hosts)
            if len(self._hosts) >= _HOSTS_KNOWN:
                self._hosts.clear()
            self._hosts[host] = allowed
        return allowed


class _ClientGone(Exception):
    pass


async def _read_body(receive) -> bytes | None:
    """The whole body; None when it grows over MAX_BODY_BYTES."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send, answer: Answer) -> None:
    body = orjson.dumps(answer.payload)
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
