"""What a script logged through MLflow is shown on the run page (params, tags, latest metrics, nested runs, logged
models, artifacts to download) and diffed on the compare page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from runs.metrics.mlflow_records import (
    MetricValue,
    mlflow_metrics_add,
    run_mlflow_child_create,
    run_mlflow_record,
)
from runs.services.mlflow_artifacts import artifact_store
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged(seeded, operator, settings, tmp_path):
    settings.RUNS_DIR = tmp_path / "runs"
    run = tiny_run(owner=operator, name="hf-sweep")
    run_mlflow_record(
        run=run,
        params={"learning_rate": "5e-05", "model_type": "gpt2"},
        tags={"stage": "pretrain"},
        info={"experiment_name": "hf-tiny", "status": "FINISHED"},
    )
    mlflow_metrics_add(
        run=run,
        mlflow_run_id=str(run.pk),
        values=[MetricValue("eval loss", 2.0, 10, 4), MetricValue("eval loss", 1.5, 20, 4)],
    )
    child = run_mlflow_child_create(
        run=run, tags={"mlflow.parentRunId": str(run.pk)}, info={"run_name": "trial-a", "status": "FINISHED"}
    )
    run_mlflow_record(run=run, mlflow_run_id=child, params={"lr": "0.1"})
    mlflow_metrics_add(run=run, mlflow_run_id=child, values=[MetricValue("loss", 0.25, 1, 3)])
    chunks = iter([b"hello artifacts", b""])
    artifact_store(run=run, path=f"{run.pk}/artifacts/notes/readme.txt", read=lambda n: next(chunks))
    return run


def test_the_run_page_shows_what_mlflow_logged(logged, client, operator):
    client.force_login(operator)
    page = client.get(reverse("run-detail", args=[logged.pk])).content.decode()
    assert 'id="mlflow"' in page and "hf-tiny" in page
    assert "learning_rate" in page and "5e-05" in page and "stage" in page and "pretrain" in page
    metrics = page[page.index('id="mlflow-metrics"') :]
    assert "eval loss" in metrics and ">1.5<" in metrics and ">2<" in metrics  # latest 1.5, two values kept
    children = page[page.index('id="mlflow-children"') :]
    assert "trial-a" in children and f"{logged.pk}-1" in children and "lr=0.1" in children and "loss=0.25@3" in children
    assert "artifacts/notes/readme.txt" in page


def test_an_artifact_downloads_from_the_run_page_and_paths_stay_in_the_run(logged, client, operator):
    client.force_login(operator)
    url = reverse("run-mlflow-artifact", args=[logged.pk, "artifacts/notes/readme.txt"])
    answer = client.get(url)
    assert answer.status_code == 200 and b"".join(answer.streaming_content) == b"hello artifacts"
    assert "attachment" in answer["Content-Disposition"]
    assert client.get(reverse("run-mlflow-artifact", args=[logged.pk, "artifacts/missing.txt"])).status_code == 404
    assert client.get(f"/runs/{logged.pk}/mlflow-artifacts/artifacts/%2e%2e/%2e%2e/token").status_code in (400, 404)


def test_a_run_without_mlflow_data_shows_no_mlflow_panel(seeded, operator, client):
    client.force_login(operator)
    run = tiny_run(owner=operator)
    assert 'id="mlflow"' not in client.get(reverse("run-detail", args=[run.pk])).content.decode()


def test_the_compare_page_diffs_mlflow_params_and_tags(logged, operator, client):
    other = tiny_run(owner=operator, name="hf-other")
    run_mlflow_record(run=other, params={"learning_rate": "1e-04", "model_type": "gpt2"}, tags={"stage": "pretrain"})
    client.force_login(operator)
    page = client.get(reverse("run-compare") + f"?run={logged.pk}&run={other.pk}").content.decode()
    table = page[page.index('id="mlflow-diff"') :]
    rows = table[: table.index("</table>")].split("<tr")
    differing = [r for r in rows if 'class="differs"' in r]
    assert len(differing) == 1 and "params.learning_rate" in differing[0]
    assert "5e-05" in differing[0] and "1e-04" in differing[0]
    assert table.index("params.learning_rate") < table.index("params.model_type")  # differing rows first
