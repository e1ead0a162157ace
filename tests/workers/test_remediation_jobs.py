"""Remediation on real DeepSpeed jobs: an OOM run on the tiny preset is relaunched with half the micro-batch and
finishes without a person; a NaN run rolls back past its bad batch; every metrics.jsonl step stored once."""

import json

import pytest

from runs.models import Alert, Attempt, MetricSeries, RunStatus
from tests.workers.test_launch_and_watch import UNREACHABLE, _follow, _tiny
from workers import remediating

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runs_dir(tmp_path, settings):
    settings.RUNS_DIR = tmp_path
    settings.CP_BASE_URL = UNREACHABLE
    return tmp_path


def _remediate(run):
    """What the worker's delayed task does once the back-off is over."""
    run.refresh_from_db()
    assert run.status == RunStatus.REMEDIATING, run.failure_reason
    plan = Attempt.objects.get(run=run, number=run.attempt).exit_summary["plan"]
    out = remediating.remediate_run(run.pk, run.attempt, plan)
    assert "queued" in out, out
    run.refresh_from_db()
    return run


def _file_steps(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if r["kind"] == "metrics" and "loss" in r["values"]]


def test_an_oom_run_on_the_tiny_preset_is_remediated_to_success(seeded, operator, runs_dir, monkeypatch):
    monkeypatch.setenv("CP_INJECT_OOM_AT_STEP", "5")
    monkeypatch.setenv("CP_INJECT_OOM_MIN_MICRO_BATCH", "8")
    run = _follow(_tiny(operator, name="oom-fixed", steps=6))
    run = _remediate(run)
    assert run.status == RunStatus.QUEUED and run.attempt == 2
    assert (run.config["batch"]["micro_batch"], run.config["batch"]["grad_accum"]) == (4, 4)
    run = _follow(run)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    attempts = list(Attempt.objects.filter(run=run).order_by("number"))
    assert [(a.cause, a.state, a.checkpoint_step) for a in attempts] == [
        ("launch", "failed", None),
        ("oom", "succeeded", 3),
    ]
    assert attempts[1].changes["batch.micro_batch"] == [8, 4]
    loss = MetricSeries.objects.get(run=run, key="loss")
    assert loss.points == 6 and loss.last_step == 6
    assert sorted(set(_file_steps(runs_dir / f"run-{run.pk}"))) == [1, 2, 3, 4, 5, 6]
    assert Alert.objects.filter(run=run, kind="oom").count() == 1


def test_a_nan_run_rolls_back_past_its_bad_batch(seeded, operator, runs_dir, monkeypatch):
    monkeypatch.setenv("CP_INJECT_NAN_AT_STEP", "5")
    run = _tiny(operator, name="nan-rollback", steps=6)
    cfg = run.config
    cfg["remediation"].update(on_spike="rollback", rewind_steps=1, skip_batches=2)
    type(run).objects.filter(pk=run.pk).update(config=cfg)
    run = _follow(run)
    run = _remediate(run)
    assert run.config["relaunch"]["skip_data"] == [[4, 6]]
    run = _follow(run)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    loss = MetricSeries.objects.get(run=run, key="loss")
    assert loss.points == 6 and loss.last_step == 6
    file_steps = _file_steps(runs_dir / f"run-{run.pk}")
    assert file_steps.count(4) == 2, "attempt 1 logged step 4, attempt 2 redid it"
