"""Counting and prep jobs as real processes, started and watched by the worker's functions through the local
backend and a real one-node Slurm (the prep stages as datatrove Slurm job arrays)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs.data.prep import planted
from runs.models import BackendKind, Cluster, DataSource, JobPhase, PrepRun
from runs.services.data_prep import prep_cancel, prep_start, source_register
from runs.services.recipes import recipe_create
from tests.runs.factories import tiny_run
from tests.workers import process_alive
from workers import data_prep

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def data(settings, tmp_path, seeded):
    root = tmp_path / "data"
    settings.DATA_ROOTS = [root]
    settings.PREP_DIR = tmp_path / "prep"
    docs = planted.corpus(150, seed=21)
    return docs, planted.write(docs, root, {"en": "text"})


def _count_until_done(source: DataSource, timeout: float = 180) -> DataSource:
    assert data_prep.count_start(source.pk).startswith("submitted ")
    deadline = time.monotonic() + timeout
    while data_prep.count_watch(source.pk):
        assert time.monotonic() < deadline, "the count did not finish"
        time.sleep(0.5)
    source.refresh_from_db()
    return source


def _prep_until_done(prep: PrepRun, timeout: float = 600) -> PrepRun:
    assert data_prep.prep_start(prep.pk).startswith("submitted "), prep.failure_reason
    deadline = time.monotonic() + timeout
    while data_prep.prep_watch(prep.pk):
        assert time.monotonic() < deadline, f"the prep did not finish: {PrepRun.objects.get(pk=prep.pk).progress}"
        time.sleep(1)
    prep.refresh_from_db()
    return prep


def _register_all(operator, cluster, paths) -> list[DataSource]:
    sources = []
    for name, _ in planted.MIX:
        fmt = "text" if name == "en" else "jsonl"
        sources.append(source_register(actor=operator, name=f"raw-{name}", language=name, fmt=fmt,
                                       path=str(paths[name]), cluster=cluster))  # fmt: skip
    return sources


def test_sources_are_counted_by_a_job_and_a_malformed_one_says_where(operator, data):
    docs, paths = data
    local = Cluster.objects.get(name="local-cpu")
    source = _count_until_done(_register_all(operator, local, paths)[0])
    assert source.count_status == JobPhase.SUCCEEDED, source.count_error
    assert source.counts["documents"] == sum(1 for d in docs if d.source == "zh")
    assert source.counts["characters"] > 0 and source.counts["estimated_tokens"] > 0
    assert source.counts["detected_languages"]["zh"] > 0.8
    bad = Path(paths["zh"]).with_name("bad.jsonl")
    bad.write_text('{"text": "ok"}\nnot json\n')
    broken = source_register(actor=operator, name="broken", language="zh", fmt="jsonl", path=str(bad), cluster=local)
    broken = _count_until_done(broken)
    assert broken.count_status == JobPhase.FAILED
    assert broken.count_error.startswith(f"source broken: {bad} line 2: not valid JSON")


def test_a_recipe_is_prepared_on_local_processes_and_its_runs_use_the_shards(operator, data):
    docs, paths = data
    local = Cluster.objects.get(name="local-cpu")
    for source in _register_all(operator, local, paths):
        _count_until_done(source)
    recipe = recipe_create(actor=operator, name="raw-mix", weights={"raw-zh": 45, "raw-en": 35, "raw-other": 20})
    prep = _prep_until_done(prep_start(actor=operator, recipe=recipe, cluster=local, tasks=2))
    assert prep.status == JobPhase.SUCCEEDED, prep.failure_reason
    assert prep.progress["status"] == "succeeded" and prep.progress["fraction"] == 1.0
    report = prep.report
    assert report["sources"]["raw-zh"]["stages"]["read"]["docs_in"] == sum(1 for d in docs if d.source == "zh")
    assert report["removed"]["dedup:exact"]["count"] > 0
    assert Path(prep.shards_dir, "raw-zh", "manifest.json").is_file()
    for name, weight in (("raw-zh", 45), ("raw-en", 35), ("raw-other", 20)):
        assert abs(report["mix"]["final"][name] - weight) < 1.5, report["mix"]
    run = tiny_run(owner=operator, name="on-prepared")
    assert run.config["data"]["shards_dir"] is None  # a run of another recipe keeps the bundled sample
    from runs.services.runs import assemble_config

    cfg = assemble_config(base=run.config, cluster=local, recipe=recipe, trainer="reference")
    assert cfg["data"]["shards_dir"] == prep.shards_dir and cfg["data"]["tokenizer"] == prep.tokenizer_path


def test_cancelling_a_running_prep_stops_its_processes(operator, data):
    _, paths = data
    local = Cluster.objects.get(name="local-cpu")
    _register_all(operator, local, paths)
    DataSource.objects.update(count_status=JobPhase.SUCCEEDED)
    recipe = recipe_create(actor=operator, name="to-cancel", weights={"raw-zh": 50, "raw-en": 50})
    prep = prep_start(actor=operator, recipe=recipe, cluster=local)
    assert data_prep.prep_start(prep.pk).startswith("submitted ")
    prep.refresh_from_db()
    job = json.loads((Path(prep.directory) / "attempt-1" / "job.json").read_text())
    prep_cancel(actor=operator, prep=prep)
    assert data_prep.prep_stop(prep.pk).startswith("stopped")
    prep.refresh_from_db()
    assert prep.status == JobPhase.CANCELLED
    assert not process_alive(job["pid"])


def test_a_recipe_is_prepared_on_slurm_with_stage_job_arrays(operator, data, slurm_cluster):
    _, paths = data
    cluster = Cluster.objects.create(name="slurm-data", backend=BackendKind.SLURM, nodes=1, gpus_per_node=1,
                                     accelerator="cpu", gpu_type="CPU", gpu_memory_gb=8,
                                     partition=slurm_cluster.partition)  # fmt: skip
    sources = _register_all(operator, cluster, paths)
    counted = _count_until_done(sources[0], timeout=300)
    assert counted.count_status == JobPhase.SUCCEEDED, counted.count_error
    assert counted.count_backend == "slurm" and counted.count_job_id.isdigit()
    DataSource.objects.update(count_status=JobPhase.SUCCEEDED)
    recipe = recipe_create(actor=operator, name="slurm-mix", weights={"raw-zh": 45, "raw-en": 35, "raw-other": 20})
    prep = _prep_until_done(prep_start(actor=operator, recipe=recipe, cluster=cluster, tasks=2), timeout=900)
    assert prep.status == JobPhase.SUCCEEDED, prep.failure_reason
    assert prep.backend == "slurm" and prep.backend_job_id.isdigit()
    work = Path(prep.directory) / "work" / "logs"
    script = (work / "filter" / "launch_script.slurm").read_text()
    assert "#SBATCH --array=0-1" in script and "launch_pickled_pipeline" in script
    assert sorted(p.name for p in (work / "filter" / "completions").iterdir()) == ["00000", "00001"]
    assert Path(prep.shards_dir, "raw-other", "manifest.json").is_file()
    assert prep.report["sources"]["raw-en"]["stages"]["mix"]["docs_out"] > 0
