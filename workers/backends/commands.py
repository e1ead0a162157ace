"""Argument lists and environment shared by the launcher backends.

A backend starts the job in one of two shapes:
- once per rank (``srun``, or one process per rank): ``rank_argv`` -> ``[python, *module_argv]``; the program reads
  its rank from RANK/WORLD_SIZE/LOCAL_RANK or SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID;
- once per machine through DeepSpeed's launcher, which starts the ranks itself: ``deepspeed_argv`` (its runner,
  for a hostfile of hosts) or ``deepspeed_node_argv`` (its per-node launcher, for this machine).

DeepSpeed's launcher is started as ``python -m deepspeed.launcher.runner`` rather than through the ``deepspeed``
script so that the spec's interpreter is the one used: the launcher starts every rank (on every host, over pdsh)
with its own ``sys.executable``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from workers.backends.base import LaunchError, LaunchSpec

# Every process of a job carries its attempt's key in this variable: what finds and stops exactly that job's
# processes on a host (workers.backends.procs.tagged_pids, jobs.launch.reap).
ATTEMPT_KEY_ENV = "CP_ATTEMPT_KEY"
ATTEMPT_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

# All a local job takes from the worker's environment: the worker's holds the control plane's secrets (DATABASE_URL,
# CP_SECRET_KEY, REDIS_URL, ...). The job's own variables come from job_env; its token is a file in its run directory.
# Besides: the trainer's fault-injection switches (the fault suites set them on the worker) and the operator's
# peak-FLOPs figure for MFU.
LOCAL_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "CP_PEAK_TFLOPS")
LOCAL_INHERITED_PREFIXES = ("CP_INJECT_",)


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a local job (or the warm launcher that forks jobs) takes from the worker's environment."""
    return {
        key: value
        for key, value in environ.items()
        if key in LOCAL_INHERITED_ENV or key.startswith(LOCAL_INHERITED_PREFIXES)
    }


ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def validate_module_argv(module_argv: list[str]) -> None:
    """``["-m", "pkg.mod", args...]`` or ``["script.py", args...]``; nothing else reaches an interpreter."""
    if not module_argv:
        raise LaunchError("the job has no program to run (module_argv is empty)")
    if any("\0" in arg for arg in module_argv):
        raise LaunchError("the job's arguments contain a NUL byte")
    first = module_argv[0]
    if first == "-m":
        if len(module_argv) < 2 or not MODULE_NAME.match(module_argv[1]):
            raise LaunchError(f"'-m' must be followed by a Python module name, got {module_argv[1:2]!r}")
    elif first.startswith("-"):
        # Interpreter flags would be read by DeepSpeed's launcher as its own options.
        raise LaunchError(f"the job's program must be '-m MODULE' or a script path, not the option {first!r}")


def rank_argv(python: str, module_argv: list[str]) -> list[str]:
    """The command each rank runs."""
    validate_module_argv(module_argv)
    return [python, *module_argv]


def deepspeed_argv(
    python: str,
    module_argv: list[str],
    *,
    gpus_per_node: int,
    master_port: int,
    hostfile: Path | None = None,
    nodes: int | None = None,
    master_addr: str | None = None,
    launcher_flags: Iterable[str] = (),
) -> list[str]:
    """DeepSpeed's launcher starting ``gpus_per_node`` ranks per host of ``hostfile`` (this machine when None).

    ``--num_gpus`` (alias ``--num_accelerators``) is also the rank count per host on CPU, where DeepSpeed has no
    devices to count. ``launcher_flags`` go before the user's program, e.g. ``["--no_ssh_check"]``.
    """
    validate_module_argv(module_argv)
    argv = [python, "-u", "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        argv += ["--hostfile", str(hostfile)]
    if nodes is not None:
        argv += ["--num_nodes", str(nodes)]
    argv += ["--num_gpus", str(gpus_per_node), "--master_port", str(master_port)]
    if master_addr:
        argv += ["--master_addr", master_addr]
    argv += list(launcher_flags)
    if module_argv[0] == "-m":
        argv += ["--module", *module_argv[1:]]
    else:
        argv += module_argv
    return argv


def deepspeed_node_argv(python: str, module_argv: list[str], *, ranks: int, master_port: int) -> list[str]:
    """DeepSpeed's per-node launcher (``deepspeed.launcher.launch``) starting ``ranks`` ranks on this machine.

    This is the command DeepSpeed's runner itself builds for a single host; starting it directly saves the runner's
    own interpreter start and DeepSpeed import (2.5-4 s of every local launch here).
    """
    return [
        python,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        *deepspeed_node_args(module_argv, ranks=ranks, master_port=master_port),
    ]


def deepspeed_node_args(module_argv: list[str], *, ranks: int, master_port: int) -> list[str]:
    """The arguments of ``deepspeed.launcher.launch`` in deepspeed_node_argv."""
    validate_module_argv(module_argv)
    world_info = json.dumps({"localhost": list(range(ranks))}).encode()
    args = [f"--world_info={base64.urlsafe_b64encode(world_info).decode()}"]
    args += ["--master_addr=127.0.0.1", f"--master_port={master_port}"]
    if module_argv[0] == "-m":
        args += ["--module", *module_argv[1:]]
    else:
        args += module_argv
    return args


def job_env(spec: LaunchSpec) -> dict[str, str]:
    """Variables every rank gets on top of its node's environment; ``spec.env`` wins over the defaults.

    OMP_NUM_THREADS=1: ranks sharing a node's cores otherwise each start a thread per core and run many times
    slower. PYTHONUNBUFFERED: the log watchers read stdout.log while the job runs.
    """
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if spec.accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    if spec.cwd is not None and spec.cwd != spec.workdir:
        # A job started elsewhere than the checkout still imports jobs/ (jobs.reporter) from it.
        env["PYTHONPATH"] = str(spec.workdir)
    env.update(validate_env(spec.env))
    if spec.attempt_key:
        env[ATTEMPT_KEY_ENV] = spec.attempt_key
    return env


def validate_env(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_KEY.match(key):
            raise LaunchError(f"environment variable name {key!r} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(value, str) or "\0" in value:
            raise LaunchError(f"environment variable {key} must be a string without NUL bytes")
        out[key] = value
    return out
