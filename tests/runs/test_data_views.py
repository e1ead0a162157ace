"""Data pages by role: viewers read, operators act; bad input is answered 400 on the field; every action audited."""

from __future__ import annotations

import pytest

from runs.models import AuditEvent, Cluster, DataMixRecipe, DataSource, JobPhase, MetricSeries, PrepRun
from runs.services.data_prep import prep_finished, prep_start, prep_started
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_root(settings, tmp_path, seeded):
    root = tmp_path / "data"
    root.mkdir()
    (root / "web.jsonl").write_text('{"text": "Hello there."}\n')
    settings.DATA_ROOTS = [root]
    settings.PREP_DIR = tmp_path / "prep"
    return root


def _report(prep: PrepRun) -> dict:
    stages = {"read": {"docs_in": 10, "docs_out": 10, "chars_in": 900, "chars_out": 900, "tokens_out": 0,
                       "tokens_out_est": 300},
              "mix": {"docs_in": 8, "docs_out": 8, "chars_in": 700, "chars_out": 700, "tokens_out": 250}}  # fmt: skip
    return {
        "sources": {"zh": {"stages": stages, "levels": [1, 0, 2, 3, 4]},
                    "en": {"stages": stages, "levels": [0, 0, 0, 1, 9]}},
        "stage_order": ["read", "mix"],
        "settings": {"quality": {"min_level": 3}},
        "removed": {"dedup:exact": {"stage": "exact_dedup", "count": 2, "by_source": {"zh": 2},
                                    "examples": [{"source": "zh", "id": "zh.txt:4", "text": "重复的文本。"}]}},
        "mix": {"mode": "trim", "requested": {"zh": 45.0, "en": 35.0, "other": 20.0},
                "final": {"zh": 45.1, "en": 34.9, "other": 20.0}, "tokens": {"zh": 451, "en": 349, "other": 200}},
        "tokenizer": {"trained": True, "vocab_size": 2048, "requested_vocab_size": 128000,
                      "vocab_reason": "scaled to 1,000 characters", "sha256": "ab" * 32,
                      "per_language": {"zh": {"documents": 8, "characters": 700, "tokens": 350, "tokens_per_char": 0.5}}},
        "output": {"shards_dir": f"{prep.directory}/shards", "tokenizer": f"{prep.directory}/tokenizer.model"},
    }  # fmt: skip


def _finished_prep(actor, recipe) -> PrepRun:
    prep = prep_start(actor=actor, recipe=recipe, cluster=Cluster.objects.get(name="local-cpu"))
    prep = prep_started(prep=prep, backend="local", job_id="local:1:1")
    return prep_finished(prep=prep, status=JobPhase.SUCCEEDED, report=_report(prep))


def test_a_viewer_reads_the_data_pages_without_action_buttons(client, viewer, operator, data_root):
    prep = _finished_prep(operator, DataMixRecipe.objects.get(name="bilingual-demo"))
    client.force_login(viewer)
    sources = client.get("/data/sources/").content.decode()
    assert "Register a source" not in sources and "jobs/assets/corpus/zh.txt" in sources
    page = client.get(f"/data/prep/{prep.pk}/").content.decode()
    assert (
        "dedup:exact" in page and "重复的文本。" in page and "45.10 %" in page and "scaled to 1,000 characters" in page
    )
    assert "Cancel</button>" not in page and "Resume</button>" not in page
    recipe_page = client.get(f"/recipes/{prep.recipe_id}/").content.decode()
    assert "Prepare this version" not in recipe_page and f"prep #{prep.pk}" in recipe_page
    assert client.get("/data/sources/new/").status_code == 403
    for url in (f"/recipes/{prep.recipe_id}/prepare/", f"/data/prep/{prep.pk}/cancel/", f"/data/prep/{prep.pk}/resume/",
                "/data/sources/1/count/"):  # fmt: skip
        assert client.post(url).status_code == 403, url


def test_an_operator_registers_a_source_and_bad_input_is_a_400_on_the_field(client, operator, data_root):
    client.force_login(operator)
    local = Cluster.objects.get(name="local-cpu")
    form = {"name": "web", "language": "en", "format": "jsonl", "path": "/etc/passwd", "text_field": "text",
            "cluster": local.pk}  # fmt: skip
    response = client.post("/data/sources/new/", form)
    assert response.status_code == 400
    assert "outside the data folders" in response.content.decode()
    assert not DataSource.objects.filter(name="web").exists()
    response = client.post("/data/sources/new/", {**form, "path": str(data_root / "web.jsonl")})
    source = DataSource.objects.get(name="web")
    assert response.status_code == 302 and response["Location"] == f"/data/sources/{source.pk}/"
    assert source.count_status == JobPhase.QUEUED
    assert AuditEvent.objects.filter(action="datasource.register", actor="otto").exists()


def test_an_operator_prepares_cancels_and_resumes_from_the_pages(client, operator, data_root):
    client.force_login(operator)
    recipe = DataMixRecipe.objects.get(name="bilingual-demo")
    local = Cluster.objects.get(name="local-cpu")
    response = client.post(f"/recipes/{recipe.pk}/prepare/", {"cluster": local.pk, "tasks": "0"}, follow=True)
    assert "tasks: Ensure this value is greater than or equal to 1." in response.content.decode()
    response = client.post(f"/recipes/{recipe.pk}/prepare/", {"cluster": local.pk, "tasks": "2"})
    prep = PrepRun.objects.get()
    assert response["Location"] == f"/data/prep/{prep.pk}/"
    assert "Cancel</button>" in client.get(f"/data/prep/{prep.pk}/").content.decode()
    client.post(f"/data/prep/{prep.pk}/cancel/")
    prep.refresh_from_db()
    assert prep.status == JobPhase.CANCELLED
    client.post(f"/data/prep/{prep.pk}/resume/")
    prep.refresh_from_db()
    assert prep.status == JobPhase.QUEUED and prep.attempt == 2
    actions = set(AuditEvent.objects.filter(actor="otto").values_list("action", flat=True))
    assert {"prep.start", "prep.cancel", "prep.cancelled", "prep.queued"} <= actions


def test_the_recipe_form_edits_preparation_settings_into_a_new_version(client, operator, data_root):
    client.force_login(operator)
    recipe = DataMixRecipe.objects.get(name="bilingual-demo")
    page = client.get(f"/recipes/{recipe.pk}/edit/").content.decode()
    assert 'name="p_near"' in page and 'name="p_min_level"' in page
    form = {"w_zh": "45", "w_en": "35", "w_other": "20", "notes": "", "p_language_check": "on",
            "p_min_confidence": "0.5", "p_near": "minhash", "p_simhash_max_distance": "19", "p_minhash_ngrams": "5",
            "p_minhash_buckets": "14", "p_minhash_hashes": "8", "p_quality_rules": ["gopher", "fineweb"],
            "p_min_level": "4",
            "p_toxicity_words": "on", "p_max_toxicity": "0.8", "p_tokenizer_mode": "train", "p_vocab_size": "128000",
            "p_tokenizer_path": "", "p_mix_mode": "trim"}  # fmt: skip
    response = client.post(f"/recipes/{recipe.pk}/edit/", {**form, "p_tokenizer_mode": "reuse"})
    assert "reusing a tokenizer needs the path" in response.content.decode()
    response = client.post(f"/recipes/{recipe.pk}/edit/", form)
    v2 = DataMixRecipe.objects.get(name="bilingual-demo", version=2)
    assert response["Location"] == f"/recipes/{v2.pk}/"
    assert v2.prep_settings["dedup"]["near"] == "minhash" and v2.prep_settings["quality"]["rules"] == [
        "gopher",
        "fineweb",
    ]
    detail = client.get(f"/recipes/{v2.pk}/").content.decode()
    assert "prep.dedup.near" in detail and "MinHash 14 × 8" in detail


def test_two_versions_side_by_side(client, viewer, operator, data_root):
    v1 = DataMixRecipe.objects.get(name="bilingual-demo")
    from runs.services.recipes import recipe_new_version

    v2 = recipe_new_version(actor=operator, base=v1, weights={"zh": 50, "en": 30, "other": 20},
                            settings={"quality": {"min_level": 2}})  # fmt: skip
    _finished_prep(operator, v1)
    client.force_login(viewer)
    page = client.get(f"/recipes/compare/?a={v1.pk}&b={v2.pk}").content.decode()
    assert "quality.min_level" in page and "dedup:exact" in page and "not prepared yet" in page
    assert client.get("/recipes/compare/?a=99999&b=1").status_code == 400


def test_a_run_page_shows_the_mix_it_consumed_against_its_recipe(client, viewer, operator, data_root):
    run = tiny_run(owner=operator)
    for key, value in (("tokens/zh", 900.0), ("tokens/en", 700.0), ("tokens/other", 400.0)):
        MetricSeries.objects.create(run=run, key=key, last_value=value, last_step=10, points=10)
    client.force_login(viewer)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "consumed against requested" in page
    assert "45.00 %" in page and "35.00 %" in page and "20.00 %" in page  # 900/2000 consumed equals the weight


def test_a_source_without_raw_text_cannot_be_recounted(client, operator, data_root):
    client.force_login(operator)
    source = DataSource.objects.create(name="shards", language="en")
    response = client.post(f"/data/sources/{source.pk}/count/", {"cluster": Cluster.objects.get(name="local-cpu").pk},
                           follow=True)  # fmt: skip
    assert "has no raw text to count" in response.content.decode()
