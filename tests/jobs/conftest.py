"""Helpers for the reference trainer's tests: tiny run.json configs and running the trainer as real processes."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent

TINY_RUN = {
    "schema_version": 1,
    "run": {"id": 7, "name": "tiny-test", "attempt": 1, "trainer": "reference"},
    "model": {
        "arch": "moe",
        "attention": "mla",
        "vocab_size": 4096,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "q_lora_rank": 0,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8,
        "v_head_dim": 8,
        "intermediate_size": 64,
        "moe_intermediate_size": 16,
        "num_routed_experts": 4,
        "num_shared_experts": 1,
        "top_k": 2,
        "first_k_dense": 1,
        "aux_loss_coef": 0.01,
        "rope_theta": 10000.0,
        "max_seq_len": 64,
        "tie_embeddings": False,
    },
    "parallel": {
        "tp": 1,
        "pp": 1,
        "ep": 1,
        "sp": False,
        "zero_stage": 2,
        "offload_optimizer": False,
        "offload_param": False,
        "activation_checkpointing": False,
    },  # fmt: skip
    "batch": {"global_batch_tokens": 256, "micro_batch": 4, "grad_accum": 2, "seq_len": 32, "tolerance_pct": 5.0},
    "optimizer": {
        "name": "adamw",
        "lr": 0.003,
        "min_lr": 0.0003,
        "betas": [0.9, 0.95],
        "eps": 1e-08,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "warmup_steps": 2,
        "schedule": "cosine",
        "torch_adam": True,
    },  # fmt: skip
    "precision": "fp32",
    "curriculum": [{"start_step": 0, "seq_len": 16}, {"start_step": 3, "seq_len": 32}],
    "training": {
        "total_steps": 4,
        "token_budget": 1024,
        "checkpoint_interval": 2,
        "keep_checkpoints": 3,
        "seed": 1234,
        "log_interval": 1,
        "nan_policy": "abort",
    },  # fmt: skip
    "data": {
        "recipe": {
            "name": "bilingual-demo",
            "version": 1,
            "sources": [
                {"name": "zh", "weight": 45.0},
                {"name": "en", "weight": 35.0},
                {"name": "other", "weight": 20.0},
            ],
        },
        "shards_dir": None,
        "tokenizer": None,
    },  # fmt: skip
    "alerts": {"loss_spike_z": 6.0, "grad_norm_max": 100.0, "hang_timeout_s": 300, "throughput_drop_pct": 50.0},
    "remediation": {"oom": ["halve_micro_batch"], "max_attempts": 3, "on_spike": "alert"},
    "cluster": {
        "backend": "local",
        "nodes": 1,
        "gpus_per_node": 1,
        "accelerator": "cpu",
        "gpu_type": "CPU",
        "gpu_memory_gb": 8.0,
    },  # fmt: skip
    "reporter": {"ingest_url": None, "every_n_steps": 1, "batch_size": 50, "flush_interval_s": 0.2},
}


def tiny_run(**sections) -> dict:
    """TINY_RUN with sections updated key by key, e.g. tiny_run(model={"arch": "dense"}, precision="bf16")."""
    raw = copy.deepcopy(TINY_RUN)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name].update(value)
        else:
            raw[name] = value
    return raw


def write_run(run_dir: Path, raw: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(raw, indent=1))
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_env(**extra: str) -> dict:
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "CP_INJECT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher_vars)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_trainer(run_dir: Path, *args: str, nproc: int = 1, launcher: str = "torchrun", env: dict | None = None,
                timeout: int = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """Start jobs.train as the cluster would: one process, or `nproc` ranks under torchrun / deepspeed."""
    train_args = ["--run-dir", str(run_dir), *args]
    if nproc == 1 and launcher == "none":
        cmd = [PYTHON, "-m", "jobs.train", *train_args]
    elif launcher == "torchrun":
        cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
               "-m", "jobs.train", *train_args]  # fmt: skip
    elif launcher == "deepspeed":
        cmd = [str(VENV_BIN / "deepspeed"), "--num_accelerators", str(nproc), "--master_port", str(free_port()),
               "--module", "jobs.train", *train_args]  # fmt: skip
    else:
        raise ValueError(launcher)
    return subprocess.run(cmd, cwd=REPO, env=env or trainer_env(), capture_output=True, text=True, timeout=timeout)


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_by_step(records: list[dict]) -> dict[int, dict]:
    return {r["step"]: r["values"] for r in records if r["kind"] == "metrics"}


def events(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["kind"] == "event" and r["type"] == kind]


def job_status(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("JOB_STATUS ")]
    assert lines, f"no JOB_STATUS line\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("JOB_STATUS "))


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"


@pytest.fixture
def make_run(tmp_path):
    def _make(name: str = "run", **sections) -> Path:
        return write_run(tmp_path / name, tiny_run(**sections))

    return _make
