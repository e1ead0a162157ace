"""The ingest API and service: tokens, validation, idempotence, heartbeats, events, live push, concurrency."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import socket
import threading
import time
from typing import NamedTuple

import pytest
import uvicorn
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from django.db import connection, connections

from jobs.reporter import Reporter
from runs.metrics.reads import series_read
from runs.metrics.store import metrics_record
from runs.metrics.validation import MAX_RECORDS
from runs.models import Alert, AuditEvent, Checkpoint, MetricBlock, MetricSeries, Run, RunStatus, RunToken
from runs.realtime.broadcast import run_group
from runs.services.rundir import run_dir_path
from runs.services.tokens import run_token_check, run_token_issue, token_cache_clear
from runs.services.transitions import transition
from runs.views.ingest import IngestEndpoint
from tests.runs.factories import tiny_run
from tests.runs.realtime.test_listeners import _until
from tests.runs.test_detectors import receive_matching

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run_and_token(seeded, operator):
    token_cache_clear()
    run = tiny_run(owner=operator)
    return run, run_token_issue(run=run, kind="operator").secret


def metrics(step: int, **values) -> dict:
    return {"kind": "metrics", "step": step, "time": 1.7e9 + step, "values": values}


class Posted(NamedTuple):
    status_code: int
    content: bytes

    def json(self):
        return json.loads(self.content)


# One endpoint on one event loop in a thread of its own, as a web server process has them: the endpoint's tasks
# (the websocket-group listener among them) live on across requests.
_server: tuple[IngestEndpoint, asyncio.AbstractEventLoop] | None = None


def _server_endpoint() -> tuple[IngestEndpoint, asyncio.AbstractEventLoop]:
    global _server
    if _server is None:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True).start()
        _server = IngestEndpoint(None), loop
    return _server


@pytest.fixture(autouse=True, scope="module")
def _server_released():
    yield
    global _server
    if _server is not None:
        release(_server[0])
        _server = None


def post(run_id: int, records, token: str | None) -> Posted:
    """POST to the ingest endpoint through ASGI, as the web server hands it a request; returns once the endpoint
    is idle (its pushes and compactions done)."""
    body = records if isinstance(records, bytes) else json.dumps({"records": records}).encode()
    app, loop = _server_endpoint()
    call = _asgi_coroutine(app, f"/api/v1/ingest/{run_id}/", body, token)
    status, content = asyncio.run_coroutine_threadsafe(call, loop).result(60)
    return Posted(status, content)


def points(run_id: int, key: str) -> int:
    return MetricSeries.objects.filter(run_id=run_id, key=key).values_list("points", flat=True).first() or 0


# Tokens


def test_token_is_stored_as_a_hash_and_audited_without_the_secret(run_and_token):
    run, token = run_and_token
    (stored,) = RunToken.objects.filter(run=run)
    assert token not in stored.digest and len(stored.digest) == 64
    event = AuditEvent.objects.get(action="run.token_issued", run_id=run.pk)
    assert token not in json.dumps([event.message, event.diff])
    assert run_token_check(run_id=run.pk, token=token).pk == run.pk
    assert run_token_check(run_id=run.pk, token=token + "x") is None
    assert run_token_check(run_id=run.pk + 999, token=token) is None


def test_reissuing_a_job_token_retires_the_old_one(run_and_token):
    run, _ = run_and_token
    for status in (RunStatus.QUEUED, RunStatus.LAUNCHING, RunStatus.RUNNING):
        run = transition(run=run, to=status, actor="system")
    old = run_token_issue(run=run, kind="job").secret
    new = run_token_issue(run=run, kind="job").secret
    assert post(run.pk, [metrics(1, loss=1.0)], old).status_code == 401
    assert post(run.pk, [metrics(1, loss=1.0)], new).status_code == 200


# Authentication: one answer for a wrong token and for a run that does not exist


def test_wrong_token_missing_token_and_unknown_run_get_the_same_401(run_and_token):
    run, token = run_and_token
    answers = [
        post(run.pk, [metrics(1, loss=1.0)], None),
        post(run.pk, [metrics(1, loss=1.0)], "not-the-token"),
        post(run.pk + 1000, [metrics(1, loss=1.0)], token),
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.content for a in answers}) == 1
    assert points(run.pk, "loss") == 0


# Validation: the batch is refused whole, the error names the record and the field


@pytest.mark.parametrize(
    ("records", "index", "field"),
    [
        ([metrics(1, loss=1.0), metrics(2, **{"bad key!": 1.0})], 1, "values.bad key!"),
        ([metrics(1, loss="high")], 0, "values.loss"),
        ([metrics(1, loss=None)], 0, "values.loss"),
        ([metrics(1, loss=True)], 0, "values.loss"),
        ([{"kind": "metrics", "values": {"loss": 1.0}}], 0, "step"),
        ([{"kind": "metrics", "step": -3, "values": {"loss": 1.0}}], 0, "step"),
        ([{"kind": "metrics", "step": 1.5, "values": {"loss": 1.0}}], 0, "step"),
        ([{"kind": "metrics", "step": 1, "values": {}}], 0, "values"),
        ([{"kind": "gossip", "step": 1}], 0, "kind"),
        ([metrics(1, loss=1.0), "not a record"], 1, ""),
        ([{"kind": "event", "type": "checkpoint_saved", "step": 5, "bytes": -1}], 0, "bytes"),
        ([{"kind": "heartbeat", "step": 5, "time": "noon"}], 0, "time"),
    ],
)
def test_invalid_records_are_refused_with_index_and_field(run_and_token, records, index, field):
    run, token = run_and_token
    answer = post(run.pk, records, token)
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert (error["index"], error["field"]) == (index, field)
    assert f"records[{index}]" in answer.json()["error"]
    assert points(run.pk, "loss") == 0


def test_body_errors_too_many_records_and_bad_json(run_and_token):
    run, token = run_and_token
    too_many = [metrics(s, loss=1.0) for s in range(MAX_RECORDS + 1)]
    answer = post(run.pk, too_many, token)
    assert answer.status_code == 400 and f"at most {MAX_RECORDS}" in answer.json()["error"]
    assert post(run.pk, b"{not json", token).status_code == 400
    answer = post(run.pk, b'{"rows": []}', token)
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "records"


# Idempotence, late and out-of-order points, terminal runs


def test_a_replayed_batch_adds_nothing(run_and_token):
    run, token = run_and_token
    batch = [metrics(s, loss=2.0 - s / 100, lr=1e-3) for s in range(50)]
    first = post(run.pk, batch, token).json()
    again = post(run.pk, batch, token).json()
    assert (first["accepted"], first["duplicates"]) == (100, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 100)
    assert points(run.pk, "loss") == 50 and points(run.pk, "lr") == 50


def test_late_and_out_of_order_points_are_accepted_once(run_and_token):
    run, token = run_and_token
    post(run.pk, [metrics(s, loss=float(s)) for s in range(100, 150)], token)
    late = [metrics(s, loss=float(s)) for s in (7, 3, 149, 120, 5, 3, 200)]
    answer = post(run.pk, late, token).json()
    assert (answer["accepted"], answer["duplicates"]) == (4, 3)  # 3 twice, 149 and 120 already stored
    series = series_read(run_id=run.pk, keys=["loss"], max_points=1000)["keys"]["loss"]
    assert series["steps"].tolist() == [3, 5, 7, *range(100, 150), 200]
    assert series["values"].tolist() == [float(s) for s in series["steps"].tolist()]


def test_the_first_value_of_a_step_wins(run_and_token):
    run, token = run_and_token
    post(run.pk, [metrics(1, loss=1.0), metrics(1, loss=9.0)], token)
    post(run.pk, [metrics(1, loss=5.0)], token)
    assert series_read(run_id=run.pk, keys=["loss"])["keys"]["loss"]["values"].tolist() == [1.0]


def test_a_finished_run_still_takes_its_backlog(run_and_token, operator):
    run, token = run_and_token
    transition(run=run, to=RunStatus.CANCELLED, actor=operator)
    answer = post(run.pk, [metrics(s, loss=1.0) for s in range(10)], token)
    assert answer.status_code == 200 and answer.json()["accepted"] == 10


# Non-finite values


def test_nan_and_infinity_are_stored_and_read_back_as_null_with_a_flag(run_and_token):
    run, token = run_and_token
    body = (
        '{"records": [{"kind": "metrics", "step": 1, "values": {"loss": NaN}},'
        '{"kind": "metrics", "step": 2, "values": {"loss": "inf"}},'
        '{"kind": "metrics", "step": 3, "values": {"loss": "-Infinity"}},'
        '{"kind": "metrics", "step": 4, "values": {"loss": 1.5}}]}'
    )
    assert post(run.pk, body.encode(), token).status_code == 200
    series = series_read(run_id=run.pk, keys=["loss"])["keys"]["loss"]
    values = series["values"].tolist()
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf and values[3] == 1.5
    assert series["nonfinite"].tolist() == [0, 1, 2] and series["nonfinite_kinds"] == ["nan", "inf", "-inf"]


# Heartbeats and events


def test_heartbeats_move_liveness_and_last_step(run_and_token):
    run, token = run_and_token
    before = time.time()
    post(run.pk, [{"kind": "heartbeat", "step": 42, "time": time.time()}], token)
    run.refresh_from_db()
    assert run.last_step == 42 and run.last_heartbeat_at.timestamp() >= before - 1
    # A heartbeat replayed from a backlog keeps its own (older) time and never moves liveness backwards.
    post(run.pk, [{"kind": "heartbeat", "step": 10, "time": before - 3600}], token)
    run.refresh_from_db()
    assert run.last_step == 42 and run.last_heartbeat_at.timestamp() >= before - 1
    other = tiny_run(owner=run.owner, name="old-backlog")
    other_token = run_token_issue(run=other, kind="operator").secret
    post(other.pk, [{"kind": "heartbeat", "step": 1, "time": before - 3600}], other_token)
    other.refresh_from_db()
    assert abs(other.last_heartbeat_at.timestamp() - (before - 3600)) < 1


def test_checkpoint_events_create_then_update_a_checkpoint(run_and_token):
    run, token = run_and_token
    event = {
        "kind": "event",
        "type": "checkpoint_saved",
        "step": 100,
        "tag": "step_000100",
        "path": "checkpoints/step_000100",  # inside the run's directory (tests/runs/test_paths_confined.py)
        "bytes": 1234,
        "metrics": {"loss": 2.1, "ppl": "inf"},
    }
    assert post(run.pk, [event], token).status_code == 200
    assert post(run.pk, [{**event, "bytes": 4321}], token).status_code == 200
    checkpoint = Checkpoint.objects.get(run=run, step=100)
    assert (checkpoint.tag, checkpoint.size_bytes) == ("step_000100", 4321)
    assert checkpoint.metrics == {"loss": 2.1, "ppl": "inf"}
    assert AuditEvent.objects.filter(action="checkpoint.saved", run_id=run.pk).count() == 1


def test_oom_and_nan_events_raise_one_alert_each(run_and_token):
    run, token = run_and_token
    oom = {"kind": "event", "type": "oom", "step": 7, "message": "CUDA out of memory"}
    post(run.pk, [oom], token)
    post(run.pk, [{**oom, "step": 8}], token)
    post(run.pk, [{"kind": "event", "type": "nan", "step": 9}], token)
    alerts = list(Alert.objects.filter(run=run).order_by("kind").values_list("kind", "step", "severity"))
    assert alerts == [("nan", 9, "critical"), ("oom", 7, "critical")]
    assert "CUDA out of memory" in Alert.objects.get(run=run, kind="oom").message


def test_unknown_event_types_are_accepted(run_and_token):
    run, token = run_and_token
    answer = post(
        run.pk,
        [{"kind": "event", "type": "started", "step": 0}, {"kind": "event", "type": "finished", "step": 300}],
        token,
    )
    assert answer.status_code == 200 and answer.json()["events"] == 2
    run.refresh_from_db()
    assert run.last_step == 300


# Live push


def test_points_are_pushed_to_the_run_group_once_per_request(run_and_token):
    run, token = run_and_token
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(run_group(run.pk), channel)
    try:
        post(run.pk, [metrics(1, mfu=2.5, lr=0.1), metrics(2, mfu="nan", lr=0.1)], token)
        # Another suite sharing this Redis may use the same run id: skip its messages.
        (message,) = receive_matching(layer, channel, lambda m: m["type"] == "run.points" and "mfu" in m["points"], 1)
    finally:
        async_to_sync(layer.group_discard)(run_group(run.pk), channel)
    assert message["type"] == "run.points" and message["run_id"] == run.pk and message["last_step"] == 2
    assert message["points"] == {"mfu": [[1, 2.5], [2, None, "nan"]], "lr": [[1, 0.1], [2, 0.1]]}


def test_a_request_that_reaches_django_is_answered_by_the_same_handler(run_and_token):
    from django.test import Client

    run, token = run_and_token

    def django_post(body: bytes, token: str):
        return Client().post(
            f"/api/v1/ingest/{run.pk}/",
            data=body,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )

    body = json.dumps({"records": [metrics(s, loss=1.0) for s in range(5)]}).encode()
    answer = django_post(body, token)
    assert answer.status_code == 200 and answer.json()["accepted"] == 5
    assert django_post(body, token).json()["duplicates"] == 5
    refused = django_post(body, "wrong")
    assert (refused.status_code, refused.content) == (401, post(run.pk, body, "wrong").content)
    assert django_post(b"[1", token).status_code == 400
    assert points(run.pk, "loss") == 5


# The endpoint through ASGI


def _asgi_post(app, path: str, body: bytes, token: str | None, host: bytes = b"127.0.0.1:8000"):
    status, content = _asgi_call(app, path, body, token, host)
    return status, json.loads(content) if content else None


def _asgi_call(app, path: str, body: bytes, token: str | None, host: bytes = b"127.0.0.1:8000") -> tuple[int, bytes]:
    """(status, body) of a POST sent in two parts; returns once the endpoint is idle (pushes and compactions)."""
    return async_to_sync(_asgi_coroutine)(app, path, body, token, host)


async def _asgi_coroutine(app, path: str, body: bytes, token: str | None, host: bytes = b"127.0.0.1:8000"):
    headers = [(b"host", host), (b"content-type", b"application/json")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers,
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1),
    }

    comm = ApplicationCommunicator(app, scope)
    await comm.send_input({"type": "http.request", "body": body[: len(body) // 2], "more_body": True})
    await comm.send_input({"type": "http.request", "body": body[len(body) // 2 :], "more_body": False})
    start = await comm.receive_output(10)
    content = await comm.receive_output(10)
    if isinstance(app, IngestEndpoint):
        await app.commits.idle()
    return start["status"], content["body"]


def test_endpoint_stores_and_passes_other_requests_through(run_and_token, request):
    run, token = run_and_token
    passed = []

    async def inner(scope, receive, send):
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = IngestEndpoint(inner)
    request.addfinalizer(lambda: release(app))
    body = json.dumps({"records": [metrics(s, loss=1.0) for s in range(20)]}).encode()
    status, answer = _asgi_post(app, f"/api/v1/ingest/{run.pk}/", body, token)
    assert (status, answer["accepted"]) == (200, 20)
    status, answer = _asgi_post(app, f"/api/v1/ingest/{run.pk}/", body, token)
    assert (status, answer["duplicates"]) == (200, 20)
    assert _asgi_post(app, f"/api/v1/ingest/{run.pk}/", body, "wrong")[0] == 401
    assert _asgi_post(app, f"/api/v1/ingest/{run.pk}/", b"[1", token)[0] == 400
    assert _asgi_post(app, f"/api/v1/ingest/{run.pk}/", body, token, host=b"evil.example")[0] == 400
    assert _asgi_post(app, f"/api/v1/ingest/{run.pk}/mlflow/x", body, token)[0] == 204
    assert passed == [f"/api/v1/ingest/{run.pk}/mlflow/x"]
    assert points(run.pk, "loss") == 20


def _asgi_posts_at_once(app, requests: list[tuple[int, bytes, str]]) -> list[tuple[int, dict]]:
    """(status, answer) of each (run id, body, token), all posted before the app runs any of them."""
    return async_to_sync(_asgi_posts_in_loop)(app, requests)


async def _asgi_posts_in_loop(app, requests: list[tuple[int, bytes, str]]) -> list[tuple[int, dict]]:
    """_asgi_posts_at_once on the running event loop."""
    comms = []
    for run_id, body, token in requests:
        scope = {
            "type": "http",
            "method": "POST",
            "path": f"/api/v1/ingest/{run_id}/",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {token}".encode())],
            "query_string": b"",
            "http_version": "1.1",
            "scheme": "http",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 1),
        }
        comm = ApplicationCommunicator(app, scope)
        await comm.send_input({"type": "http.request", "body": body, "more_body": False})
        comms.append(comm)
    answers = []
    for comm in comms:
        start = await comm.receive_output(60)
        content = await comm.receive_output(60)
        answers.append((start["status"], json.loads(content["body"])))
    # The pushes and compactions the answers started finish on this loop: left pending, they would be cancelled
    # when async_to_sync closes it, half way through.
    await asyncio.wait_for(app.commits.idle(), 60)
    return answers


@pytest.fixture
def endpoint():
    app = IngestEndpoint(None)
    yield app
    release(app)


def release(app: IngestEndpoint) -> None:
    """Its threads keep their database connections: close each one's, or the test database cannot be dropped."""
    app.commits.close()


def _count_store_calls(monkeypatch) -> list[int]:
    """From now on, the number of batches of each store call of the endpoint (metrics_store_many for requests
    stored as batches, metrics_store_ready for those prepared on arrival)."""
    from runs.metrics import ingest as metrics_ingest

    calls: list[int] = []

    def counting(real):
        def call(entries, **kwargs):
            calls.append(len(entries))
            return real(entries, **kwargs)

        return call

    for name in ("metrics_store_many", "metrics_store_ready"):
        monkeypatch.setattr(metrics_ingest, name, counting(getattr(metrics_ingest, name)))
    return calls


def test_endpoint_stores_waiting_requests_in_one_transaction(seeded, operator, monkeypatch, endpoint):
    token_cache_clear()
    runs = [tiny_run(owner=operator, name=f"group-{i}") for i in range(4)]
    tokens = [run_token_issue(run=run, kind="operator").secret for run in runs]
    body = json.dumps({"records": [metrics(s, loss=2.0 + s % 3 * 0.01, lr=1e-3) for s in range(20)]}).encode()
    app = endpoint
    gone = runs[3]
    assert _asgi_posts_at_once(app, [(gone.pk, body, tokens[3])])[0][0] == 200  # its token is now cached
    Run.objects.filter(pk=gone.pk).delete()
    calls = _count_store_calls(monkeypatch)
    requests = [(run.pk, body, token) for run, token in zip(runs, tokens, strict=True)]
    requests.append((runs[0].pk, body, tokens[0]))  # the same run again: waits for the first one's commit
    answers = _asgi_posts_at_once(app, requests)
    assert [status for status, _ in answers] == [200, 200, 200, 401, 200]
    assert [a.get("accepted") for _, a in answers] == [40, 40, 40, None, 0]
    assert answers[4][1]["duplicates"] == 40
    # One transaction for the four runs, which failed on the deleted one; each again alone; then the repeat.
    assert calls == [4, 1, 1, 1, 1, 1]
    for run in runs[:3]:
        assert points(run.pk, "loss") == 20 and points(run.pk, "lr") == 20


@pytest.mark.skipif(
    "sqlite" in __import__("django.conf", fromlist=["settings"]).settings.DATABASES["default"]["ENGINE"],
    reason="requests are prepared for the one-statement write on PostgreSQL only",
)
def test_endpoint_stores_a_known_runs_request_from_its_preparation(run_and_token, monkeypatch, endpoint):
    run, token = run_and_token
    body = json.dumps({"records": [metrics(s, loss=2.0, lr=1e-3) for s in range(10)]}).encode()
    assert _asgi_posts_at_once(endpoint, [(run.pk, body, token)])[0][0] == 200  # token and series now known here
    calls = _count_store_calls(monkeypatch)
    from runs.metrics import ingest as metrics_ingest

    many = []
    monkeypatch.setattr(metrics_ingest, "_store_batches", lambda *a, **k: many.append(a) or [])
    body = json.dumps({"records": [metrics(s, loss=2.0, lr=1e-3) for s in range(10, 20)]}).encode()
    assert _asgi_posts_at_once(endpoint, [(run.pk, body, token)])[0] == (200, _answer_of(accepted=20, last=19))
    assert calls == [1] and many == []  # stored from its preparation, not from its body
    assert points(run.pk, "loss") == 20


def test_endpoint_answers_a_bad_body_of_a_known_run_at_once(run_and_token, monkeypatch, endpoint):
    run, token = run_and_token
    body = json.dumps({"records": [metrics(s, loss=2.0, lr=1e-3) for s in range(10)]}).encode()
    assert _asgi_posts_at_once(endpoint, [(run.pk, body, token)])[0][0] == 200  # its token is now cached
    calls = _count_store_calls(monkeypatch)
    from runs.metrics import ingest as metrics_ingest

    many = []
    monkeypatch.setattr(metrics_ingest, "_store_batches", lambda *a, **k: many.append(a) or [])
    status, answer = _asgi_posts_at_once(endpoint, [(run.pk, b'{"records": [{"kind": "metrics"}]}', token)])[0]
    assert status == 400 and answer["errors"][0]["field"] == "step"
    assert calls == [] and many == []  # refused on arrival: it never reached a transaction
    assert points(run.pk, "loss") == 10


def _answer_of(*, accepted: int, last: int) -> dict:
    return {
        "ok": True,
        "accepted": accepted,
        "duplicates": 0,
        "events": 0,
        "heartbeats": 0,
        "last_step": last,
        "alerts": [],
    }


def _gathering(app, owner, monkeypatch, *, gather_s: float, answered_s: float, pause_s: float = 0.0):
    """Two runs that posted twice each (pause_s apart: prompt when under answered_s); then store calls are counted
    (their sizes) and transactions gather for gather_s."""
    from runs.metrics import ingest as metrics_ingest

    token_cache_clear()
    monkeypatch.setattr(metrics_ingest, "ANSWERED_S", answered_s)
    runs = [tiny_run(owner=owner, name=f"gather-{i}") for i in range(2)]
    tokens = [run_token_issue(run=run, kind="operator").secret for run in runs]
    for step in (0, 1):
        time.sleep(pause_s * step)
        body = json.dumps({"records": [metrics(step, loss=2.0)]}).encode()
        answers = _asgi_posts_at_once(app, [(r.pk, body, t) for r, t in zip(runs, tokens, strict=True)])
        assert [status for status, _ in answers] == [200, 200]
    # Only now: while the two runs post above, one's answer must not hold the other's request for gather_s.
    monkeypatch.setattr(metrics_ingest, "GATHER_S", gather_s)
    calls = _count_store_calls(monkeypatch)
    body = json.dumps({"records": [metrics(2, loss=2.0)]}).encode()
    return [(run.pk, body, token) for run, token in zip(runs, tokens, strict=True)], calls


def test_endpoint_waits_for_a_prompt_run_answered_moments_ago_to_share_its_transaction(
    seeded, operator, monkeypatch, endpoint
):
    (first, second), calls = _gathering(endpoint, operator, monkeypatch, gather_s=30.0, answered_s=60.0)

    async def scenario():
        alone = asyncio.ensure_future(_asgi_posts_in_loop(endpoint, [first]))
        await asyncio.sleep(0.2)  # the first run's transaction waits for the second run, answered just before
        assert calls == [] and not alone.done()
        started = time.monotonic()
        together = await _asgi_posts_in_loop(endpoint, [second])
        return (await alone) + together, time.monotonic() - started

    answers, waited = async_to_sync(scenario)()
    assert [status for status, _ in answers] == [200, 200]
    assert calls == [2] and waited < 10  # one transaction, started when the second run posted


def test_endpoint_stops_waiting_for_a_run_that_does_not_post(seeded, operator, monkeypatch, endpoint):
    (first, _), calls = _gathering(endpoint, operator, monkeypatch, gather_s=0.3, answered_s=60.0)
    started = time.monotonic()
    assert _asgi_posts_at_once(endpoint, [first])[0][0] == 200
    assert calls == [1] and 0.3 <= time.monotonic() - started < 10


def test_endpoint_does_not_wait_for_runs_that_post_now_and_then(seeded, operator, monkeypatch, endpoint):
    # Their second post came 0.5 s after their first answer: not prompt, so nobody waits for them.
    (first, _), calls = _gathering(endpoint, operator, monkeypatch, gather_s=30.0, answered_s=0.4, pause_s=0.5)
    started = time.monotonic()
    assert _asgi_posts_at_once(endpoint, [first])[0][0] == 200
    assert calls == [1] and time.monotonic() - started < 10


def test_endpoint_compacts_the_series_of_several_answers_in_one_transaction(seeded, operator, monkeypatch, endpoint):
    from runs.metrics import ingest as metrics_ingest

    token_cache_clear()
    runs = [tiny_run(owner=operator, name=f"compact-{i}") for i in range(2)]
    tokens = [run_token_issue(run=run, kind="operator").secret for run in runs]
    for run in runs:  # 15 blocks of 300 points each: the 16th makes the series due (merge_due)
        for start in range(0, 15 * 300, 300):
            metrics_record(run=run, records=[metrics(s, mfu=0.5) for s in range(start, start + 300)], compact=False)
    calls = []
    real = metrics_ingest.metrics_compact_due

    def recording(series_ids):
        calls.append(sorted(series_ids))
        return real(series_ids)

    monkeypatch.setattr(metrics_ingest, "metrics_compact_due", recording)
    stores = _count_store_calls(monkeypatch)
    body = json.dumps({"records": [metrics(s, mfu=0.5) for s in range(4500, 4800)]}).encode()
    answers = _asgi_posts_at_once(endpoint, [(run.pk, body, token) for run, token in zip(runs, tokens, strict=True)])
    assert [status for status, _ in answers] == [200, 200]
    series = sorted(MetricSeries.objects.filter(run__in=runs, key="mfu").values_list("pk", flat=True))
    deadline = time.monotonic() + 10
    while MetricBlock.objects.filter(series__in=series).count() > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Posted together, the two answers almost always share one transaction, and then one compaction serves both.
    # On a busy machine the second can arrive after the first's commit began: then each is compacted after its own.
    if stores == [2]:
        assert calls == [series]
    else:
        assert stores == [1, 1] and sorted(calls) == [[pk] for pk in series]
    assert MetricBlock.objects.filter(series__in=series, tier=1).count() == 2
    for run in runs:
        steps = series_read(run_id=run.pk, keys=["mfu"], max_points=10_000)["keys"]["mfu"]["steps"]
        assert steps.tolist() == list(range(4800))


def test_endpoint_pushes_each_requests_points(run_and_token, endpoint):
    run, token = run_and_token
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(run_group(run.pk), channel)
    try:
        body = json.dumps({"records": [metrics(7, mfu=0.5)]}).encode()
        assert _asgi_posts_at_once(endpoint, [(run.pk, body, token)])[0][0] == 200
        (message,) = receive_matching(layer, channel, lambda m: m["type"] == "run.points" and "mfu" in m["points"], 1)
    finally:
        async_to_sync(layer.group_discard)(run_group(run.pk), channel)
    assert message["run_id"] == run.pk and message["points"] == {"mfu": [[7, 0.5]]} and message["last_step"] == 7


def test_endpoint_pushes_to_a_page_that_joined_after_its_run_was_found_without_one(run_and_token, endpoint):
    from runs.realtime.listeners import group_join

    run, token = run_and_token
    layer = get_channel_layer()
    group = run_group(run.pk)

    def body(step: int) -> bytes:
        return json.dumps({"records": [metrics(step, mfu=0.5)]}).encode()

    async def scenario():
        channel = await layer.new_channel()
        assert (await _asgi_posts_in_loop(endpoint, [(run.pk, body(1), token)]))[0][0] == 200
        listeners = endpoint.commits._listeners
        await _until(lambda: listeners.subscription)
        assert (await _asgi_posts_in_loop(endpoint, [(run.pk, body(2), token)]))[0][0] == 200
        assert listeners.known[group][0] is False  # nobody listens: later pushes do not ask
        await group_join(layer, group, channel)  # as the run page's socket joins
        try:
            await _until(lambda: listeners.known[group][0])
            assert (await _asgi_posts_in_loop(endpoint, [(run.pk, body(3), token)]))[0][0] == 200
            while True:
                message = await asyncio.wait_for(layer.receive(channel), 5)
                if message["type"] == "run.points" and "mfu" in message["points"]:
                    return message
        finally:
            await layer.group_discard(group, channel)

    message = async_to_sync(scenario)()
    assert message["points"] == {"mfu": [[3, 0.5]]}


# The job's own reporter against a real HTTP server


def serve_in_thread(app: IngestEndpoint, request) -> int:
    """Serve the endpoint with uvicorn in a thread until the test ends; returns the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started

    def stop():
        server.should_exit = True
        thread.join(10)
        release(app)

    request.addfinalizer(stop)
    return port


@pytest.fixture
def ingest_url(request) -> str:
    """The base URL of a real HTTP server with the ingest endpoint (nothing else: 404)."""

    async def elsewhere(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return f"http://127.0.0.1:{serve_in_thread(IngestEndpoint(elsewhere), request)}"


def test_the_reporter_delivers_its_file_and_a_restart_resends_nothing_twice(run_and_token, ingest_url, tmp_path):
    run, token = run_and_token
    url = f"{ingest_url}/api/v1/ingest/{run.pk}/"
    reporter = Reporter(str(tmp_path), url, token, batch_size=25, flush_interval_s=0.05)
    for step in range(120):
        reporter.log(step, {"loss": 3.0 - step / 100, "tokens_per_s": 1000.0})
        if step % 50 == 0:
            reporter.heartbeat(step)
    checkpoint = run_dir_path(run) / "checkpoints" / "step_000100"  # a job's paths stay inside its run
    reporter.event("checkpoint_saved", 100, tag="step_000100", path=str(checkpoint), bytes=10, metrics={})
    reporter.close(timeout=20)
    assert reporter.halted is None
    # Lose the acknowledgement file: the next reporter sends everything again, and nothing is counted twice.
    (tmp_path / "metrics.acked").unlink()
    again = Reporter(str(tmp_path), url, token, batch_size=60, flush_interval_s=0.05)
    again.close(timeout=20)
    assert points(run.pk, "loss") == 120 and points(run.pk, "tokens_per_s") == 120
    assert Checkpoint.objects.filter(run=run, step=100).exists()
    run.refresh_from_db()
    assert run.last_step == 119 and run.last_heartbeat_at is not None


# Concurrency: two posts of the same batch at once never double-count


@pytest.mark.skipif(
    "sqlite" in __import__("django.conf", fromlist=["settings"]).settings.DATABASES["default"]["ENGINE"],
    reason="SQLite serialises every writer (IMMEDIATE transactions); the race needs PostgreSQL's row locks",
)
def test_concurrent_posts_of_the_same_batch_count_once(run_and_token):
    run, token = run_and_token
    batches = [
        [metrics(s, loss=float(s), lr=1e-3, **{"new/key": 1.0}) for s in range(start, start + 50)]
        for start in range(0, 200, 50)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(batch):
        try:
            barrier.wait(10)
            metrics_record(run=Run.objects.get(pk=run.pk), records=batch)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(batches[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for key in ("loss", "lr", "new/key"):
        assert points(run.pk, key) == 200
        steps = series_read(run_id=run.pk, keys=[key], max_points=1000)["keys"][key]["steps"]
        assert steps.tolist() == list(range(200))
    assert connection.vendor == "postgresql"


def test_late_heartbeat_time_never_in_the_future(run_and_token):
    run, token = run_and_token
    post(run.pk, [{"kind": "heartbeat", "step": 1, "time": time.time() + 86400}], token)
    run.refresh_from_db()
    assert run.last_heartbeat_at <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
