"""Live points on a run page's charts: appended to the drawn line while they fit the axes, drawn by Plotly when they
do not, and always complete for hover."""

import re
import threading
import time

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SEED = 50


def _loss(step: int) -> float:
    return 3.0 - step * 0.01 + (step % 3) * 0.02


def _inside(step: int) -> float:
    """A live value inside the seeded values' range."""
    return 2.7 + (step % 3) * 0.02


def _record(run_id: int | None, pairs: list[tuple[int, float | None]], owner=None) -> None:
    """Stores loss points (creating the run when run_id is None) in a thread of its own: storing broadcasts through
    async_to_sync, which cannot run in the thread of Playwright's event loop."""
    from django.db import connections

    from runs.metrics.store import metrics_record
    from runs.models import Run
    from tests.runs.factories import tiny_run

    def work():
        try:
            run = tiny_run(owner=owner, name="live-charts") if run_id is None else Run.objects.get(pk=run_id)
            records = [
                {
                    "kind": "metrics",
                    "step": s,
                    "time": time.time(),
                    "values": {"loss": float("nan") if v is None else v},
                }
                for s, v in pairs
            ]
            metrics_record(run=run, records=records)
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


@pytest.fixture
def run_page(page: Page, live_server, seeded, viewer) -> tuple[Page, int]:
    from runs.models import Run

    _record(None, [(s, _loss(s)) for s in range(SEED)], owner=viewer)
    run_id = Run.objects.get(name="live-charts").pk
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/?next=/runs/{run_id}/")
    page.fill("#id_username", "vera")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(rf"/runs/{run_id}/$"))
    page.wait_for_function(f"() => Number(document.querySelector('#chart-loss')?.dataset.points || 0) >= {SEED}")
    page.mouse.move(0, 0)
    # Counts Plotly's full redraws of live points.
    page.evaluate(
        """() => { window.redraws = 0; const extend = Plotly.extendTraces;
        Plotly.extendTraces = (...a) => { window.redraws++; return extend(...a); }; }"""
    )
    return page, run_id


def _push(page: Page, run_id: int, pairs: list[tuple[int, float | None]]) -> None:
    """Stores points and hands them to the page as its websocket handler does, then waits until they are drawn."""
    _record(run_id, pairs)
    page.evaluate(
        """async ([run, pairs]) => {
          const chart = charts.charts.get("loss");
          const before = Number(chart.div.dataset.points);
          await charts.extend(run, {loss: pairs});
          await new Promise((resolve) => { const wait = () => (Number(chart.div.dataset.points) >= before + pairs.length
            ? resolve() : requestAnimationFrame(wait)); wait(); });
        }""",
        [run_id, pairs],
    )


def _line(page: Page) -> dict:
    """The loss line as drawn (every SVG point, all segments), its data and the axes' ranges."""
    return page.evaluate(
        """() => {
          const gd = document.getElementById("chart-loss"), full = gd._fullLayout;
          const g = [...gd.querySelectorAll(".scatterlayer .trace")].find((t) => t.__data__[0].trace.index === 0);
          const pts = [...g.querySelectorAll("path.js-line")].flatMap((p) =>
            p.getAttribute("d").slice(1).split(/[LM]/).map((xy) => xy.split(",").map(Number)));
          return {pts, n: gd.data[0].x.length, calc: gd.calcdata[0].length, redraws: window.redraws,
                  x: full.xaxis.range, y: full.yaxis.range};
        }"""
    )


def test_points_inside_the_axes_are_appended_and_match_plotlys_own_drawing(run_page):
    page, run_id = run_page
    first = _line(page)
    # The first live points widen the step axis past them (one Plotly redraw), leaving room for the next ones.
    _push(page, run_id, [(SEED, _inside(SEED))])
    grown = _line(page)
    assert grown["redraws"] == 1
    assert grown["x"][1] > SEED + 5
    for step in range(SEED + 1, SEED + 6):
        _push(page, run_id, [(step, _inside(step))])
    appended = _line(page)
    assert appended["redraws"] == 1, "points inside the axes need no redraw"
    assert appended["n"] == SEED + 6
    assert appended["calc"] == SEED + 1, "Plotly's own data has not been recomputed"
    assert len(appended["pts"]) >= len(first["pts"]) + 6

    page.evaluate("() => Plotly.redraw(document.getElementById('chart-loss'))")
    redrawn = _line(page)
    assert redrawn["calc"] == SEED + 6
    assert redrawn["x"] == appended["x"] and redrawn["y"] == appended["y"]
    # Plotly may drop points on a straight run of the line; every point it draws is on the appended line.
    drawn = {(round(x), round(y)) for x, y in appended["pts"]}
    assert all((round(x), round(y)) in drawn for x, y in redrawn["pts"][-5:])
    assert redrawn["pts"][-1] == pytest.approx(appended["pts"][-1], abs=0.5)


def test_a_point_outside_the_value_axis_is_redrawn_with_room_to_spare(run_page):
    page, run_id = run_page
    _push(page, run_id, [(SEED, _inside(SEED))])
    before = _line(page)
    spike = before["y"][1] + 1.0
    _push(page, run_id, [(SEED + 1, spike)])
    after = _line(page)
    assert after["redraws"] == before["redraws"] + 1
    assert after["y"][1] > spike
    assert after["calc"] == SEED + 2


def test_a_missing_value_breaks_the_line_through_plotly(run_page):
    page, run_id = run_page
    _push(page, run_id, [(SEED, _inside(SEED))])
    redraws = _line(page)["redraws"]
    _push(page, run_id, [(SEED + 1, None)])
    _push(page, run_id, [(SEED + 2, _inside(SEED + 2))])
    after = _line(page)
    assert after["redraws"] == redraws + 2
    assert page.locator("#chart-loss .scatterlayer .trace path.js-line").count() == 2


def test_hovering_a_chart_redraws_it_so_every_point_has_a_hover_label(run_page):
    page, run_id = run_page
    _push(page, run_id, [(SEED, _inside(SEED))])
    _push(page, run_id, [(SEED + 1, _inside(SEED + 1)), (SEED + 2, _inside(SEED + 2))])
    assert _line(page)["calc"] == SEED + 1
    page.hover("#chart-loss .nsewdrag")
    page.wait_for_function(f"() => document.getElementById('chart-loss').calcdata[0].length === {SEED + 3}")
    # While the pointer is on the chart, live points go through Plotly.
    redraws = _line(page)["redraws"]
    _push(page, run_id, [(SEED + 3, _inside(SEED + 3))])
    assert _line(page)["redraws"] == redraws + 1


def test_resetting_the_zoom_returns_the_axes_to_autorange(run_page):
    page, run_id = run_page
    _push(page, run_id, [(SEED, _inside(SEED))])
    assert _line(page)["x"][1] > SEED + 5
    page.dblclick("#chart-loss .nsewdrag")
    page.wait_for_function(f"() => document.getElementById('chart-loss')._fullLayout.xaxis.range[1] <= {SEED}")
    assert _line(page)["n"] == SEED + 1


def test_a_point_handed_over_twice_is_drawn_once(run_page):
    page, run_id = run_page
    _push(page, run_id, [(SEED, _inside(SEED))])
    page.evaluate(f"() => charts.extend({run_id}, {{loss: [[{SEED}, 2.7]]}})")  # a push read back after a reconnect
    _push(page, run_id, [(SEED + 1, _inside(SEED + 1))])
    line = _line(page)
    assert line["n"] == SEED + 2
    assert page.locator("#chart-loss").get_attribute("data-points") == str(SEED + 2)


def test_catching_up_draws_points_stored_while_the_socket_was_not_listening(run_page):
    page, run_id = run_page
    _record(run_id, [(SEED + s, _inside(SEED + s)) for s in range(3)])  # stored, never pushed to this page
    page.evaluate(f"() => charts.catchUp({run_id})")
    page.wait_for_function(f"() => Number(document.querySelector('#chart-loss').dataset.points) === {SEED + 3}")
    assert _line(page)["n"] == SEED + 3


def test_charts_built_twice_at_once_leave_one_chart_each_and_draw_what_came_meanwhile(run_page):
    page, run_id = run_page
    page.evaluate(
        f"""async () => {{
          const first = charts.load(), second = charts.load();
          await charts.extend({run_id}, {{loss: [[{SEED}, {_inside(SEED)}]]}});  // arrives during the build
          await Promise.all([first, second]);
        }}"""
    )
    page.wait_for_function(f"() => document.getElementById('chart-loss').data[0].x.length === {SEED + 1}")
    assert page.locator(".chart").count() == 1
    assert page.locator("#chart-loss").count() == 1


def test_a_push_that_overtakes_the_catch_up_read_hides_none_of_the_points_stored_before_it(run_page):
    """After a reconnect the reporter sends its backlog while the page reads: the first push (newer than the backlog)
    may reach the page before the page's read. The points the socket never carried are drawn all the same."""
    page, run_id = run_page
    _record(run_id, [(SEED + s, _inside(SEED + s)) for s in range(3)])  # stored while the page had no socket
    _push(page, run_id, [(SEED + 3, _inside(SEED + 3))])  # the first push on the new socket
    page.evaluate(f"() => charts.catchUp({run_id})")
    page.wait_for_function(f"() => document.getElementById('chart-loss').data[0].x.length === {SEED + 4}")
    assert page.evaluate("() => document.getElementById('chart-loss').data[0].x") == list(range(SEED + 4))


def test_a_push_during_a_read_the_server_answered_without_it_is_drawn_after_the_read(run_page):
    page, run_id = run_page
    page.evaluate(
        f"""async () => {{
          const reading = charts.readAndDraw([charts.charts.get("loss")]);
          await charts.extend({run_id}, {{loss: [[{SEED}, {_inside(SEED)}]]}});  // committed after the server read
          await reading;
        }}"""
    )
    page.wait_for_function(f"() => document.getElementById('chart-loss').data[0].x.length === {SEED + 1}")
    assert page.evaluate("() => document.getElementById('chart-loss').data[0].x") == list(range(SEED + 1))
    # Redrawn from its cache (smoothing), the chart keeps the live point.
    page.evaluate("() => charts.setSmoothing(0.5)")
    assert page.evaluate("() => document.getElementById('chart-loss').data[0].x.length") == SEED + 1
