"""Quantize and inference-server jobs run as their run's own user, never the control plane's: a real quantize job
of a trained checkpoint runs as the run's uid end to end, and a probe started the way those jobs start is refused
the control plane's secrets, database, Redis socket and another run's directory.

Run as root (the only way to switch users).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from django.test import override_settings

from runs.models import Artifact, Checkpoint, JobPhase, Run, RunStatus
from tests.jobs.conftest import describe, run_trainer, write_run
from tests.jobs.conftest import tiny_run as tiny_run_config
from tests.runs.factories import tiny_run
from tests.workers import test_job_isolation as isolation
from workers import serving
from workers.backends.base import JobState
from workers.backends.local import LocalBackend

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching to a job user needs root"),
]
SENTINEL, UIDS = isolation.SENTINEL, isolation.UIDS
install, job_python = isolation.install, isolation.job_python  # the same fixtures: a var/, a reachable interpreter
WIDE = (UIDS[0], UIDS[0] + 60000)  # database ids grow over a session; the test's users stay in this range


def _run_in(install: Path, operator) -> tuple[Run, Path]:
    run = tiny_run(owner=operator, name="isolated-export")
    run_dir = install / "runs" / f"run-{run.pk}"
    Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir), status=RunStatus.SUCCEEDED)
    run.refresh_from_db()
    return run, run_dir


def test_a_quantize_job_runs_as_its_runs_user_and_writes_an_artifact_the_control_plane_reads(
    install, job_python, seeded, operator, settings
):
    settings.JOB_PYTHON = job_python
    with override_settings(JOB_UIDS=WIDE):
        run, run_dir = _run_in(install, operator)
        dense = {"arch": "dense", "attention": "mha", "num_heads": 4}
        write_run(run_dir, tiny_run_config(training={"total_steps": 2}, model=dense))
        proc = run_trainer(run_dir, launcher="none")  # as the control plane: the hand-over must fix ownership
        assert proc.returncode == 0, describe(proc)
        folder = run_dir / "checkpoints" / "step_000002"
        checkpoint = Checkpoint.objects.create(run=run, step=2, tag=folder.name, path=str(folder))
        artifact = Artifact.objects.create(
            run=run, checkpoint=checkpoint, step=2, tag=folder.name, methods=["int8"], created_by=operator,
            directory=str(run_dir / "artifacts" / "a1"),
        )  # fmt: skip
        assert serving.quantize_start(artifact.pk).startswith("submitted"), artifact
        deadline = time.monotonic() + 420
        while serving.quantize_watch(artifact.pk):
            assert time.monotonic() < deadline, (run_dir / "artifacts/a1/job/stderr.log").read_text()[-3000:]
            time.sleep(0.5)
    artifact.refresh_from_db()
    log = (run_dir / "artifacts/a1/job/stderr.log").read_text()[-3000:]
    assert artifact.status == JobPhase.SUCCEEDED, (artifact.error, log)
    uid = WIDE[0] + run.pk
    out = run_dir / "artifacts" / "a1"
    assert [a["method"] for a in artifact.report["artifacts"]] == ["int8"]
    for made in (out / "report.json", out / "int8", out / "job" / "exit.json"):
        assert made.stat().st_uid == uid, made  # written by the job itself, as the run's user
    assert run_dir.stat().st_uid == uid and oct(run_dir.stat().st_mode)[-3:] == "700"
    assert oct((out / "report.json").stat().st_mode)[-3:] == "600"  # the job's umask: its files are its own


def test_a_server_started_as_deployments_are_cannot_reach_the_control_plane_or_another_run(
    install, job_python, seeded, operator, settings, monkeypatch
):
    """The probe is started through serving's own spec (run user, interpreter, environment), as the server is."""
    monkeypatch.setenv("CP_SECRET_KEY", SENTINEL)
    settings.JOB_PYTHON = job_python
    with override_settings(JOB_UIDS=WIDE):
        run, run_dir = _run_in(install, operator)
        state = run_dir / "artifacts" / "a1" / "deployments" / "d1"
        state.mkdir(parents=True)
        fd = os.open(run_dir / "token", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"this-run-token")
        os.close(fd)
        probe = [str(install / "scripts" / "probe.py"), str(install), str(install / "runs" / "run-1")]
        spec = serving._spec(
            cluster=run.cluster, job_dir=state, module_argv=[*probe, str(os.getpid()), SENTINEL],
            name="cp-serve-probe", hours=1, user=serving.run_user(run, "local"),
        )  # fmt: skip
        spec.env["CP_RUN_DIR"] = str(run_dir)
        backend = LocalBackend()
        handle = backend.submit(spec)
        deadline = time.monotonic() + 120
        while (status := backend.poll(handle.job_id, state)).state == JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert status.state == JobState.SUCCEEDED, (state / "stderr.log").read_text()[-3000:]
    result = json.loads((run_dir / "probe.json").read_text())
    escaped = {name: outcome for name, outcome in result["tries"].items() if not outcome.startswith("refused")}
    assert not escaped, result
    assert len(result["tries"]) == 12
    assert result["own"]["uid"] == WIDE[0] + run.pk and result["own"]["groups"] == []
    assert result["own"]["token"] == len("this-run-token")
