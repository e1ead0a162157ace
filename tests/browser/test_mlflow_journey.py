"""A script logs through the official mlflow client into a run served by the real web server; a person follows the
"View run" link the client printed, finds the params, tags, latest metrics, nested runs and artifacts on the run
page, downloads an artifact, and compares two runs' MLflow params."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from playwright.sync_api import Page, expect

from runs.services.tokens import run_token_issue, token_cache_clear
from tests.runs.factories import tiny_run
from tests.stack import start_stack, stop_stack

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def stack(tmp_path, seeded, operator):
    stack = start_stack(tmp=tmp_path, worker=False)
    yield stack
    stop_stack(stack)
    print(stack.log_tail(80))


def _shots():
    from django.conf import settings

    path = settings.VAR_DIR / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(stack, run, lr: str, tmp_path) -> str:
    """What a training script does; returns what the client printed."""
    token_cache_clear()
    client = mlflow.MlflowClient(tracking_uri=f"{stack.url}/api/v1/ingest/{run.pk}/mlflow")
    import os

    os.environ["MLFLOW_TRACKING_TOKEN"] = run_token_issue(run=run, kind="operator").secret
    mlflow.set_tracking_uri(f"{stack.url}/api/v1/ingest/{run.pk}/mlflow")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        with mlflow.start_run(run_name=f"lr {lr}"):
            mlflow.log_params({"learning_rate": lr, "batch_size": 8})
            mlflow.set_tag("stage", "sft")
            for step in range(3):
                mlflow.log_metric("loss", 2.0 - step / 2, step=step)
            mlflow.log_metric("loss", 0.9, step=2)  # a second value at step 2: kept, and the latest
            with mlflow.start_run(run_name="eval", nested=True):
                mlflow.log_metric("eval_loss", 1.25, step=2)
            notes = tmp_path / f"notes-{run.pk}.txt"
            notes.write_text(f"run {run.pk} notes\n")
            mlflow.log_artifact(str(notes))
    assert client.get_run(str(run.pk)).data.metrics["loss"] == 0.9
    return printed.getvalue()


def test_a_person_follows_the_view_run_link_and_finds_what_the_script_logged(page: Page, stack, operator, tmp_path):
    first, second = tiny_run(owner=operator, name="sft-a"), tiny_run(owner=operator, name="sft-b")
    printed = _log(stack, first, "5e-05", tmp_path)
    _log(stack, second, "1e-04", tmp_path)
    found = re.search(r"View run lr 5e-05 at: (\S+)", printed)
    assert found, printed
    link = found.group(1)

    page.goto(f"{stack.url}/accounts/login/")
    page.fill("#id_username", "otto")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    page.goto(link)
    expect(page).to_have_url(re.compile(rf"/runs/{first.pk}/"))
    panel = page.locator("#mlflow")
    expect(panel).to_be_visible()
    expect(page.locator("#mlflow-params")).to_contain_text("learning_rate")
    expect(page.locator("#mlflow-params")).to_contain_text("5e-05")
    expect(page.locator("#mlflow-tags")).to_contain_text("sft")
    loss = page.locator("#mlflow-metrics tr", has_text="loss")
    expect(loss).to_contain_text("0.9")
    expect(loss.locator("td").nth(3)).to_have_text("4")  # four values kept, two of them at step 2
    expect(page.locator("#mlflow-children")).to_contain_text("eval_loss=1.25@2")
    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(_shots() / "run-mlflow.png"), full_page=True)

    with page.expect_download() as download:
        page.click(f"#mlflow-artifacts a:has-text('notes-{first.pk}.txt')")
    saved = tmp_path / "downloaded.txt"
    download.value.save_as(saved)
    assert saved.read_text() == f"run {first.pk} notes\n"

    page.goto(f"{stack.url}/runs/compare/?run={first.pk}&run={second.pk}")
    differs = page.locator("#mlflow-diff tr.differs")
    expect(differs).to_have_count(2)  # the learning rate and the run name; batch_size and stage are the same
    expect(differs.nth(0)).to_contain_text("params.learning_rate")
    expect(differs.nth(1)).to_contain_text("tags.mlflow.runName")
    expect(page.locator("#mlflow-diff tr:not(.differs)", has_text="params.batch_size")).to_have_count(1)
    page.locator("#mlflow-diff").scroll_into_view_if_needed()
    page.screenshot(path=str(_shots() / "compare-mlflow.png"), full_page=True)
