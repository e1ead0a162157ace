"""The local backend starts a real DeepSpeed launcher process group, follows it without in-memory state, stops it.

Each job test runs twice: with the launcher started for the job (exec) and forked by the warm launcher (warm).
"""

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workers.backends import warm
from workers.backends.base import JobState, LaunchSpec
from workers.backends.local import LocalBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def warm_var_dir(tmp_path_factory):
    """A warm launcher of this interpreter, serving from its own var folder for this module's tests."""
    from django.conf import settings

    var_dir = tmp_path_factory.mktemp("warm")
    saved = settings.VAR_DIR, settings.WARM_LAUNCHER
    settings.VAR_DIR, settings.WARM_LAUNCHER = var_dir, True
    try:
        assert warm.ensure_started(sys.executable)
        sock, pid_file = warm._paths(sys.executable)
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), (var_dir / "launcher" / "warm-launcher.log").read_text()
        yield var_dir
    finally:
        settings.VAR_DIR, settings.WARM_LAUNCHER = saved
    pid = warm._starting_pid(pid_file)
    if pid is not None:
        import os
        import signal

        os.kill(pid, signal.SIGTERM)


@pytest.fixture(params=["exec", "warm"])
def mode(request, settings):
    if request.param == "warm":
        settings.VAR_DIR = request.getfixturevalue("warm_var_dir")
        settings.WARM_LAUNCHER = True
    else:
        settings.WARM_LAUNCHER = False
    return request.param


def _started_as(run_dir: Path, mode: str) -> None:
    record = json.loads((run_dir / "job.json").read_text())
    assert record.get("warm", False) == (mode == "warm"), record


def _spec(run_dir: Path, script: Path, ranks: int = 2) -> LaunchSpec:
    return LaunchSpec(
        run_id=1,
        run_dir=run_dir,
        module_argv=[str(script)],
        env={},
        nodes=1,
        gpus_per_node=ranks,
        accelerator="cpu",
        python=sys.executable,
        workdir=ROOT,
        master_port=29000 + (hash(str(run_dir)) % 5000),
    )


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


def _wait(backend, job_id, run_dir, *, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = backend.poll(job_id, run_dir)
        if status.finished:
            return status
        time.sleep(0.3)
    raise AssertionError(f"job still running after {timeout} s: {(run_dir / 'stderr.log').read_text()[-2000:]}")


def test_two_ranks_run_and_succeed(tmp_path, mode):
    script = _script(
        tmp_path,
        """
        import os
        # One string, one write: the ranks run unbuffered, and print's separate pieces would interleave.
        print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}", flush=True)
    """,
    )
    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, script))
    _started_as(tmp_path, mode)
    status = _wait(backend, handle.job_id, tmp_path)
    assert status.state == JobState.SUCCEEDED and status.exit_code == 0
    out = (tmp_path / "stdout.log").read_text()
    assert "rank 0 of 2" in out and "rank 1 of 2" in out, (
        out + "\n--- stderr:\n" + (tmp_path / "stderr.log").read_text()
    )


def test_a_failing_rank_fails_the_job_with_its_code(tmp_path, mode):
    script = _script(
        tmp_path,
        """
        import os, sys
        sys.exit(3 if os.environ["RANK"] == "1" else 0)
    """,
    )
    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, script))
    _started_as(tmp_path, mode)
    status = _wait(backend, handle.job_id, tmp_path)
    assert status.state == JobState.FAILED and status.exit_code == 3


def test_a_new_backend_reattaches_and_cancel_stops_every_rank(tmp_path, mode):
    script = _script(
        tmp_path,
        """
        import os, time
        open(os.path.join(os.environ.get("CP_OUT", "."), f"pid-{os.environ['RANK']}"), "w").write(str(os.getpid()))
        time.sleep(300)
    """,
    )
    spec = _spec(tmp_path, script)
    spec = LaunchSpec(**{**spec.__dict__, "env": {"CP_OUT": str(tmp_path)}})
    handle = LocalBackend().submit(spec)
    _started_as(tmp_path, mode)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(tmp_path.glob("pid-*"))) < 2:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
    assert len(pids) == 2
    restarted = LocalBackend()  # nothing in memory: a restarted worker
    assert restarted.poll(handle.job_id, tmp_path).state == JobState.RUNNING
    restarted.cancel(handle.job_id, tmp_path)
    status = _wait(restarted, handle.job_id, tmp_path, timeout=30)
    assert status.state == JobState.CANCELLED
    time.sleep(0.5)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


def test_a_reused_pid_is_not_mistaken_for_the_job(tmp_path):
    import os

    from workers.backends.procs import start_ticks

    me = os.getpid()
    fake_job = f"local:{me}:{start_ticks(me) + 1}"  # our pid, another start time: the job's pid was reused
    status = LocalBackend().poll(fake_job, tmp_path)
    assert status.finished and status.state == JobState.LOST


def test_without_a_warm_launcher_the_job_starts_the_launcher_itself_and_one_is_started(tmp_path, settings):
    settings.VAR_DIR, settings.WARM_LAUNCHER = tmp_path / "var", True
    script = _script(tmp_path, "print('ran', flush=True)\n")
    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, script))
    _started_as(tmp_path, "exec")
    assert _wait(backend, handle.job_id, tmp_path).state == JobState.SUCCEEDED
    sock, pid_file = warm._paths(sys.executable)
    pid = warm._starting_pid(pid_file)
    assert pid is not None  # started for the next launch
    import os
    import signal

    os.kill(pid, signal.SIGTERM)


def test_the_warm_launcher_socket_is_private_to_its_user(warm_var_dir):
    from django.conf import settings

    saved = settings.VAR_DIR
    settings.VAR_DIR = warm_var_dir
    try:
        sock, _ = warm._paths(sys.executable)
    finally:
        settings.VAR_DIR = saved
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.parent.stat().st_mode & 0o777 == 0o700
