"""NUL (U+0000), which PostgreSQL stores in no text or jsonb column, is refused with a 400 naming the field on
every way in: the API's query string, form and JSON body, the MLflow routes (in MLflow's error shape), the ingest
body and the pages' filters. Found by schemathesis on PostgreSQL: `?name=%00` and `?reason=%00` gave 500s."""

from __future__ import annotations

import pytest
from django.test import Client

from runs.metrics.validation import IngestInvalid, ingest_body
from runs.models import Run, RunStatus
from runs.services.api_tokens import api_token_create
from runs.services.tokens import run_token_issue
from runs.text import json_nul_fields, nul_fields, params_nul_fields
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def op(seeded, operator):
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=operator, name='laptop').secret}")


def _fields(answer) -> list[str]:
    assert answer.status_code == 400, answer.content
    return [error["field"] for error in answer.json()["errors"]]


def test_the_api_refuses_nul_in_a_query_parameter_naming_it(op, operator):
    assert _fields(op.get("/api/v1/recipes/", {"name": "\x00", "latest": "false"})) == ["query.name"]
    run = tiny_run(owner=operator)
    answer = op.post(f"/api/v1/runs/{run.pk}/cancel/?reason=%00%C3%90y")
    assert _fields(answer) == ["query.reason"] and "NUL" in answer.json()["errors"][0]["message"]
    assert Run.objects.get(pk=run.pk).status == RunStatus.DRAFT


def test_the_api_refuses_nul_in_a_json_body_naming_the_path(op):
    body = {"name": "a\u0000b", "preset": "tiny", "overrides": {"optimizer.lr": 0.002, "x\u0000": "y"}}
    assert _fields(op.post("/api/v1/runs/", body, content_type="application/json")) == ["name", "overrides.x\\u0000"]
    assert not Run.objects.exists()


def test_the_mlflow_routes_refuse_nul_in_mlflows_error_shape(seeded, operator):
    run = tiny_run(owner=operator)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {run_token_issue(run=run, kind='operator').secret}")
    answer = client.post(
        f"/api/v1/ingest/{run.pk}/mlflow/api/2.0/mlflow/runs/set-tag",
        {"run_id": str(run.pk), "key": "stage", "value": "pre\u0000train"},
        content_type="application/json",
    )
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "value" in answer.json()["message"]


def test_an_ingest_body_with_nul_is_refused_naming_the_record_field():
    body = b'{"records": [{"kind": "event", "type": "note", "step": 1, "message": "a\\u0000"}]}'
    with pytest.raises(IngestInvalid) as refused:
        ingest_body(body)
    assert refused.value.errors[0]["field"] == "records.0.message"


def test_the_runs_page_refuses_nul_in_a_filter_naming_it(client, seeded, viewer):
    client.force_login(viewer)
    answer = client.get("/runs/", {"owner": "\x00"})
    assert answer.status_code == 400 and "owner: holds the NUL character" in answer.content.decode()
    assert client.get("/runs/", {"owner": "otto"}).status_code == 200


def test_the_helpers_find_nul_in_keys_values_and_lists_only():
    assert nul_fields({"a": ["x", "y\x00"], "b\x00": 1, "c": {"d": "ok"}}) == ["a.1", "b\\u0000"]
    assert json_nul_fields(b'{"a": "\\\\u0000"}') == []  # an escaped backslash, then the text u0000: no NUL
    assert json_nul_fields(b'{"a": "\\u0000"}') == ["a"]
    from django.http import QueryDict

    assert params_nul_fields(QueryDict("a=1&b=%00&b=2"), "query") == ["query.b"]


def test_a_pasted_config_with_odd_names_fills_the_form_without_a_lookup_error(client, seeded, operator):
    import json

    client.force_login(operator)
    pasted = {
        "model": {},
        "run": {"preset": {"x": 1}, "trainer": ["reference"]},
        "cluster": {"name": "local\u0000cpu"},
        "data": {"recipe": {"name": "bilingual-demo", "version": "one"}},
    }
    answer = client.post("/runs/new/", {"config_json": json.dumps(pasted)})
    assert answer.status_code == 200
