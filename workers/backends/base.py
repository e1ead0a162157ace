from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend needs to start one run. Commands are argument lists, never shell strings."""

    run_id: int
    run_dir: Path
    module_argv: list[str]  # the per-rank program, e.g. ["-m", "jobs.train", "--run-dir", DIR] or [script, args...]
    env: dict[str, str]  # extra environment for every rank (never secrets other than the run's own token file path)
    nodes: int
    gpus_per_node: int  # ranks per node on CPU clusters
    accelerator: str  # "cpu" | "cuda"
    python: str  # interpreter on the nodes
    workdir: Path  # repository root on the nodes (jobs/ importable from here)
    # Where the ranks start; None: workdir. An own script starts in its run directory, with workdir on PYTHONPATH.
    cwd: Path | None = None
    partition: str = ""
    time_limit_min: int = 60
    hostfile: str = ""
    master_port: int = 29500
    job_name: str = ""
    # One process, no DeepSpeed launcher: the quantize, benchmark and inference-server jobs.
    single_process: bool = False
    # CPUs per rank on Slurm; 0: the backend's choice (a node's CPUs shared among its ranks). A data-prep driver
    # asks for 1, leaving the node's other CPUs to the job arrays it submits.
    cpus_per_task: int = 0
    # The attempt's idempotency key (runs.Attempt): every process of the job carries it as CP_ATTEMPT_KEY and the
    # backend records it with the job, so submit finds the attempt's job instead of starting a second one, and
    # cancel stops that job's processes and no one else's.
    attempt_key: str = ""
    # The unprivileged user and group the job runs as on the local backend (workers.backends.jobuser); None: the
    # worker's own account.
    job_uid: int | None = None
    job_gid: int | None = None
    job_umask: int = 0o077

    @property
    def start_dir(self) -> Path:
        return self.cwd or self.workdir


@dataclass(frozen=True)
class JobHandle:
    job_id: str  # backend's id: "local:<pgid>:<start_ticks>", a Slurm job id, ...
    detail: dict = field(default_factory=dict)


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # the backend no longer knows the job and left no record of how it ended


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state not in (JobState.PENDING, JobState.RUNNING)


class Backend(Protocol):
    name: str

    def submit(self, spec: LaunchSpec) -> JobHandle:
        """Start the job; stdout/stderr go to run_dir/stdout.log and run_dir/stderr.log. Raises LaunchError.

        Idempotent per spec.attempt_key: when the backend already has a job of that attempt (running or ended),
        its handle comes back with detail["existing"] = True and nothing is started."""

    def find(self, attempt_key: str, run_dir: Path, *, not_before: float = 0.0) -> JobHandle | None:
        """The job this backend started for the attempt, running or ended; None when it started none.

        not_before: when the attempt began (epoch seconds); a backend that reads a job-written record checks that
        the process it names started after it (the local backend)."""

    def poll(self, job_id: str, run_dir: Path) -> JobStatus:
        """Current state; safe to call from a restarted worker (no in-memory state)."""

    def cancel(self, job_id: str, run_dir: Path) -> None:
        """Stop the job and every process it started; idempotent."""


class LaunchError(RuntimeError):
    """The backend refused or failed to start the job; the message says why in the user's terms."""
