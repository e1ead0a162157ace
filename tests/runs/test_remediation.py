"""Automatic remediation decided and begun by the control plane: the OOM ladder, rollbacks past a spike, bounded
restarts, a stop that says what was tried, cancel during remediation, and points a later attempt supersedes."""

from __future__ import annotations

import datetime

import pytest

from runs.metrics.store import metrics_record
from runs.metrics.supersede import metrics_supersede
from runs.models import Attempt, AttemptState, AuditEvent, Checkpoint, MetricSeries, Run, RunStatus
from runs.services.attempts import attempt_claim, attempt_mark_running, attempt_record_job
from runs.services.remediation import Outcome, remediation_begin, remediation_decide, remediation_relaunch
from runs.services.runs import run_cancel, run_launch
from runs.services.transitions import transition
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(seeded, operator, settings, tmp_path):
    """A tiny run whose attempt 1 is running, with checkpoints at steps 40 and 100."""
    settings.RUNS_DIR = tmp_path

    def make(**overrides) -> Run:
        run = run_launch(actor=operator, run=tiny_run(owner=operator, **overrides))
        return _start(run, [40, 100])

    return make


def _start(run: Run, checkpoints: list[int], last_step: int | None = None) -> Run:
    run = transition(run=run, to=RunStatus.LAUNCHING, actor="system")
    claim = attempt_claim(run=run, worker="test")
    assert claim is not None and attempt_record_job(claim=claim, job_id=f"local:{run.pk}:{run.attempt}")
    run = transition(run=run, to=RunStatus.RUNNING, actor="system")
    attempt_mark_running(run=run)
    for step in checkpoints:
        tag = f"step_{step:06d}"
        Checkpoint.objects.get_or_create(run=run, step=step, defaults={"tag": tag, "path": f"/ckpt/{tag}"})
    Run.objects.filter(pk=run.pk).update(last_step=last_step or max(checkpoints, default=0) + 17)
    run.refresh_from_db()
    return run


def _relaunch(run: Run) -> Run:
    """What the worker does after the back-off (no job left to stop in these tests), then the next attempt runs."""
    number = run.attempt
    ended = Attempt.objects.get(run=run, number=number)
    assert ended.state == AttemptState.FAILED
    out = remediation_relaunch(run=run, attempt=number, remedy=ended.exit_summary["plan"])
    assert out.startswith(f"attempt {number + 1} queued"), out
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    return _start(run, [], last_step=(ended.exit_summary["plan"]["checkpoint_step"] or 0) + 20)


def test_oom_walks_the_policy_ladder_then_stops_saying_what_was_tried(running):
    run = running(remediation__max_attempts=5)
    oom = Outcome(kind="oom", step=117, reason="out of memory")
    remedy = remediation_begin(run=run, outcome=oom)
    run.refresh_from_db()
    assert run.status == RunStatus.REMEDIATING and remedy is not None
    assert remedy.checkpoint_path == "/ckpt/step_000100" and remedy.supersede_after == 100
    assert remedy.changes["batch.micro_batch"] == 4 and remedy.changes["batch.grad_accum"] == 4
    run = _relaunch(run)
    assert (run.config["batch"]["micro_batch"], run.config["batch"]["grad_accum"]) == (4, 4)
    assert run.resume_from == "/ckpt/step_000100" and run.attempt == 2
    descriptions = [remedy.description]
    for expected in ("parallel.activation_checkpointing", "parallel.offload_optimizer"):
        remedy = remediation_begin(run=run, outcome=oom)
        assert remedy is not None and remedy.changes[expected] is True
        descriptions.append(remedy.description)
        run = _relaunch(run)
    assert run.config["parallel"]["zero_stage"] == 1 and run.attempt == 4
    assert remediation_begin(run=run, outcome=oom) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "out-of-memory remedies exhausted" in run.failure_reason
    for n, text in zip((2, 3, 4), descriptions, strict=True):
        assert f"attempt {n}: {text}" in run.failure_reason
    causes = list(Attempt.objects.filter(run=run).values_list("cause", "state"))
    assert causes == [("launch", "failed"), ("oom", "failed"), ("oom", "failed"), ("oom", "failed")]


def test_the_culprit_the_watcher_named_travels_into_the_attempt_and_the_final_reason(running):
    run = running(remediation__max_attempts=1)
    culprit = {"rank": 1, "host": "vm", "how": "was killed by SIGKILL", "signal": "SIGKILL", "step": 117}
    killed = Outcome(kind="node_failure", step=117, reason="rank 1 on vm was killed by SIGKILL at step 117 (exit 1)",
                     summary={"exit_code": 1, "culprit": culprit})  # fmt: skip
    assert remediation_begin(run=run, outcome=killed) is not None
    planned = AuditEvent.objects.get(object_id=str(run.pk), action="remediation.planned")
    assert planned.message.startswith("rank 1 on vm was killed by SIGKILL") and "remediating" in planned.message
    first = Attempt.objects.get(run=run, number=1)
    assert first.exit_summary["culprit"] == culprit and "SIGKILL" in first.exit_summary["reason"]
    run = _relaunch(run)
    again = Outcome(kind="node_failure", step=130, reason="rank 0 on vm was killed by SIGKILL at step 130",
                    summary={"culprit": {**culprit, "rank": 0}})  # fmt: skip
    assert remediation_begin(run=run, outcome=again) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.failure_reason.startswith("rank 0 on vm was killed by SIGKILL at step 130")
    assert Attempt.objects.get(run=run, number=2).exit_summary["culprit"]["rank"] == 0
    assert "attempt 2: relaunch from step_000100" in run.failure_reason


def test_max_attempts_bounds_every_automatic_relaunch(running):
    run = running(remediation__max_attempts=1)
    assert remediation_begin(run=run, outcome=Outcome(kind="oom", step=117, reason="oom")) is not None
    run = _relaunch(run)
    decision = remediation_decide(run=run, outcome=Outcome(kind="job_lost", step=130, reason="lost"))
    assert decision.remedy is None and "1 automatic relaunches are used up" in decision.why


def test_a_spike_rolls_back_about_rewind_steps_and_skips_a_window(running):
    run = running(remediation__on_spike="rollback", remediation__lr_cut_factor=0.5, remediation__lr_cut_steps=50)
    remedy = remediation_begin(run=run, outcome=Outcome(kind="loss_spike", step=150, reason="loss spike"))
    assert remedy is not None
    assert remedy.checkpoint_path == "/ckpt/step_000040", "the newest checkpoint at least 100 steps before"
    assert remedy.changes["relaunch.skip_data"] == [[41, 241]]
    assert remedy.changes["relaunch.lr_cut_factor"] == 0.5 and remedy.changes["relaunch.lr_cut_from_step"] == 41
    run = _relaunch(run)
    assert run.config["relaunch"]["skip_data"] == [[41, 241]]
    # A second spike in the relaunched attempt: its data steps are counted past the window already skipped.
    second = remediation_decide(run=run, outcome=Outcome(kind="nan", step=60, reason="nan")).remedy
    assert second is not None and second.changes["relaunch.skip_data"] == [[41, 441]]


def test_a_spike_under_an_alert_only_policy_is_not_remedied(running):
    run = running()
    assert remediation_begin(run=run, outcome=Outcome(kind="nan", step=50, reason="nan"), job_ended=False) is None
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, "a running job is left to run with its alert"


def test_restarts_are_bounded_per_window_with_growing_backoff(running):
    run = running(remediation__max_attempts=10, remediation__max_restarts=2)
    backoffs = []
    for _ in range(2):
        remedy = remediation_begin(run=run, outcome=Outcome(kind="hang", step=120, reason="hang"))
        assert remedy is not None and remedy.checkpoint_path == "/ckpt/step_000100"
        backoffs.append(remedy.backoff_s)
        run = _relaunch(run)
    assert backoffs == [5.0, 10.0]
    decision = remediation_decide(run=run, outcome=Outcome(kind="node_failure", step=120, reason="rank 1 died"))
    assert decision.remedy is None and "2 restarts within 3600 s" in decision.why
    Attempt.objects.filter(run=run).update(created_at=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
    assert remediation_decide(run=run, outcome=Outcome(kind="hang", step=120, reason="hang")).remedy is not None


def test_a_plain_error_is_not_relaunched(running):
    run = running()
    assert remediation_begin(run=run, outcome=Outcome(kind="error", step=3, reason="ValueError: bad")) is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.failure_reason == "ValueError: bad"


def test_cancel_during_remediation_stops_it(running, operator):
    run = running()
    remedy = remediation_begin(run=run, outcome=Outcome(kind="oom", step=117, reason="oom"))
    assert remedy is not None
    run = run_cancel(actor=operator, run=run)
    plan = Attempt.objects.get(run=run, number=1).exit_summary["plan"]
    assert remediation_relaunch(run=run, attempt=1, remedy=plan).startswith("nothing to do")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and Attempt.objects.filter(run=run).count() == 1


def test_superseded_points_give_way_to_the_next_attempts(running):
    run = running()
    first = [{"kind": "metrics", "step": s, "values": {"loss": 10.0 - s, "lr": 0.1}} for s in range(1, 11)]
    metrics_record(run=run, records=first)
    assert metrics_supersede(run=run, after_step=6) == 8
    loss = MetricSeries.objects.get(run=run, key="loss")
    assert (loss.points, loss.last_step, loss.last_value) == (6, 6, 4.0)
    assert Run.objects.get(pk=run.pk).last_step == 6
    redo = [{"kind": "metrics", "step": s, "values": {"loss": 100.0 + s, "lr": 0.1}} for s in range(7, 12)]
    metrics_record(run=run, records=redo)
    from runs.metrics.reads import series_all_points

    steps, values = series_all_points(run_id=run.pk, key="loss")
    assert list(steps) == list(range(1, 12))
    assert list(values[6:]) == [107.0, 108.0, 109.0, 110.0, 111.0]


def test_the_run_page_shows_each_attempt_and_marks_the_redone_steps(running, client, operator):
    run = running(remediation__max_attempts=3)
    remediation_begin(run=run, outcome=Outcome(kind="oom", step=117, reason="out of memory at step 117"))
    Attempt.objects.filter(run=run, number=1).update(
        started_at=datetime.datetime(2026, 1, 1, 10, 0, tzinfo=datetime.UTC),
        ended_at=datetime.datetime(2026, 1, 1, 11, 0, tzinfo=datetime.UTC),
    )
    run = _relaunch(run)
    client.force_login(operator)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="panel-attempts"' in page and "Out of memory" in page
    assert "batch.micro_batch" in page and "out of memory at step 117" in page
    assert "101–117" in page, "attempt 1's steps after the restored checkpoint are marked as redone"
    from runs.services.timeline import replaced_ranges, run_timeline

    rows = run_timeline(run)
    assert replaced_ranges(rows) == [{"lo": 101, "hi": 117, "attempt": 1}]
    assert rows[0].gpu_hours_lost is not None and rows[0].gpu_hours_lost > 0
