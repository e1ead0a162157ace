"""Exactly one job per attempt: racing launches, a launcher that died after submitting, start-up re-queues with
real Celery workers. Every launch below is the real task body on a real DeepSpeed CPU job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings

from jobs.launch.reap import tagged_pids
from runs.models import Attempt, AuditEvent, Run, RunStatus
from runs.services.attempts import attempt_claim
from runs.services.rundir import run_dir_prepare
from tests.workers.test_launch_and_watch import UNREACHABLE, _tiny
from workers import launching, watching
from workers.backends import get_backend

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runs_dir(tmp_path):
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        yield tmp_path


def _follow(run: Run, timeout: float = 240) -> Run:
    deadline = time.monotonic() + timeout
    while watching.watch_once(run.pk):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    run.refresh_from_db()
    return run


def _steps_written(run: Run) -> list[int]:
    steps = []
    for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "metrics" and "loss" in record.get("values", {}):
            steps.append(record["step"])
    return steps


def _root_processes(key: str) -> list[int]:
    """Processes of the attempt whose parent is not: one per job started."""
    tagged = set(tagged_pids(key))
    roots = []
    for pid in tagged:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid not in tagged:
            roots.append(pid)
    return roots


def test_a_hundred_racing_launches_start_one_job(seeded, operator, runs_dir):
    run = _tiny(operator, name="raced", steps=3)

    def launch(_: int) -> str:
        try:
            return launching.launch_run(run.pk)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:  # 20 database connections at a time, 100 launches
        outcomes = list(pool.map(launch, range(100)))
    submitted = [o for o in outcomes if o.startswith("submitted")]
    assert len(submitted) == 1, outcomes
    assert set(outcomes) - set(submitted) <= {"taken by another worker", "already submitted"}
    attempt = Attempt.objects.get(run=run)
    assert len(_root_processes(attempt.idempotency_key)) <= 1
    run = _follow(run)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    assert AuditEvent.objects.filter(run_id=run.pk, action="run.submitted").count() == 1
    steps = _steps_written(run)
    assert sorted(steps) == sorted(set(steps)) == [1, 2, 3], "a second job would write every step twice"
    attempt.refresh_from_db()
    assert attempt.state == "succeeded" and attempt.backend_job_id == run.backend_job_id


@pytest.mark.parametrize("record_left", ["job.json", "leader.json only"])
def test_a_launcher_that_died_after_submitting_is_followed_not_repeated(seeded, operator, runs_dir, record_left):
    run = _tiny(operator, name="orphan", steps=3)
    # The first launcher: claims, submits, and dies before recording the job (its lease then runs out).
    # (a long lease here, as if it were still renewing while this test submits under load)
    claim = attempt_claim(run=run, worker="dead-host:1", lease_s=300)
    run_dir = run_dir_prepare(run=run, attempt=claim.attempt)
    Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir), status=RunStatus.LAUNCHING)
    handle = get_backend("local").submit(launching.launch_spec(run, run_dir, claim.attempt))
    if record_left != "job.json":
        deadline = time.monotonic() + 30
        while not (run_dir / "leader.json").exists():  # written by the job itself
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (run_dir / "job.json").unlink()
    assert launching.launch_run(run.pk) == "taken by another worker"  # the lease still holds
    Attempt.objects.filter(pk=claim.attempt.pk).update(lease_until="2000-01-01T00:00Z")
    assert launching.launch_run(run.pk) == f"re-attached {handle.job_id}"
    run = _follow(run)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    assert run.backend_job_id == handle.job_id
    assert sorted(_steps_written(run)) == [1, 2, 3]


def test_cancel_stops_the_attempt_and_spares_a_process_of_another(seeded, operator, runs_dir):
    """A bystander that looks like a DeepSpeed launch (same module name on its command line) survives."""
    bystander = subprocess.Popen(
        ["python3", "-c", "import time; time.sleep(120)", "-m", "deepspeed.launcher.launch"],
        env={**os.environ, "CP_ATTEMPT_KEY": "cp-0-a1-someoneelse"},
        start_new_session=True,
    )
    try:
        run = _tiny(operator, name="cancelled", steps=400)
        assert launching.launch_run(run.pk).startswith("submitted")
        key = Attempt.objects.get(run=run).idempotency_key
        deadline = time.monotonic() + 60
        while len(tagged_pids(key)) < 3:  # session leader, launcher, ranks
            assert time.monotonic() < deadline
            time.sleep(0.2)
        from runs.services.runs import run_cancel

        run.refresh_from_db()
        run_cancel(actor=operator, run=run)
        assert launching.stop_run(run.pk).startswith("stopped")
        assert tagged_pids(key) == []
        assert bystander.poll() is None, "a process of another attempt was stopped"
        assert Attempt.objects.get(run=run).state == "cancelled"
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()
