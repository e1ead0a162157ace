"""The REST API as a script sees it: tokens and sessions, roles, runs from presets, the form's checks, audit."""

from __future__ import annotations

import pytest
from django.test import Client

from runs.models import ApiToken, AuditEvent, DataMixRecipe, Run, RunStatus
from runs.services.api_tokens import api_token_create
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.fixture
def op(seeded, operator):
    return bearer(api_token_create(user=operator, name="laptop").secret)


@pytest.fixture
def viewer_client(seeded, viewer):
    client = Client()
    client.force_login(viewer)
    return client


def test_anonymous_and_wrong_tokens_get_401_naming_the_header(seeded):
    for client in (Client(), bearer("cpat_wrong"), bearer("")):
        answer = client.get("/api/v1/runs/")
        assert answer.status_code == 401, answer.content
        assert answer.json()["errors"][0]["field"] == "Authorization"


def test_only_the_digest_is_stored_and_a_revoked_token_stops_working(seeded, operator):
    issued = api_token_create(user=operator, name="laptop")
    token = ApiToken.objects.get()
    assert issued.secret not in (token.digest, token.prefix) and issued.secret.startswith(token.prefix)
    client = bearer(issued.secret)
    assert client.get("/api/v1/me/").json()["role"] == "operator"
    assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 200
    assert client.get("/api/v1/me/").status_code == 401
    assert list(AuditEvent.objects.filter(action__startswith="api_token.").values_list("action", flat=True)) == [
        "api_token.revoke",
        "api_token.create",
    ]


def test_viewers_get_no_token(seeded, viewer, viewer_client):
    answer = viewer_client.post("/api/v1/tokens/", {"name": "x"}, content_type="application/json")
    assert answer.status_code == 403 and answer.json()["errors"][0]["field"] == "user"


def test_a_run_is_created_from_a_preset_with_overrides_and_audited(op, operator):
    answer = op.post(
        "/api/v1/runs/",
        {"name": "api-run", "preset": "tiny", "overrides": {"optimizer.lr": 0.002}, "curriculum": "0:32, 3:64"},
        content_type="application/json",
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    run = Run.objects.get(pk=body["id"])
    assert run.owner == operator and run.config["optimizer"]["lr"] == 0.002 and body["status"] == "draft"
    assert [s["seq_len"] for s in run.config["curriculum"]] == [32, 64]
    assert AuditEvent.objects.filter(action="run.create", run_id=run.pk).exists()


def test_a_bad_layout_is_refused_naming_the_field_and_nothing_is_saved(op):
    answer = op.post(
        "/api/v1/runs/",
        {"name": "bad", "overrides": {"parallel.tp": 0, "no.such": 1, "parallel.sp": "yes"}},
        content_type="application/json",
    )
    assert answer.status_code == 400
    fields = {e["field"] for e in answer.json()["errors"]}
    assert {"overrides.no.such", "overrides.parallel.sp"} <= fields
    answer = op.post("/api/v1/runs/", {"name": "bad", "overrides": {"parallel.tp": 0}}, content_type="application/json")
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "overrides.parallel.tp"
    assert not Run.objects.exists()


def test_a_curriculum_longer_than_the_batch_is_refused_not_a_server_error(op):
    """The form's '0:256, 3000:2048' on the tiny preset (batch.seq_len 64) once gave a 500."""
    answer = op.post("/api/v1/runs/", {"name": "c", "curriculum": "0:256, 3000:2048"}, content_type="application/json")
    assert answer.status_code == 400 and {e["field"] for e in answer.json()["errors"]} == {"curriculum"}


def test_plan_is_the_forms_plan_and_saves_nothing(viewer_client):
    answer = viewer_client.post("/api/v1/runs/plan/", {"preset": "r1_guide"}, content_type="application/json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["plan"]["params"] and "valid" in body and not Run.objects.exists()


def test_viewers_read_but_never_write(viewer_client, operator):
    run = tiny_run(owner=operator)
    assert viewer_client.get(f"/api/v1/runs/{run.pk}/").json()["config"]["model"]
    for path in (f"/api/v1/runs/{run.pk}/launch/", f"/api/v1/runs/{run.pk}/cancel/", "/api/v1/runs/"):
        answer = viewer_client.post(path, {"name": "x"}, content_type="application/json")
        assert answer.status_code == 403 and answer.json()["errors"][0]["field"] == "role", path
    assert Run.objects.get().status == RunStatus.DRAFT
    assert viewer_client.get("/api/v1/audit/").status_code == 403


def test_session_writes_need_the_csrf_token(seeded, operator):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    run = tiny_run(owner=operator)
    assert strict.post(f"/api/v1/runs/{run.pk}/launch/").status_code == 403
    assert Run.objects.get().status == RunStatus.DRAFT


def test_launch_cancel_fork_and_edit_go_through_the_services(op, operator):
    run = tiny_run(owner=operator)
    edited = op.patch(f"/api/v1/runs/{run.pk}/", {"overrides": {"training.seed": 7}}, content_type="application/json")
    assert edited.status_code == 200 and edited.json()["config"]["training"]["seed"] == 7
    assert op.post(f"/api/v1/runs/{run.pk}/launch/").json()["status"] == "queued"
    assert op.post(f"/api/v1/runs/{run.pk}/launch/").status_code == 409
    assert op.patch(f"/api/v1/runs/{run.pk}/", {"name": "x"}, content_type="application/json").status_code == 409
    assert op.post(f"/api/v1/runs/{run.pk}/cancel/").json()["status"] == "cancelled"
    fork = op.post(
        f"/api/v1/runs/{run.pk}/fork/", {"overrides": {"optimizer.lr": 0.01}}, content_type="application/json"
    )
    assert fork.status_code == 201 and fork.json()["parent_id"] == run.pk
    assert fork.json()["config"]["training"]["seed"] == 7 and fork.json()["name"] == f"{run.name}-fork"
    listed = op.get(f"/api/v1/runs/?parent={run.pk}").json()
    assert listed["count"] == 1 and listed["items"][0]["id"] == fork.json()["id"]
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"run.edit", "run.launch", "run.cancel", "run.create"} <= actions


def test_recipes_are_versioned_and_refusals_name_the_weight(op):
    base = DataMixRecipe.objects.get(name="bilingual-demo")
    weights = base.weights()
    names = sorted(weights)
    created = op.post(
        "/api/v1/recipes/", {"name": "api-mix", "weights": {names[0]: 100}}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    version = op.post(
        f"/api/v1/recipes/{created.json()['id']}/versions/",
        {"weights": {names[0]: 60, names[1]: 40}},
        content_type="application/json",
    )
    assert version.status_code == 201 and version.json()["version"] == 2
    refused = op.post("/api/v1/recipes/", {"name": "x", "weights": {names[0]: 150}}, content_type="application/json")
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == f"weights.{names[0]}"
    unknown = op.post("/api/v1/recipes/", {"name": "y", "weights": {"nope": 100}}, content_type="application/json")
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "weights.nope"


def test_the_schema_is_published_behind_login(viewer_client):
    assert Client().get("/api/v1/openapi.json").status_code == 401
    schema = viewer_client.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/runs/", "/api/v1/ingest/{run_id}/", "/api/v1/runs/{run_id}/series/"):
        assert path in schema["paths"]
    assert "/api/v1/ingest/{run_id}/mlflow/api/2.0/mlflow/runs/log-batch" in schema["paths"]
    assert schema["components"]["schemas"]["IngestBody"]["properties"]["records"]
    assert viewer_client.get("/api/v1/docs").status_code == 200
    assert Client().get("/api/v1/docs").status_code == 302


def test_the_tokens_page_shows_a_new_token_once_and_revokes_it(seeded, operator):
    client = Client()
    client.force_login(operator)
    page = client.post("/account/tokens/", {"name": "laptop"})
    token = ApiToken.objects.get()
    assert page.status_code == 200 and b"cpat_" in page.content and token.prefix.encode() in page.content
    assert b"cpat_" not in client.get("/account/tokens/").content.replace(token.prefix.encode(), b"")
    client.post(f"/account/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None
