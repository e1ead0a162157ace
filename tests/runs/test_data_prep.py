"""Data sources and prep runs as the services see them: what is refused and why, what is recorded, what a
training run picks up. The jobs themselves run in tests/workers/test_data_prep_jobs.py."""

from __future__ import annotations

import pytest

from runs.models import AuditEvent, Cluster, DataMixRecipe, DataSource, JobPhase, PrepRun
from runs.services.data_prep import (
    DataRefused,
    prep_cancel,
    prep_finished,
    prep_resume,
    prep_start,
    prep_started,
    source_recount,
    source_register,
)
from runs.services.recipes import RecipeInvalid, recipe_create, recipe_diff, recipe_new_version
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_root(settings, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "zh.jsonl").write_text('{"text": "你好。"}\n')
    (root / "part-1.txt").write_text("one\n")
    (root / "part-2.txt").write_text("two\n")
    settings.DATA_ROOTS = [root]
    settings.PREP_DIR = tmp_path / "prep"
    settings.DATA_REMOTE_PROTOCOLS = []
    return root


@pytest.fixture
def local(seeded):
    return Cluster.objects.get(name="local-cpu")


def register(actor, cluster, **kw):
    args = {"name": "web-zh", "language": "zh", "fmt": "jsonl", "path": "", "cluster": cluster}
    return source_register(actor=actor, **{**args, **kw})


@pytest.mark.parametrize(
    ("kw", "field", "says"),
    [
        ({"path": "relative/zh.jsonl"}, "path", "absolute"),
        ({"path": "/etc/passwd"}, "path", "outside the data folders"),
        ({"path": "{root}/../zh.jsonl"}, "path", "without '..'"),
        ({"path": "{root}/missing-*.jsonl"}, "path", "No file matches"),
        ({"path": "s3://bucket/zh/*.jsonl"}, "path", "CP_DATA_REMOTE_PROTOCOLS"),
        ({"name": "zh web!"}, "name", "letters, digits"),
        ({"name": "zh"}, "name", "exists"),
        ({"language": "chinese"}, "language", "Tag the language"),
        ({"fmt": "csv"}, "format", "jsonl, text, parquet"),
        ({"text_field": ""}, "text_field", "field"),
    ],
)
def test_registering_a_source_refuses_bad_input_naming_the_field(operator, local, data_root, kw, field, says):
    kw = {"path": str(data_root / "zh.jsonl"), **kw}
    kw["path"] = kw["path"].replace("{root}", str(data_root))
    with pytest.raises(DataRefused, match=says) as err:
        register(operator, local, **kw)
    assert err.value.field == field
    assert not DataSource.objects.filter(name=kw.get("name", "web-zh")).exists() or kw.get("name") == "zh"


def test_a_registered_source_is_audited_and_queued_for_counting(
    operator, local, data_root, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        source = register(operator, local, path=str(data_root / "part-*.txt"), fmt="text", licence="CC-BY 4.0")
    assert source.count_status == JobPhase.QUEUED and source.count_cluster == local
    actions = list(
        AuditEvent.objects.filter(object_type="datasource", object_id=str(source.pk))
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["datasource.register", "datasource.count.queued"]
    assert len(callbacks) >= 1  # the count task is sent after commit
    with pytest.raises(DataRefused, match="being counted"):
        source_recount(actor=operator, source=source, cluster=local)


def test_remote_sources_need_their_scheme_configured(operator, local, data_root, settings):
    settings.DATA_REMOTE_PROTOCOLS = ["s3"]
    source = register(operator, local, path="s3://corpus/zh/*.jsonl")
    assert source.path == "s3://corpus/zh/*.jsonl"


def test_a_planning_only_cluster_cannot_count_or_prepare(operator, local, data_root):
    plan_only = Cluster.objects.get(name="r1-h100-128x8")
    with pytest.raises(DataRefused) as err:
        register(operator, plan_only, path=str(data_root / "zh.jsonl"))
    assert err.value.field == "cluster"


def _recipe(actor, data_root, local, name="mix"):
    for src, lang in (("a-zh", "zh"), ("a-en", "en")):
        source_register(actor=actor, name=src, language=lang, fmt="jsonl", path=str(data_root / "zh.jsonl"),
                        cluster=local)  # fmt: skip
    DataSource.objects.update(count_status=JobPhase.SUCCEEDED, counts={"documents": 1})
    return recipe_create(actor=actor, name=name, weights={"a-zh": 60, "a-en": 40},
                         settings={"quality": {"min_level": 4}})  # fmt: skip


def test_prep_start_writes_the_spec_and_one_prep_at_a_time(operator, local, data_root):
    recipe = _recipe(operator, data_root, local)
    prep = prep_start(actor=operator, recipe=recipe, cluster=local, tasks=2)
    assert prep.status == JobPhase.QUEUED and prep.directory.endswith(f"p{prep.pk}")
    assert [s["name"] for s in prep.spec["sources"]] == ["a-zh", "a-en"]
    assert prep.spec["sources"][0]["weight"] == 60.0 and prep.spec["sources"][0]["documents"] == 1
    assert prep.spec["settings"]["quality"]["min_level"] == 4
    assert prep.spec["executor"]["kind"] == "local" and prep.spec["executor"]["tasks"] == 2
    assert AuditEvent.objects.filter(action="prep.start", object_id=str(prep.pk)).exists()
    with pytest.raises(DataRefused, match="being prepared already"):
        prep_start(actor=operator, recipe=recipe, cluster=local)
    with pytest.raises(DataRefused) as err:
        prep_start(actor=operator, recipe=recipe, cluster=local, tasks=0)
    assert err.value.field == "tasks"


def test_the_bundled_sources_can_be_prepared_from_their_raw_text(operator, local):
    recipe = DataMixRecipe.objects.get(name="bilingual-demo", version=1)
    prep = prep_start(actor=operator, recipe=recipe, cluster=local)
    paths = {s["name"]: s["path"] for s in prep.spec["sources"]}
    assert paths["zh"].endswith("jobs/assets/corpus/zh.txt") and prep.spec["sources"][0]["format"] == "text"


def test_cancel_before_start_and_resume_after_failure(operator, local, data_root):
    recipe = _recipe(operator, data_root, local)
    prep = prep_cancel(actor=operator, prep=prep_start(actor=operator, recipe=recipe, cluster=local))
    assert prep.status == JobPhase.CANCELLED
    with pytest.raises(DataRefused, match="only a queued or running"):
        prep_cancel(actor=operator, prep=prep)
    prep = prep_resume(actor=operator, prep=prep)
    assert prep.status == JobPhase.QUEUED and prep.attempt == 2
    prep = prep_started(prep=prep, backend="local", job_id="local:1:1")
    prep = prep_finished(prep=prep, status=JobPhase.FAILED, reason="source a-zh: x line 3: not valid JSON")
    assert prep.failure_reason.endswith("not valid JSON")
    prep = prep_resume(actor=operator, prep=prep)
    assert prep.attempt == 3 and not prep.failure_reason
    actions = list(AuditEvent.objects.filter(object_type="preprun").order_by("pk").values_list("action", flat=True))
    assert actions == ["prep.start", "prep.cancel", "prep.cancelled", "prep.queued", "prep.running", "prep.failed",
                       "prep.queued"]  # fmt: skip


def test_a_source_without_raw_text_cannot_be_prepared(operator, local, data_root):
    DataSource.objects.create(name="shards-only", language="en")
    recipe = recipe_create(actor=operator, name="old", weights={"shards-only": 100})
    with pytest.raises(DataRefused, match="shards-only"):
        prep_start(actor=operator, recipe=recipe, cluster=local)


def test_a_new_version_for_changed_preparation_settings_alone(operator, local, data_root):
    recipe = _recipe(operator, data_root, local)
    with pytest.raises(RecipeInvalid, match="Nothing changed"):
        recipe_new_version(actor=operator, base=recipe, weights={"a-zh": 60, "a-en": 40})
    v2 = recipe_new_version(actor=operator, base=recipe, weights={"a-zh": 60, "a-en": 40},
                            settings={"quality": {"min_level": 2}, "dedup": {"near": "minhash"}})  # fmt: skip
    assert v2.version == 2
    assert recipe_diff(recipe, v2) == {"prep.dedup.near": ["simhash", "minhash"], "prep.quality.min_level": [4, 2]}
    with pytest.raises(RecipeInvalid) as err:
        recipe_new_version(actor=operator, base=v2, weights={"a-zh": 60, "a-en": 40},
                           settings={"quality": {"min_level": 9}})  # fmt: skip
    assert "prep.quality.min_level" in err.value.errors


def test_runs_train_on_the_newest_successful_prep_of_their_recipe(operator, local, settings, tmp_path):
    settings.PREP_DIR = tmp_path / "prep"
    run = tiny_run(owner=operator, name="before")
    assert run.config["data"]["shards_dir"] is None  # no prep yet: the bundled sample
    recipe = DataMixRecipe.objects.get(name="bilingual-demo", version=1)
    prep = prep_start(actor=operator, recipe=recipe, cluster=local)
    prep = prep_started(prep=prep, backend="local", job_id="local:1:1")
    out = {"shards_dir": f"{prep.directory}/shards", "tokenizer": f"{prep.directory}/tokenizer.model"}
    prep_finished(prep=prep, status=JobPhase.SUCCEEDED, report={"output": out, "tokenizer": {"vocab_size": 2048}})
    run = tiny_run(owner=operator, name="after")
    assert run.config["data"]["shards_dir"] == out["shards_dir"]
    assert run.config["data"]["tokenizer"] == out["tokenizer"]
    PrepRun.objects.filter(pk=prep.pk).update(report={"output": out, "tokenizer": {"vocab_size": 8192}})
    from runs.services.runs import RunInvalid

    with pytest.raises(RunInvalid) as err:
        tiny_run(owner=operator, name="too-small")
    assert any(i.field == "model.vocab_size" and "8,192" in i.message for i in err.value.issues)


def test_files_a_recipe_names_must_lie_inside_the_data_or_prep_folders(operator, local, data_root, settings):
    recipe = _recipe(operator, data_root, local)
    for raw, ok in (({"tokenizer": {"mode": "reuse", "path": "/etc/passwd"}}, False),
                    ({"quality": {"model": str(data_root / "missing.npz")}}, False),
                    ({"tokenizer": {"mode": "reuse", "path": str(data_root / "zh.jsonl")}}, True)):  # fmt: skip
        version = recipe_new_version(actor=operator, base=recipe, weights={"a-zh": 60, "a-en": 40}, settings=raw)
        if ok:
            assert prep_cancel(actor=operator, prep=prep_start(actor=operator, recipe=version, cluster=local))
        else:
            with pytest.raises(DataRefused, match="not a file inside the data folders"):
                prep_start(actor=operator, recipe=version, cluster=local)
