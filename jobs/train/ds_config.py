"""DeepSpeed configuration generated from run.json, and the learning-rate schedule.

The schedule is not a DeepSpeed scheduler: ``lr_at(step)`` is applied to the optimizer's param groups before every
step. It depends on the step number alone, so a resumed run needs no scheduler state, and a step skipped for a
NaN loss (nan_policy "skip") does not shift the schedule of the steps after it.

Activation checkpointing is done by the model per decoder layer (torch.utils.checkpoint), so it has no section here.
Expert parallelism needs no section either: the expert-parallel layers carry DeepSpeed's MoE markers (jobs.train.moe).

Usage: ``python -m jobs.train.ds_config --run-dir RUN [--world-size N]`` writes RUN/ds_config.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from jobs.common.run_config import RunConfig, load_run_config

# Large buckets cut the number of collectives; 5e8 elements is DeepSpeed's own default.
_BUCKET = 500_000_000


def lr_at(cfg: RunConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based): linear warm-up to lr, then cosine down to min_lr."""
    o = cfg.optimizer
    if o.warmup_steps and step <= o.warmup_steps:
        return o.lr * step / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    decay_steps = max(1, cfg.training.total_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / decay_steps)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))


def build_ds_config(cfg: RunConfig, world_size: int, accelerator: str = "cpu") -> dict:
    """The DeepSpeed JSON for this run on ``world_size`` ranks; ``accelerator`` is 'cpu' or 'cuda'."""
    dp = cfg.dp_size(world_size)
    par = cfg.parallel
    o = cfg.optimizer
    zero: dict = {
        "stage": par.zero_stage,
        "overlap_comm": accelerator != "cpu",
        "contiguous_gradients": True,
        "reduce_bucket_size": _BUCKET,
        "allgather_bucket_size": _BUCKET,
    }
    if par.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": accelerator != "cpu"}
    if par.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": accelerator != "cpu"}
    if par.zero_stage == 3:
        # A MoE layer reads its experts' weights in one grouped matmul, so ZeRO-3 must gather them as a unit.
        zero["leaf_module"] = {"classes": ["RoutedExperts"]}
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    params = {
        "lr": o.lr,
        "betas": list(o.betas),
        "eps": o.eps,
        "weight_decay": o.weight_decay,
        # torch_adam uses torch.optim.AdamW and skips compiling DeepSpeed's fused CPU/GPU Adam op.
        "torch_adam": o.torch_adam,
        "adam_w_mode": True,
    }
    if o.torch_adam and accelerator == "cuda" and not par.offload_optimizer:
        params["fused"] = True
    ds = {
        "train_batch_size": cfg.batch.micro_batch * cfg.batch.grad_accum * dp,
        "train_micro_batch_size_per_gpu": cfg.batch.micro_batch,
        "gradient_accumulation_steps": cfg.batch.grad_accum,
        "gradient_clipping": o.grad_clip,
        "optimizer": {"type": "AdamW", "params": params},
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if par.pp > 1:
        # Stages pass the hidden state and the running MoE balance loss, both needing gradients; DeepSpeed's
        # partitioned activation/gradient exchange (its default with tp > 1) carries only the first.
        ds["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    if par.offload_optimizer and o.torch_adam:
        # DeepSpeed insists on its compiled CPU Adam for offload unless told that torch's AdamW is wanted.
        ds["zero_force_ds_cpu_optimizer"] = False
    if cfg.precision == "bf16" and par.zero_stage >= 1:
        # Accumulate gradients across micro-batches in fp32: bf16 accumulation loses low-order bits. (Without
        # ZeRO DeepSpeed refuses the mix; its bf16 optimizer then keeps fp32 master weights but bf16 gradients.)
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def build_hf_ds_config(cfg: RunConfig, world_size: int, accelerator: str = "cpu") -> dict:
    """The same layout for a Hugging Face Trainer script: "auto" wherever the Trainer fills a value from its own
    arguments (transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig.trainer_config_process), since it refuses
    a config whose numbers differ from them. The layout (ZeRO stage, offload) stays the run's."""
    ds = build_ds_config(cfg, world_size, accelerator)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        ds[key] = "auto"
    ds["gradient_clipping"] = "auto"
    ds["optimizer"]["params"].update({"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"})
    ds["bf16"] = {"enabled": "auto"}
    ds["fp16"] = {"enabled": "auto"}
    ds.pop("data_types", None)  # HF's bf16 choice decides the accumulation dtype
    zero = ds["zero_optimization"]
    zero["reduce_bucket_size"] = "auto"
    zero.pop("allgather_bucket_size", None)
    if cfg.parallel.zero_stage == 3:
        zero.pop("leaf_module", None)  # the reference model's class; an HF model has its own
        zero["stage3_prefetch_bucket_size"] = "auto"
        zero["stage3_param_persistence_threshold"] = "auto"
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return ds


def build_for_run(cfg: RunConfig, world_size: int, accelerator: str = "cpu") -> dict:
    """The config a run's job is given: HF-style for an own script that asks for it, else the full one."""
    if cfg.own_script.ds_config_style == "hf" and cfg.raw.get("run", {}).get("trainer") == "own_script":
        return build_hf_ds_config(cfg, world_size, accelerator)
    return build_ds_config(cfg, world_size, accelerator)


def write_ds_config(run_dir: str | Path, ds: dict) -> Path:
    path = Path(run_dir) / "ds_config.json"
    path.write_text(json.dumps(ds, indent=2) + "\n")
    return path


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write RUN/ds_config.json from RUN/run.json")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run_dir)
    cfg.check_world(args.world_size)
    print(write_ds_config(args.run_dir, build_for_run(cfg, args.world_size, args.accelerator)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
