"""End to end on CPU: a real short training run's checkpoint -> quantize NF4 and int8 in the browser -> measure
latency -> deploy NF4 locally -> the playground streams tokens -> the OpenAI client talks to the endpoint ->
stop. Every step is a real process started by the real Celery worker; every action lands in the audit trail."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.stack import start_stack, stop_stack

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(tmp_path, seeded, operator):
    stack = start_stack(tmp=tmp_path)
    yield stack
    stop_stack(stack)
    print(stack.log_tail(160))  # shown by pytest only when the test failed


def _trained_run(page: Page, stack, operator):
    """A tiny two-rank run of 8 steps with a checkpoint every 4, launched from its page through the stack's worker."""
    from runs.models import Checkpoint, Run, RunStatus
    from tests.runs.factories import tiny_run

    run = tiny_run(
        owner=operator,
        name="e2e-serve",
        training__total_steps=8,
        training__token_budget=8 * 2048,
        training__checkpoint_interval=4,
        optimizer__warmup_steps=2,
        curriculum=[{"start_step": 0, "seq_len": 64}],
    )
    page.goto(f"{stack.url}/runs/{run.pk}/")
    page.click("button:has-text('Launch')")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_terminal:
            break
        time.sleep(1)
    assert run.status == RunStatus.SUCCEEDED, f"{run.status}: {run.failure_reason}\n{stack.log_tail()}"
    assert Checkpoint.objects.filter(run=run, step=8).exists()
    return Run.objects.get(pk=run.pk)


def _login(page: Page, stack) -> None:
    page.goto(f"{stack.url}/accounts/login/")
    page.fill("#id_username", "otto")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")


def test_quantize_benchmark_deploy_prompt_stop(page: Page, stack, operator):
    import openai

    from runs.models import Artifact, AuditEvent, Deployment
    from runs.services.deployments import deployment_api_key

    expect.set_options(timeout=240_000)
    page.set_default_timeout(60_000)
    _login(page, stack)
    run = _trained_run(page, stack, operator)
    page.goto(f"{stack.url}/runs/{run.pk}/checkpoints/")
    row = page.locator("tr", has=page.locator("td.num", has_text=re.compile(r"^8$")))
    row.locator("button:has-text('Quantize')").click()
    expect(page.locator(".messages")).to_contain_text("quantizing step_000008")

    artifact_box = page.locator("[data-artifact]").first
    expect(artifact_box.locator("[data-role=status]")).to_have_text("Succeeded")
    artifact = Artifact.objects.get(run=run)
    report = artifact.report
    assert [a["method"] for a in report["artifacts"]] == ["nf4", "int8"]
    assert all(a["reload_max_abs_diff"] is not None for a in report["artifacts"])
    expect(artifact_box).to_contain_text("Perplexity on")

    artifact_box.locator("button:has-text('Measure latency')").click()
    expect(page.locator("[data-artifact] table.latency")).to_contain_text("nf4")
    artifact.refresh_from_db()
    assert {v["name"] for v in artifact.latency["variants"]} == {"base", "nf4", "int8"}

    page.locator("[data-artifact] select[name=variant]").select_option("nf4")
    page.locator("[data-artifact] button:has-text('Deploy')").click()
    expect(page.locator("#deployment-status")).to_have_text("Running")
    deployment = Deployment.objects.get(artifact=artifact)

    # The playground streams the endpoint's tokens into the page.
    page.fill("#prompt", "The model")
    page.fill("input[name=max_tokens]", "12")
    page.click("#send")
    expect(page.locator("#playground-stats")).to_contain_text("tokens/s", timeout=60_000)
    assert len(page.locator("#output").inner_text()) > len("The model")

    # The OpenAI client library talks to the endpoint as it would to OpenAI.
    key = deployment_api_key(deployment)
    client = openai.OpenAI(base_url=f"{deployment.url}/v1", api_key=key)
    completion = client.completions.create(model=deployment.name, prompt="hello", max_tokens=5, temperature=0)
    assert completion.usage.completion_tokens >= 1
    streamed = client.chat.completions.create(
        model=deployment.name, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    assert sum(1 for _ in streamed) >= 1
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=deployment.name, prompt="hello", max_tokens=-1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{deployment.url}/v1", api_key="wrong").models.list()

    page.once("dialog", lambda d: d.accept())
    page.click("button:has-text('Stop')")
    expect(page.locator("#deployment-status")).to_have_text("Stopped", timeout=60_000)
    deployment.refresh_from_db()
    from workers.backends.local import LocalBackend

    assert LocalBackend().poll(deployment.backend_job_id, Path(deployment.state_dir)).finished

    actions = set(AuditEvent.objects.filter(run_id=run.pk).values_list("action", flat=True))
    assert {
        "artifact.create",
        "artifact.running",
        "artifact.succeeded",
        "latency.queued",
        "latency.succeeded",
        "deployment.create",
        "deployment.submitted",
        "deployment.running",
        "deployment.prompt",
        "deployment.stopping",
        "deployment.stopped",
    } <= actions, actions
