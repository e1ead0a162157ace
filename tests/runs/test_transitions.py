import threading

import pytest
from django.db import connection

from runs.models import AuditEvent, RunStatus
from runs.services.runs import RunActionRefused, run_cancel, run_launch
from runs.services.transitions import IllegalTransition, transition
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


def test_launch_moves_a_draft_to_queued_and_audits_it(seeded, operator):
    run = tiny_run(owner=operator)
    run = run_launch(actor=operator, run=run)
    assert run.status == RunStatus.QUEUED and run.queued_at is not None
    event = AuditEvent.objects.filter(run_id=run.pk, action="run.launch").get()
    assert event.actor == operator.username and event.diff["status"] == ["draft", "queued"]


def test_illegal_transition_raises_with_a_clear_message(seeded, operator):
    run = tiny_run(owner=operator)
    with pytest.raises(IllegalTransition, match="draft; it cannot become running"):
        transition(run=run, to=RunStatus.RUNNING, actor=operator)
    run.refresh_from_db()
    assert run.status == RunStatus.DRAFT


def test_every_legal_path_to_success(seeded, operator):
    run = tiny_run(owner=operator)
    for status in (RunStatus.QUEUED, RunStatus.LAUNCHING, RunStatus.RUNNING, RunStatus.SUCCEEDED):
        run = transition(run=run, to=status, actor="system")
    assert run.started_at and run.finished_at
    with pytest.raises(IllegalTransition):
        transition(run=run, to=RunStatus.RUNNING, actor="system")


def test_failure_then_remediation_then_requeue(seeded, operator):
    run = tiny_run(owner=operator)
    for status in (RunStatus.QUEUED, RunStatus.LAUNCHING, RunStatus.RUNNING):
        run = transition(run=run, to=status, actor="system")
    run = transition(run=run, to=RunStatus.FAILED, actor="system", reason="CUDA out of memory")
    assert run.failure_reason == "CUDA out of memory"
    run = transition(run=run, to=RunStatus.REMEDIATING, actor="system")
    run = transition(run=run, to=RunStatus.QUEUED, actor="system")
    assert run.status == RunStatus.QUEUED


def test_a_stale_copy_loses_against_the_first_mover(seeded, operator):
    run = tiny_run(owner=operator)
    stale = type(run).objects.get(pk=run.pk)
    run_launch(actor=operator, run=run)
    with pytest.raises(RunActionRefused, match="changed while you acted|cannot become"):
        run_launch(actor=operator, run=stale)
    assert AuditEvent.objects.filter(run_id=run.pk, action="run.launch").count() == 1


def test_cancel_of_a_finished_run_is_refused(seeded, operator):
    run = tiny_run(owner=operator)
    run_cancel(actor=operator, run=run)
    with pytest.raises(RunActionRefused, match="already cancelled"):
        run_cancel(actor=operator, run=run)


@pytest.mark.django_db(transaction=True)
def test_concurrent_double_launch_has_exactly_one_winner(seeded, operator):
    if connection.vendor == "sqlite" and "memory" in str(connection.settings_dict["NAME"]):
        pytest.skip("in-memory SQLite has one connection; the PostgreSQL suite runs this race")
    run = tiny_run(owner=operator)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def launch():
        from runs.models import Run

        copy = Run.objects.get(pk=run.pk)
        barrier.wait()
        try:
            run_launch(actor=operator, run=copy)
            outcomes.append("won")
        except RunActionRefused:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused", "won"]
    assert AuditEvent.objects.filter(run_id=run.pk, action="run.launch").count() == 1
