"""The chart read API: login and role, full and envelope answers, zoom, keys, overlays, JSON-safe values."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from runs.metrics.store import metrics_record
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(seeded, operator):
    run = tiny_run(owner=operator)
    for start in range(0, 3000, 500):
        metrics_record(
            run=run,
            records=[
                {"kind": "metrics", "step": s, "values": {"loss": 2.0 + (9.0 if s == 1234 else 0.0), "lr": 1e-3}}
                for s in range(start, start + 500)
            ],
        )
    metrics_record(run=run, records=[{"kind": "metrics", "step": 3000, "values": {"loss": "nan"}}])
    return run


@pytest.fixture
def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


def get(client, url):
    answer = client.get(url)
    return answer.status_code, json.loads(answer.content)


def test_login_and_the_view_role_are_required(run, django_user_model):
    assert Client().get(f"/api/v1/runs/{run.pk}/series/?keys=loss").status_code == 401
    nobody = django_user_model.objects.create_user(username="nobody", password="pw-for-tests-1")
    client = Client()
    client.force_login(nobody)
    assert client.get(f"/api/v1/runs/{run.pk}/series/?keys=loss").status_code == 403


def test_keys_lists_point_counts(run, viewer_client):
    status, body = get(viewer_client, f"/api/v1/runs/{run.pk}/keys/")
    assert status == 200 and body["last_step"] == 3000
    assert [(k["key"], k["points"]) for k in body["keys"]] == [("loss", 3001), ("lr", 3000)]


def test_zoomed_out_is_an_envelope_and_zoomed_in_is_full(run, viewer_client):
    status, body = get(viewer_client, f"/api/v1/runs/{run.pk}/series/?keys=loss,lr&max_points=100")
    assert status == 200 and body["last_step"] == 3000
    loss = body["keys"]["loss"]
    assert loss["mode"] == "envelope" and len(loss["steps"]) <= 100 and max(loss["max"]) == 11.0
    assert loss["last"][-1] is None and loss["nonfinite"] == [len(loss["steps"]) - 1]
    status, body = get(viewer_client, f"/api/v1/runs/{run.pk}/series/?keys=loss&lo=1200&hi=1299&max_points=100")
    loss = body["keys"]["loss"]
    assert loss["mode"] == "full" and loss["steps"] == list(range(1200, 1300))
    assert loss["values"][34] == 11.0 and loss["nonfinite"] == []


def test_nan_reads_back_as_null_with_its_kind(run, viewer_client):
    _, body = get(viewer_client, f"/api/v1/runs/{run.pk}/series/?keys=loss&lo=2999")
    loss = body["keys"]["loss"]
    assert loss["values"] == [2.0, None] and loss["nonfinite"] == [1] and loss["nonfinite_kinds"] == ["nan"]


def test_unknown_key_is_empty_and_bad_queries_are_400(run, viewer_client):
    _, body = get(viewer_client, f"/api/v1/runs/{run.pk}/series/?keys=nothing")
    assert body["keys"]["nothing"]["steps"] == []
    for query in ("", "keys=a b", "keys=loss&lo=x", "keys=loss&lo=5&hi=1", "keys=loss&max_points=1"):
        status, body = get(viewer_client, f"/api/v1/runs/{run.pk}/series/?{query}")
        assert status == 400 and body["error"]
    assert viewer_client.get(f"/api/v1/runs/{run.pk + 99}/series/?keys=loss").status_code == 404


def test_overlay_answers_each_run_on_one_grid(run, viewer_client, operator):
    other = tiny_run(owner=operator, name="other")
    metrics_record(run=other, records=[{"kind": "metrics", "step": s, "values": {"loss": 1.0}} for s in range(10)])
    status, body = get(viewer_client, f"/api/v1/series/?runs={run.pk},{other.pk}&keys=loss&lo=0&hi=2999&max_points=30")
    assert status == 200 and set(body["runs"]) == {str(run.pk), str(other.pk)}
    assert body["runs"][str(run.pk)]["keys"]["loss"]["bucket"] == 100
    assert body["runs"][str(other.pk)]["keys"]["loss"]["steps"] == list(range(10))
    assert viewer_client.get("/api/v1/series/?runs=&keys=loss").status_code == 400
    assert viewer_client.get(f"/api/v1/series/?runs={other.pk + 50}&keys=loss").status_code == 404


def test_a_read_says_the_version_it_holds_and_the_run_state_says_the_current_one(run, viewer_client):
    _, read = get(viewer_client, f"/api/v1/runs/{run.pk}/series/?keys=loss,lr,nosuchkey&max_points=100")
    _, state = get(viewer_client, f"/runs/{run.pk}/state/")
    _, keys = get(viewer_client, f"/api/v1/runs/{run.pk}/keys/")
    assert state["versions"] == {"loss": read["keys"]["loss"]["version"], "lr": read["keys"]["lr"]["version"]}
    assert {k["key"]: k["version"] for k in keys["keys"]} == state["versions"]
    assert read["keys"]["nosuchkey"]["version"] == 0
    metrics_record(run=run, records=[{"kind": "metrics", "step": 3001, "values": {"loss": 1.0}}])
    _, after = get(viewer_client, f"/runs/{run.pk}/state/")
    assert after["versions"]["loss"] > state["versions"]["loss"] and after["versions"]["lr"] == state["versions"]["lr"]


def test_the_run_page_names_its_metric_keys_for_its_charts(run, viewer_client):
    page = viewer_client.get(f"/runs/{run.pk}/").content.decode()
    assert '<script id="metric-keys" type="application/json">["loss", "lr"]</script>' in page
