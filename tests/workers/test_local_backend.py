"""The local backend starts a real DeepSpeed launcher process group, follows it without in-memory state, stops it."""

import sys
import textwrap
import time
from pathlib import Path

from workers.backends.base import JobState, LaunchSpec
from workers.backends.local import LocalBackend

ROOT = Path(__file__).resolve().parents[2]


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


def test_two_ranks_run_and_succeed(tmp_path):
    script = _script(
        tmp_path,
        """
        import os
        print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], flush=True)
    """,
    )
    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, script))
    status = _wait(backend, handle.job_id, tmp_path)
    assert status.state == JobState.SUCCEEDED and status.exit_code == 0
    out = (tmp_path / "stdout.log").read_text()
    assert "rank 0 of 2" in out and "rank 1 of 2" in out


def test_a_failing_rank_fails_the_job_with_its_code(tmp_path):
    script = _script(
        tmp_path,
        """
        import os, sys
        sys.exit(3 if os.environ["RANK"] == "1" else 0)
    """,
    )
    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, script))
    status = _wait(backend, handle.job_id, tmp_path)
    assert status.state == JobState.FAILED and status.exit_code != 0


def test_a_new_backend_reattaches_and_cancel_stops_every_rank(tmp_path):
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
