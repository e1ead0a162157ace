"""What a run config implies before launch: sizes, parameters, memory per GPU, and time to the token budget.

Pure arithmetic on the config (docs/run-config.md), fast enough for the form to call as fields change. DeepSpeed is
imported only for its model-states estimators, lazily and once.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any

from jobs.common import hardware
from runs.presets import reconciliation_notes
from runs.validation import FieldIssue, validate_config

GIB = 2**30
DEFAULT_MFU = 0.40
# CUDA context, NCCL communicators and DeepSpeed's buffers on a GPU; the Python, torch and DeepSpeed runtime of one
# rank on a CPU.
FIXED_OVERHEAD_GIB = {"cuda": 2.0, "cpu": 0.5}
FRAGMENTATION = 0.10
# The fields the plan reads; an issue on any of them means there is nothing sound to compute.
_PLAN_FIELDS = ("model.", "parallel.", "batch.", "cluster.", "precision", "training.token_budget")


class PlanError(ValueError):
    """The config has problems in fields the plan needs; `issues` names them."""

    def __init__(self, issues: list[FieldIssue]) -> None:
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in issues))
        self.issues = issues


# --- parameters ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    lm_head: int
    final_norm: int
    attention_per_layer: int
    norms_per_layer: int
    dense_mlp_per_layer: int
    routed_experts_per_layer: int
    shared_experts_per_layer: int
    router_per_layer: int
    dense_layers: int
    moe_layers: int
    top_k: int
    num_routed_experts: int
    largest_tensor: int

    @property
    def per_expert(self) -> int:
        return self.routed_experts_per_layer // self.num_routed_experts if self.num_routed_experts else 0

    @property
    def expert(self) -> int:
        """Routed-expert parameters: the only ones expert parallelism spreads."""
        return self.moe_layers * self.routed_experts_per_layer

    @property
    def total(self) -> int:
        per_layer = self.attention_per_layer + self.norms_per_layer
        moe = self.routed_experts_per_layer + self.shared_experts_per_layer + self.router_per_layer
        layers = (self.dense_layers + self.moe_layers) * per_layer
        layers += self.dense_layers * self.dense_mlp_per_layer + self.moe_layers * moe
        return self.embedding + self.lm_head + self.final_norm + layers

    @property
    def non_expert(self) -> int:
        return self.total - self.expert

    @property
    def active(self) -> int:
        """Parameters one token touches: everything but the routed experts it is not sent to."""
        return self.total - self.moe_layers * (self.num_routed_experts - self.top_k) * self.per_expert

    @property
    def active_matmul(self) -> int:
        """Active parameters that do a multiply-add per token (the embedding lookup does none)."""
        return self.active - self.embedding

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "active": self.active,
            "expert": self.expert,
            "non_expert": self.non_expert,
            "embedding": self.embedding,
            "lm_head": self.lm_head,
            "attention_per_layer": self.attention_per_layer,
            "dense_mlp_per_layer": self.dense_mlp_per_layer,
            "routed_experts_per_layer": self.routed_experts_per_layer,
            "shared_experts_per_layer": self.shared_experts_per_layer,
            "router_per_layer": self.router_per_layer,
            "norms_per_layer": self.norms_per_layer,
            "final_norm": self.final_norm,
            "dense_layers": self.dense_layers,
            "moe_layers": self.moe_layers,
            "largest_tensor": self.largest_tensor,
        }


def attention_head_dims(model: dict[str, Any]) -> tuple[int, int]:
    """(query/key width, value width) of one head."""
    if model["attention"] == "mla":
        return model["qk_nope_head_dim"] + model["qk_rope_head_dim"], model["v_head_dim"]
    head = model["hidden_size"] // model["num_heads"]
    return head, head


def count_params(model: dict[str, Any]) -> ParamCounts:
    """Exact parameter counts of jobs.train.model.Transformer (the same as transformers' DeepseekV3ForCausalLM).

    No biases; RMSNorm has one weight vector. MLA: q_a (+ its norm) and q_b, or a plain q projection when
    q_lora_rank is 0; kv_a (with the shared rotary key), its norm, kv_b, o. MHA: q, k, v, o, each hidden x hidden.
    MLPs are SwiGLU (gate, up, down). A MoE layer has its routed experts, its shared experts (one MLP of width
    moe_intermediate_size x num_shared_experts) and a router of num_routed_experts x hidden.
    """
    h, heads, vocab = model["hidden_size"], model["num_heads"], model["vocab_size"]
    tensors = [vocab * h]
    if model["attention"] == "mla":
        qk, v = attention_head_dims(model)
        q_rank, kv_rank, rope = model["q_lora_rank"], model["kv_lora_rank"], model["qk_rope_head_dim"]
        q_mats = [h * q_rank, q_rank * heads * qk] if q_rank else [h * heads * qk]
        mats = [*q_mats, h * (kv_rank + rope), kv_rank * heads * (model["qk_nope_head_dim"] + v), heads * v * h]
        attention = sum(mats) + q_rank + kv_rank
    else:
        mats = [h * h] * 4
        attention = sum(mats)
    tensors += mats
    moe = model["arch"] == "moe"
    layers = model["num_layers"]
    dense_layers = model["first_k_dense"] if moe else layers
    dense_mlp = 3 * h * model["intermediate_size"]
    if dense_layers:
        tensors.append(h * model["intermediate_size"])
    routed = shared = router = top_k = experts = 0
    if moe:
        mi, experts, top_k = model["moe_intermediate_size"], model["num_routed_experts"], model["top_k"]
        routed = experts * 3 * h * mi
        shared = 3 * h * mi * model["num_shared_experts"]
        router = experts * h
        tensors += [h * mi * max(1, model["num_shared_experts"]), router]
    return ParamCounts(
        embedding=vocab * h,
        lm_head=0 if model["tie_embeddings"] else vocab * h,
        final_norm=h,
        attention_per_layer=attention,
        norms_per_layer=2 * h,
        dense_mlp_per_layer=dense_mlp,
        routed_experts_per_layer=routed,
        shared_experts_per_layer=shared,
        router_per_layer=router,
        dense_layers=dense_layers,
        moe_layers=layers - dense_layers,
        top_k=top_k,
        num_routed_experts=experts,
        largest_tensor=max(tensors),
    )


# --- activations ------------------------------------------------------------------------------------------------


def _layer_activation_elements(
    model: dict[str, Any], *, moe_layer: bool, seq_len: int, flash_attention: bool
) -> tuple[int, int]:
    """Activation elements one layer keeps per token for backward: (sequence-parallel part, tensor-parallel part).

    After Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", adapted to this
    architecture (no dropout, RMSNorm, SwiGLU, MLA, MoE). The first part (norm inputs and outputs, MLA's latents,
    router scores) is replicated across TP ranks unless sequence parallelism splits it; the second (per-head
    tensors, MLP and expert intermediates) is split by TP.
    """
    h, heads = model["hidden_size"], model["num_heads"]
    qk, v = attention_head_dims(model)
    seq_part = 4 * h
    if model["attention"] == "mla":
        seq_part += 2 * model["q_lora_rank"] + 2 * model["kv_lora_rank"] + model["qk_rope_head_dim"]
    # q, k, v and the attention output; without flash attention also the softmax probabilities.
    tp_part = heads * (2 * qk + 2 * v) + (0 if flash_attention else heads * seq_len)
    if moe_layer:
        mi, top_k = model["moe_intermediate_size"], model["top_k"]
        seq_part += model["num_routed_experts"]
        # Each routed copy keeps its input, gate/up/silu/product, and its output for the combine weights.
        tp_part += top_k * (2 * h + 4 * mi) + 4 * mi * model["num_shared_experts"]
    else:
        tp_part += 4 * model["intermediate_size"]
    return seq_part, tp_part


@dataclass(frozen=True)
class Activations:
    full: float
    checkpointed: float
    layers_per_stage: int
    in_flight: int


def _activations(cfg: dict[str, Any], counts: ParamCounts, *, flash_attention: bool) -> Activations:
    model, par, batch = cfg["model"], cfg["parallel"], cfg["batch"]
    tp, pp, sp = par["tp"], par["pp"], par["sp"]
    seq, micro = batch["seq_len"], batch["micro_batch"]
    act_bytes = 2 if cfg["precision"] == "bf16" else 4
    tokens = seq * micro

    def layer_bytes(*, moe_layer: bool) -> float:
        seq_part, tp_part = _layer_activation_elements(
            model, moe_layer=moe_layer, seq_len=seq, flash_attention=flash_attention
        )
        return tokens * act_bytes * (seq_part / (tp if sp else 1) + tp_part / tp)

    per_layer = sorted(
        [layer_bytes(moe_layer=False)] * counts.dense_layers + [layer_bytes(moe_layer=True)] * counts.moe_layers,
        reverse=True,
    )
    layers_per_stage = math.ceil(model["num_layers"] / pp)
    # An even split is assumed; summing the heaviest layers keeps the busiest stage's figure on the safe side.
    stage_layers = sum(per_layer[:layers_per_stage])
    # 1F1B: the first stage holds pp micro-batches in flight, the last (with the loss) one.
    in_flight = min(pp, batch["grad_accum"])
    checkpoint_bytes = tokens * act_bytes * model["hidden_size"] / (tp if sp else 1)
    # fp32 logits for the loss, split over TP by a vocabulary-parallel cross-entropy.
    logits = tokens * 4 * model["vocab_size"] / tp
    full_first = in_flight * stage_layers
    full_last = stage_layers + logits
    ckpt_first = in_flight * layers_per_stage * checkpoint_bytes + per_layer[0]
    ckpt_last = layers_per_stage * checkpoint_bytes + per_layer[0] + logits
    return Activations(
        full=max(full_first, full_last) if pp > 1 else full_last,
        checkpointed=max(ckpt_first, ckpt_last) if pp > 1 else ckpt_last,
        layers_per_stage=layers_per_stage,
        in_flight=in_flight,
    )


# --- memory -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU (per rank on a CPU cluster), plus host memory per node for what is offloaded."""

    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    activations_full: float
    activations_checkpointed: float
    overhead: float
    capacity: float
    offloaded_per_rank: float
    ranks_per_node: int
    cpu_capacity_per_node: float | None

    @property
    def model_states(self) -> float:
        return self.weights + self.gradients + self.optimizer_states

    @property
    def total(self) -> float:
        return self.model_states + self.activations + self.overhead

    @property
    def headroom(self) -> float:
        return self.capacity - self.total

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    @property
    def cpu_per_node(self) -> float:
        return self.offloaded_per_rank * self.ranks_per_node

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": _gib(self.weights),
            "gradients": _gib(self.gradients),
            "optimizer_states": _gib(self.optimizer_states),
            "model_states": _gib(self.model_states),
            "activations": _gib(self.activations),
            "activations_with_checkpointing": _gib(self.activations_checkpointed),
            "activations_without_checkpointing": _gib(self.activations_full),
            "overhead": _gib(self.overhead),
            "total": _gib(self.total),
            "gpu_memory": _gib(self.capacity),
            "headroom": _gib(self.headroom),
            "fits": self.fits,
            "cpu_offload_per_node": _gib(self.cpu_per_node),
            "cpu_memory_per_node": None if self.cpu_capacity_per_node is None else _gib(self.cpu_capacity_per_node),
            "cpu_fits": None if self.cpu_capacity_per_node is None else self.cpu_per_node <= self.cpu_capacity_per_node,
        }


def _gib(value: float) -> float:
    return round(value / GIB, 3)


@dataclass(frozen=True)
class Shards:
    """How parameters spread over one GPU: model-parallel shard sizes and the ZeRO group of each kind."""

    non_expert: float
    expert: float
    dp: int
    expert_dp: int

    @property
    def params(self) -> float:
        return self.non_expert + self.expert

    def sharded(self, bytes_per_param: float) -> float:
        return bytes_per_param * (self.non_expert / self.dp + self.expert / self.expert_dp)


def _shards(cfg: dict[str, Any], counts: ParamCounts) -> Shards:
    par, cluster = cfg["parallel"], cfg["cluster"]
    tp, pp, ep = par["tp"], par["pp"], par["ep"]
    dp = cluster["nodes"] * cluster["gpus_per_node"] // (tp * pp)
    return Shards(
        non_expert=counts.non_expert / (tp * pp), expert=counts.expert / (tp * pp * ep), dp=dp, expert_dp=dp // ep
    )


def _memory(cfg: dict[str, Any], counts: ParamCounts, *, flash_attention: bool) -> tuple[Memory, Activations]:
    par, cluster = cfg["parallel"], cfg["cluster"]
    zero, offload_opt, offload_param = par["zero_stage"], par["offload_optimizer"], par["offload_param"]
    shards = _shards(cfg, counts)
    low = 2 if cfg["precision"] == "bf16" else 4
    # DeepSpeed keeps an fp32 master copy and an fp32 gradient partition whenever weights are bf16 or ZeRO is on
    # (its ZeRO-1/2 optimizer clones the partition even in fp32); plain fp32 without ZeRO updates the weights in place.
    fp32_copies = low == 2 or zero >= 1

    def by_stage(bytes_per_param: float, *, from_stage: int) -> float:
        return shards.sharded(bytes_per_param) if zero >= from_stage else bytes_per_param * shards.params

    weights = by_stage(low, from_stage=3)
    model_grads = by_stage(low, from_stage=2)
    fp32_grads = by_stage(4, from_stage=1) if fp32_copies else 0.0
    optimizer = by_stage((4 if fp32_copies else 0) + 8, from_stage=1)
    offloaded = 0.0
    if offload_opt and zero >= 1:
        offloaded += optimizer + fp32_grads
        optimizer, fp32_grads = 0.0, 0.0
    if zero == 3:
        # A gathered layer lives on the GPU while it computes (DeepSpeed's own estimator allows 4 bytes a param).
        live = 4 * counts.largest_tensor / par["tp"]
        if offload_param:
            offloaded += weights
            weights = 0.0
        weights += live
    acts = _activations(cfg, counts, flash_attention=flash_attention)
    activations = acts.checkpointed if par["activation_checkpointing"] else acts.full
    used = weights + model_grads + fp32_grads + optimizer + activations
    overhead = FIXED_OVERHEAD_GIB.get(cluster["accelerator"], 2.0) * GIB + FRAGMENTATION * used
    cpu_capacity = cluster.get("cpu_memory_gb_per_node")
    memory = Memory(
        weights=weights,
        gradients=model_grads + fp32_grads,
        optimizer_states=optimizer,
        activations=activations,
        activations_full=acts.full,
        activations_checkpointed=acts.checkpointed,
        overhead=overhead,
        capacity=cluster["gpu_memory_gb"] * GIB,
        offloaded_per_rank=offloaded,
        ranks_per_node=cluster["gpus_per_node"],
        cpu_capacity_per_node=None if cpu_capacity is None else float(cpu_capacity) * GIB,
    )
    return memory, acts


# --- DeepSpeed's estimators -----------------------------------------------------------------------------------------


@functools.cache
def _deepspeed_estimators() -> tuple[Any, Any] | None:
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except ImportError:
        return None
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def _deepspeed_estimate(cfg: dict[str, Any], counts: ParamCounts, memory: Memory) -> dict[str, Any]:
    par, cluster = cfg["parallel"], cfg["cluster"]
    zero = par["zero_stage"]
    if zero == 0:
        return {"applies": False, "why": "DeepSpeed's estimators cover ZeRO stages 1-3 only."}
    if par["tp"] * par["pp"] * par["ep"] != 1:
        return {"applies": False, "why": "DeepSpeed's estimators assume pure data parallelism (TP = PP = EP = 1)."}
    estimators = _deepspeed_estimators()
    if estimators is None:
        return {"applies": False, "why": "deepspeed is not importable in this process."}
    zero2, zero3 = estimators
    common = {
        "total_params": counts.total,
        "num_gpus_per_node": cluster["gpus_per_node"],
        "num_nodes": cluster["nodes"],
        "cpu_offload": par["offload_optimizer"],
    }
    if zero == 3:
        cpu, gpu, _ = zero3(
            largest_layer_params=counts.largest_tensor, cpu_offload_params=par["offload_param"], **common
        )
        function = "deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs"
    else:
        cpu, gpu = zero2(**common)
        function = "deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs"
    note = (
        "DeepSpeed's figure assumes 16-bit weights with fp32 master copies (18 bytes a parameter sharded, 2 "
        "replicated) and models stage 2 for stages 1 and 2; ours also counts stage 1's replicated gradients. "
        "Its host figure is the offloaded states with offload, else the memory to load the model."
    )
    if cfg["precision"] != "bf16":
        note += " This run is fp32, so DeepSpeed's 16-bit figure is low for it."
    return {
        "applies": True,
        "function": function,
        "model_states_gpu": _gib(gpu),
        "host_memory_per_node": _gib(cpu),
        "ours_model_states_gpu": _gib(memory.model_states),
        "note": note,
    }


# --- the plan -----------------------------------------------------------------------------------------------------


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


def peak_tflops_for(*, gpu_type: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of one accelerator of this type (the trainer's table), or None when it has none."""
    return hardware.peak_tflops(gpu_type, precision)


def _mean_attention_length(cfg: dict[str, Any], *, total_steps: int) -> float:
    """Sequence length averaged over the run's steps, following the curriculum (tokens per step are constant)."""
    stages = cfg.get("curriculum")
    seq = cfg["batch"]["seq_len"]
    if not isinstance(stages, list):
        return float(seq)
    try:
        starts = [(int(s["start_step"]), int(s["seq_len"])) for s in stages]
    except (TypeError, KeyError, ValueError):
        return float(seq)
    if not starts or starts[0][0] != 0:
        return float(seq)
    weighted = 0.0
    for i, (start, length) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else total_steps
        weighted += max(0, min(end, total_steps) - start) * length
    return weighted / total_steps if total_steps else float(seq)


def _compute(
    cfg: dict[str, Any],
    counts: ParamCounts,
    *,
    tokens_per_step: int,
    total_steps: int,
    mfu: float,
    peak_tflops: float | None,
) -> dict[str, Any]:
    model, cluster = cfg["model"], cfg["cluster"]
    world = cluster["nodes"] * cluster["gpus_per_node"]
    qk, v = attention_head_dims(model)
    attention_per_length = 6 * model["num_layers"] * model["num_heads"] * (qk + v)
    dense_part = 6 * counts.active_matmul
    seq = cfg["batch"]["seq_len"]
    flops_per_token = dense_part + attention_per_length * seq
    mean_len = _mean_attention_length(cfg, total_steps=total_steps)
    flops_per_token_run = dense_part + attention_per_length * mean_len
    peak = (
        peak_tflops
        if peak_tflops is not None
        else peak_tflops_for(gpu_type=cluster["gpu_type"], precision=cfg["precision"])
    )
    out: dict[str, Any] = {
        "flops_per_token": flops_per_token,
        "flops_per_token_params": dense_part,
        "flops_per_token_attention": attention_per_length * seq,
        "flops_per_step": flops_per_token * tokens_per_step,
        "mean_seq_len_over_curriculum": round(mean_len, 1),
        "token_budget": cfg["training"]["token_budget"],
        "mfu": mfu,
        "peak_tflops_per_gpu": peak,
        "step_time_s": None,
        "tokens_per_s": None,
        "time_to_budget_s": None,
        "time_to_budget_days": None,
        "gpu_hours": None,
    }
    if not peak:
        return out
    sustained = world * peak * 1e12 * mfu
    step_time = flops_per_token * tokens_per_step / sustained
    run_time = flops_per_token_run * tokens_per_step * total_steps / sustained
    out.update(
        {
            "step_time_s": round(step_time, 4),
            "tokens_per_s": round(tokens_per_step / step_time, 1),
            "time_to_budget_s": round(run_time, 1),
            "time_to_budget_days": round(run_time / 86_400, 2),
            "gpu_hours": round(world * run_time / 3600, 1),
        }
    )
    return out


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
    blocking = [i for i in validate_config(cfg, trainer="plan_only") if i.field.startswith(_PLAN_FIELDS)]
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
    memory, acts = _memory(cfg, counts, flash_attention=flash_attention)
    shards = _shards(cfg, counts)
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
        deepspeed_estimate=_deepspeed_estimate(cfg, counts, memory),
        suggestions=[] if memory.fits else _suggestions(cfg, counts, memory, flash_attention=flash_attention),
        compute=_compute(
            cfg, counts, tokens_per_step=tokens_per_step, total_steps=total_steps, mfu=mfu, peak_tflops=peak_tflops
        ),
        reconciliation_notes=reconciliation_notes(preset) if preset else [],
        assumptions=_assumptions(cfg, flash_attention=flash_attention, peak_given=peak_tflops is not None),
    )


# --- what to change when it does not fit ----------------------------------------------------------------------------


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


def _suggestions(
    cfg: dict[str, Any], counts: ParamCounts, memory: Memory, *, flash_attention: bool
) -> list[dict[str, Any]]:
    trainer = cfg.get("run", {}).get("trainer", "plan_only") if isinstance(cfg.get("run"), dict) else "plan_only"
    before = {i.field for i in validate_config(cfg, trainer=trainer)}
    out = []
    for action, changes in _candidate_changes(cfg):
        changed = _apply(cfg, changes)
        if any(i.field not in before for i in validate_config(changed, trainer=trainer)):
            continue
        after, _ = _memory(changed, counts, flash_attention=flash_attention)
        if after.total >= memory.total:
            continue
        out.append(
            {
                "action": action,
                "changes": changes,
                "total_gib": _gib(after.total),
                "saves_gib": _gib(memory.total - after.total),
                "fits": after.fits,
            }
        )
    return out
