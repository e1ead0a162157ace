"""End to end: create a run in the browser, launch two CPU ranks of the reference trainer on the local backend,
watch the loss curve grow live, see an injected NaN raise an alert on the page, cancel."""

import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests.stack import start_stack, stop_stack

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(tmp_path, seeded, operator):
    stack = start_stack(tmp=tmp_path, extra_env={"CP_INJECT_NAN_AT_STEP": "6"})
    yield stack
    stop_stack(stack)
    print(stack.log_tail(120))  # shown by pytest only when the test failed


def _points(page: Page) -> int:
    return int(page.locator("#chart-loss").get_attribute("data-points") or 0)


def test_launch_watch_alert_cancel(page: Page, stack):
    from runs.models import Run, RunStatus

    expect.set_options(timeout=60_000)
    page.set_default_timeout(60_000)
    page.goto(f"{stack.url}/accounts/login/")
    page.fill("#id_username", "otto")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    page.goto(f"{stack.url}/runs/new/?preset=tiny")
    page.fill("#id_name", "e2e-live")
    page.fill("#id_training__token_budget", str(2048 * 400))  # 400 steps: still running when we cancel
    page.select_option("#id_training__nan_policy", "skip")
    expect(page.locator("#plan-fit")).to_contain_text("Fits")
    page.click("#submit-run")
    expect(page.locator("#run-status")).to_have_text("Draft")

    started = time.monotonic()
    page.click("button:has-text('Launch')")
    expect(page.locator("#run-status")).to_have_text(re.compile("Queued|Launching|Running"))
    expect(page.locator("#run-status")).to_have_text("Running", timeout=120_000)

    # The curve grows in the page without a reload.
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-loss')?.dataset.points || 0) >= 3", timeout=120_000
    )
    first_point_s = time.monotonic() - started
    grown_from = _points(page)
    page.wait_for_function(
        f"() => Number(document.querySelector('#chart-loss')?.dataset.points || 0) > {grown_from + 3}",
        timeout=60_000,
    )

    # The injected NaN at step 6 is announced on the page.
    expect(page.locator("#alert-banner")).to_contain_text(re.compile("NaN", re.IGNORECASE), timeout=60_000)

    page.once("dialog", lambda d: d.accept())
    page.click("button:has-text('Cancel')")
    expect(page.locator("#run-status")).to_have_text("Cancelled")
    run = Run.objects.get(name="e2e-live")
    assert run.status == RunStatus.CANCELLED
    # The job's processes are gone.
    deadline = time.monotonic() + 30
    from workers.backends.local import LocalBackend

    while time.monotonic() < deadline:
        status = LocalBackend().poll(run.backend_job_id, __import__("pathlib").Path(run.run_dir))
        if status.finished:
            break
        time.sleep(0.5)
    assert status.finished, stack.log_tail()
    print(f"first point drawn {first_point_s:.1f} s after Launch")
