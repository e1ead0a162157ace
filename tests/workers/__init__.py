"""Shared by the launcher backend tests: a tiny two-rank program, so that they do not depend on the trainer."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

# Reads its rank the way the reference trainer does (torchrun/DeepSpeed variables, else Slurm's), accepts DeepSpeed's
# --local_rank, records what it saw per rank, and all-reduces one tensor over gloo; rank 0 writes result.json.
GLOO_PROGRAM = """
import argparse
import json
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
args = parser.parse_args()

env = os.environ
rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")))
local_rank = args.local_rank if args.local_rank is not None else int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
out = Path(args.out)
seen = {
    "rank": rank,
    "world_size": world,
    "local_rank": local_rank,
    "pid": os.getpid(),
    "cwd": os.getcwd(),
    "env": {k: env.get(k) for k in ("OMP_NUM_THREADS", "DS_ACCELERATOR", "MASTER_ADDR", "MASTER_PORT", "CP_TEST_VALUE")},
}
(out / f"rank{rank}.json").write_text(json.dumps(seen))
print(f"rank {rank}/{world} local {local_rank} pid {os.getpid()} started", flush=True)
if args.sleep:
    time.sleep(args.sleep)
if args.exit_code:
    print(f"rank {rank} exits with {args.exit_code}", file=sys.stderr, flush=True)
    sys.exit(args.exit_code)

import torch
import torch.distributed as dist

dist.init_process_group("gloo", rank=rank, world_size=world)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
if rank == 0:
    (out / "result.json").write_text(json.dumps({"sum": value.item(), "world_size": world}))
dist.destroy_process_group()
print(f"rank {rank} all-reduced {value.item()}", flush=True)
"""


def write_gloo_program(directory: Path) -> Path:
    path = directory / "gloo_program.py"
    path.write_text(GLOO_PROGRAM)
    return path


def free_port() -> int:
    """A port free on every address: the rendezvous store listens on all of them, and the private sshd of the pdsh
    test holds its port on 127.0.0.N only, where a bind to 127.0.0.1 would not see it."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2):
    """The predicate's first truthy value, or AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def rank_records(out: Path, world: int) -> list[dict] | None:
    """What each rank recorded, once all of them have."""
    records = []
    for rank in range(world):
        path = out / f"rank{rank}.json"
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None
    return records


def process_alive(pid: int) -> bool:
    """True while the pid runs (a zombie has finished: only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
