"""Memory per GPU of a planned run: activations per layer and stage, model states by ZeRO stage and offload, and
DeepSpeed's own model-states estimate beside ours.

DeepSpeed is imported only for its estimators, lazily and once (`deepspeed_estimators`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from runs.planning.params import ParamCounts, attention_head_dims

GIB = 2**30
# CUDA context, NCCL communicators and DeepSpeed's buffers on a GPU; the Python, torch and DeepSpeed runtime of one
# rank on a CPU.
FIXED_OVERHEAD_GIB = {"cuda": 2.0, "cpu": 0.5}
FRAGMENTATION = 0.10


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
            "weights": gib(self.weights),
            "gradients": gib(self.gradients),
            "optimizer_states": gib(self.optimizer_states),
            "model_states": gib(self.model_states),
            "activations": gib(self.activations),
            "activations_with_checkpointing": gib(self.activations_checkpointed),
            "activations_without_checkpointing": gib(self.activations_full),
            "overhead": gib(self.overhead),
            "total": gib(self.total),
            "gpu_memory": gib(self.capacity),
            "headroom": gib(self.headroom),
            "fits": self.fits,
            "cpu_offload_per_node": gib(self.cpu_per_node),
            "cpu_memory_per_node": None if self.cpu_capacity_per_node is None else gib(self.cpu_capacity_per_node),
            "cpu_fits": None if self.cpu_capacity_per_node is None else self.cpu_per_node <= self.cpu_capacity_per_node,
        }


def gib(value: float) -> float:
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


def shards_per_gpu(cfg: dict[str, Any], counts: ParamCounts) -> Shards:
    par, cluster = cfg["parallel"], cfg["cluster"]
    tp, pp, ep = par["tp"], par["pp"], par["ep"]
    dp = cluster["nodes"] * cluster["gpus_per_node"] // (tp * pp)
    return Shards(
        non_expert=counts.non_expert / (tp * pp), expert=counts.expert / (tp * pp * ep), dp=dp, expert_dp=dp // ep
    )


def memory_per_gpu(cfg: dict[str, Any], counts: ParamCounts, *, flash_attention: bool) -> tuple[Memory, Activations]:
    par, cluster = cfg["parallel"], cfg["cluster"]
    zero, offload_opt, offload_param = par["zero_stage"], par["offload_optimizer"], par["offload_param"]
    shards = shards_per_gpu(cfg, counts)
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
def deepspeed_estimators() -> tuple[Any, Any] | None:
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except ImportError:
        return None
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def deepspeed_estimate(cfg: dict[str, Any], counts: ParamCounts, memory: Memory) -> dict[str, Any]:
    par, cluster = cfg["parallel"], cfg["cluster"]
    zero = par["zero_stage"]
    if zero == 0:
        return {"applies": False, "why": "DeepSpeed's estimators cover ZeRO stages 1-3 only."}
    if par["tp"] * par["pp"] * par["ep"] != 1:
        return {"applies": False, "why": "DeepSpeed's estimators assume pure data parallelism (TP = PP = EP = 1)."}
    estimators = deepspeed_estimators()
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
        "model_states_gpu": gib(gpu),
        "host_memory_per_node": gib(cpu),
        "ours_model_states_gpu": gib(memory.model_states),
        "note": note,
    }
