"""The run config's fields as the control plane checks them: choices, numeric ranges, the issue type that names a
field and its fix, and the reader that records one issue per missing or malformed field.

Field names are dotted paths into the config ("parallel.tp", "curriculum.1.seq_len", "data.recipe.sources.0.weight"),
the names the form and the API use for their fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

TRAINERS = ("reference", "plan_only", "own_script")
ARCHS = ("moe", "dense")
ATTENTIONS = ("mla", "mha")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adamw",)
SCHEDULES = ("cosine", "linear", "constant")
NAN_POLICIES = ("abort", "skip")
BACKENDS = ("local", "slurm", "hostfile")
ACCELERATORS = ("cpu", "cuda")
OOM_REMEDIES = ("halve_micro_batch", "activation_checkpointing", "offload_optimizer")
SPIKE_ACTIONS = ("alert", "rollback")
MAX_GRAD_ACCUM = 65_536


@dataclass(frozen=True)
class FieldIssue:
    field: str
    message: str
    suggestion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, "suggestion": self.suggestion}


@dataclass(frozen=True)
class Range:
    kind: type
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        lo = f"greater than {_num(self.lo)}" if self.lo_open else f"at least {_num(self.lo)}"
        hi = f"less than {_num(self.hi)}" if self.hi_open else f"at most {_num(self.hi)}"
        return f"{lo} and {hi}"


def _num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:g}"


# Every numeric field and its allowed range; the form can use these for its inputs' min/max. A "*" stands for a
# list index.
RANGES: dict[str, Range] = {
    "model.vocab_size": Range(int, 2, 1_048_576),
    "model.hidden_size": Range(int, 1, 65_536),
    "model.num_layers": Range(int, 1, 1024),
    "model.num_heads": Range(int, 1, 1024),
    "model.q_lora_rank": Range(int, 0, 65_536),
    "model.kv_lora_rank": Range(int, 1, 65_536),
    "model.qk_nope_head_dim": Range(int, 0, 1024),
    "model.qk_rope_head_dim": Range(int, 2, 1024),
    "model.v_head_dim": Range(int, 1, 1024),
    "model.intermediate_size": Range(int, 1, 1_048_576),
    "model.moe_intermediate_size": Range(int, 1, 1_048_576),
    "model.num_routed_experts": Range(int, 1, 4096),
    "model.num_shared_experts": Range(int, 0, 64),
    "model.top_k": Range(int, 1, 4096),
    "model.first_k_dense": Range(int, 0, 1024),
    "model.aux_loss_coef": Range(float, 0.0, 1.0),
    "model.rope_theta": Range(float, 0.0, 1e9, lo_open=True),
    "model.max_seq_len": Range(int, 1, 1_048_576),
    "parallel.tp": Range(int, 1, 1024),
    "parallel.pp": Range(int, 1, 1024),
    "parallel.ep": Range(int, 1, 4096),
    "parallel.zero_stage": Range(int, 0, 3),
    "batch.global_batch_tokens": Range(int, 1, 10_000_000_000),
    "batch.micro_batch": Range(int, 1, 65_536),
    "batch.grad_accum": Range(int, 1, MAX_GRAD_ACCUM),
    "batch.seq_len": Range(int, 1, 1_048_576),
    "batch.tolerance_pct": Range(float, 0.0, 50.0),
    "optimizer.lr": Range(float, 0.0, 1.0, lo_open=True),
    "optimizer.min_lr": Range(float, 0.0, 1.0),
    "optimizer.betas.*": Range(float, 0.0, 1.0, hi_open=True),
    "optimizer.eps": Range(float, 0.0, 0.1, lo_open=True),
    "optimizer.weight_decay": Range(float, 0.0, 1.0),
    "optimizer.grad_clip": Range(float, 0.0, 1e6),
    "optimizer.warmup_steps": Range(int, 0, 1_000_000_000),
    "curriculum.*.start_step": Range(int, 0, 1_000_000_000),
    "curriculum.*.seq_len": Range(int, 1, 1_048_576),
    "training.total_steps": Range(int, 1, 1_000_000_000),
    "training.token_budget": Range(int, 1, 10**15),
    # 0 saves only at the end of the run.
    "training.checkpoint_interval": Range(int, 0, 1_000_000_000),
    "training.keep_checkpoints": Range(int, 1, 1000),
    "training.keep_every": Range(int, 0, 10_000_000),
    "training.seed": Range(int, 0, 2**32 - 1),
    "training.log_interval": Range(int, 1, 1_000_000),
    "data.recipe.version": Range(int, 1, 1_000_000),
    "data.recipe.sources.*.weight": Range(float, 0.0, 100.0, lo_open=True),
    "alerts.loss_spike_z": Range(float, 0.0, 100.0, lo_open=True),
    "alerts.grad_norm_max": Range(float, 0.0, 1e9, lo_open=True),
    "alerts.hang_timeout_s": Range(float, 10.0, 604_800.0),
    "alerts.throughput_drop_pct": Range(float, 0.0, 100.0, lo_open=True),
    "remediation.max_attempts": Range(int, 0, 20),
    "cluster.nodes": Range(int, 1, 100_000),
    "cluster.gpus_per_node": Range(int, 1, 64),
    "cluster.gpu_memory_gb": Range(float, 0.5, 4096.0),
    "cluster.cpu_memory_gb_per_node": Range(float, 1.0, 1_000_000.0),
}

MISSING = object()


def range_key(path: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in path.split("."))


def listing(values: Sequence[int], *, limit: int = 8) -> str:
    shown = ", ".join(f"{v:,}" for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def nearest(values: Iterable[int], target: int) -> int | None:
    return min(values, key=lambda v: (abs(v - target), v), default=None)


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


class ConfigReader:
    """Reads typed fields out of the config, recording an issue for each missing or malformed one."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.issues: list[FieldIssue] = []
        self._reported_parents: set[str] = set()

    def add(self, field: str, message: str, suggestion: dict[str, Any] | None = None) -> None:
        issue = FieldIssue(field, message, suggestion)
        if issue not in self.issues:
            self.issues.append(issue)

    def raw(self, path: str) -> Any:
        node = self.cfg
        parts = path.split(".")
        for depth, part in enumerate(parts):
            here = ".".join(parts[: depth + 1])
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                parent = ".".join(parts[:depth]) or "config"
                if depth > 0 and not isinstance(node, (dict, list)):
                    if parent not in self._reported_parents:
                        self._reported_parents.add(parent)
                        self.add(
                            parent,
                            f"{parent} must be a JSON object with its fields, not {node!r}; restore it from a preset.",
                        )
                    return MISSING
                if depth < len(parts) - 1:
                    if here not in self._reported_parents:
                        self._reported_parents.add(here)
                        self.add(
                            here,
                            f"The {here} section is missing; every run config has one "
                            "(docs/run-config.md); start from a preset and edit it.",
                        )
                    return MISSING
                self.add(path, f"{path} is missing; every run config sets it (docs/run-config.md); enter a value.")
                return MISSING
        return node

    def integer(self, path: str) -> int | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        rng = RANGES[range_key(path)]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"{path} must be a whole number {rng.describe()}, not {value!r}; enter one.")
            return None
        if not rng.contains(value):
            self.add(path, f"{path} is {value:,} but must be {rng.describe()}; enter a value in that range.")
            return None
        return value

    def number(self, path: str) -> float | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        rng = RANGES[range_key(path)]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(path, f"{path} must be a number {rng.describe()}, not {value!r}; enter one.")
            return None
        if not rng.contains(float(value)):
            self.add(path, f"{path} is {value:g} but must be {rng.describe()}; enter a value in that range.")
            return None
        return float(value)

    def flag(self, path: str) -> bool | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        if not isinstance(value, bool):
            self.add(path, f"{path} must be true or false, not {value!r}; tick or untick it.")
            return None
        return value

    def choice(self, path: str, options: Sequence[str]) -> str | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        if value not in options:
            self.add(path, f"{path} is {value!r}; choose one of {', '.join(options)}.")
            return None
        return value

    def optional_text(self, path: str) -> None:
        value = self.raw(path)
        if value is not MISSING and value is not None and (not isinstance(value, str) or not value.strip()):
            self.add(
                path, f"{path} must be a path or null (the bundled default), not {value!r}; clear it or enter a path."
            )
