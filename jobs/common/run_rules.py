"""The value rules of run.json, one definition for the jobs and the control plane: every choice and numeric range,
and the readers that take a field from its section and refuse it by name (``ConfigError``). jobs.common.run_config
builds the schema's sections on these.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

REQUIRED: Any = dataclasses.MISSING


class ConfigError(ValueError):
    """run.json is malformed; ``field`` is the dotted name of the field to fix, and the message starts with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- the value rules: every choice and numeric range of run.json, one definition for the jobs and the control plane

MAX_GRAD_ACCUM = 65_536
# Every field with a fixed set of values; the loader refuses others and the control plane's form offers these.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ("moe", "dense"),
    "model.attention": ("mla", "mha"),
    "precision": ("fp32", "bf16"),
    "optimizer.name": ("adamw",),
    "optimizer.schedule": ("cosine", "constant"),
    "training.nan_policy": ("abort", "skip"),
    "cluster.backend": ("local", "slurm", "hostfile"),
    "cluster.accelerator": ("cpu", "cuda"),
    "remediation.on_spike": ("alert", "rollback"),
}
OOM_REMEDIES = ("halve_micro_batch", "activation_checkpointing", "offload_optimizer")


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


def range_key(name: str) -> str:
    """The RANGES key of a field name: list indexes, dotted ("curriculum.1.seq_len") or bracketed
    ("curriculum[1].seq_len"), become "*"."""
    parts = name.replace("[", ".").replace("]", "").split(".")
    return ".".join("*" if part.isdigit() else part for part in parts)


def check_value(name: str, value: Any) -> None:
    """The choice or range rule of field `name`, if it has one; raises ConfigError naming the field."""
    options = CHOICES.get(name)
    if options is not None and value not in options:
        raise ConfigError(name, f"expected one of {', '.join(options)}, got {value!r}")
    rng = RANGES.get(range_key(name))
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not rng.contains(float(value)):
            raise ConfigError(name, f"must be {rng.describe()}, got {value!r}")


def field_value(section: dict, path: str, key: str, kind: type | tuple, default: Any = REQUIRED) -> Any:
    name = f"{path}.{key}"
    if key not in section or section[key] is None:
        if default is REQUIRED:
            raise ConfigError(name, "required")
        return default
    value = section[key]
    # bool is an int subclass; a stray true/false must not pass as a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(name, f"expected {kind_name(kind)}, got {value!r}")
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ConfigError(name, f"expected {kind_name(kind)}, got {value!r}")
    check_value(name, value)
    return value


def kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "integer", float: "number", str: "string", bool: "boolean"}.get(k, k.__name__) for k in kinds
    )


def require_positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(name, f"must be > 0, got {value}")


def require_non_negative(name: str, value: int | float) -> None:
    if value < 0:
        raise ConfigError(name, f"must be >= 0, got {value}")


def section_of(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ConfigError(key, "required object")
    return value
