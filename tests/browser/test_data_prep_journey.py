"""End to end in Chromium: register two raw-text sources (counted by real jobs), make a recipe of them, prepare it
(a real prep job through the stack's worker), read its counts, edit the recipe's preparation settings into v2,
prepare v2, and compare the two versions side by side. Screenshots of each page go to the test's folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from jobs.data.prep import planted
from tests.stack import _stop_jobs, start_stack, stop_stack

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(tmp_path, seeded, operator):
    data = tmp_path / "data"
    docs = planted.corpus(160, seed=31, mix=(("zh", 60), ("en", 40)))
    planted.write(docs, data)
    stack = start_stack(tmp=tmp_path, extra_env={"CP_DATA_ROOTS": str(data), "CP_PREP_DIR": str(tmp_path / "prep")})
    stack.data = data  # type: ignore[attr-defined]
    stack.docs = docs  # type: ignore[attr-defined]
    yield stack
    _stop_jobs(tmp_path / "prep")
    stop_stack(stack)
    print(stack.log_tail(160))  # shown by pytest only when the test failed


def _login(page: Page, stack) -> None:
    page.goto(f"{stack.url}/accounts/login/")
    page.fill("#id_username", "otto")
    page.fill("#id_password", "pw-for-tests-1")
    page.click("form button[type=submit]")
    page.wait_for_url(re.compile(r".*/runs/"))


def _register(page: Page, stack, name: str, language: str, shots: Path) -> None:
    page.goto(f"{stack.url}/data/sources/new/")
    page.fill("#id_name", name)
    page.select_option("#id_language", language)
    page.select_option("#id_format", "jsonl")
    page.fill("#id_path", str(stack.data / f"{language}.jsonl"))
    page.fill("#id_licence", "Generated for this test")
    page.click("#source-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/data/sources/\d+/"))
    expect(page.locator("#count-status")).to_have_text("succeeded")  # the page follows the count job live
    documents = sum(1 for d in stack.docs if d.source == language)
    expect(page.locator("#count-table [data-role=documents]")).to_have_text(str(documents))
    page.screenshot(path=str(shots / f"source-{name}.png"), full_page=True)


def _prepare(page: Page, shots: Path, name: str) -> str:
    page.fill("#prepare-form input[name=tasks]", "1")  # one task per stage: no process pool to start on 2 cores
    page.click("#prepare-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/data/prep/\d+/"))
    expect(page.locator(".messages")).to_contain_text("Preparing")
    expect(page.locator("#prep-status")).to_have_text("Succeeded")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    return page.url


def test_register_prepare_read_counts_and_compare_versions(page: Page, stack, tmp_path):
    from runs.models import AuditEvent, DataMixRecipe, PrepRun

    shots = tmp_path / "screenshots"
    shots.mkdir()
    expect.set_options(timeout=240_000)
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1400, "height": 1000})
    _login(page, stack)
    _register(page, stack, "web-zh", "zh", shots)
    _register(page, stack, "web-en", "en", shots)
    page.goto(f"{stack.url}/data/sources/")
    expect(page.locator("#sources tr[data-source=web-zh] [data-role=count-status]")).to_have_text("succeeded")

    # A recipe of the two sources, with the default preparation settings.
    page.goto(f"{stack.url}/recipes/new/")
    page.fill("#id_name", "web-mix")
    page.fill("#id_w_web-zh", "60")
    page.fill("#id_w_web-en", "40")
    page.click("form.card button[type=submit]")
    page.wait_for_url(re.compile(r".*/recipes/\d+/"))
    expect(page.locator("#prep-settings")).to_contain_text("SimHash 128 bits")
    _prepare(page, shots, "prep-v1")
    counts = page.locator("#stage-counts")
    zh_read = sum(1 for d in stack.docs if d.source == "zh")
    expect(counts.locator("tr[data-source=web-zh][data-stage=read] td").nth(2)).to_have_text(str(zh_read))
    expect(page.locator("#removals details[data-rule='dedup:exact']")).to_be_visible()
    expect(page.locator("#removals details[data-rule='dedup:simhash']")).to_be_visible()
    page.locator("#removals details[data-rule='dedup:exact'] summary").click()
    expect(page.locator("#removals details[data-rule='dedup:exact'] blockquote").first).to_be_visible()
    expect(page.locator("#final-mix tr[data-source=web-zh] [data-role=final]")).to_have_text(re.compile(r"^(59|60)\."))
    expect(page.locator("#tokenizer [data-role=vocab]")).to_contain_text("asked 128000")
    expect(page.locator("#tokens-per-char tr[data-language=zh]")).to_be_visible()
    page.screenshot(path=str(shots / "prep-v1-removals.png"), full_page=True)

    # v2: no near-duplicate removal and a stricter quality level, as a new version.
    v1 = DataMixRecipe.objects.get(name="web-mix", version=1)
    page.goto(f"{stack.url}/recipes/{v1.pk}/edit/")
    page.select_option("#id_p_near", "none")
    page.select_option("#id_p_min_level", "4")
    page.click("form.card button[type=submit]")
    page.wait_for_url(re.compile(r".*/recipes/\d+/"))
    expect(page.locator("#recipe-diff")).to_contain_text("prep.dedup.near")
    _prepare(page, shots, "prep-v2")
    expect(page.locator("#removals details[data-rule='dedup:simhash']")).to_have_count(0)

    v2 = DataMixRecipe.objects.get(name="web-mix", version=2)
    page.goto(f"{stack.url}/recipes/compare/?a={v1.pk}&b={v2.pk}")
    expect(page.locator("#cmp-settings tr.changed")).to_have_count(2)
    expect(page.locator("#cmp-removals")).to_contain_text("dedup:simhash")
    page.screenshot(path=str(shots / "compare.png"), full_page=True)

    assert list(PrepRun.objects.order_by("pk").values_list("status", flat=True)) == ["succeeded", "succeeded"]
    actions = set(AuditEvent.objects.filter(actor="otto").values_list("action", flat=True))
    assert {"datasource.register", "recipe.create", "recipe.new_version", "prep.start"} <= actions, actions
