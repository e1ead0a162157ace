"""The pre-flight plan of a run config: sizes, layout, parameters, memory per GPU, and time to the token budget.

Pure arithmetic on the config (docs/run-config.md), fast enough for the form to call as fields change; the parts
live beside it (params, memory, compute, suggestions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from runs.planning.compute import compute, peak_tflops_for
from runs.planning.fields import FieldIssue
from runs.planning.memory import FRAGMENTATION, Memory, deepspeed_estimate, memory_per_gpu, shards_per_gpu
from runs.planning.params import ParamCounts, count_params
from runs.planning.presets import reconciliation_notes
from runs.planning.suggestions import suggestions
from runs.planning.validation import validate_config

DEFAULT_MFU = 0.40
# The fields the plan reads; an issue on any of them means there is nothing sound to compute.
_PLAN_FIELDS = ("model.", "parallel.", "batch.", "cluster.", "precision", "training.token_budget")
# A whole section that is missing or not an object is reported under its own name.
_PLAN_SECTIONS = ("model", "parallel", "batch", "cluster", "training", "config")


class PlanError(ValueError):
    """The config has problems in fields the plan needs; `issues` names them."""

    def __init__(self, issues: list[FieldIssue]) -> None:
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in issues))
        self.issues = issues


@dataclass(frozen=True)
class Plan:
    world_size: int
    data_parallel: int
    layout: dict[str, Any]
    tokens_per_step: int
    tokens_per_micro_step: int
    sequences_per_step: int
    global_batch_tokens: int
    global_batch_deviation_pct: float
    total_steps: int
    params: ParamCounts
    params_per_gpu: dict[str, float]
    memory: Memory
    deepspeed_estimate: dict[str, Any]
    suggestions: list[dict[str, Any]]
    compute: dict[str, Any]
    reconciliation_notes: list[dict[str, str]]
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "data_parallel": self.data_parallel,
            "layout": dict(self.layout),
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_micro_step": self.tokens_per_micro_step,
            "sequences_per_step": self.sequences_per_step,
            "global_batch_tokens": self.global_batch_tokens,
            "global_batch_deviation_pct": round(self.global_batch_deviation_pct, 3),
            "total_steps": self.total_steps,
            "params": self.params.to_dict(),
            "params_per_gpu": {k: int(round(v)) for k, v in self.params_per_gpu.items()},
            "memory_gib": self.memory.to_dict(),
            "deepspeed_estimate": dict(self.deepspeed_estimate),
            "suggestions": [dict(s) for s in self.suggestions],
            "compute": dict(self.compute),
            "reconciliation_notes": [dict(n) for n in self.reconciliation_notes],
            "assumptions": list(self.assumptions),
        }


def _assumptions(cfg: dict[str, Any], *, flash_attention: bool, peak_given: bool) -> list[str]:
    par = cfg["parallel"]
    notes = [
        "Memory is in GiB (2^30 bytes); cluster.gpu_memory_gb is taken as the memory one process can allocate.",
        "Parameters per GPU: non-expert parameters / (TP x PP); routed-expert parameters / (TP x PP x EP); layers "
        "split evenly over pipeline stages. Shared experts and the router count as non-expert.",
        "Model states (after the ZeRO paper, as DeepSpeed stores them): weights and gradients in the training "
        "precision; an fp32 master copy and an fp32 gradient partition whenever weights are bf16 or ZeRO is on; "
        "Adam's two fp32 moments. ZeRO 1 shards the fp32 copies and moments over data parallelism (routed experts "
        "over data-parallel / EP), ZeRO 2 also the training-precision gradients, ZeRO 3 also the weights. "
        "Optimizer offload moves the sharded fp32 states to host memory; parameter offload (ZeRO 3) the weights.",
        "Activations follow Korthikanti et al. (2022) adapted to RMSNorm, SwiGLU, MLA and MoE with no dropout: "
        "norm and latent tensors are split by TP only with sequence parallelism; per-head, MLP and expert tensors "
        "are split by TP. With checkpointing each layer keeps its input and one layer is recomputed at a time. "
        "1F1B keeps min(PP, grad_accum) micro-batches in flight on the first stage; the last stage adds fp32 "
        "logits for the loss.",
        "Overhead: a fixed runtime allowance (CUDA context, NCCL, DeepSpeed buffers; on CPU the Python/torch "
        f"runtime) plus {FRAGMENTATION:.0%} of the rest for allocator fragmentation.",
        "FLOPs per token: 6 x active parameters that multiply (all but the input embedding) plus attention "
        "6 x layers x heads x seq_len x (qk + v head widths), not halved for the causal mask (the PaLM/Megatron "
        "convention MFU is quoted in). Time to budget averages the attention term over the curriculum.",
        "Time assumes the stated MFU of the accelerator's dense peak; MFU absorbs the pipeline bubble and "
        "communication.",
    ]
    notes.append(
        "Attention is assumed to be a flash kernel (no score matrix stored)."
        if flash_attention
        else "Attention is assumed to store the softmax score matrix (no flash kernel)."
    )
    if not peak_given and peak_tflops_for(gpu_type=cfg["cluster"]["gpu_type"], precision=cfg["precision"]) is None:
        notes.append(f"No peak figure for GPU type {cfg['cluster']['gpu_type']!r}; pass peak_tflops to get times.")
    if par["ep"] > 1:
        notes.append("Expert parallelism assumes balanced routing: each EP rank processes its share of the tokens.")
    return notes


def plan(
    cfg: dict[str, Any],
    *,
    mfu: float | None = None,
    peak_tflops: float | None = None,
    flash_attention: bool = True,
    preset: str | None = None,
) -> Plan:
    """The plan of `cfg`; raises PlanError when the fields the plan reads are invalid.

    `mfu` defaults to cfg["planning"]["mfu"] when the form carries one, else 0.40; `peak_tflops` overrides the
    PEAK_TFLOPS table; `preset` names the preset the config came from, whose reconciliation notes the plan shows.
    """
    blocking = [
        i
        for i in validate_config(cfg, trainer="plan_only")
        if i.field.startswith(_PLAN_FIELDS) or i.field in _PLAN_SECTIONS
    ]
    if blocking:
        raise PlanError(blocking)
    if mfu is None:
        planning = cfg.get("planning")
        mfu = float(planning.get("mfu", DEFAULT_MFU) if isinstance(planning, dict) else DEFAULT_MFU)
    if not 0 < mfu <= 1:
        raise PlanError(
            [
                FieldIssue(
                    "planning.mfu", f"MFU {mfu:g} must be above 0 and at most 1; 0.3-0.5 is typical for large runs."
                )
            ]
        )
    model, par, batch, cluster = cfg["model"], cfg["parallel"], cfg["batch"], cfg["cluster"]
    counts = count_params(model)
    world = cluster["nodes"] * cluster["gpus_per_node"]
    dp = world // (par["tp"] * par["pp"])
    tokens_per_step = batch["micro_batch"] * batch["grad_accum"] * dp * batch["seq_len"]
    total_steps = math.ceil(cfg["training"]["token_budget"] / tokens_per_step)
    memory, acts = memory_per_gpu(cfg, counts, flash_attention=flash_attention)
    shards = shards_per_gpu(cfg, counts)
    experts = model.get("num_routed_experts", 0) if model["arch"] == "moe" else 0
    layout = {
        "tp": par["tp"],
        "pp": par["pp"],
        "ep": par["ep"],
        "sp": par["sp"],
        "zero_stage": par["zero_stage"],
        "expert_data_parallel": dp // par["ep"],
        "experts_per_rank": experts // par["ep"] if experts else 0,
        "expert_layout": (
            f"{experts} routed experts split over EP {par['ep']} ({experts // par['ep']} per rank); each expert has "
            f"{dp // par['ep']} data-parallel replicas"
            if experts
            else "no experts (dense)"
        ),
        "layers_per_stage": acts.layers_per_stage,
        "micro_batches_in_flight": acts.in_flight,
        "pipeline_bubble": round((par["pp"] - 1) / (batch["grad_accum"] + par["pp"] - 1), 4),
    }
    target = batch["global_batch_tokens"]
    return Plan(
        world_size=world,
        data_parallel=dp,
        layout=layout,
        tokens_per_step=tokens_per_step,
        tokens_per_micro_step=batch["micro_batch"] * dp * batch["seq_len"],
        sequences_per_step=batch["micro_batch"] * batch["grad_accum"] * dp,
        global_batch_tokens=target,
        global_batch_deviation_pct=100.0 * (tokens_per_step - target) / target,
        total_steps=total_steps,
        params=counts,
        params_per_gpu={"total": shards.params, "non_expert": shards.non_expert, "expert": shards.expert},
        memory=memory,
        deepspeed_estimate=deepspeed_estimate(cfg, counts, memory),
        suggestions=[] if memory.fits else suggestions(cfg, counts, memory, flash_attention=flash_attention),
        compute=compute(
            cfg, counts, tokens_per_step=tokens_per_step, total_steps=total_steps, mfu=mfu, peak_tflops=peak_tflops
        ),
        reconciliation_notes=reconciliation_notes(preset) if preset else [],
        assumptions=_assumptions(cfg, flash_attention=flash_attention, peak_given=peak_tflops is not None),
    )
