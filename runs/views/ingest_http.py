"""uvicorn's HTTP protocol with ingest posts answered at the connection, before ASGI.

`controlplane.serve` runs uvicorn with `IngestHttpProtocol`. A POST to /api/v1/ingest/<id>/ (the path as reporters
send it: no query, no percent-escapes, no `Expect: 100-continue`) on a connection with no response still owed goes
straight to the application's `IngestFastPath`, and its answer is written in one piece. Through ASGI, every such
request cost a task, a scope, its receive and send calls, and two writes (the head, then the body), each of which
woke the reporter. Every other request, and any ingest post that does not fit the rule, goes through uvicorn's own
request cycle and the ASGI application as before (the fast path answers the ingest path there too).
"""

from __future__ import annotations

import logging
import re
from functools import partial

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from runs.metrics.validation import MAX_BODY_BYTES
from runs.views.ingest import FAILED, Answer, IngestFastPath, Waiting

log = logging.getLogger(__name__)

INGEST_URL = re.compile(rb"/api/v1/ingest/(\d{1,18})/\Z")
TOO_LARGE = {"error": f"body over {MAX_BODY_BYTES} bytes; send smaller batches"}
HOST_REFUSED = {"error": "host not allowed"}


class _Pending:
    """Stands in for uvicorn's request cycle while an ingest post is answered here: a request pipelined behind it
    waits in uvicorn's queue until it is done, and a lost connection or a shutdown is noted on it."""

    def __init__(self, keep_alive: bool):
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.message_event = self  # connection_lost sets it

    def set(self) -> None:
        pass


class IngestHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_path = _fast_path_of(self.app)
        self.ingest: tuple[int, list[bytes]] | None = None  # the post being read: run id, body chunks
        self.ingest_size = 0

    def on_headers_complete(self) -> None:
        match = self._ingest_match()
        if match is None:
            super().on_headers_complete()
            return
        self.ingest, self.ingest_size = (int(match.group(1)), []), 0
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        self.cycle = _Pending(keep_alive)  # type: ignore[assignment]

    def _ingest_match(self) -> re.Match | None:
        if self.fast_path is None or self.expect_100_continue or self.parser.get_method() != b"POST":
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a response still owed: uvicorn queues it
        if self.parser.should_upgrade():
            return None
        return INGEST_URL.match(self.url)

    def on_body(self, body: bytes) -> None:
        if self.ingest is None:
            super().on_body(body)
            return
        self.ingest_size += len(body)
        if self.ingest_size <= MAX_BODY_BYTES:
            self.ingest[1].append(body)

    def on_message_complete(self) -> None:
        if self.ingest is None:
            super().on_message_complete()
            return
        (run_id, chunks), self.ingest = self.ingest, None
        pending: _Pending = self.cycle  # type: ignore[assignment]
        if self.ingest_size > MAX_BODY_BYTES:
            self._answer(pending, 413, TOO_LARGE)
            return
        host = authorization = b""
        for name, value in self.headers:
            if name == b"host":
                host = value
            elif name == b"authorization":
                authorization = value
        assert self.fast_path is not None
        if not self.fast_path.host_allowed(host.decode("latin-1")):
            self._answer(pending, 400, HOST_REFUSED)
            return
        waiting = self.fast_path.submit(run_id, authorization.decode("latin-1"), b"".join(chunks))
        waiting.answer.add_done_callback(partial(self._stored, pending, waiting))

    def _stored(self, pending: _Pending, waiting: Waiting, future) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("ingest failed", exc_info=error)
            self._answer(pending, 500, FAILED)
            return
        answer: Answer = future.result()
        self._answer(pending, answer.status, answer.payload)
        assert self.fast_path is not None
        self.fast_path.answered(waiting, answer)

    def _answer(self, pending: _Pending, status: int, payload: dict) -> None:
        pending.response_complete = True
        if pending.disconnected or self.transport.is_closing():
            return
        body = orjson.dumps(payload)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        if not pending.keep_alive:
            head.append(b"connection: close\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        if not pending.keep_alive:
            self.transport.close()
        self.on_response_complete()


def _fast_path_of(app) -> IngestFastPath | None:
    """The IngestFastPath inside uvicorn's wrapping of the application (its proxy-headers middleware), if any."""
    for _ in range(8):
        if isinstance(app, IngestFastPath):
            return app
        app = getattr(app, "app", None)
    return None
