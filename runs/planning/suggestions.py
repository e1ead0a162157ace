"""What to change when a planned run does not fit: the guide's memory fixes, each applied to the config, kept
when the result is still valid and smaller."""

from __future__ import annotations

import copy
import math
from typing import Any

from runs.planning.memory import Memory, gib, memory_per_gpu
from runs.planning.params import ParamCounts
from runs.planning.validation import validate_config


def _candidate_changes(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The guide's memory fixes, in its order, as field changes to this config."""
    par, batch = cfg["parallel"], cfg["batch"]
    micro, accum, seq = batch["micro_batch"], batch["grad_accum"], batch["seq_len"]
    out: list[tuple[str, dict[str, Any]]] = []
    if not par["activation_checkpointing"]:
        out.append(
            (
                "Turn on activation checkpointing (recompute each layer in backward).",
                {"parallel.activation_checkpointing": True},
            )
        )
    if micro >= 2:
        half = micro // 2
        half_accum = round(micro * accum / half)
        out.append(
            (
                f"Halve the micro-batch to {half} with accumulation {half_accum}, keeping the global batch.",
                {"batch.micro_batch": half, "batch.grad_accum": half_accum},
            )
        )
    if seq % 2 == 0 and seq >= 2:
        half_seq = seq // 2
        curriculum = [{**s, "seq_len": min(s["seq_len"], half_seq)} for s in cfg["curriculum"]]
        out.append(
            (
                f"Lower the maximum sequence length to {half_seq:,} (accumulation doubles to keep the batch).",
                {"batch.seq_len": half_seq, "batch.grad_accum": accum * 2, "curriculum": curriculum},
            )
        )
    if not par["offload_optimizer"]:
        changes: dict[str, Any] = {"parallel.offload_optimizer": True}
        if par["zero_stage"] == 0:
            changes["parallel.zero_stage"] = 1
        out.append(("Use ZeRO-Offload: keep the optimizer states in host memory.", changes))
    if par["zero_stage"] < 3:
        stage = par["zero_stage"] + 1
        out.append((f"Raise the ZeRO stage to {stage}.", {"parallel.zero_stage": stage}))
    if par["zero_stage"] == 3 and not par["offload_param"]:
        out.append(("Offload the parameters too (ZeRO-3 parameter offload).", {"parallel.offload_param": True}))
    for key, label in (("tp", "tensor"), ("pp", "pipeline")):
        doubled = par[key] * 2
        out.append(
            (
                f"Double {label} parallelism to {doubled} (accumulation doubles to keep the batch).",
                {f"parallel.{key}": doubled, "batch.grad_accum": accum * 2},
            )
        )
    return out


def _apply(cfg: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for path, value in changes.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    if "training" in out and isinstance(out["training"], dict):
        par, batch, cluster = out["parallel"], out["batch"], out["cluster"]
        dp = cluster["nodes"] * cluster["gpus_per_node"] // (par["tp"] * par["pp"])
        per_step = batch["micro_batch"] * batch["grad_accum"] * dp * batch["seq_len"]
        if per_step:
            out["training"]["total_steps"] = math.ceil(out["training"]["token_budget"] / per_step)
    return out


def suggestions(
    cfg: dict[str, Any], counts: ParamCounts, memory: Memory, *, flash_attention: bool
) -> list[dict[str, Any]]:
    trainer = cfg.get("run", {}).get("trainer", "plan_only") if isinstance(cfg.get("run"), dict) else "plan_only"
    before = {i.field for i in validate_config(cfg, trainer=trainer)}
    out = []
    for action, changes in _candidate_changes(cfg):
        changed = _apply(cfg, changes)
        if any(i.field not in before for i in validate_config(changed, trainer=trainer)):
            continue
        after, _ = memory_per_gpu(changed, counts, flash_attention=flash_attention)
        if after.total >= memory.total:
            continue
        out.append(
            {
                "action": action,
                "changes": changes,
                "total_gib": gib(after.total),
                "saves_gib": gib(memory.total - after.total),
                "fits": after.fits,
            }
        )
    return out
