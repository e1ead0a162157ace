"""Failure reasons that name the culprit, on real two-rank DeepSpeed jobs: the rank that was killed (not rank 0's
broken collective), and an OOM on a non-zero rank reported as that rank's OOM."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from django.test import override_settings

from jobs.common.failures import culprit, rank_record_path
from runs.models import Alert, AlertKind, Attempt, RunStatus
from tests.workers.test_launch_and_watch import UNREACHABLE, _follow, _tiny

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runs_dir(tmp_path):
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        yield tmp_path


def test_a_rank_killed_with_sigkill_is_named_with_its_signal(seeded, operator, runs_dir, monkeypatch):
    monkeypatch.setenv("CP_INJECT_HANG_AT_STEP", "3")  # the ranks stay alive at step 3 until one is killed
    monkeypatch.setenv("CP_INJECT_RANK", "1")
    from workers import launching

    run = _tiny(operator, name="killed-rank", steps=40)
    assert launching.launch_run(run.pk).startswith("submitted")
    run.refresh_from_db()
    record = rank_record_path(runs_dir / f"run-{run.pk}", 1)
    deadline = time.monotonic() + 240
    while not (runs_dir / f"run-{run.pk}" / "metrics.jsonl").exists() or not record.exists():
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(2)
    os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
    from workers import watching

    while watching.watch_once(run.pk):
        assert time.monotonic() < deadline + 120
        time.sleep(0.5)
    run.refresh_from_db()
    assert run.status in (RunStatus.FAILED, RunStatus.REMEDIATING, RunStatus.QUEUED)
    assert run.failure_reason.startswith("rank 1") or "rank 1" in (
        Attempt.objects.get(run=run, number=1).exit_summary.get("reason", "")
    ), run.failure_reason
    summary = Attempt.objects.get(run=run, number=1).exit_summary
    reason = summary.get("reason") or run.failure_reason
    assert "SIGKILL" in reason and not reason.startswith("rank 0"), reason


def test_an_oom_on_rank_one_is_that_ranks_oom(seeded, operator, runs_dir, monkeypatch):
    monkeypatch.setenv("CP_INJECT_OOM_AT_STEP", "2")
    monkeypatch.setenv("CP_INJECT_RANK", "1")
    run = _follow(_tiny(operator, name="oom-rank-1", steps=6))
    first = Attempt.objects.get(run=run, number=1)
    assert first.state == "failed", first.state  # the run itself may be remediating: its policy halves the batch
    reason = first.exit_summary["reason"]
    assert reason.startswith("rank 1") and "out of memory" in reason, reason
    assert first.exit_summary["culprit"]["rank"] == 1 and first.exit_summary["culprit"]["oom_ranks"] == [1]
    alert = Alert.objects.filter(run=run, kind=AlertKind.OOM, attempt=1).first()
    assert alert is not None and alert.severity == "critical"  # raised once per attempt (by the log scan first)
    found = culprit(runs_dir / f"run-{run.pk}", world_size=2)
    assert found["rank"] == 1 and found["oom_ranks"] == [1]
    events = [json.loads(line) for line in (runs_dir / f"run-{run.pk}" / "metrics.jsonl").read_text().splitlines()]
    assert not any(e.get("type") == "oom" and e.get("rank") == 1 for e in events)  # rank 1 never writes there
