"""The server's Prometheus metrics (all named ``cp_serve_*``; docs/grafana/inference-endpoint.json charts them).

- ``cp_serve_requests_total{endpoint,status}``: every HTTP request, by route and status code, counted when the
  response ends (a stream counts when its last chunk is sent). Unknown paths are ``endpoint="other"``.
- ``cp_serve_request_latency_seconds{endpoint}``: histogram, request arrival to the end of the response.
- ``cp_serve_time_to_first_token_seconds{endpoint}``: histogram, request arrival to the first generated token.
- ``cp_serve_prompt_tokens_total`` / ``cp_serve_generation_tokens_total``: counters.
- ``cp_serve_tokens_per_second``: gauge, tokens the engine generated per second over the last 10 s.
- ``cp_serve_active_requests``: gauge, requests waiting or generating in the engine.
- ``cp_serve_info{model,engine,path}``: 1, to label dashboards.

A registry per app (not the global one) so that several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServeMetrics:
    def __init__(self, *, engine, model: str, engine_kind: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cp_serve_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("cp_serve_request_latency_seconds", "Request arrival to end of response",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.ttft = Histogram("cp_serve_time_to_first_token_seconds", "Request arrival to first generated token",
                              ["endpoint"], buckets=_TTFT_BUCKETS, registry=r)  # fmt: skip
        self.prompt_tokens = Counter("cp_serve_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("cp_serve_generation_tokens", "Tokens generated", registry=r)
        tps = Gauge("cp_serve_tokens_per_second", "Generated tokens per second, last 10 s", registry=r)
        tps.set_function(lambda: engine.tokens_per_second(10.0))
        active = Gauge("cp_serve_active_requests", "Requests waiting or generating", registry=r)
        active.set_function(lambda: engine.active_requests)
        info = Gauge("cp_serve_info", "The served model", ["model", "engine", "path"], registry=r)
        info.labels(model=model, engine=engine_kind, path=engine.backend.path).set(1)


class ObserveRequests:
    """ASGI middleware: counts every response by endpoint and status and times it to its last byte."""

    def __init__(self, app, *, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
