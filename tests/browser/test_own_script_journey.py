"""An operator brings a tutorial-style DeepSpeed script: creates the run in the form with the config passed the
way the script parses it, issues a token before launch and sees it work and stop working once revoked, launches,
and when the script crashes at step 3 reads the exception on the page, in the failure card and the job output."""

import json
import re
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.stack import start_stack, stop_stack
from tests.workers.test_own_script_jobs import TUTORIAL_LOOP

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(tmp_path, seeded, operator):
    stack = start_stack(tmp=tmp_path, extra_env={"CP_SCRIPT_ROOTS": str(tmp_path)})
    yield stack
    stop_stack(stack)
    print(stack.log_tail(120))  # shown by pytest only when the test failed


def _ingest(url: str, token: str) -> int:
    body = json.dumps({"records": [{"kind": "metrics", "step": 1, "values": {"probe": 1.0}}]}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(1500)
def test_own_script_connect_launch_and_read_its_crash(page: Page, stack, tmp_path):
    script = tmp_path / "tutorial_loop.py"
    script.write_text(TUTORIAL_LOOP.replace("CRASH_AT", "3"))
    expect.set_options(timeout=60_000)
    page.set_default_timeout(60_000)
    page.goto(f"{stack.url}/accounts/login/")
    page.fill("#id_username", "otto")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")

    page.goto(f"{stack.url}/runs/new/?preset=tiny")
    page.fill("#id_name", "byo-crash")
    page.select_option("#id_trainer", "own_script")
    page.fill("#id_script_path", str(script))
    page.select_option("#id_own_script__ds_config_arg", "--deepspeed_config")
    page.fill("#id_remediation__max_attempts", "0")  # the failure itself is what the page must explain
    page.click("#submit-run")
    expect(page.locator("#run-status")).to_have_text("Draft")

    # Connect before launch: the tracking URI, and a token issued now shown once inside the snippets.
    page.click("#connect summary")
    uri = page.locator("#tracking-uri").inner_text()
    assert re.fullmatch(rf"{re.escape(stack.url)}/api/v1/ingest/\d+/mlflow", uri), uri
    page.fill("#issue-token-form input[name=label]", "laptop")
    page.click("#issue-token")
    token = page.locator("#issued-token").inner_text()
    assert token.startswith("cpt_")
    expect(page.locator("#snippet-env")).to_contain_text(f"MLFLOW_TRACKING_TOKEN={token}")
    expect(page.locator("#snippet-curl")).to_contain_text(token)
    expect(page.locator("#copy-env")).to_be_visible()
    ingest_url = page.locator("#ingest-url").inner_text()
    assert _ingest(ingest_url, token) == 200
    page.screenshot(path=str(tmp_path / "connect.png"), full_page=True)

    run_page = page.url.removesuffix("tokens/")
    page.goto(run_page)  # the secret is not shown again
    expect(page.locator("#issued-token")).to_have_count(0)
    page.click("#connect summary")
    row = page.locator("#run-tokens tr", has_text="laptop")
    expect(row).to_contain_text("live")
    page.once("dialog", lambda d: d.accept())
    row.locator("button:has-text('Revoke')").click()
    page.click("#connect summary")
    expect(page.locator("#run-tokens tr", has_text="laptop")).to_contain_text("revoked")
    assert _ingest(ingest_url, token) == 401

    # Launch; the script crashes at step 3 on rank 0 and the page says why.
    page.click("button:has-text('Launch')")
    # Each run builds DeepSpeed's shared-memory CPU op first (its HOME, and so torch's op cache, is its own run
    # directory): minutes on a small machine, shown on the page meanwhile.
    expect(page.locator("#run-status")).to_have_text("Failed", timeout=1_000_000)
    failure = page.locator("#panel-failure")
    expect(failure).to_contain_text("ValueError: tokenizer returned an empty batch at step 3 (rank 0)")
    page.select_option("#log-stream", "stderr")
    page.fill("#log-search", "empty batch")
    expect(page.locator("#log-lines")).to_contain_text("[rank0]: ValueError: tokenizer returned an empty batch")
    page.fill("#log-search", "")
    page.fill("#log-rank", "1")
    expect(page.locator("#log-lines")).not_to_contain_text("[rank0]")
    page.screenshot(path=str(tmp_path / "crash.png"), full_page=True)
    print(f"screenshots: {tmp_path}/connect.png {tmp_path}/crash.png")
