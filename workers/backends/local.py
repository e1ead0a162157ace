"""The local backend: the DeepSpeed launcher as a process group on this machine."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from jobs.launch.reap import reap
from workers.backends import commands, warm
from workers.backends.base import JobHandle, JobState, JobStatus, LaunchError, LaunchSpec
from workers.backends.jobuser import JobUser, check_reachable, give_run_dir
from workers.backends.procs import (
    alive,
    find_attempt_leader,
    may_signal,
    owned_by,
    read_record,
    spawn_group,
    start_ticks,
    stop_group,
    verified_leader,
)


def launcher_argv(spec: LaunchSpec) -> list[str]:
    """DeepSpeed's launcher starting `gpus_per_node` ranks of PROGRAM on this machine, or the program alone."""
    if spec.single_process:
        return commands.rank_argv(spec.python, spec.module_argv)
    return commands.deepspeed_node_argv(
        spec.python, spec.module_argv, ranks=spec.gpus_per_node, master_port=spec.master_port
    )


def process_env(spec: LaunchSpec) -> dict[str, str]:
    env = commands.inherited_env(os.environ)
    # Caches (torch, triton, matplotlib) and temporary files go to the job's own directory, never the worker's home.
    env.update({"HOME": str(spec.run_dir), "TMPDIR": str(spec.run_dir / "tmp")})
    if spec.job_uid is not None:
        env.update({"USER": f"job{spec.job_uid}", "LOGNAME": f"job{spec.job_uid}"})
    env.update(commands.job_env(spec))
    if spec.accelerator == "cpu":
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    elif "CUDA_VISIBLE_DEVICES" in os.environ:
        env.setdefault("CUDA_VISIBLE_DEVICES", os.environ["CUDA_VISIBLE_DEVICES"])
    # The ranks import jobs/ from the repository, wherever the launcher's working directory is.
    env["PYTHONPATH"] = str(spec.workdir)
    return env


def _job_user(spec: LaunchSpec) -> JobUser | None:
    """The job's user with its run directory handed over and its interpreter and script checked, or None."""
    if spec.job_uid is None:
        return None
    gid = spec.job_gid if spec.job_gid is not None else spec.job_uid
    user = JobUser(uid=spec.job_uid, gid=gid, umask=spec.job_umask)
    give_run_dir(spec.run_dir, user)
    check_reachable(Path(spec.python), user, bits=5, what="the interpreter")
    check_reachable(spec.workdir, user, bits=5, what="the repository")
    if spec.module_argv and spec.module_argv[0] != "-m":
        check_reachable(Path(spec.module_argv[0]), user, bits=4, what="the script")
    return user


class LocalBackend:
    name = "local"

    def find(self, attempt_key: str, run_dir: Path, *, not_before: float = 0.0) -> JobHandle | None:
        """The attempt's job from its record, only if the process it names is the job's (verified_leader): the
        record lies in the job's own folder."""
        record = find_attempt_leader(Path(run_dir), attempt_key)
        if record is None or not verified_leader(record, Path(run_dir), attempt_key, not_before=not_before):
            return None
        return JobHandle(job_id=f"local:{record['pid']}:{record['start_ticks']}", detail={**record, "existing": True})

    def submit(self, spec: LaunchSpec) -> JobHandle:
        if spec.nodes != 1:
            raise LaunchError(f"The local backend runs on this machine only; the cluster has {spec.nodes} nodes.")
        existing = self.find(spec.attempt_key, spec.run_dir)
        if existing is not None:
            return existing
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit.json", "child.json", "leader.json", "cancel_requested"):
            (spec.run_dir / stale).unlink(missing_ok=True)
        (spec.run_dir / "tmp").mkdir(exist_ok=True)
        for log in ("stdout.log", "stderr.log"):
            (spec.run_dir / log).touch()
        env = process_env(spec)
        try:
            user = _job_user(spec)
        except OSError as exc:
            raise LaunchError(f"Could not hand the run directory to the job's user: {exc}") from exc
        record = None
        if spec.accelerator == "cpu" and not spec.single_process:
            record = warm.spawn(
                python=spec.python,
                run_dir=spec.run_dir,
                cwd=spec.start_dir,
                env=env,
                user=user,
                launcher_args=commands.deepspeed_node_args(
                    spec.module_argv, ranks=spec.gpus_per_node, master_port=spec.master_port
                ),
                attempt_key=spec.attempt_key,
            )
        if record is None:
            argv = [spec.python, "-m", "jobs.launch.wrapper", str(spec.run_dir), "--", *launcher_argv(spec)]
            try:
                record = spawn_group(
                    argv, run_dir=spec.run_dir, env=env, cwd=spec.start_dir, attempt_key=spec.attempt_key, user=user
                )
            except OSError as exc:
                raise LaunchError(f"Could not start the local job: {exc}") from exc
        return JobHandle(job_id=f"local:{record['pid']}:{record['start_ticks']}", detail=record)

    @staticmethod
    def _parse(job_id: str) -> tuple[int, int]:
        try:
            _, pid, ticks = job_id.split(":")
            return int(pid), int(ticks)
        except ValueError:
            raise LaunchError(f"{job_id!r} is not a local job id") from None

    def poll(self, job_id: str, run_dir: Path) -> JobStatus:
        pid, ticks = self._parse(job_id)
        if alive(pid, ticks):
            return JobStatus(JobState.RUNNING)
        exit_file = run_dir / "exit.json"
        cancelled = (run_dir / "cancel_requested").exists()
        if exit_file.exists():
            ended = json.loads(exit_file.read_text())
            code = ended.get("exit_code")
            if cancelled or ended.get("signal"):
                return JobStatus(JobState.CANCELLED, code, "cancelled")
            if code == 0:
                return JobStatus(JobState.SUCCEEDED, 0)
            return JobStatus(JobState.FAILED, code, f"the job exited with code {code}")
        if cancelled:
            return JobStatus(JobState.CANCELLED, None, "cancelled")
        return JobStatus(
            JobState.LOST, None, "the job's processes are gone and left no exit status (killed with SIGKILL?)"
        )

    def cancel(self, job_id: str, run_dir: Path) -> None:
        """Stop the job's session leader's group, its launcher's group, and any process of its attempt that left
        both (found by its CP_ATTEMPT_KEY); nothing of any other job."""
        pid, ticks = self._parse(job_id)
        (run_dir / "cancel_requested").write_text(str(time.time()))
        # The job id is recorded from this control plane's own submit or a verified record (find); signal its group
        # only while that process is still the job's (may_signal).
        keys = {str(read_record(run_dir / name).get("attempt_key") or "") for name in ("job.json", "leader.json")}
        if alive(pid, ticks) and may_signal(pid, run_dir, keys):
            stop_group(pid, pid=pid, ticks=ticks)
        child = run_dir / "child.json"
        if child.exists():
            # The job writes child.json itself: a group of another user's (the web server's) is never ours to kill.
            pgid = json.loads(child.read_text())["pgid"]
            if isinstance(pgid, int) and pgid > 1 and start_ticks(pgid) is not None and owned_by(pgid, run_dir):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        record = read_record(run_dir / "job.json")
        if record.get("pid") == pid and record.get("attempt_key"):
            # The key is the job's word too: only processes of the run directory's owner are reaped by it.
            reap(record["attempt_key"], grace_s=5.0, uid=run_dir.stat().st_uid)
