"""A local job runs as its run's own user with an allow-listed environment: a job that tries to reach the control
plane's secrets, database, environment, processes or another run's directory is refused every time.

Run as root (the only way to switch users); each probe runs twice, the launcher exec'd and forked warm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from django.test import override_settings

from workers.backends import warm
from workers.backends.base import JobState, LaunchError, LaunchSpec
from workers.backends.jobuser import JobUser, check_reachable, give_run_dir
from workers.backends.local import LocalBackend

ROOT = Path(__file__).resolve().parents[2]
UIDS = (231000, 231999)
SENTINEL = "sentinel-secret-value-7f3a"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to a job user needs root")

PROBE = textwrap.dedent(
    """
    import json, os, socket, sys
    var_dir, other_run, worker_pid, sentinel = sys.argv[-4], sys.argv[-3], int(sys.argv[-2]), sys.argv[-1]
    tries = {}

    def attempt(name, fn):
        try:
            fn()
            tries[name] = "succeeded"
        except (OSError, PermissionError) as exc:
            tries[name] = "refused: " + type(exc).__name__

    attempt("read var/secret_key", lambda: open(os.path.join(var_dir, "secret_key")).read())
    attempt("read the sqlite database", lambda: open(os.path.join(var_dir, "controlplane.sqlite3"), "rb").read())
    attempt("list var/", lambda: os.listdir(var_dir))
    attempt("write into var/", lambda: open(os.path.join(var_dir, "planted"), "w").write("x"))
    attempt("connect to the redis socket", lambda: socket.socket(socket.AF_UNIX).connect(
        os.path.join(var_dir, "redis.sock")))
    attempt("list another run's directory", lambda: os.listdir(other_run))
    attempt("read another run's token", lambda: open(os.path.join(other_run, "token")).read())
    attempt("write into another run's directory", lambda: open(os.path.join(other_run, "x"), "w").write("x"))
    attempt("read the worker's environment", lambda: open(f"/proc/{worker_pid}/environ", "rb").read())
    attempt("signal the worker", lambda: os.kill(worker_pid, 0))
    attempt("read /root", lambda: os.listdir("/root"))
    leaked = sorted(k for k, v in os.environ.items()
                    if k in ("DATABASE_URL", "REDIS_URL", "CP_SECRET_KEY") or k.startswith("CP_SECRET")
                    or sentinel in v)
    tries["control-plane variables in the environment"] = "refused" if not leaked else "leaked " + ",".join(leaked)
    own = {}
    open(os.path.join(os.environ["CP_RUN_DIR"], "wrote"), "w").write("ok")
    own["token"] = len(open(os.path.join(os.environ["CP_RUN_DIR"], "token")).read())
    own["uid"], own["gid"], own["groups"] = os.getuid(), os.getgid(), os.getgroups()
    own["home"] = os.environ.get("HOME")
    json.dump({"tries": tries, "own": own, "env": sorted(os.environ)},
              open(os.path.join(os.environ["CP_RUN_DIR"], "probe.json"), "w"))
    """
)


def _runs_as(python: str, uid: int, gid: int) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", "import deepspeed"], user=uid, group=gid, extra_groups=[], capture_output=True, timeout=120
        )
    except OSError:
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def job_python():
    """An interpreter the job users can run: this one, or a venv of the same Python version (from a folder they
    can reach) that sees this one's packages, as CP_JOB_PYTHON names in production."""
    if _runs_as(sys.executable, UIDS[0] + 1, UIDS[0]):
        yield sys.executable
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bases = [Path(d) / f"python{version}" for d in ("/usr/bin", "/usr/local/bin", "/opt/python/bin")]
    base = next((str(b) for b in bases if b.exists()), None)
    if base is None:
        pytest.skip(f"no python{version} that a job user can run (this interpreter sits in a closed folder)")
    folder = Path(tempfile.mkdtemp(prefix="cp-job-python-", dir="/tmp"))
    folder.chmod(0o755)
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    site = Path(
        subprocess.run(
            [str(folder / "venv/bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "controlplane-venv.pth").write_text("".join(f"{p}\n" for p in sorted(paths)))
    python = str(folder / "venv/bin/python")
    if not _runs_as(python, UIDS[0] + 1, UIDS[0]):
        pytest.skip("the job venv cannot import deepspeed as a job user")
    yield python
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def install(tmp_path_factory, job_python, request):
    """A var/ with a secret key, a database file and two runs' directories, as a fresh install creates them."""
    base = Path(tempfile.mkdtemp(prefix="cp-isolation-", dir="/tmp"))
    base.chmod(0o711)
    var_dir = base / "var"
    var_dir.mkdir(mode=0o700)
    runs_dir = var_dir / "runs"
    runs_dir.mkdir(mode=0o700)
    for name, text in (("secret_key", SENTINEL), ("controlplane.sqlite3", "SQLite format 3\0" + SENTINEL)):
        fd = os.open(var_dir / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, text.encode())
        os.close(fd)
    scripts = var_dir / "scripts"
    scripts.mkdir(mode=0o755)
    (scripts / "probe.py").write_text(PROBE)
    (scripts / "probe.py").chmod(0o644)
    other = runs_dir / "run-1"
    other.mkdir()
    (other / "token").write_text("another run's token")
    with override_settings(VAR_DIR=var_dir, RUNS_DIR=runs_dir, JOB_UIDS=UIDS, SCRIPT_ROOTS=[scripts]):
        give_run_dir(other, JobUser(uid=UIDS[0] + 1, gid=UIDS[0]))  # as its own launch left it
        yield var_dir
    subprocess.run(["rm", "-rf", str(base)], check=False)


def _spec(var_dir: Path, job_python: str, run_id: int) -> LaunchSpec:
    run_dir = var_dir / "runs" / f"run-{run_id}"
    run_dir.mkdir()
    fd = os.open(run_dir / "token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"this-run-token")
    os.close(fd)
    argv = [str(var_dir / "scripts" / "probe.py"), str(var_dir), str(var_dir / "runs" / "run-1")]
    return LaunchSpec(
        run_id=run_id,
        run_dir=run_dir,
        module_argv=[*argv, str(os.getpid()), SENTINEL],
        env={"CP_RUN_DIR": str(run_dir)},
        nodes=1,
        gpus_per_node=1,
        accelerator="cpu",
        python=job_python,
        workdir=ROOT,
        master_port=29500 + run_id,
        job_uid=UIDS[0] + run_id,
        job_gid=UIDS[0],
    )


def _wait(backend: LocalBackend, job_id: str, run_dir: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (status := backend.poll(job_id, run_dir)).state == JobState.RUNNING:
        assert time.monotonic() < deadline, (run_dir / "stderr.log").read_text()[-3000:]
        time.sleep(0.2)
    assert status.state == JobState.SUCCEEDED, (status, (run_dir / "stderr.log").read_text()[-3000:])


@pytest.mark.parametrize("mode", ["exec", "warm"])
def test_a_job_cannot_reach_the_control_planes_secrets_database_or_other_runs(install, job_python, mode, monkeypatch):
    monkeypatch.setenv("CP_SECRET_KEY", SENTINEL)  # as a worker configured through its environment holds it
    monkeypatch.setenv("CP_SENTINEL_HOLDER", SENTINEL)
    launcher_pid = None
    with override_settings(WARM_LAUNCHER=mode == "warm"):
        if mode == "warm":
            assert warm.ensure_started(job_python)
            sock, pid_file = warm._paths(job_python)
            deadline = time.monotonic() + 90
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sock.exists(), (install / "launcher" / "warm-launcher.log").read_text()
            launcher_pid = warm._starting_pid(pid_file)
        try:
            spec = _spec(install, job_python, run_id=2)
            backend = LocalBackend()
            handle = backend.submit(spec)
            assert handle.detail.get("warm", False) == (mode == "warm")
            _wait(backend, handle.job_id, spec.run_dir)
        finally:
            if launcher_pid:
                os.kill(launcher_pid, signal.SIGTERM)
    result = json.loads((spec.run_dir / "probe.json").read_text())
    escaped = {name: outcome for name, outcome in result["tries"].items() if not outcome.startswith("refused")}
    assert not escaped, result
    assert len(result["tries"]) == 12
    assert result["own"] == {
        "token": len("this-run-token"),
        "uid": UIDS[0] + 2,
        "gid": UIDS[0],
        "groups": [],
        "home": str(spec.run_dir),
    }
    assert not (install / "planted").exists() and not (install / "runs" / "run-1" / "x").exists()
    assert oct(spec.run_dir.stat().st_mode)[-3:] == "700" and spec.run_dir.stat().st_uid == UIDS[0] + 2
    assert oct(install.stat().st_mode)[-3:] == "710"


def test_a_job_user_that_cannot_reach_the_interpreter_is_refused_before_launch(install, job_python):
    user = JobUser(uid=UIDS[0] + 3, gid=UIDS[0])
    closed = Path(tempfile.mkdtemp(dir="/tmp"))  # 0700, the control plane's
    try:
        (closed / "python").write_text("")
        with pytest.raises(LaunchError, match="CP_JOB_PYTHON"):
            check_reachable(closed / "python", user, bits=5, what="the interpreter")
    finally:
        subprocess.run(["rm", "-rf", str(closed)], check=False)


def test_an_own_script_outside_the_script_folders_is_refused(install, tmp_path):
    from runs.services.scripts import script_in_roots

    inside = install / "scripts" / "probe.py"
    outside = tmp_path / "train.py"
    outside.write_text("print(1)")
    link = install / "scripts" / "link.py"
    link.symlink_to(outside)
    assert script_in_roots(str(inside)) == str(inside)
    assert script_in_roots(str(outside)) is None
    assert script_in_roots(str(link)) is None  # resolved before the check
    assert script_in_roots(str(install / "scripts" / ".." / "secret_key")) is None
