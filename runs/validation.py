"""Checks of a run config (docs/run-config.md) that name the field and the fix.

Every issue is reported, not just the first. Field names are dotted paths into the config ("parallel.tp",
"curriculum.1.seq_len", "data.recipe.sources.0.weight"), the names the form and the API use for their fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from runs.capabilities import CapabilitiesUnavailable, check_capabilities, trainer_capabilities

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
# The tokenizer that ships in jobs/assets/, used when data.tokenizer is null.
BUNDLED_TOKENIZER_VOCAB = 4096
RECIPE_SUM_TOLERANCE = 0.01
# How far the batch search looks: micro-batches up to max(64, twice the current one) but at most MAX_SEARCH_MICRO,
# so the form stays responsive; accumulation up to its own range.
MAX_SEARCH_MICRO = 4096
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

_MISSING = object()


def _range_key(path: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in path.split("."))


def _listing(values: Sequence[int], *, limit: int = 8) -> str:
    shown = ", ".join(f"{v:,}" for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _nearest(values: Iterable[int], target: int) -> int | None:
    return min(values, key=lambda v: (abs(v - target), v), default=None)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


class _Reader:
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
                    return _MISSING
                if depth < len(parts) - 1:
                    if here not in self._reported_parents:
                        self._reported_parents.add(here)
                        self.add(
                            here,
                            f"The {here} section is missing; every run config has one "
                            "(docs/run-config.md); start from a preset and edit it.",
                        )
                    return _MISSING
                self.add(path, f"{path} is missing; every run config sets it (docs/run-config.md); enter a value.")
                return _MISSING
        return node

    def integer(self, path: str) -> int | None:
        value = self.raw(path)
        if value is _MISSING:
            return None
        rng = RANGES[_range_key(path)]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"{path} must be a whole number {rng.describe()}, not {value!r}; enter one.")
            return None
        if not rng.contains(value):
            self.add(path, f"{path} is {value:,} but must be {rng.describe()}; enter a value in that range.")
            return None
        return value

    def number(self, path: str) -> float | None:
        value = self.raw(path)
        if value is _MISSING:
            return None
        rng = RANGES[_range_key(path)]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(path, f"{path} must be a number {rng.describe()}, not {value!r}; enter one.")
            return None
        if not rng.contains(float(value)):
            self.add(path, f"{path} is {value:g} but must be {rng.describe()}; enter a value in that range.")
            return None
        return float(value)

    def flag(self, path: str) -> bool | None:
        value = self.raw(path)
        if value is _MISSING:
            return None
        if not isinstance(value, bool):
            self.add(path, f"{path} must be true or false, not {value!r}; tick or untick it.")
            return None
        return value

    def choice(self, path: str, options: Sequence[str]) -> str | None:
        value = self.raw(path)
        if value is _MISSING:
            return None
        if value not in options:
            self.add(path, f"{path} is {value!r}; choose one of {', '.join(options)}.")
            return None
        return value

    def optional_text(self, path: str) -> None:
        value = self.raw(path)
        if value is not _MISSING and value is not None and (not isinstance(value, str) or not value.strip()):
            self.add(
                path, f"{path} must be a path or null (the bundled default), not {value!r}; clear it or enter a path."
            )


def validate_config(
    cfg: dict[str, Any], *, capabilities: dict[str, Any] | None = None, trainer: str = "reference"
) -> list[FieldIssue]:
    """Every problem with `cfg` for `trainer`; [] when it can be launched (or planned, for plan_only).

    For the reference trainer the layout is checked against `capabilities`, read from jobs/train/capabilities.json when
    not given; plan_only and own_script skip that check, as neither runs the reference trainer.
    """
    r = _Reader(cfg)
    if not isinstance(cfg, dict):
        return [FieldIssue("config", f"A run config is a JSON object, not {type(cfg).__name__}; start from a preset.")]
    if trainer not in TRAINERS:
        r.add("run.trainer", f"run.trainer {trainer!r} is unknown; choose one of {', '.join(TRAINERS)}.")
    if "schema_version" in cfg and cfg["schema_version"] != 1:
        r.add(
            "schema_version",
            f"schema_version is {cfg['schema_version']!r}; this control plane writes and reads "
            "version 1, so set it to 1.",
            {"schema_version": 1},
        )

    model = _check_model(r)
    cluster = _check_cluster(r)
    par = _check_parallel(r, model=model, cluster=cluster)
    batch = _check_batch(r, model=model, par=par)
    training = _check_training(r, batch=batch)
    _check_optimizer(r, training=training)
    r.choice("precision", PRECISIONS)
    _check_curriculum(r, model=model, batch=batch, training=training)
    _check_data(r, model=model, trainer=trainer)
    _check_alerts_and_remediation(r)
    if trainer == "reference":
        _check_capabilities(r, capabilities=capabilities)
    return r.issues


# --- model -----------------------------------------------------------------------------------------------------


def _check_model(r: _Reader) -> dict[str, Any]:
    m: dict[str, Any] = {
        "arch": r.choice("model.arch", ARCHS),
        "attention": r.choice("model.attention", ATTENTIONS),
    }
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len"):
        m[name] = r.integer(f"model.{name}")
    m["rope_theta"] = r.number("model.rope_theta")
    m["tie_embeddings"] = r.flag("model.tie_embeddings")
    if m["attention"] == "mla":
        for name in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            m[name] = r.integer(f"model.{name}")
        rope = m["qk_rope_head_dim"]
        if rope is not None and rope % 2:
            r.add(
                "model.qk_rope_head_dim",
                f"model.qk_rope_head_dim is {rope}, but rotary embeddings rotate pairs of "
                f"dimensions, so it must be even; use {rope + 1}.",
                {"model.qk_rope_head_dim": rope + 1},
            )
    elif m["attention"] == "mha" and m["hidden_size"] and m["num_heads"]:
        h, heads = m["hidden_size"], m["num_heads"]
        if h % heads:
            valid = [d for d in _divisors(h) if d <= RANGES["model.num_heads"].hi]
            best = _nearest(valid, heads)
            r.add(
                "model.num_heads",
                f"model.num_heads is {heads} but hidden_size {h:,} is not divisible by it; with multi-head attention "
                f"each head has hidden_size / num_heads dimensions, so set num_heads to a divisor such as {best} "
                f"(valid: {_listing(valid)}).",
                {"model.num_heads": best},
            )
        elif (h // heads) % 2:
            r.add(
                "model.num_heads",
                f"model.num_heads {heads} makes the head size {h // heads} (hidden_size {h:,} / num_heads), which is odd, "
                "but rotary embeddings rotate pairs of dimensions; choose num_heads so that the head size is even.",
            )
    if m["arch"] == "moe":
        for name in ("moe_intermediate_size", "num_routed_experts", "num_shared_experts", "top_k", "first_k_dense"):
            m[name] = r.integer(f"model.{name}")
        m["aux_loss_coef"] = r.number("model.aux_loss_coef")
        top_k, routed = m["top_k"], m["num_routed_experts"]
        if top_k is not None and routed is not None and top_k > routed:
            r.add(
                "model.top_k",
                f"model.top_k is {top_k} but there are only {routed} routed experts; a token cannot "
                f"be sent to more experts than exist, so set top_k to at most {routed}.",
                {"model.top_k": routed},
            )
        first, layers = m["first_k_dense"], m["num_layers"]
        if first is not None and layers is not None and first >= layers:
            r.add(
                "model.first_k_dense",
                f"model.first_k_dense is {first} with {layers} layers, which leaves no MoE "
                f"layer; set it below {layers} (or choose the dense arch).",
                {"model.first_k_dense": max(0, layers - 1)},
            )
    return m


# --- cluster and parallel layout -------------------------------------------------------------------------------


def _check_cluster(r: _Reader) -> dict[str, Any]:
    c = {
        "backend": r.choice("cluster.backend", BACKENDS),
        "nodes": r.integer("cluster.nodes"),
        "gpus_per_node": r.integer("cluster.gpus_per_node"),
        "accelerator": r.choice("cluster.accelerator", ACCELERATORS),
        "gpu_memory_gb": r.number("cluster.gpu_memory_gb"),
    }
    if isinstance(r.cfg.get("cluster"), dict) and "cpu_memory_gb_per_node" in r.cfg["cluster"]:
        r.number("cluster.cpu_memory_gb_per_node")
    gpu_type = r.raw("cluster.gpu_type")
    if gpu_type is not _MISSING and (not isinstance(gpu_type, str) or not gpu_type.strip()):
        r.add(
            "cluster.gpu_type",
            f"cluster.gpu_type must name the accelerator (e.g. H100, A100, H200, CPU), not {gpu_type!r}; enter its type.",
        )
    if c["backend"] == "local" and c["nodes"] is not None and c["nodes"] != 1:
        r.add(
            "cluster.nodes",
            f"The local backend starts processes on this one machine, so cluster.nodes must be 1, "
            f"not {c['nodes']}; set it to 1 or use the slurm or hostfile backend.",
            {"cluster.nodes": 1},
        )
    nodes, per_node = c["nodes"], c["gpus_per_node"]
    c["world"] = int(nodes) * int(per_node) if nodes and per_node else None
    return c


def _check_parallel(r: _Reader, *, model: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {name: r.integer(f"parallel.{name}") for name in ("tp", "pp", "ep", "zero_stage")}
    for name in ("sp", "offload_optimizer", "offload_param", "activation_checkpointing"):
        p[name] = r.flag(f"parallel.{name}")
    tp, pp, ep, zero = p["tp"], p["pp"], p["ep"], p["zero_stage"]
    gpn, world = cluster["gpus_per_node"], cluster["world"]
    if tp is not None:
        _check_tp(r, tp=tp, model=model, gpus_per_node=gpn)
    p["dp"] = None
    if tp is not None and pp is not None and world is not None:
        if world % (tp * pp):
            layers = model["num_layers"]
            good_pp = [q for q in _divisors(world) if world % (tp * q) == 0 and (layers is None or q <= layers)]
            good_tp = [t for t in _divisors(world) if world % (t * pp) == 0 and (gpn is None or t <= gpn)]
            best = _nearest(good_pp, pp)
            r.add(
                "parallel.pp",
                f"parallel.tp x parallel.pp = {tp} x {pp} = {tp * pp} does not divide the cluster's {world:,} GPUs "
                f"({cluster['nodes']} nodes x {gpn}), so the data-parallel size would not be whole; "
                f"with TP {tp} set parallel.pp to one of {_listing(good_pp) or 'none'}, or with PP {pp} set "
                f"parallel.tp to one of {_listing(good_tp) or 'none'}.",
                {"parallel.pp": best} if best else None,
            )
        else:
            p["dp"] = world // (tp * pp)
    if pp is not None and model["num_layers"] is not None and pp > model["num_layers"]:
        r.add(
            "parallel.pp",
            f"parallel.pp is {pp} but the model has {model['num_layers']} layers; each pipeline stage "
            f"needs at least one layer, so set PP to at most {model['num_layers']}.",
            {"parallel.pp": model["num_layers"]},
        )
    if ep is not None:
        _check_ep(r, ep=ep, dp=p["dp"], model=model)
    if p["sp"] and tp is not None and tp == 1:
        r.add(
            "parallel.sp",
            "parallel.sp is on but parallel.tp is 1. Sequence parallelism here is Megatron-style: it splits the "
            "norm and dropout activations along the sequence across the tensor-parallel group, so it needs "
            "TP > 1; turn parallel.sp off or raise parallel.tp.",
            {"parallel.sp": False},
        )
    if zero is not None:
        if p["offload_param"] and zero != 3:
            r.add(
                "parallel.offload_param",
                f"parallel.offload_param needs ZeRO stage 3 (only stage 3 partitions the parameters it moves to "
                f"the CPU), and the stage is {zero}; set parallel.zero_stage to 3 or turn parallel.offload_param "
                "off.",
                {"parallel.offload_param": False},
            )
        if p["offload_optimizer"] and zero == 0:
            r.add(
                "parallel.offload_optimizer",
                "parallel.offload_optimizer (ZeRO-Offload) moves ZeRO's optimizer-state partitions to the CPU, so it "
                "needs ZeRO stage 1 or higher, and the stage is 0; set parallel.zero_stage to 1 or turn "
                "parallel.offload_optimizer off.",
                {"parallel.zero_stage": 1},
            )
        if pp is not None and pp > 1 and zero >= 2:
            r.add(
                "parallel.zero_stage",
                f"DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only (ZeRO-2/3 "
                f"shard gradients or parameters that the pipeline schedule needs whole), and "
                f"PP is {pp}; set parallel.zero_stage to 1 (with offload_optimizer for "
                "ZeRO-Offload) or PP to 1.",
                {"parallel.zero_stage": 1},
            )
    return p


def _check_tp(r: _Reader, *, tp: int, model: dict[str, Any], gpus_per_node: int | None) -> None:
    widths = {"model.num_heads": model.get("num_heads"), "model.intermediate_size": model.get("intermediate_size")}
    if model.get("arch") == "moe":
        widths["model.moe_intermediate_size"] = model.get("moe_intermediate_size")
    known = {k: v for k, v in widths.items() if v is not None}

    def fits(t: int) -> bool:
        return all(v % t == 0 for v in known.values()) and (gpus_per_node is None or gpus_per_node % t == 0)

    valid = [t for t in range(1, (gpus_per_node or tp) + 1) if fits(t)]
    if gpus_per_node is not None and (tp > gpus_per_node or gpus_per_node % tp):
        r.add(
            "parallel.tp",
            f"parallel.tp is {tp} but a node has {gpus_per_node} GPUs. Tensor parallelism exchanges "
            "activations at every layer, which only NVLink inside a node is fast enough for, so a TP "
            f"group must fit in (and evenly divide) one node; use TP in {_listing(valid)} and "
            "scale across nodes with PP or data parallelism.",
            {"parallel.tp": _nearest(valid, tp)},
        )
    for name, width in known.items():
        if width % tp:
            what = "attention heads" if name == "model.num_heads" else "MLP width"
            r.add(
                "parallel.tp",
                f"parallel.tp is {tp} but {name} is {width:,}; TP splits the {what} evenly across "
                f"the TP ranks, so TP must divide it; use TP in {_listing(valid)}.",
                {"parallel.tp": _nearest(valid, tp)},
            )


def _check_ep(r: _Reader, *, ep: int, dp: int | None, model: dict[str, Any]) -> None:
    if model.get("arch") == "dense":
        if ep > 1:
            r.add(
                "parallel.ep",
                f"parallel.ep is {ep} but the dense arch has no experts to spread; set EP to 1 or choose the moe arch.",
                {"parallel.ep": 1},
            )
        return
    if model.get("arch") != "moe":
        return
    routed = model.get("num_routed_experts")
    bad = []
    if dp is not None and dp % ep:
        bad.append(f"the data-parallel size {dp} (expert-parallel groups are carved out of the data-parallel ranks)")
    if routed is not None and routed % ep:
        bad.append(f"the {routed} routed experts (each EP rank holds the same number)")
    if bad:
        valid = [e for e in _divisors(dp or ep) if routed is None or routed % e == 0]
        r.add(
            "parallel.ep",
            f"parallel.ep is {ep} but must divide {' and '.join(bad)}; use EP in {_listing(valid)}.",
            {"parallel.ep": _nearest(valid, ep)},
        )


# --- batch, training, optimizer --------------------------------------------------------------------------------


def nearest_batch_pair(
    *, target_tokens: int, tokens_per_sequence: int, tolerance_pct: float, micro_batch: int, grad_accum: int
) -> tuple[int, int] | None:
    """The (micro_batch, grad_accum) closest to the given pair whose tokens per step are within tolerance.

    `tokens_per_sequence` is dp x seq_len: the tokens one sequence per rank per micro step adds. "Closest" is in
    log scale (doubling either costs 1), ties going to the smaller token error, then the smaller micro-batch.
    """
    best: tuple[float, float, int, int] | None = None
    for micro in range(1, min(max(64, 2 * micro_batch), MAX_SEARCH_MICRO) + 1):
        ideal = target_tokens / (micro * tokens_per_sequence)
        for accum in {math.floor(ideal), math.ceil(ideal)}:
            if not 1 <= accum <= MAX_GRAD_ACCUM:
                continue
            error = abs(micro * accum * tokens_per_sequence - target_tokens) / target_tokens * 100
            if error > tolerance_pct + 1e-9:
                continue
            # Rounded so that equal distances tie exactly and the next criteria decide.
            distance = round(abs(math.log2(micro / micro_batch)) + abs(math.log2(accum / grad_accum)), 9)
            key = (distance, round(error, 9), micro, accum)
            if best is None or key < best:
                best = key
    return None if best is None else (best[2], best[3])


def _check_batch(r: _Reader, *, model: dict[str, Any], par: dict[str, Any]) -> dict[str, Any]:
    b: dict[str, Any] = {
        n: r.integer(f"batch.{n}") for n in ("global_batch_tokens", "micro_batch", "grad_accum", "seq_len")
    }
    b["tolerance_pct"] = r.number("batch.tolerance_pct")
    seq, max_seq = b["seq_len"], model.get("max_seq_len")
    if seq is not None and max_seq is not None and seq > max_seq:
        r.add(
            "batch.seq_len",
            f"batch.seq_len is {seq:,} but model.max_seq_len is {max_seq:,}; the model has no "
            f"positions past that, so lower seq_len to {max_seq:,} or raise max_seq_len.",
            {"batch.seq_len": max_seq},
        )
    b["tokens_per_step"] = None
    needed = (b["global_batch_tokens"], b["micro_batch"], b["grad_accum"], seq, b["tolerance_pct"], par.get("dp"))
    if any(v is None for v in needed):
        return b
    target, micro, accum, _, tol, dp = needed
    per_sequence = dp * seq
    tokens = micro * accum * per_sequence
    b["tokens_per_step"] = tokens
    off_pct = 100.0 * (tokens - target) / target
    if abs(off_pct) <= tol + 1e-9:
        return b
    formula = (
        f"batch.micro_batch {micro} x batch.grad_accum {accum} x data-parallel {dp} x seq_len {seq:,} = "
        f"{tokens:,} tokens per step, {off_pct:+.1f} % off batch.global_batch_tokens {target:,} "
        f"(tolerance {tol:g} %)"
    )
    pair = nearest_batch_pair(
        target_tokens=target, tokens_per_sequence=per_sequence, tolerance_pct=tol, micro_batch=micro, grad_accum=accum
    )
    if pair is not None:
        m, a = pair
        r.add(
            "batch.micro_batch",
            f"{formula}; the nearest pair that hits it is batch.micro_batch {m} with batch.grad_accum {a} "
            f"({m * a * per_sequence:,} tokens); set those.",
            {"batch.micro_batch": m, "batch.grad_accum": a},
        )
    else:
        smallest = per_sequence
        r.add(
            "batch.micro_batch",
            f"{formula}; no micro-batch/accumulation pair reaches it, since one "
            f"sequence per rank already makes {smallest:,} tokens per micro step; set "
            f"batch.global_batch_tokens to {tokens:,} to keep this micro-batch and "
            "accumulation (or shorten seq_len / use fewer data-parallel ranks).",
            {"batch.global_batch_tokens": tokens},
        )
    return b


def _check_training(r: _Reader, *, batch: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {
        n: r.integer(f"training.{n}")
        for n in (
            "total_steps",
            "token_budget",
            "checkpoint_interval",
            "keep_checkpoints",
            "keep_every",
            "seed",
            "log_interval",
        )
    }
    r.choice("training.nan_policy", NAN_POLICIES)
    per_step, budget, steps = batch.get("tokens_per_step"), t["token_budget"], t["total_steps"]
    if per_step and budget is not None and steps is not None:
        expected = math.ceil(budget / per_step)
        if steps != expected:
            r.add(
                "training.total_steps",
                f"training.total_steps is {steps:,} but a token budget of {budget:,} at "
                f"{per_step:,} tokens per step takes ceil(budget / tokens per step) = "
                f"{expected:,} steps; set total_steps to {expected:,}.",
                {"training.total_steps": expected},
            )
    return t


def _check_optimizer(r: _Reader, *, training: dict[str, Any]) -> None:
    r.choice("optimizer.name", OPTIMIZERS)
    r.choice("optimizer.schedule", SCHEDULES)
    r.flag("optimizer.torch_adam")
    lr, min_lr = r.number("optimizer.lr"), r.number("optimizer.min_lr")
    for name in ("eps", "weight_decay", "grad_clip"):
        r.number(f"optimizer.{name}")
    if lr is not None and min_lr is not None and min_lr > lr:
        r.add(
            "optimizer.min_lr",
            f"optimizer.min_lr {min_lr:g} is above the peak lr {lr:g}; the schedule decays "
            f"towards min_lr, so set it at or below {lr:g} (commonly lr / 10).",
            {"optimizer.min_lr": lr / 10},
        )
    betas = r.raw("optimizer.betas")
    if betas is not _MISSING:
        if not isinstance(betas, list) or len(betas) != 2:
            r.add(
                "optimizer.betas",
                f"optimizer.betas must be a pair [beta1, beta2], not {betas!r}; enter two values such as [0.9, 0.95].",
                {"optimizer.betas": [0.9, 0.95]},
            )
        else:
            for i in range(2):
                r.number(f"optimizer.betas.{i}")
    warmup, steps = r.integer("optimizer.warmup_steps"), training.get("total_steps")
    if warmup is not None and steps is not None and warmup >= steps:
        r.add(
            "optimizer.warmup_steps",
            f"optimizer.warmup_steps is {warmup:,} but the run has {steps:,} steps, so "
            "the learning rate would never leave warm-up; set it below total_steps "
            "(a few percent of them is usual).",
            {"optimizer.warmup_steps": max(0, steps // 20)},
        )


# --- curriculum --------------------------------------------------------------------------------------------------


def _check_curriculum(r: _Reader, *, model: dict[str, Any], batch: dict[str, Any], training: dict[str, Any]) -> None:
    stages = r.raw("curriculum")
    if stages is _MISSING:
        return
    if not isinstance(stages, list) or not stages:
        r.add(
            "curriculum",
            "curriculum must be a non-empty list of {start_step, seq_len} stages; use "
            '[{"start_step": 0, "seq_len": <batch.seq_len>}] for a fixed length.',
        )
        return
    seq, max_seq, steps = batch.get("seq_len"), model.get("max_seq_len"), training.get("total_steps")
    prev_start: int | None = None
    prev_len: int | None = None
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            r.add(
                f"curriculum.{i}",
                f"curriculum.{i} must be an object {{start_step, seq_len}}, not {stage!r}; rewrite that stage.",
            )
            prev_start = prev_len = None
            continue
        start, length = r.integer(f"curriculum.{i}.start_step"), r.integer(f"curriculum.{i}.seq_len")
        if i == 0 and start is not None and start != 0:
            r.add(
                "curriculum.0.start_step",
                f"curriculum.0.start_step is {start:,}; the curriculum must start at step 0 so that every step has "
                "a sequence length; set it to 0.",
                {"curriculum.0.start_step": 0},
            )
        if start is not None and prev_start is not None and start <= prev_start:
            r.add(
                f"curriculum.{i}.start_step",
                f"curriculum.{i}.start_step is {start:,}, not after the previous stage's {prev_start:,}; order the "
                "stages by start_step, each later than the one before.",
            )
        if start is not None and steps is not None and i > 0 and start >= steps:
            r.add(
                f"curriculum.{i}.start_step",
                f"curriculum.{i}.start_step is {start:,}, but the run ends after {steps:,} steps, so the stage "
                "would never run; start it earlier or remove it.",
            )
        if length is not None:
            if prev_len is not None and length < prev_len:
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, shorter than the previous stage's {prev_len:,}; the "
                    f"curriculum only lengthens sequences, so use at least {prev_len:,}.",
                    {f"curriculum.{i}.seq_len": prev_len},
                )
            if seq is not None and seq % length:
                valid = [d for d in _divisors(seq) if prev_len is None or d >= prev_len]
                best = _nearest(valid, length)
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, which does not divide batch.seq_len {seq:,}; the "
                    "trainer keeps tokens per step constant by running seq_len / stage length sequences in "
                    f"each micro-batch slot, so use a divisor such as {best:,}.",
                    {f"curriculum.{i}.seq_len": best},
                )
            if max_seq is not None and length > max_seq:
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, longer than model.max_seq_len {max_seq:,}; lower it or "
                    "raise max_seq_len.",
                    {f"curriculum.{i}.seq_len": max_seq},
                )
        prev_start, prev_len = start, length
    last = len(stages) - 1
    if prev_len is not None and seq is not None and prev_len != seq:
        r.add(
            f"curriculum.{last}.seq_len",
            f"curriculum.{last}.seq_len (the last stage) is {prev_len:,} but batch.seq_len is {seq:,}; "
            "batch.seq_len is the final (longest) length, so make them equal.",
            {f"curriculum.{last}.seq_len": seq},
        )


# --- data, alerts, remediation -----------------------------------------------------------------------------------


def _check_data(r: _Reader, *, model: dict[str, Any], trainer: str) -> None:
    r.optional_text("data.shards_dir")
    r.optional_text("data.tokenizer")
    recipe = r.raw("data.recipe")
    if recipe is _MISSING:
        return
    if not isinstance(recipe, dict):
        r.add("data.recipe", "data.recipe must be an object {name, version, sources}; pick a data-mix recipe.")
        return
    name = recipe.get("name")
    if not isinstance(name, str) or not name.strip():
        r.add("data.recipe.name", "data.recipe.name is empty; pick a named data-mix recipe.")
    r.integer("data.recipe.version")
    sources = r.raw("data.recipe.sources")
    if sources is _MISSING:
        return
    if not isinstance(sources, list) or not sources:
        r.add("data.recipe.sources", "data.recipe.sources is empty; add at least one source with a weight.")
        return
    total, weights_ok, seen = 0.0, True, set()
    for i, source in enumerate(sources):
        if not isinstance(source, dict):
            r.add(
                f"data.recipe.sources.{i}",
                f"data.recipe.sources.{i} must be an object {{name, weight}}, not {source!r}; fix that entry.",
            )
            weights_ok = False
            continue
        src_name = source.get("name")
        if not isinstance(src_name, str) or not src_name.strip():
            r.add(f"data.recipe.sources.{i}.name", f"data.recipe.sources.{i}.name is empty; name the data source.")
        elif src_name in seen:
            r.add(
                f"data.recipe.sources.{i}.name",
                f"data.recipe.sources.{i}.name {src_name!r} appears twice in the recipe; merge the two entries "
                "into one weight.",
            )
        seen.add(src_name)
        weight = r.number(f"data.recipe.sources.{i}.weight")
        if weight is None:
            weights_ok = False
        else:
            total += weight
    if weights_ok and abs(total - 100.0) > RECIPE_SUM_TOLERANCE:
        r.add(
            "data.recipe.sources",
            f"The weights in data.recipe.sources add up to {total:g} %, not 100 %; adjust them so that they "
            "sum to 100 (each between 0 and 100).",
        )
    vocab = model.get("vocab_size")
    if trainer == "reference" and vocab is not None and vocab < BUNDLED_TOKENIZER_VOCAB:
        tokenizer = r.cfg.get("data", {}).get("tokenizer") if isinstance(r.cfg.get("data"), dict) else None
        if tokenizer is None:
            r.add(
                "model.vocab_size",
                f"model.vocab_size is {vocab:,} but the bundled tokenizer (data.tokenizer "
                f"null) produces ids up to {BUNDLED_TOKENIZER_VOCAB:,}; set vocab_size to at "
                f"least {BUNDLED_TOKENIZER_VOCAB:,} or point data.tokenizer at your own.",
                {"model.vocab_size": BUNDLED_TOKENIZER_VOCAB},
            )


def _check_alerts_and_remediation(r: _Reader) -> None:
    for name in ("loss_spike_z", "grad_norm_max", "hang_timeout_s", "throughput_drop_pct"):
        r.number(f"alerts.{name}")
    r.integer("remediation.max_attempts")
    r.choice("remediation.on_spike", SPIKE_ACTIONS)
    oom = r.raw("remediation.oom")
    if oom is _MISSING:
        return
    if not isinstance(oom, list):
        r.add("remediation.oom", f"remediation.oom must be an ordered list drawn from {', '.join(OOM_REMEDIES)}.")
        return
    unknown = [step for step in oom if step not in OOM_REMEDIES]
    if unknown:
        r.add(
            "remediation.oom",
            f"remediation.oom has unknown steps {unknown!r}; use only {', '.join(OOM_REMEDIES)}.",
            {"remediation.oom": [s for s in oom if s not in unknown]},
        )
    elif len(set(oom)) != len(oom):
        r.add(
            "remediation.oom",
            "remediation.oom lists a step twice; each remedy is tried once, so remove the repeat.",
            {"remediation.oom": list(dict.fromkeys(oom))},
        )


# --- what the reference trainer can run ----------------------------------------------------------------------------


# Capability keys that list the values the trainer runs: (key, config path, reason keys). The last four are optional;
# a trainer that omits one runs every value of that field.
_CAPABILITY_LISTS = (
    ("tp", "parallel.tp", ("tp",)),
    ("pp", "parallel.pp", ("pp",)),
    ("zero_stages", "parallel.zero_stage", ("zero_stages", "zero_stage", "zero")),
    ("archs", "model.arch", ("archs", "arch")),
    ("precisions", "precision", ("precisions", "precision")),
    ("attentions", "model.attention", ("attentions", "attention")),
    ("nan_policies", "training.nan_policy", ("nan_policies", "nan_policy")),
    ("accelerators", "cluster.accelerator", ("accelerators", "accelerator")),
    ("schedules", "optimizer.schedule", ("schedules", "schedule")),
)
# Capability flags that say whether a feature runs at all; absent means it does.
_CAPABILITY_FLAGS = (
    ("sp", "parallel.sp"),
    ("offload_optimizer", "parallel.offload_optimizer"),
    ("offload_param", "parallel.offload_param"),
    ("activation_checkpointing", "parallel.activation_checkpointing"),
)


def _peek(cfg: dict[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _check_capabilities(r: _Reader, *, capabilities: dict[str, Any] | None) -> None:
    try:
        caps = trainer_capabilities() if capabilities is None else check_capabilities(caps=capabilities)
    except CapabilitiesUnavailable as exc:
        reason = str(exc)
        r.add("run.trainer", f"run.trainer is reference, but {reason[:1].lower()}{reason[1:]}")
        return
    reasons = caps["reasons"]

    def refuse(path: str, value: Any, fix: str, reason_keys: Sequence[str], suggestion: Any = None) -> None:
        why = next((f" ({reasons[k].rstrip('.')})" for k in reason_keys if reasons.get(k)), "")
        r.add(
            path,
            f"The reference trainer cannot run {path} = {json.dumps(value)}{why}; {fix}, or plan it with the "
            "plan_only trainer, or run your own DeepSpeed script.",
            None if suggestion is None else {path: suggestion},
        )

    for key, path, reason_keys in _CAPABILITY_LISTS:
        allowed, value = caps.get(key), _peek(r.cfg, path)
        if isinstance(allowed, list) and value is not None and not isinstance(value, bool) and value not in allowed:
            nearest = _nearest(allowed, value) if isinstance(value, int) and allowed else None
            shown = ", ".join(str(v) for v in sorted(allowed, key=str)) or "nothing"
            refuse(path, value, f"set {path} to {shown}", reason_keys, nearest)
    for key, path in _CAPABILITY_FLAGS:
        if _peek(r.cfg, path) is True and caps.get(key, True) is False:
            refuse(path, True, f"turn {path} off", (key,), False)
    ep, zero = _peek(r.cfg, "parallel.ep"), _peek(r.cfg, "parallel.zero_stage")
    if isinstance(ep, int) and ep > 1:
        max_zero = caps.get("ep_max_zero_stage", 3)
        if not caps["ep"]:
            refuse("parallel.ep", ep, "set parallel.ep to 1", ("ep",), 1)
        elif isinstance(zero, int) and isinstance(max_zero, int) and zero > max_zero:
            refuse(
                "parallel.zero_stage",
                zero,
                f"with expert parallelism set parallel.zero_stage to at most {max_zero} (or parallel.ep to 1)",
                ("ep_zero3", "ep_max_zero_stage", "ep"),
                max_zero,
            )
