"""The ingest endpoint over real HTTP: uvicorn serving IngestEndpoint, every request through ASGI."""

from __future__ import annotations

import json
import socket
import time

import pytest

from runs.metrics.validation import MAX_BODY_BYTES
from runs.services.tokens import run_token_issue, token_cache_clear
from runs.views.ingest import IngestEndpoint
from tests.runs.factories import tiny_run
from tests.runs.test_ingest import metrics, points, serve_in_thread

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(request):
    """(port, the endpoint, paths the wrapped application saw) of a uvicorn server in a thread."""
    passed: list[str] = []

    async def inner(scope, receive, send):
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = IngestEndpoint(inner)
    port = serve_in_thread(app, request)
    return port, app, passed


@pytest.fixture
def run_token(seeded, operator):
    token_cache_clear()
    run = tiny_run(owner=operator)
    return run, run_token_issue(run=run, kind="operator").secret


def _post(path: str, body: bytes, token: str, *, version: str = "1.1", host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict, bytes]:
    """(status, headers, body) of the next response on the connection; `buffer` keeps what came after it."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response"
        rest += chunk
    buffer[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def _body(steps: range) -> bytes:
    return json.dumps({"records": [metrics(s, loss=1.0 + s * 0.001) for s in steps]}).encode()


def test_ingest_posts_are_answered_on_a_kept_connection(server, run_token):
    port, _, passed = server
    run, token = run_token
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for start in (0, 10):
            sock.sendall(_post(f"/api/v1/ingest/{run.pk}/", _body(range(start, start + 10)), token))
            status, headers, body = _read_response(sock, bytearray())
            assert status == 200 and headers["content-type"] == "application/json"
            assert json.loads(body)["accepted"] == 10
            assert "connection" not in headers
    assert points(run.pk, "loss") == 20
    assert passed == []  # never reached the wrapped application


def test_requests_pipelined_behind_an_ingest_post_are_answered_in_order(server, run_token):
    port, _, passed = server
    run, token = run_token
    body = _body(range(5))
    pipelined = (
        _post(f"/api/v1/ingest/{run.pk}/", body, token)
        + b"GET /runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        + _post(f"/api/v1/ingest/{run.pk}/", body, token)
    )
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(pipelined)
        answers = [_read_response(sock, buffer) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 204, 200]
    assert json.loads(answers[0][2])["accepted"] == 5
    assert json.loads(answers[2][2])["duplicates"] == 5  # stored after the first one's answer
    assert passed == ["/runs/"]


def test_refusals_name_their_cause(server, run_token):
    port, _, _ = server
    run, token = run_token
    cases = [
        (_post(f"/api/v1/ingest/{run.pk}/", _body(range(3)), "wrong"), 401, "run token"),
        (_post(f"/api/v1/ingest/{run.pk}/", b"[1", token), 400, "not JSON"),
        (_post(f"/api/v1/ingest/{run.pk}/", _body(range(3)), token, host="evil.example"), 400, "host"),
        (_post(f"/api/v1/ingest/{run.pk}/", b" " * (MAX_BODY_BYTES + 1), token), 413, "smaller batches"),
    ]
    for request, status, words in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            got, _, body = _read_response(sock, bytearray())
        assert got == status and words in body.decode(), body
    assert points(run.pk, "loss") == 0


def test_http_1_0_post_is_answered_and_its_connection_closed(server, run_token):
    port, _, _ = server
    run, token = run_token
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_post(f"/api/v1/ingest/{run.pk}/", _body(range(4)), token, version="1.0"))
        status, headers, body = _read_response(sock, bytearray())
        assert (status, headers["connection"], json.loads(body)["accepted"]) == (200, "close", 4)
        assert sock.recv(100) == b""


def test_a_post_with_a_query_string_is_stored(server, run_token):
    port, _, passed = server
    run, token = run_token
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_post(f"/api/v1/ingest/{run.pk}/?source=test", _body(range(6)), token))
        status, _, body = _read_response(sock, bytearray())
    assert (status, json.loads(body)["accepted"]) == (200, 6)
    assert passed == []  # the endpoint answered it


def test_points_are_stored_when_the_reporter_hangs_up_before_the_answer(server, run_token):
    port, _, _ = server
    run, token = run_token
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_post(f"/api/v1/ingest/{run.pk}/", _body(range(7)), token))
    deadline = time.monotonic() + 10
    while points(run.pk, "loss") < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert points(run.pk, "loss") == 7
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # the server still answers
        sock.sendall(_post(f"/api/v1/ingest/{run.pk}/", _body(range(7, 9)), token))
        assert _read_response(sock, bytearray())[0] == 200
