"""The real `mlflow` client logs into a run through the compatibility API, over real HTTP."""

from __future__ import annotations

import math
import re

import httpx
import pytest

from runs.metrics.reads import series_read
from runs.models import Run
from runs.services.tokens import run_token_issue, token_cache_clear
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)
mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def tracked(seeded, operator, live_server, monkeypatch, settings, tmp_path):
    settings.RUNS_DIR = tmp_path / "runs"
    token_cache_clear()
    run = tiny_run(owner=operator)
    token = run_token_issue(run=run, kind="operator").secret
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{live_server.url}/api/v1/ingest/{run.pk}/mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"{live_server.url}/api/v1/ingest/{run.pk}/mlflow")
    run.token = token
    run.base = live_server.url
    yield run
    while mlflow.active_run():
        mlflow.end_run()


def test_the_fluent_client_logs_params_metrics_tags_and_ends_the_run(tracked):
    run = tracked
    mlflow.set_experiment("tiny-experiments")
    with mlflow.start_run(run_name="hf-style") as active:
        assert active.info.run_id == str(run.pk)
        mlflow.log_params({"lr": 0.001, "batch": 8})
        mlflow.log_param("optimizer", "adamw")
        for step in range(5):
            mlflow.log_metric("loss", 2.0 - step / 10, step=step)
        mlflow.log_metrics({"eval loss": 1.5, "grad_norm": float("nan")}, step=5)
        mlflow.set_tag("stage", "pretrain")
    stored = Run.objects.get(pk=run.pk)
    assert stored.mlflow_params == {"lr": "0.001", "batch": "8", "optimizer": "adamw"}
    assert stored.mlflow_run["status"] == "FINISHED" and stored.mlflow_run["end_time"]
    assert stored.mlflow_run["tags"]["stage"] == "pretrain" and stored.mlflow_run["run_name"] == "hf-style"
    assert stored.mlflow_run["experiment_name"] == "tiny-experiments"
    keys = series_read(run_id=run.pk, keys=["loss", "eval_loss", "grad_norm"])["keys"]
    assert keys["loss"]["steps"].tolist() == [0, 1, 2, 3, 4] and keys["eval_loss"]["values"].tolist() == [1.5]
    assert math.isnan(keys["grad_norm"]["values"][0])


def test_the_client_reads_back_the_run_and_the_metric_history(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with mlflow.start_run():
        mlflow.log_metrics({"loss": 3.0}, step=1)
        mlflow.log_metrics({"loss": 2.5}, step=2)
        mlflow.log_param("seed", 1234)
    fetched = client.get_run(str(tracked.pk))
    assert fetched.data.params == {"seed": "1234"} and fetched.data.metrics == {"loss": 2.5}
    assert fetched.info.status == "FINISHED"
    history = client.get_metric_history(str(tracked.pk), "loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.5)]


def test_changing_a_param_is_refused_like_mlflow_does(tracked):
    from mlflow.exceptions import MlflowException

    with mlflow.start_run():
        mlflow.log_param("lr", 0.1)
        with pytest.raises(MlflowException, match="Changing param values is not allowed"):
            mlflow.log_param("lr", 0.2)


def test_a_wrong_token_is_refused(tracked, monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "wrong")
    with pytest.raises(MlflowException):
        mlflow.start_run()


def _post(run, route: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{run.base}/api/v1/ingest/{run.pk}/mlflow/api/2.0/mlflow/{route}",
        json=body,
        headers={"Authorization": f"Bearer {run.token}"},
    )


def test_several_values_at_one_step_are_all_kept_and_the_latest_is_the_last_logged(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = str(tracked.pk)
    with mlflow.start_run():
        client.log_metric(run_id, "loss", 3.0, step=7, timestamp=1000)
        client.log_metric(run_id, "loss", 2.0, step=7, timestamp=2000)
        client.log_metric(run_id, "loss", 2.5, step=7, timestamp=3000)
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(7, 3.0, 1000), (7, 2.0, 2000), (7, 2.5, 3000)]
    assert client.get_run(run_id).data.metrics["loss"] == 2.5


def test_log_metric_without_a_step_keeps_every_value_at_step_zero_as_mlflow_does(tracked):
    from mlflow.tracking import MlflowClient

    with mlflow.start_run():
        for value in (0.5, 0.6, 0.7):
            mlflow.log_metric("accuracy", value)
    history = MlflowClient().get_metric_history(str(tracked.pk), "accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (0, 0.6), (0, 0.7)]
    assert MlflowClient().get_run(str(tracked.pk)).data.metrics["accuracy"] == 0.7


def test_metric_names_keep_their_spaces_in_the_history(tracked):
    from mlflow.tracking import MlflowClient

    with mlflow.start_run():
        mlflow.log_metric("eval loss", 1.25, step=3)
    assert [m.value for m in MlflowClient().get_metric_history(str(tracked.pk), "eval loss")] == [1.25]
    assert series_read(run_id=tracked.pk, keys=["eval_loss"])["keys"]["eval_loss"]["values"].tolist() == [1.25]


@pytest.mark.parametrize(
    ("route", "body", "limit"),
    [
        ("runs/log-parameter", {"key": "prompt", "value": "x" * 6001}, "MAX_PARAM_VAL_LENGTH"),
        ("runs/set-tag", {"key": "note", "value": "x" * 8001}, "MAX_TAG_VAL_LENGTH"),
        ("runs/log-metric", {"key": "k" * 251, "value": 1.0, "timestamp": 1, "step": 0}, "MAX_ENTITY_KEY_LENGTH"),
        ("runs/log-batch", {"params": [{"key": "p" * 251, "value": "1"}]}, "MAX_ENTITY_KEY_LENGTH"),
    ],
)
def test_values_over_mlflows_limits_are_refused_naming_the_limit_not_cut(tracked, route, body, limit):
    answer = _post(tracked, route, {"run_id": str(tracked.pk), **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE" and limit in answer.json()["message"]
    stored = Run.objects.get(pk=tracked.pk)
    assert stored.mlflow_params == {} and "note" not in (stored.mlflow_run.get("tags") or {})


def test_a_value_at_the_limit_is_stored_whole(tracked):
    from mlflow.tracking import MlflowClient

    with mlflow.start_run():
        mlflow.log_param("prompt", "p" * 6000)
        mlflow.set_tag("note", "t" * 8000)
    fetched = MlflowClient().get_run(str(tracked.pk))
    assert fetched.data.params["prompt"] == "p" * 6000 and fetched.data.tags["note"] == "t" * 8000


def test_nested_runs_are_child_runs_under_their_parent(tracked):
    from mlflow.tracking import MlflowClient

    with mlflow.start_run(run_name="sweep") as parent:
        mlflow.log_param("sweep", "lr")
        for lr in (0.1, 0.01):
            with mlflow.start_run(run_name=f"lr={lr}", nested=True) as child:
                mlflow.log_param("lr", lr)
                mlflow.log_metric("loss", 1.0 / lr, step=1)
    client = MlflowClient()
    children = client.search_runs(
        [str(tracked.pk)], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", order_by=["params.lr"]
    )
    assert [r.info.run_name for r in children] == ["lr=0.01", "lr=0.1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {str(tracked.pk)}
    assert [r.info.status for r in children] == ["FINISHED", "FINISHED"]
    assert child.info.run_id != parent.info.run_id == str(tracked.pk)
    assert client.get_run(child.info.run_id).data.params == {"lr": "0.01"}
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [100.0]
    assert client.get_run(parent.info.run_id).data.params == {"sweep": "lr"}
    assert "loss" not in client.get_run(parent.info.run_id).data.metrics  # the children's values stay theirs


def test_search_runs_filters_orders_and_pages_as_mlflow_does(tracked):
    with mlflow.start_run():
        mlflow.log_metric("loss", 3.0, step=1)
        for i in range(3):
            with mlflow.start_run(run_name=f"trial-{i}", nested=True):
                mlflow.log_metric("loss", float(i), step=1)
    found = mlflow.search_runs(
        experiment_ids=[str(tracked.pk)],
        filter_string="metrics.loss < 2.5",
        order_by=["metrics.loss DESC"],
        output_format="list",
    )
    assert [r.data.metrics["loss"] for r in found] == [2.0, 1.0, 0.0]
    from mlflow.tracking import MlflowClient

    first = MlflowClient().search_runs([str(tracked.pk)], max_results=2, order_by=["attributes.run_name ASC"])
    second = MlflowClient().search_runs(
        [str(tracked.pk)], max_results=2, order_by=["attributes.run_name ASC"], page_token=first.token
    )
    assert len(first) == 2 and len(second) == 2 and second.token is None
    assert {r.info.run_id for r in [*first, *second]} == {str(tracked.pk), *(f"{tracked.pk}-{i}" for i in (1, 2, 3))}
    assert mlflow.search_runs(experiment_ids=["999999"], output_format="list") == []


def test_search_experiments_finds_the_runs_experiment_by_name(tracked):
    mlflow.set_experiment("tiny-experiments")
    found = mlflow.search_experiments(filter_string="name = 'tiny-experiments'")
    assert [(e.experiment_id, e.name) for e in found] == [(str(tracked.pk), "tiny-experiments")]
    assert mlflow.search_experiments(filter_string="name = 'other'") == []
    assert mlflow.get_experiment_by_name("tiny-experiments").experiment_id == str(tracked.pk)


def test_the_view_run_link_the_client_prints_lands_on_the_run_page(tracked, capsys, client, operator):
    with mlflow.start_run():
        pass
    printed = capsys.readouterr().out
    link = re.search(r"View run \S+ at: (\S+)", printed).group(1)
    assert link.startswith(f"{tracked.base}/api/v1/ingest/{tracked.pk}/mlflow/#/experiments/")
    answer = httpx.get(link.split("#")[0], follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"].startswith(f"/runs/{tracked.pk}/")
    client.force_login(operator)
    assert client.get(answer.headers["location"]).status_code == 200


def test_routes_not_served_are_refused_by_name_in_mlflows_error_shape(tracked):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with pytest.raises(MlflowException, match="registered-models/create is not served"):
        MlflowClient().create_registered_model("tiny")
    answer = _post(tracked, "traces", {})
    assert answer.status_code == 404 and answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_a_run_id_the_tracking_uri_does_not_serve_is_404(tracked):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with pytest.raises(MlflowException, match="not found under this tracking URI"):
        MlflowClient().get_run(f"{tracked.pk}-9")
