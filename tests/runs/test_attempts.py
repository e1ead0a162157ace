"""Attempts: the first launch, the next attempt (resume, remediation), the claim racing launchers compete for."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs.models import Attempt, AttemptState, Run, RunStatus, RunToken
from runs.services.attempts import (
    AttemptRefused,
    attempt_claim,
    attempt_end,
    attempt_record_job,
    attempt_start_next,
    run_relaunch,
)
from runs.services.rundir import run_dir_prepare
from runs.services.runs import run_launch
from runs.services.tokens import token_state
from tests.runs.factories import tiny_run


@pytest.fixture
def queued(seeded, operator, settings, tmp_path):
    settings.RUNS_DIR = tmp_path
    return run_launch(actor=operator, run=tiny_run(owner=operator))


def test_launch_opens_attempt_one_pending(queued):
    attempt = Attempt.objects.get(run=queued)
    assert (attempt.number, attempt.cause, attempt.state) == (1, "launch", "pending")
    assert attempt.idempotency_key.startswith(f"cp-{queued.pk}-a1-")


def test_one_claim_only_and_a_second_claimant_waits_for_the_lease(queued):
    first = attempt_claim(run=queued, worker="w1")
    assert first is not None and first.attempt.state == AttemptState.CLAIMED
    assert attempt_claim(run=queued, worker="w2") is None
    # The first launcher died holding it: once the lease is over another takes it over.
    Attempt.objects.filter(pk=first.attempt.pk).update(lease_until="2000-01-01T00:00Z")
    second = attempt_claim(run=queued, worker="w2")
    assert second is not None and second.attempt.pk == first.attempt.pk
    assert not attempt_record_job(claim=first, job_id="local:1:1"), "a claim taken over records nothing"
    assert attempt_record_job(claim=second, job_id="local:2:2")
    assert attempt_claim(run=queued, worker="w3") is None, "a submitted attempt is never claimed again"
    assert Run.objects.get(pk=queued.pk).backend_job_id == "local:2:2"


@pytest.mark.django_db(transaction=True)
def test_racing_claims_on_real_connections_have_one_winner(seeded, operator, settings, tmp_path):
    settings.RUNS_DIR = tmp_path
    run = run_launch(actor=operator, run=tiny_run(owner=operator))
    barrier = threading.Barrier(16)
    winners: list[str] = []

    def race(i: int) -> None:
        try:
            barrier.wait()
            claim = attempt_claim(run=Run.objects.get(pk=run.pk), worker=f"w{i}")
            if claim is not None:
                winners.append(claim.worker)
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


@pytest.mark.django_db(transaction=True)
def test_a_live_launcher_keeps_its_short_claim_and_a_dead_one_loses_it_in_seconds(
    seeded, operator, settings, tmp_path, monkeypatch
):
    import time

    from workers import launching

    settings.RUNS_DIR = tmp_path
    run = run_launch(actor=operator, run=tiny_run(owner=operator))
    monkeypatch.setattr(launching, "CLAIM_RENEW_S", 0.2)
    claim = attempt_claim(run=run, worker="alive", lease_s=1.0)
    assert claim is not None
    with launching._claim_heartbeat(claim):  # a submit slower than the lease
        time.sleep(2.0)
        assert attempt_claim(run=run, worker="other") is None, "a renewed claim is never taken over"
    # The launcher stopped renewing (killed): after the lease another launcher takes the attempt over.
    claim = attempt_claim(run=run, worker="dead", lease_s=1.0)
    assert claim is None  # still held by "alive" for its renewed lease
    Attempt.objects.filter(pk=run.attempts.get().pk).update(lease_until=timezone.now() + timedelta(seconds=1))
    time.sleep(1.2)
    taken = attempt_claim(run=run, worker="other")
    assert taken is not None and taken.worker == "other"


def test_next_attempt_applies_changes_and_keeps_the_run(queued):
    claim = attempt_claim(run=queued, worker="w1")
    attempt_record_job(claim=claim, job_id="local:1:1")
    with pytest.raises(AttemptRefused):
        attempt_start_next(run=queued, cause="oom", changes={"batch.micro_batch": 1})
    attempt_end(run=queued, state="failed", summary={"exit_code": 3})
    Run.objects.filter(pk=queued.pk).update(status=RunStatus.FAILED)
    queued.refresh_from_db()
    micro = queued.config["batch"]["micro_batch"]
    second = run_relaunch(
        run=queued, cause="oom", changes={"batch.micro_batch": 1}, checkpoint_path="/x/step_4", checkpoint_step=4
    )
    queued.refresh_from_db()
    assert second.number == 2 and second.changes == {"batch.micro_batch": [micro, 1]}
    assert queued.status == RunStatus.QUEUED and queued.attempt == 2 and queued.backend_job_id == ""
    assert queued.config["batch"]["micro_batch"] == 1 and queued.config["run"]["attempt"] == 2
    assert queued.resume_from == "/x/step_4"
    assert list(queued.attempts.values_list("number", "state")) == [(1, "failed"), (2, "pending")]


def test_job_token_belongs_to_its_attempt_and_dies_with_it(queued):
    first = Attempt.objects.get(run=queued)
    run_dir_prepare(run=queued, attempt=first)
    token = RunToken.objects.get(run=queued, revoked_at__isnull=True)
    assert token.job_attempt_id == first.pk and token.attempt == 1
    attempt_end(run=queued, state="failed")
    Run.objects.filter(pk=queued.pk).update(status=RunStatus.FAILED)
    queued.refresh_from_db()
    second = run_relaunch(run=queued, cause="hang")
    queued.refresh_from_db()
    assert not token_state(token, queued).live
    run_dir_prepare(run=queued, attempt=second)
    assert RunToken.objects.get(run=queued, revoked_at__isnull=True).job_attempt_id == second.pk
