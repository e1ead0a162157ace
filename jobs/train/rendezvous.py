"""How a rank finds the others under deepspeed, torchrun, srun or as one plain process (env:// rendezvous)."""

from __future__ import annotations

import re
import socket


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm hostlist expression: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", first)
    if not match:
        return first
    prefix, ranges, suffix = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables torch.distributed's env:// rendezvous needs that the launcher did not set.

    torchrun and the deepspeed launcher set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; srun sets SLURM_* only; a plain
    process sets nothing and becomes a world of one.
    """
    out: dict[str, str] = {}
    if "RANK" not in environ and "SLURM_PROCID" in environ:
        out["RANK"] = environ["SLURM_PROCID"]
        out["WORLD_SIZE"] = environ.get("SLURM_NTASKS", "1")
        out["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in environ:
            nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
            out["MASTER_ADDR"] = first_slurm_host(nodelist)
        if "MASTER_PORT" not in environ:
            # Every task of the job derives the same port without talking to the others.
            out["MASTER_PORT"] = str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000)
    elif "RANK" not in environ:
        out.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        out.setdefault("MASTER_ADDR", environ.get("MASTER_ADDR", "127.0.0.1"))
        if "MASTER_PORT" not in environ:
            out["MASTER_PORT"] = str(_free_port())
    elif "LOCAL_RANK" not in environ:
        out["LOCAL_RANK"] = "0"
    return out
