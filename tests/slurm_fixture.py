"""``slurm_cluster``: a real one-node Slurm for the tests, started by scripts/slurm-up.

Import it from a conftest (``from tests.slurm_fixture import slurm_cluster``). The daemons are left running after
the session: another test session on the same machine may be using them (stop them with scripts/slurm-down).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SLURM_UP = Path(__file__).resolve().parent.parent / "scripts" / "slurm-up"


@dataclass(frozen=True)
class SlurmCluster:
    nodes: list[str]
    cpus_per_node: int
    partition: str


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    if os.geteuid() != 0:
        pytest.skip("a real Slurm needs root: scripts/slurm-up installs packages and starts munged/slurmctld/slurmd")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it (scripts/slurm-up needs Debian)")
    result = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/slurm-up failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    listing = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N|%c|%P"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    nodes, cpus, partition = [], [], ""
    for line in listing.splitlines():
        node, count, part = line.strip().split("|")
        if part.endswith("*"):
            partition = part.rstrip("*")
            nodes.append(node)
            cpus.append(int(count))
    return SlurmCluster(nodes=nodes, cpus_per_node=min(cpus), partition=partition)
