"""Slurm backend: one batch job per run, one Slurm task per rank, driven through Slurm's command line.

``pyslurm`` does not build against Slurm 22.05, so everything goes through ``sbatch --parsable``,
``squeue --json``, ``scancel`` and ``scontrol``. Without slurmdbd ``sacct`` knows nothing, so a job that has left
the controller's memory (``MinJobAge`` after it ended) is looked up in the ``jobcomp/filetxt`` log.

Files this backend writes in the run directory:
- ``job.sbatch``  the batch script as submitted (re-submittable by hand with ``sbatch job.sbatch``);
- ``job.json``    ``{"backend": "slurm", "job_id", "job_name", "submitted_at"}``: tells a job-completion record of
                  this submission from an older one with the same id (ids restart when Slurm's state is wiped);
- ``stdout.log`` / ``stderr.log``  written by Slurm.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from datetime import datetime
from pathlib import Path

from jobs.common.atomic import read_json, write_atomic, write_json
from workers.backends.base import JobHandle, JobState, JobStatus, LaunchError, LaunchSpec
from workers.backends.commands import job_env, rank_argv

# Values written into ``#SBATCH`` lines are not shell-parsed, so they cannot be quoted: they must not need it.
# '%' is refused too because sbatch expands %j, %u, ... in --output/--error.
DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_@+=:,./-]+\Z")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")
JOB_ID = re.compile(r"\d+\Z")

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
FAILED_STATES = {
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "REVOKED",
}


class SlurmUnavailable(RuntimeError):
    """Slurm's controller did not answer; the job's state is unknown, not lost. Poll again later."""


def decode_wait_status(raw: int) -> int:
    """Slurm stores a job's exit as a wait(2) status: ``exit 3`` is 768. A signal becomes its negative number,
    as in Python's ``Popen.returncode``."""
    signal = raw & 0x7F
    if signal:
        return -signal
    return (raw >> 8) & 0xFF


def decode_exit_pair(text: str) -> int | None:
    """The ``ExitCode=3:0`` (code:signal) form of scontrol and the job-completion log."""
    code, _, signal = text.partition(":")
    try:
        code_i, signal_i = int(code), int(signal or 0)
    except ValueError:
        return None
    return -signal_i if signal_i else code_i


def status_from_state(state: str, exit_code: int | None, detail: str = "") -> JobStatus:
    """Map a Slurm job state to ours. The reason keeps Slurm's state name (OUT_OF_MEMORY, TIMEOUT, ...) first so a
    watcher can classify the failure from it."""
    suffix = f" ({detail})" if detail and detail != "None" else ""
    if state in PENDING_STATES:
        return JobStatus(JobState.PENDING, None, f"{state}{suffix}")
    if state in RUNNING_STATES:
        return JobStatus(JobState.RUNNING, None, f"{state}{suffix}")
    if state == "COMPLETED":
        return JobStatus(JobState.SUCCEEDED, exit_code, "")
    if state.startswith("CANCELLED"):
        return JobStatus(JobState.CANCELLED, exit_code, f"CANCELLED{suffix}")
    if state in FAILED_STATES:
        return JobStatus(JobState.FAILED, exit_code, f"{state}{suffix}; exit code {exit_code}")
    # A state newer than this code: report it running so that hang detection, not a wrong verdict, deals with it.
    return JobStatus(JobState.RUNNING, None, f"unknown Slurm state {state}{suffix}")


def status_from_squeue(job: dict) -> JobStatus:
    state = job.get("job_state", "")
    if isinstance(state, list):  # newer Slurm releases give [base state, flags...]
        state = state[0] if state else ""
    raw = job.get("exit_code")
    if isinstance(raw, dict):  # newer releases: {"status": [...], "return_code": N, "signal": {...}}
        raw = None
    exit_code = decode_wait_status(raw) if isinstance(raw, int) else None
    return status_from_state(str(state), exit_code, str(job.get("state_reason") or ""))


_JOBCOMP_FIELD = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)")


def parse_jobcomp_line(line: str) -> dict[str, str]:
    """One ``jobcomp/filetxt`` record: ``JobId=1 UserId=root(0) ... JobState=FAILED ... ExitCode=3:0``.
    A value runs to the next `` Key=``, so values with spaces (a work directory) survive."""
    return {m.group(1): m.group(2) for m in _JOBCOMP_FIELD.finditer(line.strip())}


def status_from_jobcomp(record: dict[str, str]) -> JobStatus:
    exit_code = decode_exit_pair(record.get("ExitCode", ""))
    state = record.get("JobState", "").split()[0] if record.get("JobState") else ""
    return status_from_state(state, exit_code, "from the job-completion log")


def _slurm_time(text: str) -> float | None:
    """Slurm prints local time without a zone, as the controller's clock saw it."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


class SlurmBackend:
    name = "slurm"

    def __init__(
        self,
        *,
        cpus_per_task: int | None = None,
        cancel_timeout_s: float = 60.0,
        poll_interval_s: float = 0.5,
        command_timeout_s: float = 60.0,
        clock_skew_s: float = 300.0,
    ) -> None:
        """``cpus_per_task`` None: the CPUs of the smallest node of the partition, split evenly among its ranks.
        ``clock_skew_s``: how far the controller's clock may trail ours when matching job-completion records."""
        self.cpus_per_task = cpus_per_task
        self.cancel_timeout_s = cancel_timeout_s
        self.poll_interval_s = poll_interval_s
        self.command_timeout_s = command_timeout_s
        self.clock_skew_s = clock_skew_s
        self._jobcomp_path: Path | None = None

    # -- submit ---------------------------------------------------------------------------------------------

    def find(self, attempt_key: str, run_dir: Path, *, not_before: float = 0.0) -> JobHandle | None:
        """The attempt's job: from job.json in the run directory, else from the controller, which keeps the key as
        the job's comment (a worker that died between sbatch and writing job.json)."""
        if not attempt_key:
            return None
        record = read_json(Path(run_dir).resolve() / "job.json") or {}
        if record.get("attempt_key") == attempt_key and JOB_ID.match(str(record.get("job_id", ""))):
            return JobHandle(job_id=record["job_id"], detail={**record, "existing": True})
        result = self._run(["squeue", "--json", "-t", "all"])
        if result.returncode != 0:
            raise SlurmUnavailable(f"squeue failed: {_errors(result.stderr) or f'exit code {result.returncode}'}")
        try:
            jobs = json.loads(result.stdout).get("jobs", [])
        except json.JSONDecodeError as exc:
            raise SlurmUnavailable(f"squeue --json answered something that is not JSON: {exc}") from exc
        for job in jobs:
            if job.get("comment") == attempt_key:
                job_id = str(job.get("job_id"))
                found = {"backend": self.name, "job_id": job_id, "job_name": job.get("name", ""),
                         "submitted_at": job.get("submit_time"), "attempt_key": attempt_key}  # fmt: skip
                write_json(Path(run_dir).resolve() / "job.json", found, indent=2)
                return JobHandle(job_id=job_id, detail={**found, "existing": True})
        return None

    def submit(self, spec: LaunchSpec) -> JobHandle:
        run_dir = Path(spec.run_dir).resolve()
        existing = self.find(spec.attempt_key, run_dir)
        if existing is not None:
            return existing
        run_dir.mkdir(parents=True, exist_ok=True)
        job_name = spec.job_name or f"run-{spec.run_id}"
        cpus = spec.cpus_per_task or self.cpus_per_task or self._cpus_per_task(spec.partition, spec.gpus_per_node)
        script = self.render_script(spec, job_name=job_name, cpus_per_task=cpus)
        script_path = run_dir / "job.sbatch"
        # The script exports the job's environment, which may hold the run's token: readable by its owner only.
        write_atomic(script_path, script, mode=0o600)
        submitted_at = time.time()
        result = self._run(["sbatch", "--parsable", str(script_path)], cwd=run_dir)
        if result.returncode != 0:
            message = _errors(result.stderr) or f"sbatch exited with code {result.returncode}"
            raise LaunchError(f"Slurm refused the job: {message}")
        job_id = result.stdout.strip().splitlines()[-1].split(";")[0] if result.stdout.strip() else ""
        if not JOB_ID.match(job_id):
            raise LaunchError(f"sbatch answered without a job id: {result.stdout.strip()!r}")
        record = {
            "backend": self.name,
            "job_id": job_id,
            "job_name": job_name,
            "submitted_at": submitted_at,
            "attempt_key": spec.attempt_key,
        }
        write_json(run_dir / "job.json", record, indent=2)
        return JobHandle(job_id=job_id, detail={"script": str(script_path), "job_name": job_name})

    def render_script(self, spec: LaunchSpec, *, job_name: str, cpus_per_task: int | None) -> str:
        """The batch script. ``--export=NONE``: the job starts from the user's login environment on the node, not
        from this worker's, which holds the control plane's own secrets."""
        if spec.accelerator not in ("cpu", "cuda"):
            raise LaunchError(f"accelerator must be 'cpu' or 'cuda', not {spec.accelerator!r}")
        for field, value in (("nodes", spec.nodes), ("gpus_per_node", spec.gpus_per_node)):
            if not isinstance(value, int) or value < 1:
                raise LaunchError(f"{field} must be a positive whole number, got {value!r}")
        if not isinstance(spec.time_limit_min, int) or spec.time_limit_min < 1:
            raise LaunchError(f"time_limit_min must be at least 1 minute, got {spec.time_limit_min!r}")
        if not 0 <= spec.master_port <= 65535:
            raise LaunchError(
                f"master_port must be 0 (derive from the job id) or a port number, got {spec.master_port}"
            )
        if not NAME.match(job_name):
            raise LaunchError(f"job name {job_name!r} may only use letters, digits, '_', '.' and '-'")
        if spec.partition and not NAME.match(spec.partition):
            raise LaunchError(f"partition {spec.partition!r} may only use letters, digits, '_', '.' and '-'")
        run_dir = Path(spec.run_dir).resolve()
        workdir = Path(spec.start_dir)
        for label, path in (("run directory", run_dir), ("working directory", workdir)):
            if not path.is_absolute() or not DIRECTIVE_VALUE.match(str(path)):
                raise LaunchError(
                    f"the {label} {str(path)!r} must be an absolute path of letters, digits and _@+=:,./- only "
                    "(Slurm reads it from an unquoted #SBATCH line)"
                )
        argv = rank_argv(spec.python, spec.module_argv)
        env = job_env(spec)

        if spec.attempt_key and not NAME.match(spec.attempt_key):
            raise LaunchError(f"attempt key {spec.attempt_key!r} may only use letters, digits, '_', '.' and '-'")
        directives = [
            f"--job-name={job_name}",
            *([f"--comment={spec.attempt_key}"] if spec.attempt_key else []),
            f"--nodes={spec.nodes}",
            f"--ntasks-per-node={spec.gpus_per_node}",
        ]
        if cpus_per_task:
            directives.append(f"--cpus-per-task={cpus_per_task}")
        if spec.accelerator == "cuda":
            directives.append(f"--gpus-per-node={spec.gpus_per_node}")
        directives.append(f"--time={spec.time_limit_min}")
        if spec.partition:
            directives.append(f"--partition={spec.partition}")
        directives += [
            f"--output={run_dir / 'stdout.log'}",
            f"--error={run_dir / 'stderr.log'}",
            f"--chdir={workdir}",
            "--export=NONE",
        ]
        lines = ["#!/bin/bash", f"# Slurm batch script for run {spec.run_id}, written by the control plane."]
        lines += [f"#SBATCH {d}" for d in directives]
        lines += ["set -euo pipefail"]
        python_dir = os.path.dirname(spec.python)
        if python_dir:
            # As if the interpreter's environment (a venv) were activated: tools the job starts come from it too.
            lines.append(f'export PATH={shlex.quote(python_dir)}:"$PATH"')
        lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
        lines += [
            # The first host of the allocation hosts rank 0's rendezvous.
            'hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            "export MASTER_ADDR=\"${hosts%%$'\\n'*}\"",
        ]
        if spec.master_port:
            lines.append(f"export MASTER_PORT={spec.master_port}")
        else:
            lines.append("export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))")
        # --export=ALL: under sbatch --export=NONE srun would otherwise drop what this script exported.
        # --cpus-per-task: since 22.05 srun no longer inherits it from the batch allocation.
        srun = ["srun", "--export=ALL", "--kill-on-bad-exit=1"]
        if cpus_per_task:
            srun.append(f"--cpus-per-task={cpus_per_task}")
        lines.append("exec " + " ".join(shlex.quote(a) for a in [*srun, *argv]))
        return "\n".join(lines) + "\n"

    def _cpus_per_task(self, partition: str, ranks_per_node: int) -> int | None:
        result = self._run(["sinfo", "-h", "-N", "-o", "%P|%c"])
        if result.returncode != 0:
            raise LaunchError(f"Slurm is not answering: {_errors(result.stderr) or 'sinfo failed'}")
        cpus: list[int] = []
        for line in result.stdout.splitlines():
            name, _, count = line.strip().partition("|")
            is_default = name.endswith("*")
            name = name.rstrip("*")
            if (partition and name == partition) or (not partition and is_default):
                if count.isdigit():
                    cpus.append(int(count))
        if not cpus:
            return None  # an unknown partition: sbatch names the problem better than we could
        return max(1, min(cpus) // ranks_per_node)

    # -- poll -----------------------------------------------------------------------------------------------

    def poll(self, job_id: str, run_dir: Path) -> JobStatus:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
        job = self._squeue_job(job_id)
        if job is not None:
            return status_from_squeue(job)
        from_log = self.jobcomp_status(job_id, run_dir)
        if from_log is not None:
            return from_log
        return JobStatus(
            JobState.LOST, None, f"Slurm no longer knows job {job_id} and its job-completion log has no record of it"
        )

    def _squeue_job(self, job_id: str) -> dict | None:
        result = self._run(["squeue", "--json", "-t", "all", "-j", job_id])
        if result.returncode != 0:
            stderr = _errors(result.stderr)
            if "Invalid job id" in stderr:
                return None
            raise SlurmUnavailable(f"squeue failed: {stderr or f'exit code {result.returncode}'}")
        try:
            jobs = json.loads(result.stdout).get("jobs", [])
        except json.JSONDecodeError as exc:
            raise SlurmUnavailable(f"squeue --json answered something that is not JSON: {exc}") from exc
        # squeue --json in 22.05 ignores -j and lists every job: pick ours.
        for job in jobs:
            if str(job.get("job_id")) == job_id:
                return job
        return None

    def jobcomp_path(self) -> Path | None:
        """``JobCompLoc`` when the cluster records finished jobs with ``jobcomp/filetxt``."""
        if self._jobcomp_path is None:
            result = self._run(["scontrol", "show", "config"])
            if result.returncode != 0:
                raise SlurmUnavailable(f"scontrol show config failed: {_errors(result.stderr)}")
            config = {}
            for line in result.stdout.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    config[key.strip()] = value.strip()
            if config.get("JobCompType") != "jobcomp/filetxt" or not config.get("JobCompLoc"):
                return None
            self._jobcomp_path = Path(config["JobCompLoc"])
        return self._jobcomp_path

    def jobcomp_status(self, job_id: str, run_dir: Path) -> JobStatus | None:
        """How the job ended, from the job-completion log; None when the log has no record of this submission."""
        path = self.jobcomp_path()
        if path is None or not path.is_file():
            return None
        submission = read_json(Path(run_dir) / "job.json") or {}
        submitted_at = submission.get("submitted_at") if submission.get("job_id") == job_id else None
        job_name = submission.get("job_name") if submission.get("job_id") == job_id else None
        found = None
        with path.open(errors="replace") as log:
            for line in log:
                if not line.startswith(f"JobId={job_id} "):
                    continue
                record = parse_jobcomp_line(line)
                if record.get("JobId") != job_id:
                    continue
                if job_name and record.get("Name") != job_name:
                    continue
                submit_time = _slurm_time(record.get("SubmitTime", ""))
                if submitted_at and submit_time and submit_time < submitted_at - self.clock_skew_s:
                    continue  # the same id from before Slurm's state was wiped
                found = record  # the last matching record wins: a requeued job ends more than once
        return status_from_jobcomp(found) if found else None

    # -- cancel ---------------------------------------------------------------------------------------------

    def cancel(self, job_id: str, run_dir: Path) -> None:
        """Cancel and wait until Slurm reports the job ended: scancel's exit code says nothing (0 for unknown ids),
        and a job is COMPLETING until its processes are gone."""
        status = self.poll(job_id, run_dir)
        if status.finished:
            return
        self._run(["scancel", job_id])
        if self._wait_finished(job_id, run_dir, self.cancel_timeout_s):
            return
        # Processes that ignore SIGTERM beyond KillWait should be killed by slurmd; ask again in case it gave up.
        self._run(["scancel", "--full", "--signal=KILL", job_id])
        if self._wait_finished(job_id, run_dir, 15.0):
            return
        status = self.poll(job_id, run_dir)
        raise RuntimeError(f"Slurm job {job_id} is still {status.state} ({status.reason}) after scancel")

    def _wait_finished(self, job_id: str, run_dir: Path, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.poll(job_id, run_dir).finished:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_interval_s)

    # -- helpers --------------------------------------------------------------------------------------------

    def _run(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=self.command_timeout_s, check=False
            )
        except FileNotFoundError as exc:
            raise LaunchError(f"{argv[0]} is not installed on this machine (Slurm's client tools are needed)") from exc
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnavailable(f"{argv[0]} did not answer within {self.command_timeout_s:.0f} s") from exc


def _errors(stderr: str) -> str:
    """sbatch repeats itself ('error: ... failed: X' twice over); keep distinct lines without the prefix."""
    seen: list[str] = []
    for line in stderr.splitlines():
        line = re.sub(r"^\w+: error: ", "", line.strip())
        if line and line not in seen:
            seen.append(line)
    return "; ".join(seen)
