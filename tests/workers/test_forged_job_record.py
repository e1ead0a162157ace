"""job.json lies in a folder the job owns: a forged record naming someone else's process (the control plane's, one
started before the attempt, one without the attempt's key) is neither re-attached to nor signalled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.backends.local import LocalBackend
from workers.backends.procs import start_ticks

KEY = "attempt-forged-0001"


def _victim(env_key: str | None = None, **popen) -> subprocess.Popen:
    """A process in its own session, as a web server or another run's job would be."""
    env = {"PATH": os.environ["PATH"]}
    if env_key:
        env["CP_ATTEMPT_KEY"] = env_key
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], env=env, start_new_session=True, **popen
    )


def _forge(run_dir: Path, proc: subprocess.Popen, key: str = KEY) -> str:
    for _ in range(50):
        ticks = start_ticks(proc.pid)
        if ticks is not None:
            break
        time.sleep(0.05)
    record = {"pid": proc.pid, "pgid": proc.pid, "start_ticks": ticks, "attempt_key": key, "argv": []}
    (run_dir / "job.json").write_text(json.dumps(record))
    return f"local:{proc.pid}:{ticks}"


def _still_alive(proc: subprocess.Popen) -> bool:
    time.sleep(0.3)
    return proc.poll() is None


def test_a_forged_record_of_a_process_without_the_attempts_key_is_not_followed_or_killed(tmp_path):
    victim = _victim()
    another = _victim(env_key="another-attempts-key")
    try:
        _forge(tmp_path, victim)
        backend = LocalBackend()
        assert backend.find(KEY, tmp_path) is None
        job_id = _forge(tmp_path, another)
        assert backend.find(KEY, tmp_path) is None
        backend.cancel(job_id, tmp_path)  # the record names KEY: a process of another attempt is not stopped
        assert _still_alive(another)
    finally:
        victim.kill()
        another.kill()


def test_a_forged_record_of_a_process_started_before_the_attempt_is_not_followed(tmp_path):
    victim = _victim(env_key=KEY)
    try:
        _forge(tmp_path, victim)
        backend = LocalBackend()
        assert backend.find(KEY, tmp_path) is not None  # the job's own process: followed
        assert backend.find(KEY, tmp_path, not_before=time.time() + 30) is None  # older than the attempt: not
    finally:
        victim.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="a run directory of another user needs root")
def test_a_forged_record_naming_the_control_planes_process_is_not_signalled_even_with_the_key(tmp_path):
    """The job knows its key and could name a process of the control plane's that carries it (or another run's
    key): a run directory owned by the job's user makes only that user's processes followable and killable."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chown(run_dir, 231777, 231000)
    victim = _victim(env_key=KEY)  # the control plane's user (root)
    other_key = _victim(env_key="another-runs-key")
    try:
        job_id = _forge(run_dir, victim)
        backend = LocalBackend()
        assert backend.find(KEY, run_dir) is None
        backend.cancel(job_id, run_dir)
        assert _still_alive(victim)
        job_id = _forge(run_dir, other_key, key="another-runs-key")
        backend.cancel(job_id, run_dir)  # reaps by the record's key, but only the run's user's processes
        assert _still_alive(other_key)
    finally:
        victim.kill()
        other_key.kill()


def test_the_jobs_own_leader_is_still_found_and_cancelled(tmp_path):
    job = _victim(env_key=KEY)
    try:
        job_id = _forge(tmp_path, job)
        backend = LocalBackend()
        found = backend.find(KEY, tmp_path, not_before=time.time() - 60)
        assert found is not None and found.job_id == job_id
        backend.cancel(job_id, tmp_path)
        assert job.wait(timeout=15) is not None
    finally:
        job.kill()
