"""Compute of a planned run: FLOPs per token and step, the accelerators' peak figures, and time and GPU-hours to
the token budget at a stated MFU."""

from __future__ import annotations

from typing import Any

from jobs.common import hardware
from runs.planning.params import ParamCounts, attention_head_dims


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


def compute(
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
