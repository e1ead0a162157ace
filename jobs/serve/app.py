"""The OpenAI-compatible HTTP API over a decode engine (FastAPI); ``jobs.serve`` runs it under uvicorn.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream with ``"stream": true`` as SSE
``data: {...}`` chunks ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.
With an API key, /v1/* and /metrics need ``Authorization: Bearer <key>`` (``public_metrics``: /metrics open to a
Prometheus without it); /health answers anyone with its status only, and its detail (model, engine, path) needs the
key. A request body over ``max_body_bytes`` is refused with 413 before it is read whole, and a large body is parsed
and tokenized in a thread, so a big request never holds the event loop (and /health) up.
Every error is JSON in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, never a traceback.

The engine runs in its own thread; its per-token events reach the request's coroutine through an asyncio queue,
delivered in batches (one loop wake-up per batch, see ``_Mailbox``). A stream whose client goes away cancels its requests, which
frees their engine slots.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.engine.scheduler import Event
from jobs.serve.metrics import ObserveRequests, ServeMetrics
from jobs.serve.protocol import ParsedRequest, RequestError, parse_request

log = logging.getLogger(__name__)


def _error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


MAX_BODY_BYTES = 4 * 1024 * 1024
OFF_LOOP_BYTES = 64 * 1024  # bodies above this are parsed and tokenized in a thread


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (BodyTooLarge) as soon as it passes `limit` bytes: by its Content-Length before a
    byte is read, or while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    *,
    engine,
    served_name: str,
    engine_kind: str = "native",
    api_key: str | Callable[[], str] | None = None,
    lifespan=None,
    max_body_bytes: int = MAX_BODY_BYTES,
    public_metrics: bool = False,
) -> FastAPI:
    """The API over `engine`; `lifespan` (FastAPI's) runs when the server starts and stops. `api_key` is the bearer
    key, or a callable giving the key in force at each request (a rotated key file)."""
    app = FastAPI(title="cp-serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    metrics = ServeMetrics(engine=engine, model=served_name, engine_kind=engine_kind)
    app.state.metrics = metrics
    app.add_middleware(ObserveRequests, metrics=metrics)
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path}; see GET /v1/models, "
                               "POST /v1/completions, POST /v1/chat/completions", code="not_found")  # fmt: skip
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(400, f"invalid request: {exc.errors()[:1]}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", kind="server_error")

    def unauthorized(request: Request) -> JSONResponse | None:
        if api_key is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        expected = api_key() if callable(api_key) else api_key
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
            return None
        return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                      code="invalid_api_key")  # fmt: skip

    @app.get("/health")
    async def health(request: Request):
        if api_key is not None and unauthorized(request) is not None:
            return {"status": "ok"}  # a liveness probe needs no more; what is served is the key holder's to see
        return {"status": "ok", "model": served_name, "engine": engine_kind, "path": engine.backend.path}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request):
        if not public_metrics and (denied := unauthorized(request)) is not None:
            return denied
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        card = {"id": served_name, "object": "model", "created": created, "owned_by": "controlplane",
                "max_model_len": engine.max_seq_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    async def generate(request: Request, *, chat: bool):
        if (denied := unauthorized(request)) is not None:
            return denied
        arrived = time.perf_counter()
        try:
            raw = await read_body(request, max_body_bytes)
        except BodyTooLarge:
            return _error(413, f"request body is over {max_body_bytes} bytes; send a shorter prompt or fewer "
                               "messages", code="request_too_large")  # fmt: skip

        def parse():
            body = json.loads(raw)
            return parse_request(body, chat=chat, served_name=served_name, encode=engine.tokenizer.encode,
                                 vocab=engine.backend.vocab, max_seq_len=engine.max_seq_len)  # fmt: skip

        try:
            parsed = await asyncio.to_thread(parse) if len(raw) > OFF_LOOP_BYTES else parse()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON ({exc}); send a JSON object with "
                               "Content-Type: application/json")  # fmt: skip
        except RecursionError:
            return _error(400, "request body nests too deeply; send a flat JSON object")
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        run = _Run(engine=engine, parsed=parsed, arrived=arrived, metrics=metrics, endpoint=endpoint)
        try:
            run.submit()
        except ValueError as exc:  # the engine's own check (should not happen after parse_request)
            return _error(400, str(exc))
        ids = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        shape = _Shape(id=ids, model=served_name, chat=chat)
        if parsed.stream:
            return StreamingResponse(run.stream(shape, include_usage=parsed.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        try:
            await run.wait()
        except asyncio.CancelledError:
            run.cancel()
            raise
        if run.error is not None:
            return _error(500, f"generation failed: {run.error}", kind="server_error")
        return shape.full(run.texts, run.finish, run.usage())

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    return app


class _Mailbox:
    """Hands engine events to the event loop, waking it once per batch rather than once per event.

    A decode step of 32 streams makes 32 events; ``call_soon_threadsafe`` for each would wake the loop (a pipe
    write and a callback) 32 times, all competing with the engine thread for the GIL."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue, tuple[int, Event]]] = []
        self.scheduled = False

    def put(self, queue: asyncio.Queue, item: tuple[int, Event]) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


_MAILBOXES: dict[int, _Mailbox] = {}


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    box = _MAILBOXES.get(id(loop))
    if box is None or box.loop is not loop:
        box = _MAILBOXES[id(loop)] = _Mailbox(loop)
    return box


class _Run:
    """One HTTP request's engine requests (one per prompt) and the events they send back."""

    def __init__(self, *, engine, parsed: ParsedRequest, arrived: float, metrics: ServeMetrics, endpoint: str):
        self.engine = engine
        self.parsed = parsed
        self.arrived = arrived
        self.metrics = metrics
        self.endpoint = endpoint
        self.mailbox = _mailbox(asyncio.get_running_loop())
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.handles: list = []
        n = len(parsed.prompts)
        self.texts = [""] * n
        self.finish: list[str | None] = [None] * n
        self.completion_tokens = [0] * n
        self.error: str | None = None
        self.first_token_seen = False
        self.open = n

    def submit(self) -> None:
        for index, ids in enumerate(self.parsed.prompts):
            sink = self._sink(index)
            self.handles.append(self.engine.submit(ids, self.parsed.params, sink=sink))
        self.metrics.prompt_tokens.inc(sum(len(p) for p in self.parsed.prompts))

    def _sink(self, index: int):
        def put(event: Event) -> None:  # runs in the engine thread
            self.mailbox.put(self.queue, (index, event))

        return put

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def next_event(self) -> tuple[int, Event]:
        index, event = await self.queue.get()
        if event.token_ids:
            if not self.first_token_seen:
                self.first_token_seen = True
                self.metrics.ttft.labels(endpoint=self.endpoint).observe(time.perf_counter() - self.arrived)
            self.metrics.generation_tokens.inc(len(event.token_ids))
        self.texts[index] += event.text
        self.completion_tokens[index] = event.completion_tokens
        if event.finish_reason is not None:
            self.finish[index] = event.finish_reason
            self.open -= 1
            if event.finish_reason == "error" and self.error is None:
                self.error = event.error or "engine error"
        return index, event

    async def wait(self) -> None:
        while self.open:
            await self.next_event()

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.parsed.prompts)
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def stream(self, shape: _Shape, *, include_usage: bool):
        started = [False] * len(self.parsed.prompts)
        try:
            while self.open:
                parts = [self._sse(shape, started, *await self.next_event())]
                while self.open and not self.queue.empty():  # a slow reader gets what piled up in one write
                    parts.append(self._sse(shape, started, *await self.next_event()))
                if any(parts):
                    yield "".join(parts)
            if include_usage:
                yield shape.usage_chunk(self.usage())
            yield "data: [DONE]\n\n"
        finally:
            if self.open:  # the client went away before the end
                self.cancel()

    @staticmethod
    def _sse(shape: _Shape, started: list[bool], index: int, event: Event) -> str:
        if event.finish_reason == "error":
            err = {"message": f"generation failed: {event.error}", "type": "server_error", "param": None, "code": None}
            return f"data: {_dumps({'error': err})}\n\n"
        out = []
        if not started[index]:
            # A choice's first chunk leaves as soon as its first token exists, text or not (a token may have no
            # text yet), so a client's time to first chunk is the time to first token.
            started[index] = True
            if shape.chat:
                out.append(shape.chunk(index, role=True))
            if event.text or not shape.chat:
                out.append(shape.chunk(index, text=event.text))
        elif event.text:
            out.append(shape.chunk(index, text=event.text))
        if event.finish_reason is not None:
            out.append(shape.chunk(index, finish=_openai_finish(event.finish_reason)))
        return "".join(out)


def _openai_finish(reason: str | None) -> str | None:
    return {"cancelled": "stop", "error": "stop"}.get(reason or "", reason)


class _Shape:
    """OpenAI's response and chunk objects for completions and chat completions."""

    def __init__(self, *, id: str, model: str, chat: bool):
        self.id = id
        self.model = model
        self.chat = chat
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, texts: list[str], finish: list[str | None], usage: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": _openai_finish(f)} for i, (t, f) in enumerate(zip(texts, finish, strict=True))]  # fmt: skip
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": _openai_finish(f)}
                       for i, (t, f) in enumerate(zip(texts, finish, strict=True))]  # fmt: skip
        return {**self._head(self.object), "choices": choices, "usage": usage}

    def chunk(self, index: int, *, text: str | None = None, finish: str | None = None, role: bool = False) -> str:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = self._head("chat.completion.chunk")
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = self._head("text_completion")
        return f"data: {_dumps({**obj, 'choices': [choice]})}\n\n"

    def usage_chunk(self, usage: dict) -> str:
        obj = self._head("chat.completion.chunk" if self.chat else "text_completion")
        return f"data: {_dumps({**obj, 'choices': [], 'usage': usage})}\n\n"
