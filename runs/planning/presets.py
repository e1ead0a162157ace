"""Run-config presets: the R1 guide's numbers, a laptop-sized run, and a one-H200 run.

Each builder returns a complete `run.json` body (docs/run-config.md) less the `run` and `reporter` sections, which
the control plane fills at launch. The cluster section also carries `name`, `cpu_memory_gb_per_node` and
`interconnect`, the keys `Cluster.spec()` writes there.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobs.common import hardware

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReconciliationNote:
    """One figure of a source (the guide) that a preset could not keep as stated, and why."""

    figure: str
    guide: str
    preset: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"figure": self.figure, "guide": self.guide, "preset": self.preset, "why": self.why}


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    trainer: str
    build: Callable[[], dict[str, Any]]
    reconciliation_notes: tuple[ReconciliationNote, ...] = field(default=())


def _total_steps(*, token_budget: int, tokens_per_step: int) -> int:
    return math.ceil(token_budget / tokens_per_step)


def _guide_recipe() -> dict[str, Any]:
    # The guide's language mix (section 3).
    return {
        "name": "bilingual-demo",
        "version": 1,
        "sources": [
            {"name": "zh", "weight": 45.0},
            {"name": "en", "weight": 35.0},
            {"name": "other", "weight": 20.0},
        ],
    }


# --- R1 guide ------------------------------------------------------------------------------------------------

R1_NODES = 128
R1_GPUS_PER_NODE = 8
R1_TP, R1_PP, R1_EP = 8, 4, 2
R1_GUIDE_GRAD_ACCUM = 32
R1_GLOBAL_BATCH_TOKENS = 3_200_000
R1_SEQ_LEN = 8192
R1_MICRO_BATCH = 1
R1_TOLERANCE_PCT = 5.0
# 2 T tokens: about 3x the Chinchilla-optimal 20 tokens per active parameter (0.74 T for 37 B active), a seventh
# of the 14.8 T DeepSeek-V3 was trained on, and what this cluster gets through in about the guide's "2-3 weeks"
# at 40 % MFU.
R1_TOKEN_BUDGET = 2_000_000_000_000


def _r1_data_parallel() -> int:
    return (R1_NODES * R1_GPUS_PER_NODE) // (R1_TP * R1_PP)


def _r1_grad_accum() -> int:
    """Accumulation that keeps the guide's 3.2 M-token global batch at one 8,192-token sequence per micro-batch."""
    per_micro_step = R1_MICRO_BATCH * _r1_data_parallel() * R1_SEQ_LEN
    return max(1, round(R1_GLOBAL_BATCH_TOKENS / per_micro_step))


def _r1_tokens_per_step() -> int:
    return R1_MICRO_BATCH * _r1_grad_accum() * _r1_data_parallel() * R1_SEQ_LEN


def _r1_curriculum() -> list[dict[str, int]]:
    # The guide gives the lengths, not when they change: 256 through the 3,000 warm-up steps, then 2,048, and the
    # full 8,192 from step 32,000 (about 5 % of the run) on.
    return [
        {"start_step": 0, "seq_len": 256},
        {"start_step": 3000, "seq_len": 2048},
        {"start_step": 32000, "seq_len": R1_SEQ_LEN},
    ]


def r1_guide_config() -> dict[str, Any]:
    """The guide's numbers on DeepSeek-V3's real architecture, reconciled where they contradict each other."""
    tokens_per_step = _r1_tokens_per_step()
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "arch": "moe",
            "attention": "mla",
            "vocab_size": 128_000,
            "hidden_size": 7168,
            "num_layers": 61,
            "num_heads": 128,
            "q_lora_rank": 1536,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "intermediate_size": 18432,
            "moe_intermediate_size": 2048,
            "num_routed_experts": 256,
            "num_shared_experts": 1,
            "top_k": 8,
            "first_k_dense": 3,
            "aux_loss_coef": 0.0001,
            "rope_theta": 10000.0,
            "max_seq_len": R1_SEQ_LEN,
            "tie_embeddings": False,
        },
        "parallel": {
            "tp": R1_TP,
            "pp": R1_PP,
            "ep": R1_EP,
            "sp": True,
            "zero_stage": 1,
            "offload_optimizer": True,
            "offload_param": False,
            "activation_checkpointing": True,
        },
        "batch": {
            "global_batch_tokens": R1_GLOBAL_BATCH_TOKENS,
            "micro_batch": R1_MICRO_BATCH,
            "grad_accum": _r1_grad_accum(),
            "seq_len": R1_SEQ_LEN,
            "tolerance_pct": R1_TOLERANCE_PCT,
        },
        "optimizer": {
            "name": "adamw",
            "lr": 6e-5,
            "min_lr": 6e-6,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "warmup_steps": 3000,
            "schedule": "cosine",
            "torch_adam": False,
        },
        "precision": "bf16",
        "curriculum": _r1_curriculum(),
        "training": {
            "total_steps": _total_steps(token_budget=R1_TOKEN_BUDGET, tokens_per_step=tokens_per_step),
            "token_budget": R1_TOKEN_BUDGET,
            "checkpoint_interval": 1000,
            "keep_checkpoints": 3,
            "keep_every": 0,
            "seed": 1234,
            "log_interval": 10,
            "nan_policy": "abort",
        },
        "data": {"recipe": _guide_recipe(), "shards_dir": None, "tokenizer": "bpe_128k.model"},
        "alerts": {"loss_spike_z": 6.0, "grad_norm_max": 100.0, "hang_timeout_s": 1800, "throughput_drop_pct": 30.0},
        # The guide's OOM fixes (small micro-batch, activation checkpointing, ZeRO-Offload) are all already in the
        # layout, so an OOM here needs a person, not an automatic retry.
        "remediation": {"oom": [], "max_attempts": 2, "on_spike": "rollback"},
        "cluster": {
            "name": "r1-h100-128x8",
            "backend": "slurm",
            "nodes": R1_NODES,
            "gpus_per_node": R1_GPUS_PER_NODE,
            "accelerator": "cuda",
            "gpu_type": "H100",
            "gpu_memory_gb": hardware.memory_gib("H100"),
            "cpu_memory_gb_per_node": 2048.0,
            "interconnect": "NVLink3 + 400 Gbps RDMA",
        },
    }


def _r1_notes() -> tuple[ReconciliationNote, ...]:
    dp = _r1_data_parallel()
    accum = _r1_grad_accum()
    as_guide = R1_MICRO_BATCH * R1_GUIDE_GRAD_ACCUM * dp * R1_SEQ_LEN
    kept = _r1_tokens_per_step()
    off_pct = 100.0 * (kept - R1_GLOBAL_BATCH_TOKENS) / R1_GLOBAL_BATCH_TOKENS
    bubble_guide = (R1_PP - 1) / (R1_GUIDE_GRAD_ACCUM + R1_PP - 1)
    bubble_kept = (R1_PP - 1) / (accum + R1_PP - 1)
    return (
        ReconciliationNote(
            figure="gradient accumulation",
            guide=str(R1_GUIDE_GRAD_ACCUM),
            preset=str(accum),
            why=(
                f"The guide's figures cannot all hold: with {R1_NODES * R1_GPUS_PER_NODE:,} GPUs, TP {R1_TP} and "
                f"PP {R1_PP} the data-parallel size is {dp}, and even one {R1_SEQ_LEN:,}-token sequence per "
                f"micro-batch with accumulation {R1_GUIDE_GRAD_ACCUM} makes a step of {as_guide:,} tokens, not "
                f"{R1_GLOBAL_BATCH_TOKENS:,}. The global batch is kept because it shapes the optimisation (the "
                f"learning rate 6e-5 goes with it); accumulation is only an execution knob, so it gave way: "
                f"{accum} gives {kept:,} tokens per step ({off_pct:+.1f} %, within the "
                f"{R1_TOLERANCE_PCT:g} % tolerance). The cost is a larger 1F1B pipeline bubble, "
                f"{bubble_kept:.0%} instead of {bubble_guide:.0%}."
            ),
        ),
        ReconciliationNote(
            figure="model size",
            guide="1.2 T sparse parameters, compute like a 240 B dense model",
            preset="DeepSeek-V3's published shape: about 671 B total, 37 B active per token",
            why=(
                "The guide's size does not match the model it reproduces. The preset uses DeepSeek-V3's real "
                "architecture (61 layers, hidden 7,168, MLA, 1 shared + 256 routed experts, top 8), so the plan "
                "counts parameters for the model that exists; the multi-token-prediction module (about 14 B) is "
                "left out, as the schema has no field for it."
            ),
        ),
        ReconciliationNote(
            figure="vocabulary",
            guide="128,000 (SentencePiece BPE, bpe_128k)",
            preset="128,000",
            why="Kept the guide's tokenizer; DeepSeek-V3 itself uses 129,280, about 9 M fewer parameters here.",
        ),
        ReconciliationNote(
            figure="ZeRO-Offload",
            guide="ZeRO-Offload with pipeline parallel 4",
            preset="ZeRO stage 1 with offload_optimizer",
            why=(
                "DeepSpeed's pipeline engine accepts ZeRO stage 0 or 1 only, and optimizer offload works from "
                "stage 1, so stage 1 with the optimizer on the CPU is the ZeRO-Offload this layout allows."
            ),
        ),
        ReconciliationNote(
            figure="token budget",
            guide="not stated (\u201c2-3 weeks for the whole reproduction\u201d)",
            preset=f"{R1_TOKEN_BUDGET / 1e12:g} T tokens",
            why=(
                "About 3x the Chinchilla-optimal 20 tokens per active parameter and a seventh of DeepSeek-V3's "
                "14.8 T; at 40 % MFU on this cluster it takes about three weeks, the guide's own estimate."
            ),
        ),
        ReconciliationNote(
            figure="curriculum steps",
            guide="256 -> 2048 -> 8192, no step numbers",
            preset="256 from step 0, 2,048 from 3,000 (end of warm-up), 8,192 from 32,000",
            why="The guide gives only the lengths; the full length starts after about 5 % of the steps.",
        ),
        ReconciliationNote(
            figure="what the schema cannot express",
            guide="per-layer attention heads, focal loss, grammar-consistency regulariser",
            preset="one head count for all layers; cross-entropy plus the MoE auxiliary loss",
            why=(
                "run.json has no fields for these; aux_loss_coef 0.0001 is DeepSeek-V3's sequence-wise balance "
                "weight, min_lr (10 % of peak) and betas (0.9, 0.95) are not in the guide and follow DeepSeek-V3."
            ),
        ),
    )


# --- tiny ----------------------------------------------------------------------------------------------------

TINY_TOKEN_BUDGET = 614_400


def tiny_config() -> dict[str, Any]:
    """MLA + MoE small enough for the reference trainer on two CPU ranks in well under a minute of compute."""
    tokens_per_step = 8 * 2 * 2 * 64
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "arch": "moe",
            "attention": "mla",
            "vocab_size": 4096,
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "q_lora_rank": 0,
            "kv_lora_rank": 32,
            "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8,
            "v_head_dim": 16,
            "intermediate_size": 256,
            "moe_intermediate_size": 64,
            "num_routed_experts": 4,
            "num_shared_experts": 1,
            "top_k": 2,
            "first_k_dense": 1,
            "aux_loss_coef": 0.01,
            "rope_theta": 10000.0,
            "max_seq_len": 256,
            "tie_embeddings": False,
        },
        "parallel": {
            "tp": 1,
            "pp": 1,
            "ep": 1,
            "sp": False,
            # Sharding 669 K parameters saves nothing, and under ZeRO 1-3 DeepSpeed's optimizer check imports its Muon
            # optimizer, which builds torch.compile kernels at import: about 4 s of every launch on a CPU.
            "zero_stage": 0,
            "offload_optimizer": False,
            "offload_param": False,
            "activation_checkpointing": False,
        },
        "batch": {
            "global_batch_tokens": tokens_per_step,
            "micro_batch": 8,
            "grad_accum": 2,
            "seq_len": 64,
            "tolerance_pct": 5.0,
        },
        "optimizer": {
            "name": "adamw",
            "lr": 0.001,
            "min_lr": 0.0001,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.01,
            "grad_clip": 1.0,
            "warmup_steps": 20,
            "schedule": "cosine",
            # DeepSpeed's own CPU Adam compiles for minutes on first use; torch's AdamW starts at once.
            "torch_adam": True,
        },
        "precision": "fp32",
        "curriculum": [{"start_step": 0, "seq_len": 32}, {"start_step": 100, "seq_len": 64}],
        "training": {
            "total_steps": _total_steps(token_budget=TINY_TOKEN_BUDGET, tokens_per_step=tokens_per_step),
            "token_budget": TINY_TOKEN_BUDGET,
            "checkpoint_interval": 100,
            "keep_checkpoints": 3,
            "keep_every": 0,
            "seed": 1234,
            "log_interval": 1,
            "nan_policy": "abort",
        },
        "data": {"recipe": _guide_recipe(), "shards_dir": None, "tokenizer": None},
        "alerts": {"loss_spike_z": 6.0, "grad_norm_max": 100.0, "hang_timeout_s": 300, "throughput_drop_pct": 50.0},
        "remediation": {
            "oom": ["halve_micro_batch", "activation_checkpointing", "offload_optimizer"],
            "max_attempts": 3,
            "on_spike": "alert",
        },
        "cluster": {
            "name": "local-cpu",
            "backend": "local",
            "nodes": 1,
            "gpus_per_node": 2,
            "accelerator": "cpu",
            "gpu_type": "CPU",
            "gpu_memory_gb": 8.0,
            "cpu_memory_gb_per_node": 16.0,
            "interconnect": "shared memory",
        },
    }


# --- single H200 ---------------------------------------------------------------------------------------------

H200_SEQ_LEN = 2048
H200_TOKEN_BUDGET = 1_000_000_000
# Fits are judged against what a process can allocate, not the nominal 141 GB.
H200_USABLE_GIB = hardware.memory_gib("H200")


def single_h200_config() -> dict[str, Any]:
    """About 297 M total / 116 M active MLA + MoE parameters, bf16 and ZeRO-1 on one H200."""
    micro, accum = 8, 16
    tokens_per_step = micro * accum * H200_SEQ_LEN
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "arch": "moe",
            "attention": "mla",
            "vocab_size": 4096,
            "hidden_size": 1024,
            "num_layers": 8,
            "num_heads": 16,
            "q_lora_rank": 384,
            "kv_lora_rank": 256,
            "qk_nope_head_dim": 64,
            "qk_rope_head_dim": 32,
            "v_head_dim": 64,
            "intermediate_size": 2816,
            "moe_intermediate_size": 704,
            "num_routed_experts": 16,
            "num_shared_experts": 1,
            "top_k": 4,
            "first_k_dense": 1,
            "aux_loss_coef": 0.01,
            "rope_theta": 10000.0,
            "max_seq_len": H200_SEQ_LEN,
            "tie_embeddings": False,
        },
        "parallel": {
            "tp": 1,
            "pp": 1,
            "ep": 1,
            "sp": False,
            "zero_stage": 1,
            "offload_optimizer": False,
            "offload_param": False,
            "activation_checkpointing": False,
        },
        "batch": {
            "global_batch_tokens": tokens_per_step,
            "micro_batch": micro,
            "grad_accum": accum,
            "seq_len": H200_SEQ_LEN,
            "tolerance_pct": 5.0,
        },
        "optimizer": {
            "name": "adamw",
            "lr": 3e-4,
            "min_lr": 3e-5,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "warmup_steps": 200,
            "schedule": "cosine",
            "torch_adam": False,
        },
        "precision": "bf16",
        "curriculum": [{"start_step": 0, "seq_len": 512}, {"start_step": 200, "seq_len": H200_SEQ_LEN}],
        "training": {
            "total_steps": _total_steps(token_budget=H200_TOKEN_BUDGET, tokens_per_step=tokens_per_step),
            "token_budget": H200_TOKEN_BUDGET,
            "checkpoint_interval": 500,
            "keep_checkpoints": 3,
            "keep_every": 0,
            "seed": 1234,
            "log_interval": 10,
            "nan_policy": "abort",
        },
        "data": {"recipe": _guide_recipe(), "shards_dir": None, "tokenizer": None},
        "alerts": {"loss_spike_z": 6.0, "grad_norm_max": 50.0, "hang_timeout_s": 600, "throughput_drop_pct": 40.0},
        "remediation": {
            "oom": ["halve_micro_batch", "activation_checkpointing", "offload_optimizer"],
            "max_attempts": 3,
            "on_spike": "rollback",
        },
        "cluster": {
            "name": "h200-single",
            "backend": "local",
            "nodes": 1,
            "gpus_per_node": 1,
            "accelerator": "cuda",
            "gpu_type": "H200",
            "gpu_memory_gb": H200_USABLE_GIB,
            "cpu_memory_gb_per_node": 128.0,
            "interconnect": "PCIe/NVLink",
        },
    }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="r1_guide",
            label="R1 guide (128 x 8 H100)",
            description=(
                "The guide's numbers on DeepSeek-V3's architecture: 128 nodes of 8 H100 80 GB (NVLink + 400 Gbps "
                "RDMA), TP 8, PP 4, SP, EP 2, 3.2 M-token batches, lr 6e-5 cosine with 3,000 warm-up steps, "
                "curriculum 256 -> 2048 -> 8192, activation checkpointing and ZeRO-Offload, bf16. For planning; "
                "not runnable here."
            ),
            trainer="plan_only",
            build=r1_guide_config,
            reconciliation_notes=_r1_notes(),
        ),
        Preset(
            name="tiny",
            label="Tiny (laptop CPU, minutes)",
            description=(
                "A 2-layer MLA + MoE model (4 routed experts, top 2, 1 shared) on the bundled 4,096-token "
                "tokenizer and sample corpus: 300 steps on two CPU ranks with the reference trainer."
            ),
            trainer="reference",
            build=tiny_config,
        ),
        Preset(
            name="single_h200",
            label="Single H200",
            description=(
                "About 300 M parameters (MLA, 16 routed experts top 4 + 1 shared, d 1024, 8 layers), bf16, "
                "ZeRO-1, sequence 2,048, 1 B tokens on one H200 (judged against its 139 GiB usable memory). Point "
                "data.tokenizer at your own tokenizer and set model.vocab_size to match for real data."
            ),
            trainer="reference",
            build=single_h200_config,
        ),
    )
}


def preset_config(name: str) -> dict[str, Any]:
    """A fresh, independent copy of the named preset's config."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.") from None
    return copy.deepcopy(preset.build())


def reconciliation_notes(name: str) -> list[dict[str, str]]:
    """The preset's record of the source figures that gave way, for the plan to show; [] when none did."""
    try:
        preset = PRESETS[name]
    except KeyError:
        return []
    return [note.to_dict() for note in preset.reconciliation_notes]
