"""What an automatic relaunch changes in run.json, as pure functions on the raw dict; importable without torch.

The control plane's remediation (runs.services.remediation) picks the step; these functions make the change and
check what must not change. Each returns a ``Change``: the new run.json and one line saying what changed, for the
run's timeline and audit. A change that cannot apply raises ``CannotChange`` naming why, so the caller moves to
its next remedy or stops.

- ``halve_micro_batch``: micro-batch / 2, gradient accumulation x 2; tokens per optimizer step (the global batch)
  are checked unchanged.
- ``activation_checkpointing`` / ``offload_optimizer``: switch the layout's flag on. Optimizer offload needs ZeRO
  stage 1 or more, so a stage-0 run moves to stage 1 (the trainer then restores weights but starts fresh optimizer
  moments: DeepSpeed keeps stage-0 and ZeRO optimizer states in different layouts).
- ``skip_data``: add a window ``[a, b)`` of data steps that is never trained on (the practice of PaLM's report:
  restart about 100 steps before a spike and skip a few hundred batches).
- ``lr_cut``: multiply the lr by a factor for a number of steps from a given step.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from jobs.common.run_config import ConfigError, parse_run_config

OOM_REMEDIES = ("halve_micro_batch", "activation_checkpointing", "offload_optimizer")


class CannotChange(Exception):
    """The change does not apply to this config (already on, nothing left to halve, ...)."""


class Change(NamedTuple):
    raw: dict
    description: str


def _tokens_per_step(raw: dict) -> int:
    b, par, cluster = raw["batch"], raw["parallel"], raw.get("cluster") or {}
    world = int(cluster.get("nodes", 1)) * int(cluster.get("gpus_per_node", 1))
    dp = max(1, world // max(1, int(par.get("tp", 1)) * int(par.get("pp", 1))))
    return int(b["micro_batch"]) * int(b.get("grad_accum", 1)) * dp * int(b["seq_len"])


def _checked(raw: dict) -> dict:
    try:
        parse_run_config(raw)
    except ConfigError as exc:
        raise CannotChange(f"the changed config is invalid: {exc}") from None
    return raw


def halve_micro_batch(raw: dict) -> Change:
    new = copy.deepcopy(raw)
    b = new["batch"]
    micro, accum = int(b["micro_batch"]), int(b.get("grad_accum", 1))
    if micro < 2 or micro % 2:
        raise CannotChange(f"micro_batch {micro} cannot be halved")
    b["micro_batch"], b["grad_accum"] = micro // 2, accum * 2
    before, after = _tokens_per_step(raw), _tokens_per_step(new)
    if before != after:  # a guard on the arithmetic above: the global batch is the run's contract
        raise CannotChange(f"halving would change tokens per step from {before} to {after}")
    return Change(
        _checked(new), f"micro_batch {micro} -> {micro // 2}, grad_accum {accum} -> {accum * 2} ({after} tokens/step)"
    )


def _flag_on(raw: dict, key: str, label: str) -> Change:
    new = copy.deepcopy(raw)
    par = new["parallel"]
    if par.get(key):
        raise CannotChange(f"{label} is already on")
    par[key] = True
    extra = ""
    if key == "offload_optimizer" and int(par.get("zero_stage", 0)) == 0:
        par["zero_stage"] = 1
        extra = " (ZeRO stage 0 -> 1, which offload needs; optimizer moments restart)"
    return Change(_checked(new), f"{label} on{extra}")


def activation_checkpointing(raw: dict) -> Change:
    return _flag_on(raw, "activation_checkpointing", "activation checkpointing")


def offload_optimizer(raw: dict) -> Change:
    return _flag_on(raw, "offload_optimizer", "optimizer offload")


OOM_CHANGES = {
    "halve_micro_batch": halve_micro_batch,
    "activation_checkpointing": activation_checkpointing,
    "offload_optimizer": offload_optimizer,
}


def data_step(raw: dict, step: int) -> int:
    """The data step that optimizer step `step` of this config trains on."""
    return parse_run_config(raw).relaunch.data_step(step)


def skip_data(raw: dict, *, first: int, end: int) -> Change:
    """Never train on data steps [first, end); merges with the windows already there."""
    if not 1 <= first < end:
        raise CannotChange(f"window [{first}, {end}) is empty or starts before step 1")
    new = copy.deepcopy(raw)
    section = new.setdefault("relaunch", {})
    windows = sorted([list(w) for w in section.get("skip_data", [])] + [[first, end]])
    merged: list[list[int]] = []
    for a, b in windows:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    section["skip_data"] = merged
    return Change(_checked(new), f"skip data steps {first}-{end - 1} ({end - first} batches)")


def lr_cut(raw: dict, *, factor: float, from_step: int, steps: int) -> Change:
    if not 0.0 < factor < 1.0 or steps < 1:
        raise CannotChange(f"an lr cut needs 0 < factor < 1 and steps >= 1, got {factor} for {steps}")
    new = copy.deepcopy(raw)
    section = new.setdefault("relaunch", {})
    section.update(lr_cut_factor=float(factor), lr_cut_from_step=int(from_step), lr_cut_steps=int(steps))
    return Change(_checked(new), f"lr x {factor:g} for steps {from_step}-{from_step + steps - 1}")
