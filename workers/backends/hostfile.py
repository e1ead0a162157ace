"""Hostfile backend: DeepSpeed's own multi-node launcher, started on the control-plane machine.

``python -m deepspeed.launcher.runner --hostfile RUN_DIR/hostfile ...`` starts the ranks on every host of the
hostfile over pdsh (ssh), or, for a hostfile naming only this machine, as local processes. The launcher runs here
under a small supervisor in its own process group:

- the supervisor writes ``exit.json`` with the launcher's exit code when it ends, so any worker (including one
  started after a restart) can tell how the job ended; a process that is merely gone says nothing;
- ``job.json`` records the supervisor's pid, its start time in clock ticks (``/proc/<pid>/stat`` field 22) and
  the boot id, so a re-attaching worker never mistakes a reused pid for the job;
- cancel writes ``cancel_requested``, then signals the whole group: SIGTERM, SIGKILL after a grace period.

How DeepSpeed's runner (0.19) treats the hostfile, and what this backend does about it:
- With one host it always launches locally, even when that host is another machine; a single remote host is
  therefore launched with ``--force_multi`` (pdsh). A single local host gets ``--no_ssh_check``: the runner would
  otherwise insist on passwordless ssh to it and then not use ssh at all.
- Over pdsh, only a few variables (PYTHON*, ...) reach the remote ranks, and the command line goes through a remote
  shell. The job's variables travel in ``RUN_DIR/deepspeed_env`` (mode 0600, named by DS_ENV_FILE, so a
  ``~/.deepspeed_env`` is not read), and every argument and value that crosses the remote shell is checked to need
  no quoting there.
- Cancelling a pdsh launch: the runner traps SIGTERM and runs ``pkill -f`` for its launch command on every host
  (DeepSpeed's own clean-up), which stops every DeepSpeed launch of the user there. So the runner never gets a
  SIGTERM from us: each host's processes of this attempt are stopped by the attempt key in their environment
  (``python -m jobs.launch.reap KEY`` over pdsh), then the local runner and pdsh get SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from jobs.common.atomic import read_json, write_json
from workers.backends.base import JobHandle, JobState, JobStatus, LaunchError, LaunchSpec
from workers.backends.commands import ATTEMPT_KEY_ENV, deepspeed_argv, job_env
from workers.backends.procs import find_attempt_leader

HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
# What a remote shell passes through unquoted; DeepSpeed's pdsh runner does no quoting of its own that holds.
REMOTE_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+\Z")
# DeepSpeed wraps exported values in double quotes; inside those these still mean something to the shell.
REMOTE_UNSAFE_VALUE = re.compile(r'["$`\\\n\r]')
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
# The launcher starts from a short list of the worker's variables: the worker's own environment holds the
# control plane's secrets. HOME (ssh keys, caches), SSH_AUTH_SOCK (an ssh agent for pdsh) and the locale are kept.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSH_AUTH_SOCK")

# Runs the launcher, waits for it and records its exit code in the file named by argv[1]. SIGTERM/SIGINT to the
# group reach the launcher too; the supervisor catches them (a handler, not SIG_IGN, which the launcher would
# inherit) so that it outlives the launcher and still records how it ended.
SUPERVISOR = """
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: None)
signal.signal(signal.SIGINT, lambda *_: None)
exit_file = sys.argv[1]
ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
leader = os.path.join(os.path.dirname(exit_file), "leader.json")
with open(leader + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "start_ticks": ticks, "attempt_key": os.environ.get("CP_JOB_ATTEMPT", "")}, f)
os.replace(leader + ".tmp", leader)
child = subprocess.Popen(sys.argv[2:])
rc = child.wait()
with open(exit_file + ".tmp", "w") as f:
    json.dump({"returncode": rc, "pid": os.getpid(), "ended_at": time.time()}, f)
os.replace(exit_file + ".tmp", exit_file)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def parse_hostfile(text: str) -> list[tuple[str, int]]:
    """``host slots=N`` lines in order; blank lines and ``#`` comments are skipped. Raises LaunchError."""
    hosts: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        match = re.fullmatch(r"slots=(\d+)", parts[1]) if len(parts) == 2 else None
        if not match or not HOST.match(parts[0]):
            raise LaunchError(f"hostfile line {number} {raw.strip()!r}: expected 'HOSTNAME slots=N'")
        slots = int(match.group(1))
        if slots < 1:
            raise LaunchError(f"hostfile line {number}: slots must be at least 1")
        if any(host == parts[0] for host, _ in hosts):
            raise LaunchError(f"hostfile line {number}: host {parts[0]} is listed twice")
        hosts.append((parts[0], slots))
    if not hosts:
        raise LaunchError("the hostfile names no hosts")
    return hosts


def is_local_host(name: str) -> bool:
    short = socket.gethostname().split(".")[0]
    return name in LOCAL_NAMES or name in {socket.gethostname(), short, socket.getfqdn()}


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of a pid, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after the last ')' are fixed.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2]), int(fields[19])


def group_members(pgid: int, not_before_ticks: int) -> list[int]:
    """Live processes of a process group. Members started before the leader cannot be ours (the group id was
    reused), so they are left out."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = proc_stat(int(entry))
        if stat and stat[1] == pgid and stat[0] != "Z" and stat[2] >= not_before_ticks:
            members.append(int(entry))
    return members


class HostfileBackend:
    name = "hostfile"

    def __init__(self, *, term_grace_s: float = 15.0, kill_wait_s: float = 5.0, poll_interval_s: float = 0.2) -> None:
        self.term_grace_s = term_grace_s
        self.kill_wait_s = kill_wait_s
        self.poll_interval_s = poll_interval_s
        # Supervisors this instance started, so it can reap them; a re-attached job is reaped by whoever started it
        # (or by init when that worker is gone).
        self._children: dict[int, subprocess.Popen] = {}

    # -- submit ---------------------------------------------------------------------------------------------

    def find(self, attempt_key: str, run_dir: Path, *, not_before: float = 0.0) -> JobHandle | None:
        record = find_attempt_leader(Path(run_dir).resolve(), attempt_key)
        if record is None:
            return None
        job_id = f"hostfile:{record['pid']}:{record['start_ticks']}"
        return JobHandle(
            job_id=job_id, detail={"pid": record["pid"], "hosts": record.get("hosts", []), "existing": True}
        )

    def submit(self, spec: LaunchSpec) -> JobHandle:
        existing = self.find(spec.attempt_key, spec.run_dir)
        if existing is not None:
            return existing
        if spec.single_process:
            raise LaunchError(
                "the hostfile backend starts multi-node DeepSpeed jobs only; run one-process jobs locally"
            )
        if spec.accelerator not in ("cpu", "cuda"):
            raise LaunchError(f"accelerator must be 'cpu' or 'cuda', not {spec.accelerator!r}")
        for field, value in (("nodes", spec.nodes), ("gpus_per_node", spec.gpus_per_node)):
            if not isinstance(value, int) or value < 1:
                raise LaunchError(f"{field} must be a positive whole number, got {value!r}")
        if not 1 <= spec.master_port <= 65535:
            raise LaunchError(f"master_port must be a port number, got {spec.master_port}")
        hosts = parse_hostfile(self._hostfile_text(spec.hostfile))
        if len(hosts) < spec.nodes:
            raise LaunchError(f"the run asks for {spec.nodes} nodes but the hostfile names {len(hosts)}")
        hosts = hosts[: spec.nodes]
        for host, slots in hosts:
            if slots < spec.gpus_per_node:
                raise LaunchError(
                    f"host {host} has {slots} slots in the hostfile; the run needs {spec.gpus_per_node} per node"
                )
        env = job_env(spec)
        local = len(hosts) == 1 and is_local_host(hosts[0][0])
        if local:
            flags = ["--no_ssh_check"]
            master_addr = "127.0.0.1"
        else:
            flags = ["--force_multi"] if len(hosts) == 1 else []
            master_addr = hosts[0][0]
            self._check_remote_safe(spec, env)

        run_dir = Path(spec.run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit.json", "cancel_requested", "leader.json"):
            (run_dir / stale).unlink(missing_ok=True)
        hostfile = run_dir / "hostfile"
        hostfile.write_text("".join(f"{host} slots={slots}\n" for host, slots in hosts))
        env_file = run_dir / "deepspeed_env"
        env_file.unlink(missing_ok=True)
        if not local:
            # 0600: the variables may include the run's ingest token.
            fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("".join(f"{key}={value}\n" for key, value in sorted(env.items())))

        argv = deepspeed_argv(
            spec.python,
            spec.module_argv,
            gpus_per_node=spec.gpus_per_node,
            master_port=spec.master_port,
            hostfile=hostfile,
            nodes=spec.nodes,
            master_addr=master_addr,
            launcher_flags=flags,
        )
        launcher_env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
        python_dir = os.path.dirname(spec.python)
        if python_dir:
            launcher_env["PATH"] = python_dir + os.pathsep + launcher_env.get("PATH", os.defpath)
        launcher_env.update(env)
        if not local:
            # DeepSpeed looks for the file under ~ and '.'; an absolute name makes both lookups find this run's file.
            launcher_env["DS_ENV_FILE"] = str(env_file)
            # The key tags the processes on the hosts (through the env file), not the runner and pdsh here: the
            # reap on a host that is also this machine must never SIGTERM the runner (its handler pkills).
            launcher_env.pop(ATTEMPT_KEY_ENV, None)
        launcher_env["CP_JOB_ATTEMPT"] = spec.attempt_key  # for the supervisor's leader.json

        exit_file = run_dir / "exit.json"
        with open(run_dir / "stdout.log", "wb") as stdout, open(run_dir / "stderr.log", "wb") as stderr:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", SUPERVISOR, str(exit_file), *argv],
                    cwd=spec.start_dir,
                    env=launcher_env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LaunchError(f"could not start DeepSpeed's launcher: {exc}") from exc
        stat = proc_stat(proc.pid)
        if stat is None:
            # Gone before we could read its start time: wait for it so its exit record is there to report.
            proc.wait()
            ticks = 0
        else:
            ticks = stat[2]
        self._children[proc.pid] = proc
        job_id = f"hostfile:{proc.pid}:{ticks}"
        record = {
            "backend": self.name,
            "job_id": job_id,
            "pid": proc.pid,
            "pgid": proc.pid,
            "start_ticks": ticks,
            "boot_id": boot_id(),
            "started_at": time.time(),
            "hosts": [host for host, _ in hosts],
            "argv": argv,
            "attempt_key": spec.attempt_key,
            "remote": not local,
            "python": spec.python,
            "workdir": str(spec.workdir),
        }
        write_json(run_dir / "job.json", record, indent=2)
        return JobHandle(job_id=job_id, detail={"pid": proc.pid, "hosts": record["hosts"]})

    @staticmethod
    def _hostfile_text(value: str) -> str:
        """The hostfile's content, or the path of a file holding it."""
        if "slots=" in value or "\n" in value:
            return value
        if value and Path(value).is_file():
            return Path(value).read_text()
        raise LaunchError("the hostfile backend needs a hostfile ('HOSTNAME slots=N' lines, or the path of one)")

    @staticmethod
    def _check_remote_safe(spec: LaunchSpec, env: dict[str, str]) -> None:
        for label, value in (
            ("interpreter", spec.python),
            ("working directory", str(spec.workdir)),
            ("attempt key", spec.attempt_key or "-"),
            ("start directory", str(spec.start_dir)),
        ):
            if not REMOTE_SAFE.match(value):
                raise LaunchError(f"the {label} {value!r} cannot be passed through pdsh's remote shell unquoted")
        for arg in spec.module_argv:
            if not REMOTE_SAFE.match(arg):
                raise LaunchError(
                    f"the job argument {arg!r} cannot be passed through pdsh's remote shell: use letters, digits "
                    "and _@%+=:,./- only"
                )
        for key, value in env.items():
            if REMOTE_UNSAFE_VALUE.search(value):
                raise LaunchError(
                    f"environment variable {key} holds a quote, '$', '`', a backslash or a line break, which "
                    "DeepSpeed's pdsh launcher would hand to the remote shell unescaped"
                )

    # -- poll -----------------------------------------------------------------------------------------------

    def poll(self, job_id: str, run_dir: Path) -> JobStatus:
        run_dir = Path(run_dir)
        pid, ticks, boot = self._identity(job_id, run_dir)
        alive = self._alive(pid, ticks, boot)
        # Read after the liveness check: the supervisor writes the record before it exits, so a job that ended
        # in between is seen as ended, never as lost.
        ended = read_json(run_dir / "exit.json") or {}
        cancelled = _read_text(run_dir / "cancel_requested") == job_id
        # Records of another launch from the same run directory (a relaunch) say nothing about this one.
        if "returncode" in ended and ended.get("pid", pid) == pid:
            rc = int(ended["returncode"])
            if rc == 0:
                return JobStatus(JobState.SUCCEEDED, 0, "")
            if cancelled:
                return JobStatus(JobState.CANCELLED, rc, "cancelled")
            return JobStatus(JobState.FAILED, rc, f"the DeepSpeed launcher exited with code {rc}")
        if alive:
            return JobStatus(JobState.RUNNING, None, "")
        if cancelled:
            return JobStatus(JobState.CANCELLED, None, "cancelled; the launcher was killed")
        return JobStatus(
            JobState.LOST,
            None,
            f"launcher process {pid} is gone and left no exit record (killed outside the control plane, or the "
            "machine restarted)",
        )

    def _identity(self, job_id: str, run_dir: Path) -> tuple[int, int, str]:
        match = re.fullmatch(r"hostfile:(\d+):(\d+)", job_id)
        if not match:
            raise ValueError(f"not a hostfile job id: {job_id!r}")
        record = read_json(run_dir / "job.json") or {}
        boot = record.get("boot_id", "") if record.get("job_id") == job_id else ""
        return int(match.group(1)), int(match.group(2)), boot

    def _alive(self, pid: int, ticks: int, boot: str) -> bool:
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]  # reaped: the pid may now be reused
            return False
        if boot and boot != boot_id():
            return False  # start ticks count from boot: after a reboot they prove nothing
        stat = proc_stat(pid)
        return stat is not None and stat[0] != "Z" and stat[2] == ticks

    # -- cancel ---------------------------------------------------------------------------------------------

    def _reap_remote(self, record: dict) -> None:
        if not record.get("attempt_key") or not record.get("hosts"):
            return
        try:
            subprocess.run(
                _reap_command(record),
                capture_output=True,
                timeout=self.term_grace_s + 30,
                check=False,
                env={**{key: os.environ[key] for key in INHERITED_ENV if key in os.environ}, "PDSH_RCMD_TYPE": "ssh"},
            )
        except (OSError, subprocess.TimeoutExpired):
            pass  # the local kill below still ends the launch; pdsh's ssh sessions closing end the remote ranks

    def cancel(self, job_id: str, run_dir: Path) -> None:
        """SIGTERM the launcher's process group, SIGKILL what is left after ``term_grace_s``. Processes left in the
        group by a launcher that died on its own are stopped too."""
        run_dir = Path(run_dir)
        pid, ticks, boot = self._identity(job_id, run_dir)
        if boot and boot != boot_id():
            return  # the machine restarted since: nothing of the job can be running here
        leader = proc_stat(pid)
        if leader is not None and leader[2] != ticks:
            return  # the pid and its group id now belong to another process
        status = self.poll(job_id, run_dir)
        record = read_json(run_dir / "job.json") or {}
        remote = bool(record.get("remote")) and record.get("job_id") == job_id
        if status.finished and not group_members(pid, ticks) and not remote:
            return
        (run_dir / "cancel_requested").write_text(job_id)
        if remote:
            # DeepSpeed's runner answers SIGTERM with `pkill -f deepspeed.launcher.launch` on every host, which
            # stops every DeepSpeed launch of the user there. Instead this attempt's processes on each host are
            # stopped by their attempt key, then the local runner and pdsh are killed outright (SIGKILL runs no
            # handler); the supervisor, spared, records how the launcher ended.
            self._reap_remote(record)
            steps: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGKILL, self.kill_wait_s),)
        else:
            steps = ((signal.SIGTERM, self.term_grace_s), (signal.SIGKILL, self.kill_wait_s))
        for sig, wait_s in steps:
            if remote:
                for member in group_members(pid, ticks):
                    if member != pid:
                        try:
                            os.kill(member, sig)
                        except ProcessLookupError:
                            pass
            else:
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while True:
                self._alive(pid, ticks, boot)  # reaps our own supervisor once it exits
                if not group_members(pid, ticks):
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(self.poll_interval_s)
        raise RuntimeError(f"processes of job {job_id} survived SIGKILL: {group_members(pid, ticks)}")


def _reap_command(record: dict) -> list[str]:
    """pdsh running jobs.launch.reap for the job's attempt key on each of its hosts (argument values were checked
    at submit to need no quoting in the remote shell)."""
    return [
        "pdsh",
        "-S",
        "-w",
        ",".join(record["hosts"]),
        f"cd {record['workdir']};",
        record["python"],
        "-m",
        "jobs.launch.reap",
        record["attempt_key"],
    ]


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
