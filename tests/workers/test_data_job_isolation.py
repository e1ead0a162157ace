"""Count and prep jobs run as the data user (END of CP_JOB_UIDS), never the control plane: a real count job runs as
that user end to end and leaves a report the runs' group can read, and a probe started the way data jobs start is
refused the control plane's secrets, database, Redis socket and a run's directory.

Run as root (the only way to switch users).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from jobs.data.prep import planted
from runs.models import Cluster, JobPhase
from runs.services.data_prep import source_register
from tests.workers import test_job_isolation as isolation
from workers import data_prep
from workers.backends.base import JobState
from workers.backends.local import LocalBackend

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching to a job user needs root"),
]
SENTINEL, UIDS = isolation.SENTINEL, isolation.UIDS
install, job_python = isolation.install, isolation.job_python  # the same fixtures: a var/, a reachable interpreter
DATA_UID = UIDS[1]


@pytest.fixture
def data(install, job_python, settings, seeded):
    settings.JOB_PYTHON = job_python
    settings.PREP_DIR = install / "prep"
    settings.DATA_ROOTS = [install / "data"]
    (install / "data").mkdir(mode=0o700)
    paths = planted.write(planted.corpus(60, seed=5), install / "data", {"en": "text"})
    return paths


def test_a_count_job_runs_as_the_data_user_and_its_report_is_readable_by_runs(data, operator, install, job_python):
    local = Cluster.objects.get(name="local-cpu")
    source = source_register(actor=operator, name="raw-en", language="en", fmt="text", path=str(data["en"]),
                             cluster=local)  # fmt: skip
    assert data_prep.count_start(source.pk).startswith("submitted "), source.count_error
    deadline = time.monotonic() + 240
    while data_prep.count_watch(source.pk):
        assert time.monotonic() < deadline, "the count did not finish"
        time.sleep(0.5)
    source.refresh_from_db()
    folder = install / "prep" / "sources" / f"s{source.pk}"
    assert source.count_status == JobPhase.SUCCEEDED, (source.count_error, (folder / "job/stderr.log").read_text())
    report = folder / "report.json"
    assert report.stat().st_uid == DATA_UID and oct(report.stat().st_mode)[-3:] == "640"
    assert (folder / "job" / "exit.json").stat().st_uid == DATA_UID
    # A run's job (another uid of the jobs' group) reads what a data job wrote, nothing of var/ itself.
    read = [job_python, "-c", f"open({str(report)!r}).read(); open({str(install / 'secret_key')!r})"]
    done = subprocess.run(read, user=UIDS[0] + 7, group=UIDS[0], extra_groups=[], capture_output=True, text=True)
    assert "secret_key" in done.stderr and "PermissionError" in done.stderr, done.stderr


def test_a_data_job_cannot_reach_the_control_plane_or_a_runs_directory(data, install, monkeypatch):
    monkeypatch.setenv("CP_SECRET_KEY", SENTINEL)
    folder = install / "prep" / "p1"
    job_dir = folder / "attempt-1"
    job_dir.mkdir(parents=True)
    fd = os.open(folder / "token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"this-run-token")
    os.close(fd)
    probe = [str(install / "scripts" / "probe.py"), str(install), str(install / "runs" / "run-1")]
    spec = data_prep._spec(
        cluster=Cluster.objects.get(name="local-cpu"), job_dir=job_dir, argv=[], name="cp-prep-probe", hours=1,
        user=data_prep._user("local", folder),
    )  # fmt: skip
    spec = type(spec)(**{**spec.__dict__, "module_argv": [*probe, str(os.getpid()), SENTINEL]})
    spec.env["CP_RUN_DIR"] = str(folder)
    backend = LocalBackend()
    handle = backend.submit(spec)
    deadline = time.monotonic() + 120
    while (status := backend.poll(handle.job_id, job_dir)).state == JobState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status.state == JobState.SUCCEEDED, (job_dir / "stderr.log").read_text()[-3000:]
    result = json.loads((folder / "probe.json").read_text())
    escaped = {name: outcome for name, outcome in result["tries"].items() if not outcome.startswith("refused")}
    assert not escaped, result
    assert len(result["tries"]) == 12
    assert result["own"]["uid"] == DATA_UID and result["own"]["gid"] == UIDS[0] and result["own"]["groups"] == []
