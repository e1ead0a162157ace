"""The real `mlflow` client logs into a run through the compatibility API, over real HTTP."""

from __future__ import annotations

import math

import pytest

from runs.metrics.reads import series_read
from runs.models import Run
from runs.services.tokens import run_token_issue, token_cache_clear
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)
mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def tracked(seeded, operator, live_server, monkeypatch):
    token_cache_clear()
    run = tiny_run(owner=operator)
    token = run_token_issue(run=run, kind="operator").secret
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{live_server.url}/api/v1/ingest/{run.pk}/mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"{live_server.url}/api/v1/ingest/{run.pk}/mlflow")
    yield run
    if mlflow.active_run():
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
