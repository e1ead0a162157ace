"""The dashboard as a person uses it, in Chromium against the real stack (web server, Celery worker, DeepSpeed job):
a run page opened before launch follows the run live (charts draw, buttons and summary change at the end), shows
"reconnecting" while the web server is down and back-fills what it missed; the runs table, the chart tools, export,
shortcuts, confirmations, compare with parallel coordinates; screenshots at desktop and phone width, light and dark."""

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.runs.factories import tiny_run
from tests.stack import start_stack, stop_stack

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STEPS = 160  # long enough to kill and restart the web server while it trains


@pytest.fixture
def stack(tmp_path, seeded, operator):
    stack = start_stack(tmp=tmp_path)
    yield stack
    stop_stack(stack)
    print(stack.log_tail(80))  # shown by pytest only when the test failed


def _shots():
    from django.conf import settings

    path = settings.VAR_DIR / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _login(page: Page, url: str, user: str = "otto") -> None:
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", user)
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Runs")


def _points(page: Page) -> int:
    return int(page.locator("#chart-loss").get_attribute("data-points") or 0)


def test_a_run_page_opened_before_launch_follows_the_run_through_a_web_server_restart(page: Page, stack, operator):
    from runs.models import MetricSeries, Run, RunStatus

    expect.set_options(timeout=120_000)
    page.set_default_timeout(120_000)
    run = tiny_run(owner=operator, name="followed", training__token_budget=2048 * STEPS)
    _login(page, stack.url)
    page.goto(f"{stack.url}/runs/{run.pk}/")
    expect(page.locator("#no-metrics")).to_contain_text("No metrics yet")
    expect(page.locator("#conn")).to_have_text("live")
    page.screenshot(path=str(_shots() / "run-draft.png"), full_page=True)

    page.click("#launch")  # the form posts and comes back to this page: from here on, nothing is reloaded
    expect(page.locator("#run-status")).to_have_text("Running")
    page.evaluate("() => { window.notReloaded = true; }")
    page.wait_for_function("() => Number(document.querySelector('#chart-loss')?.dataset.points || 0) >= 3")
    expect(page.locator("#cancel")).to_be_visible()
    expect(page.locator("#launch")).to_have_count(0)
    expect(page.locator("#progress-step")).to_contain_text(re.compile(r"Step \d+ of "))

    # The web server dies mid-run: the page says so, and comes back on its own when the server does.
    stack.kill_web()
    expect(page.locator("#conn")).to_have_text("reconnecting…", timeout=15_000)
    page.screenshot(path=str(_shots() / "run-reconnecting.png"), full_page=True)
    stack.start_web()
    expect(page.locator("#conn")).to_have_text("live", timeout=10_000)

    # Back-filled: every point stored while the page had no socket is drawn, once.
    Run.objects.filter(pk=run.pk)  # the run goes on training meanwhile
    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=240_000)
    stored = MetricSeries.objects.get(run_id=run.pk, key="loss").points
    drawn = "() => document.getElementById('chart-loss').data.find((t) => t.name === 'loss').x.length"
    try:
        page.wait_for_function(f"() => ({drawn})() >= {stored}", timeout=60_000)
    except Exception:
        from runs.metrics.reads import series_all_points

        steps = set(series_all_points(run_id=run.pk, key="loss")[0].tolist())
        shown = page.evaluate("() => document.getElementById('chart-loss').data.find((t) => t.name === 'loss').x")
        print("missing", sorted(steps - set(shown)), "extra", sorted(set(shown) - steps))
        raise
    assert page.evaluate(drawn) == stored
    # The end of the run changed the buttons, summary and planned-vs-actual without a reload.
    expect(page.locator("#cancel")).to_have_count(0)
    expect(page.locator("#panel-summary")).to_contain_text("Finished")
    expect(page.locator("#panel-versus")).to_contain_text("Tokens/s")
    assert page.evaluate("() => window.notReloaded") is True
    assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED

    page.set_viewport_size({"width": 1400, "height": 900})
    page.screenshot(path=str(_shots() / "run-finished-desktop.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(_shots() / "run-finished-dark.png"), full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 392, "no sideways scrolling on a phone"
    page.screenshot(path=str(_shots() / "run-finished-phone.png"), full_page=True)


def test_runs_table_shortcuts_confirmations_and_compare(page: Page, live_server, seeded, operator):
    from runs.metrics.store import metrics_record

    page.set_default_timeout(30_000)
    runs = []
    for i, lr in enumerate((1e-3, 3e-3, 6e-3)):
        run = tiny_run(owner=operator, name=f"sweep-{i}", optimizer__lr=lr)
        metrics_record(run=run, records=[{"kind": "metrics", "step": s, "time": 0.0,
                                          "values": {"loss": 3 - s * lr * 10, "lr": lr}} for s in range(50)])  # fmt: skip
        runs.append(run)
    _login(page, live_server.url)
    expect(page.locator("#run-table")).to_contain_text("sweep-2")
    page.fill("#f-q", "sweep-1")
    page.press("#f-q", "Enter")
    expect(page.locator("#run-table tbody tr")).to_have_count(1)
    page.goto(f"{live_server.url}/runs/?sort=final")
    first = page.locator("#run-table tbody tr").first
    expect(first).to_contain_text("sweep-2")  # the lowest final loss
    page.screenshot(path=str(_shots() / "runs-table.png"), full_page=True)

    # "?" lists the shortcuts; "/" jumps to the search box.
    page.keyboard.press("?")
    expect(page.locator("#shortcut-help")).to_contain_text("Search runs")
    page.keyboard.press("Escape")
    page.keyboard.press("/")
    assert page.evaluate("() => document.activeElement.id") == "f-q"

    # Compare all three: a diff of the lr and a parallel-coordinates chart.
    page.goto(f"{live_server.url}/runs/compare/?" + "&".join(f"run={r.pk}" for r in runs))
    expect(page.locator("#diff")).to_contain_text("optimizer.lr")
    page.wait_for_function("() => document.getElementById('parcoords').data?.[0]?.type === 'parcoords'")
    page.wait_for_function("() => Number(document.querySelector('#chart-loss')?.dataset.points || 0) >= 150")
    page.screenshot(path=str(_shots() / "compare.png"), full_page=True)

    # Cancel asks first; dismissing keeps the run.
    launched = runs[0]
    from runs.services.runs import run_launch

    run_launch(actor=operator, run=launched)
    page.goto(f"{live_server.url}/runs/{launched.pk}/")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#cancel")
    expect(page.locator("#run-status")).not_to_have_text("Cancelled")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page.locator("#run-status")).to_have_text("Cancelled")


def test_chart_tools_smoothing_log_scale_axes_sections_and_export(page: Page, live_server, seeded, operator):
    import time as clock

    from runs.metrics.store import metrics_record

    page.set_default_timeout(30_000)
    run = tiny_run(owner=operator, name="tools")
    now = clock.time()
    records = [{"kind": "metrics", "step": s, "time": 0.0, "values": {
        "loss": 3 - s / 100, "tokens_per_s": 2000 + s, "samples_per_s": 30 + s / 10, "wall_time": now + 2 * s,
        "sys/cpu_pct": 50.0, "sys/mem_gb": 3.0}} for s in range(1, 121)]  # fmt: skip
    metrics_record(run=run, records=records)
    stored = 120
    _login(page, live_server.url)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.wait_for_function("() => Number(document.querySelector('#chart-loss')?.dataset.points || 0) >= 120")
    # Tokens/s and samples/s share a chart on two y-axes.
    page.wait_for_function("() => !!document.getElementById('chart-tokens_per_s')?._fullLayout?.yaxis2")
    # Chart tools: smoothing, log scale, wall-time axis, collapsible sections, export.
    page.evaluate(
        "() => { const s = document.getElementById('smoothing'); s.value = '0.9'; s.dispatchEvent(new Event('input')); }"
    )
    page.wait_for_function("() => charts.smoothing === 0.9 && !charts.redrawing")
    page.check("#log-scale")
    page.wait_for_function("() => document.getElementById('chart-loss')._fullLayout.yaxis.type === 'log'")
    page.select_option("#x-axis", "time")
    page.wait_for_function("() => document.getElementById('chart-loss')._fullLayout.xaxis.type === 'date'")
    page.wait_for_function("() => !charts.redrawing")
    page.select_option("#x-axis", "tokens")
    page.wait_for_function("() => document.getElementById('chart-loss')._fullLayout.xaxis.title.text === 'tokens'")
    page.wait_for_function("() => !charts.redrawing")
    assert page.locator("#section-system").count() == 1  # the reporter's sys/* figures
    page.click("#section-training > summary")
    expect(page.locator("#chart-loss")).not_to_be_visible()
    page.click("#section-training > summary")
    assert page.locator(".modebar-btn[data-title*='Cloud']").count() == 0
    csv = httpx.get(f"{live_server.url}/api/v1/runs/{run.pk}/export/?keys=loss&format=csv",
                    cookies={c["name"]: c["value"] for c in page.context.cookies()}).text  # fmt: skip
    assert csv.startswith("key,step,value") and csv.count("\nloss,") == stored
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(_shots() / "run-tools-dark.png"), full_page=True)
