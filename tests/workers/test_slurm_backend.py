"""The Slurm backend against a real one-node Slurm (scripts/slurm-up): submit, poll, fail, cancel, refuse, and how a
job is found once squeue has forgotten it."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.slurm_fixture import slurm_cluster  # noqa: F401  (the lead's conftest may import it too)
from tests.workers import free_port, process_alive, rank_records, wait_for, write_gloo_program
from workers.backends.base import JobState, LaunchError, LaunchSpec
from workers.backends.slurm import (
    SlurmBackend,
    decode_wait_status,
    parse_jobcomp_line,
    status_from_jobcomp,
    status_from_squeue,
)

REPO = Path(__file__).resolve().parents[2]
# Quotes, '$' and a space: the value must reach the ranks unchanged through the generated batch script.
AWKWARD_VALUE = 'it\'s $HOME `x` "q" a b'


def make_spec(tmp_path: Path, program_args: list[str], *, nodes: int = 1, ranks: int = 2, **extra) -> LaunchSpec:
    program = write_gloo_program(tmp_path)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return LaunchSpec(
        run_id=7,
        run_dir=tmp_path / "run",
        module_argv=[str(program), "--out", str(out), *program_args],
        env={"CP_TEST_VALUE": AWKWARD_VALUE},
        nodes=nodes,
        gpus_per_node=ranks,
        accelerator="cpu",
        python=sys.executable,
        workdir=REPO,
        time_limit_min=5,
        master_port=free_port(),
        job_name=f"cp-test-{tmp_path.name}"[:100],
        **extra,
    )


def wait_finished(backend: SlurmBackend, job_id: str, run_dir: Path, timeout_s: float = 120.0):
    return wait_for(lambda: (s := backend.poll(job_id, run_dir)).finished and s, timeout_s, 0.3)


@pytest.fixture
def backend(slurm_cluster):  # noqa: F811
    return SlurmBackend()


def test_two_rank_job_succeeds(backend, slurm_cluster, tmp_path):  # noqa: F811
    spec = make_spec(tmp_path, [])
    handle = backend.submit(spec)
    assert handle.job_id.isdigit()
    script = (spec.run_dir / "job.sbatch").read_text()
    for directive in ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5", "--export=NONE"):
        assert f"#SBATCH {directive}" in script
    assert f"#SBATCH --chdir={REPO}" in script
    assert "--gpus-per-node" not in script  # a CPU cluster has no GPUs to ask for
    assert json.loads((spec.run_dir / "job.json").read_text())["job_id"] == handle.job_id

    status = wait_finished(backend, handle.job_id, spec.run_dir)
    assert status.state == JobState.SUCCEEDED, (status, (spec.run_dir / "stderr.log").read_text())
    assert status.exit_code == 0

    out = tmp_path / "out"
    assert json.loads((out / "result.json").read_text()) == {"sum": 3.0, "world_size": 2}
    ranks = rank_records(out, 2)
    assert ranks is not None
    assert sorted(r["local_rank"] for r in ranks) == [0, 1]
    for rank in ranks:
        assert rank["cwd"] == str(REPO)
        assert rank["env"] == {
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "MASTER_ADDR": slurm_cluster.nodes[0],
            "MASTER_PORT": str(spec.master_port),
            "CP_TEST_VALUE": AWKWARD_VALUE,
        }
    stdout = (spec.run_dir / "stdout.log").read_text()
    assert "rank 0 all-reduced 3.0" in stdout and "rank 1 all-reduced 3.0" in stdout

    # The record slurmctld wrote for this very job is what poll falls back to once squeue forgets the job.
    from_log = wait_for(lambda: backend.jobcomp_status(handle.job_id, spec.run_dir), 10)
    assert (from_log.state, from_log.exit_code) == (JobState.SUCCEEDED, 0)


def test_failing_job_reports_its_exit_code(backend, tmp_path):
    spec = make_spec(tmp_path, ["--exit-code", "3"])
    handle = backend.submit(spec)
    status = wait_finished(backend, handle.job_id, spec.run_dir)
    assert status.state == JobState.FAILED
    assert status.exit_code == 3
    assert status.reason.startswith("FAILED")
    assert "exits with 3" in (spec.run_dir / "stderr.log").read_text()

    # The real completion-log line for the job: parsed field by field, and mapped the same way squeue's view is.
    log_path = backend.jobcomp_path()
    assert log_path is not None
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith(f"JobId={handle.job_id} ")]
    record = parse_jobcomp_line(lines[-1])
    assert record["JobState"] == "FAILED"
    assert record["ExitCode"] == "3:0"
    assert record["Name"] == spec.job_name
    assert record["WorkDir"] == str(REPO)
    from_log = backend.jobcomp_status(handle.job_id, spec.run_dir)
    assert (from_log.state, from_log.exit_code) == (JobState.FAILED, 3)

    # A record older than this run's submission belongs to an earlier job with the same id (Slurm's state wiped).
    job = json.loads((spec.run_dir / "job.json").read_text())
    job["submitted_at"] = time.time() + 3600
    (spec.run_dir / "job.json").write_text(json.dumps(job))
    assert backend.jobcomp_status(handle.job_id, spec.run_dir) is None


def test_cancel_stops_a_running_job(backend, tmp_path):
    spec = make_spec(tmp_path, ["--sleep", "300"])
    handle = backend.submit(spec)
    ranks = wait_for(lambda: rank_records(tmp_path / "out", 2), 90)
    assert backend.poll(handle.job_id, spec.run_dir).state == JobState.RUNNING
    pids = [r["pid"] for r in ranks]
    assert all(process_alive(pid) for pid in pids)

    backend.cancel(handle.job_id, spec.run_dir)
    status = backend.poll(handle.job_id, spec.run_dir)
    assert status.state == JobState.CANCELLED
    assert not any(process_alive(pid) for pid in pids)
    backend.cancel(handle.job_id, spec.run_dir)  # idempotent
    assert backend.poll(handle.job_id, spec.run_dir).state == JobState.CANCELLED
    from_log = wait_for(lambda: backend.jobcomp_status(handle.job_id, spec.run_dir), 10)
    assert from_log.state == JobState.CANCELLED


def test_impossible_requests_are_refused(backend, slurm_cluster, tmp_path):  # noqa: F811
    # One CPU per node, so that only the node count is out of reach (Slurm checks the CPU total first).
    too_many_nodes = make_spec(tmp_path, [], nodes=len(slurm_cluster.nodes) + 1, ranks=1)
    with pytest.raises(LaunchError, match="Node count specification invalid"):
        SlurmBackend(cpus_per_task=1).submit(too_many_nodes)

    too_many_ranks = make_spec(tmp_path, [], ranks=slurm_cluster.cpus_per_node + 1)
    with pytest.raises(LaunchError, match="More processors requested than permitted"):
        backend.submit(too_many_ranks)

    no_such_partition = make_spec(tmp_path, [], partition="no-such-partition")
    with pytest.raises(LaunchError, match="Invalid partition name specified"):
        backend.submit(no_such_partition)


def test_unsafe_values_never_reach_the_script(backend, tmp_path):
    spec = make_spec(tmp_path, [])
    with pytest.raises(LaunchError, match="job name"):
        backend.submit(replace(spec, job_name="a b"))
    with pytest.raises(LaunchError, match="environment variable name"):
        backend.submit(replace(spec, env={"A B": "1"}))
    with pytest.raises(LaunchError, match="run directory"):
        backend.submit(replace(spec, run_dir=tmp_path / "with space"))
    with pytest.raises(LaunchError, match="program"):
        backend.submit(replace(spec, module_argv=["-c", "print(1)"]))
    assert not (tmp_path / "run" / "job.json").exists()


def test_a_job_slurm_never_heard_of_is_lost(backend, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # The largest id Slurm hands out; this short-lived cluster never gets there.
    status = backend.poll("67108863", run_dir)
    assert status.state == JobState.LOST
    assert "67108863" in status.reason


def test_failure_reasons_keep_slurms_state_for_the_watcher():
    # Memory limits and time limits are not enforced by this test cluster (no cgroups, minutes-long limits), so the
    # mapping of those end states is checked on the values squeue reports for them.
    oom = status_from_squeue({"job_id": 5, "job_state": "OUT_OF_MEMORY", "exit_code": 0, "state_reason": "OutOfMemory"})
    assert oom.state == JobState.FAILED
    assert oom.reason.startswith("OUT_OF_MEMORY")
    timeout = status_from_squeue({"job_id": 5, "job_state": "TIMEOUT", "exit_code": 0, "state_reason": "TimeLimit"})
    assert (timeout.state, timeout.reason.split()[0]) == (JobState.FAILED, "TIMEOUT")
    assert status_from_squeue({"job_state": "NODE_FAIL", "exit_code": 0}).state == JobState.FAILED
    assert status_from_squeue({"job_state": "COMPLETING", "exit_code": 0}).state == JobState.RUNNING
    assert status_from_squeue({"job_state": "CONFIGURING", "exit_code": 0}).state == JobState.PENDING
    cancelled = status_from_jobcomp(parse_jobcomp_line("JobId=9 JobState=CANCELLED Partition=debug ExitCode=0:15"))
    assert (cancelled.state, cancelled.exit_code) == (JobState.CANCELLED, -15)


def test_wait_status_decoding():
    assert decode_wait_status(0) == 0
    assert decode_wait_status(768) == 3  # exit 3, as squeue --json shows it
    assert decode_wait_status(15) == -15  # killed by SIGTERM
