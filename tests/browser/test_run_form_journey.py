"""A person plans a run in the browser: log in, tiny preset, live plan, a field error, a valid run in the list."""

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The first plan in a fresh process imports DeepSpeed's estimators (torch): seconds on two busy cores.
expect.set_options(timeout=30_000)


@pytest.fixture
def logged_in(page: Page, live_server, seeded, operator) -> Page:
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/runs/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("#id_username", "otto")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Runs")
    return page


def test_plan_a_tiny_run_in_the_browser(logged_in: Page, live_server):
    page = logged_in
    page.click("text=New run")
    page.click("a.btn:has-text('Tiny')")
    expect(page.locator("#plan-fit")).to_contain_text("Fits")
    memory_before = page.locator("#plan-act").inner_text()

    # The plan follows the micro-batch without a reload.
    # Same global batch (16 x 1 instead of 8 x 2), twice the activations.
    page.fill("#id_batch__grad_accum", "1")
    page.fill("#id_batch__micro_batch", "16")
    expect(page.locator("#plan-act")).not_to_have_text(memory_before)
    expect(page.locator("#plan-tokens")).to_contain_text("2,048")

    # An invalid layout is refused with the field named and the fix given.
    page.fill("#id_parallel__pp", "3")
    page.fill("#id_name", "journey-run")
    page.click("#submit-run")
    error = page.locator('[data-errors-for="parallel__pp"] li, [data-errors-for="parallel__tp"] li').first
    expect(error).to_contain_text("divide")
    expect(page.locator(".field.has-error").first).to_be_visible()

    # Fixed, it is created and shows up in the run list.
    page.fill("#id_parallel__pp", "1")
    expect(page.locator("#plan-fit")).to_be_visible()
    page.click("#submit-run")
    expect(page.locator("h1")).to_contain_text("journey-run")
    expect(page.locator("#run-status")).to_have_text("Draft")
    page.click("header nav >> text=Runs")
    expect(page.locator("#run-table")).to_contain_text("journey-run")
    page.screenshot(path=str(_shot_dir() / "run-list.png"), full_page=True)


def _shot_dir():
    from django.conf import settings

    path = settings.VAR_DIR / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
