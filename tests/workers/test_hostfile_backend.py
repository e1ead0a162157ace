"""The hostfile backend for real: DeepSpeed's launcher starting two gloo ranks on this machine, both the way it
launches a hostfile naming only this machine (locally) and the way it launches other machines (pdsh over ssh)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.workers import free_port, process_alive, rank_records, wait_for, write_gloo_program
from workers.backends.base import JobState, LaunchError, LaunchSpec
from workers.backends.hostfile import HostfileBackend, parse_hostfile, proc_stat

REPO = Path(__file__).resolve().parents[2]


def make_spec(tmp_path: Path, program_args: list[str], *, hostfile: str = "localhost slots=2\n", **extra) -> LaunchSpec:
    program = write_gloo_program(tmp_path)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    fields = {
        "run_id": 9,
        "run_dir": tmp_path / "run",
        "module_argv": [str(program), "--out", str(out), *program_args],
        "env": {"CP_TEST_VALUE": "a b:c/d"},
        "nodes": 1,
        "gpus_per_node": 2,
        "accelerator": "cpu",
        "python": sys.executable,
        "workdir": REPO,
        "hostfile": hostfile,
        "master_port": free_port(),
        **extra,
    }
    return LaunchSpec(**fields)


def wait_finished(backend: HostfileBackend, job_id: str, run_dir: Path, timeout_s: float = 150.0):
    return wait_for(lambda: (s := backend.poll(job_id, run_dir)).finished and s, timeout_s, 0.3)


def logs(run_dir: Path) -> str:
    return (run_dir / "stdout.log").read_text() + (run_dir / "stderr.log").read_text()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """This module's local launches, started together: each spends most of its time importing DeepSpeed and torch,
    which two cores get through faster side by side than one after another."""
    backend = HostfileBackend()
    jobs = {}
    for name, args in (("ok", []), ("fail", ["--exit-code", "3"]), ("sleep", ["--sleep", "300"])):
        tmp_path = tmp_path_factory.mktemp(name)
        spec = make_spec(tmp_path, args)
        jobs[name] = (spec, backend.submit(spec), tmp_path / "out")
    yield backend, jobs
    for spec, handle, _ in jobs.values():
        backend.cancel(handle.job_id, spec.run_dir)  # leaves nothing behind when a test failed half-way


def test_two_ranks_on_a_local_hostfile_succeed(launched):
    backend, jobs = launched
    spec, handle, out = jobs["ok"]
    assert handle.job_id.startswith("hostfile:")
    assert (spec.run_dir / "hostfile").read_text() == "localhost slots=2\n"
    record = json.loads((spec.run_dir / "job.json").read_text())
    assert record["job_id"] == handle.job_id
    assert "--no_ssh_check" in record["argv"]  # one local host: the launcher never uses ssh
    assert not (spec.run_dir / "deepspeed_env").exists()  # local ranks inherit the launcher's environment

    status = wait_finished(backend, handle.job_id, spec.run_dir)
    assert status.state == JobState.SUCCEEDED, logs(spec.run_dir)
    assert status.exit_code == 0
    assert json.loads((out / "result.json").read_text()) == {"sum": 3.0, "world_size": 2}
    ranks = rank_records(out, 2)
    assert ranks is not None
    assert sorted(r["local_rank"] for r in ranks) == [0, 1]  # from DeepSpeed's --local_rank
    for rank in ranks:
        assert rank["env"]["OMP_NUM_THREADS"] == "1"
        assert rank["env"]["DS_ACCELERATOR"] == "cpu"
        assert rank["env"]["CP_TEST_VALUE"] == "a b:c/d"
        assert rank["env"]["MASTER_PORT"] == str(spec.master_port)
    assert "rank 1 all-reduced 3.0" in (spec.run_dir / "stdout.log").read_text()
    # A worker started later knows how it ended from the run directory alone.
    assert HostfileBackend().poll(handle.job_id, spec.run_dir) == status


def test_a_failing_rank_fails_the_job_with_its_exit_code(launched):
    backend, jobs = launched
    spec, handle, _ = jobs["fail"]
    status = wait_finished(backend, handle.job_id, spec.run_dir)
    assert status.state == JobState.FAILED
    assert status.exit_code == 3
    assert "exits with 3" in logs(spec.run_dir)


def test_a_new_instance_reattaches_and_cancel_kills_the_group(launched):
    starter, jobs = launched
    spec, handle, out = jobs["sleep"]
    ranks = wait_for(lambda: rank_records(out, 2), 120)
    pids = [r["pid"] for r in ranks]
    launcher_pid = json.loads((spec.run_dir / "job.json").read_text())["pid"]

    restarted = HostfileBackend()  # as after a worker restart: nothing in memory, only job.json
    assert restarted.poll(handle.job_id, spec.run_dir).state == JobState.RUNNING
    restarted.cancel(handle.job_id, spec.run_dir)
    assert not any(process_alive(pid) for pid in pids)
    assert not process_alive(launcher_pid)
    for backend in (restarted, starter, HostfileBackend()):
        assert backend.poll(handle.job_id, spec.run_dir).state == JobState.CANCELLED
    restarted.cancel(handle.job_id, spec.run_dir)  # idempotent


def test_a_dead_or_reused_pid_is_never_running(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    backend = HostfileBackend()

    # A live process that is not the job: this test's own pid, with another start time.
    me = os.getpid()
    my_ticks = proc_stat(me)[2]
    reused = f"hostfile:{me}:{my_ticks + 1}"
    (run_dir / "job.json").write_text(json.dumps({"job_id": reused, "pid": me, "start_ticks": my_ticks + 1}))
    status = backend.poll(reused, run_dir)
    assert status.state == JobState.LOST
    backend.cancel(reused, run_dir)  # must not signal this process's group
    assert process_alive(me)

    # A process that has ended and was reaped.
    gone = subprocess.Popen(["true"])
    gone_ticks = proc_stat(gone.pid)[2] if proc_stat(gone.pid) else 0
    gone.wait()
    dead = f"hostfile:{gone.pid}:{gone_ticks}"
    assert backend.poll(dead, run_dir).state == JobState.LOST

    # The same dead pid with the supervisor's exit record: finished, with the launcher's code.
    (run_dir / "exit.json").write_text(json.dumps({"returncode": 1, "pid": gone.pid, "ended_at": 0}))
    status = backend.poll(dead, run_dir)
    assert (status.state, status.exit_code) == (JobState.FAILED, 1)
    # An exit record left by another launch from the same run directory is not this job's.
    (run_dir / "exit.json").write_text(json.dumps({"returncode": 0, "pid": gone.pid + 1, "ended_at": 0}))
    assert backend.poll(dead, run_dir).state == JobState.LOST


def test_bad_hostfiles_and_requests_are_refused(tmp_path):
    backend = HostfileBackend()
    assert parse_hostfile("# nodes\nnode-1 slots=8\n\nnode-2 slots=8  # spare\n") == [("node-1", 8), ("node-2", 8)]
    for text, message in (
        ("", "names no hosts"),
        ("node-1\n", "expected 'HOSTNAME slots=N'"),
        ("node-1 slots=x\n", "expected 'HOSTNAME slots=N'"),
        ("node-1;reboot slots=2\n", "expected 'HOSTNAME slots=N'"),
        ("node-1 slots=2\nnode-1 slots=2\n", "listed twice"),
    ):
        with pytest.raises(LaunchError, match=message):
            parse_hostfile(text)
    spec = make_spec(tmp_path, [])
    with pytest.raises(LaunchError, match="1 slots in the hostfile; the run needs 2"):
        backend.submit(replace(spec, hostfile="localhost slots=1\n"))
    with pytest.raises(LaunchError, match="asks for 2 nodes but the hostfile names 1"):
        backend.submit(replace(spec, nodes=2))
    # Another machine is reached through a remote shell: arguments that it would interpret are refused.
    with pytest.raises(LaunchError, match="remote shell"):
        backend.submit(replace(spec, hostfile="node-1 slots=2\n", module_argv=["-m", "jobs.train", "--x", "a;b"]))
    with pytest.raises(LaunchError, match="CP_TEST_VALUE"):
        backend.submit(replace(spec, hostfile="node-1 slots=2\n", env={"CP_TEST_VALUE": "$(reboot)"}))
    assert not (spec.run_dir / "job.json").exists()


@contextlib.contextmanager
def _locked(path: Path):
    """Other test sessions on this machine may edit the same file at the same time."""
    fd = os.open(path.parent, os.O_RDONLY)  # a lock on the directory leaves no lock file behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture(scope="session")
def ssh_to_this_machine(tmp_path_factory):
    """Passwordless ssh as root to a loopback address other than 127.0.0.1, for DeepSpeed's pdsh launcher.

    A private sshd listens on a free port of that address with its own host and client keys, and root's
    ~/.ssh/config gets a ``Host 127.0.0.N`` block between markers for this session (ssh reads the config of the
    account's home, not $HOME, and DeepSpeed's own ssh check takes no options). Each session picks its own address
    and removes only its own block, so concurrent sessions do not disturb each other."""
    if os.geteuid() != 0:
        pytest.skip("ssh to this machine for the pdsh launcher is only set up when the tests run as root")
    if not all(shutil.which(tool) for tool in ("pdsh", "ssh", "ssh-keygen")) or not os.path.exists("/usr/sbin/sshd"):
        if not shutil.which("apt-get"):
            pytest.skip("pdsh and openssh are not installed and there is no apt-get to install them")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pdsh", "openssh-server", "openssh-client"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    ssh_dir = Path(pwd.getpwuid(0).pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    config = ssh_dir / "config"
    work = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)], check=True)
    shutil.copy(work / "client_key.pub", work / "authorized_keys")
    marker = f"cp-test-{os.getpid()}-{secrets.token_hex(4)}"

    with _locked(config):
        text = config.read_text() if config.exists() else ""
        host = next(f"127.0.0.{n}" for n in random.sample(range(2, 255), 253) if f"Host 127.0.0.{n}\n" not in text)
        port = free_port()
        block = (
            f"# >>> {marker}: added by tests/workers/test_hostfile_backend.py for one test session\n"
            f"Host {host}\n  Port {port}\n  IdentityFile {work / 'client_key'}\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
            f"# <<< {marker}\n"
        )
        # First, because the first value ssh finds for an option wins.
        config.write_text(block + text)
        config.chmod(0o600)
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress {host}\nHostKey {work / 'host_key'}\nPidFile {work / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    try:
        subprocess.run(["/usr/sbin/sshd", "-f", str(work / "sshd_config"), "-E", str(work / "sshd.log")], check=True)
        wait_for(
            lambda: subprocess.run(["ssh", host, "true"], capture_output=True, timeout=10).returncode == 0, 15, 0.5
        )
        yield host
    finally:
        with _locked(config):
            text = config.read_text()
            start, end = text.find(f"# >>> {marker}:"), text.find(f"# <<< {marker}\n")
            if start >= 0 and end >= 0:
                rest = text[:start] + text[end + len(f"# <<< {marker}\n") :]
                if rest:
                    config.write_text(rest)
                else:
                    config.unlink()
        pid_file = work / "sshd.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def test_two_ranks_through_pdsh_on_another_host(tmp_path, ssh_to_this_machine):
    host = ssh_to_this_machine  # loopback, but not a name this machine calls itself: launched as another machine
    spec = make_spec(tmp_path, [], hostfile=f"{host} slots=2\n")
    backend = HostfileBackend()
    handle = backend.submit(spec)
    argv = json.loads((spec.run_dir / "job.json").read_text())["argv"]
    assert "--force_multi" in argv  # DeepSpeed would run a single host locally, whichever machine it names
    assert argv[argv.index("--master_addr") + 1] == host
    assert (spec.run_dir / "deepspeed_env").stat().st_mode & 0o777 == 0o600

    status = wait_finished(backend, handle.job_id, spec.run_dir)
    assert status.state == JobState.SUCCEEDED, logs(spec.run_dir)
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == {"sum": 3.0, "world_size": 2}
    # pdsh prefixes every line from the remote host; which lines arrive before the ranks exit varies with timing,
    # so the result file above is the proof the ranks ran, and this checks the output came back through pdsh.
    assert f"\n{host}: " in (spec.run_dir / "stdout.log").read_text()
    for rank in rank_records(tmp_path / "out", 2) or []:
        # The ranks got the job's variables through the deepspeed_env file, not through ssh.
        assert rank["env"] == {
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "MASTER_ADDR": host,
            "MASTER_PORT": str(spec.master_port),
            "CP_TEST_VALUE": "a b:c/d",
        }


def test_cancelling_a_pdsh_launch_stops_its_ranks_and_no_other_launch(tmp_path, ssh_to_this_machine):
    """DeepSpeed's own clean-up would `pkill -f` every `python -u -m deepspeed.launcher.launch` on the host; this
    cancel stops the processes carrying the attempt's key and spares a bystander with that command line."""
    from jobs.launch.reap import tagged_pids

    bystander = subprocess.Popen(
        [sys.executable, "-u", "-c", "import time; time.sleep(300)", "-m", "deepspeed.launcher.launch"],
        start_new_session=True,
    )
    host = ssh_to_this_machine
    key = f"cp-9-a1-{secrets.token_hex(6)}"
    spec = make_spec(tmp_path, ["--sleep", "300"], hostfile=f"{host} slots=2\n", attempt_key=key)
    backend = HostfileBackend(term_grace_s=5.0)
    handle = backend.submit(spec)
    try:
        # The remote launcher and both ranks run with the key (through the deepspeed_env file); the local runner not.
        wait_for(lambda: len(tagged_pids(key)) >= 3, 150, 0.3)
        assert backend.submit(spec).job_id == handle.job_id, "a second submit of the attempt finds its job"
        backend.cancel(handle.job_id, spec.run_dir)
        wait_for(lambda: not tagged_pids(key), 30, 0.3)
        assert bystander.poll() is None, "another launch on the host was stopped"
        assert backend.poll(handle.job_id, spec.run_dir).state == JobState.CANCELLED
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()
        backend.cancel(handle.job_id, spec.run_dir)
