"""Training throughput and MFU of the reference trainer's model code (bf16, sequence 2048, one GPU).

  python bench/train_mfu.py            # on a GPU: the three measurements below, printed as a table
  python bench/train_mfu.py --quick    # tiny sizes, few steps: checks that everything runs (CPU is fine)

(a) dense ~350 M (24 x d1024, MHA, SwiGLU 2816, vocab 32000) under DeepSpeed ZeRO-1 with jobs.train.model, beside a plain
    PyTorch baseline of the same model (torch.compile, fp32 master weights + bf16 autocast, fused AdamW);
(b) MLA + MoE ~300 M total (8 x d1024, 16 routed experts top-4 + 1 shared) under DeepSpeed ZeRO-1, MFU on
    active-parameter FLOPs;
(c) reporter overhead: the (a) DeepSpeed step with and without jobs.reporter logging every step.

MFU = flops_per_token (jobs.train.model: 6 * active params + PaLM's attention term) * tokens/s / peak, where the peak is
measured here with a large bf16 torch.matmul loop (not the datasheet figure).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common.run_config import parse_run_config
from jobs.train.ds_config import build_ds_config
from jobs.train.model import build_model, flops_per_token, param_counts, token_losses
from jobs.train.moe import grouped_mm_available

DENSE = {"arch": "dense", "attention": "mha", "vocab_size": 32000, "hidden_size": 1024, "num_layers": 24,
         "num_heads": 16, "intermediate_size": 2816, "max_seq_len": 2048}  # fmt: skip
MOE = {"arch": "moe", "attention": "mla", "vocab_size": 32000, "hidden_size": 1024, "num_layers": 8, "num_heads": 16,
       "q_lora_rank": 0, "kv_lora_rank": 256, "qk_nope_head_dim": 96, "qk_rope_head_dim": 32, "v_head_dim": 128,
       "intermediate_size": 2816, "moe_intermediate_size": 704, "num_routed_experts": 16, "num_shared_experts": 1,
       "top_k": 4, "first_k_dense": 1, "aux_loss_coef": 0.001, "max_seq_len": 2048}  # fmt: skip
QUICK_DENSE = {**DENSE, "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
               "max_seq_len": 64}  # fmt: skip
QUICK_MOE = {**MOE, "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "kv_lora_rank": 32,
             "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "intermediate_size": 128,
             "moe_intermediate_size": 32, "num_routed_experts": 4, "top_k": 2, "max_seq_len": 64}  # fmt: skip


def run_config(model: dict, micro_batch: int, seq_len: int, precision: str, steps: int) -> dict:
    return {
        "schema_version": 1,
        "run": {"name": "bench"},
        "model": model,
        "parallel": {"zero_stage": 1},
        "batch": {
            "global_batch_tokens": micro_batch * seq_len,
            "micro_batch": micro_batch,
            "grad_accum": 1,
            "seq_len": seq_len,
        },  # fmt: skip
        "optimizer": {"lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.1, "warmup_steps": 2, "torch_adam": True},
        "precision": precision,
        "training": {"total_steps": steps, "seed": 0},
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def _batches(cfg, micro_batch: int, seq_len: int, device: torch.device, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, cfg.vocab_size, (micro_batch, seq_len + 1), generator=g).to(device) for _ in range(count)]


def _loss(out, tokens: torch.Tensor, aux_coef: float) -> torch.Tensor:
    logits, aux, _ = out
    return token_losses(logits, tokens[:, 1:]).mean() + aux_coef * aux


def _loss_fn(args):
    """The loss, compiled along with the model: eagerly, the fp32 cross-entropy over [tokens, vocab] logits makes
    several full fp32 copies of them (upcast, log-softmax, their gradients), a few ms per step at this size."""
    return torch.compile(_loss) if args.compile else _loss


def _time_steps(train_step, device: torch.device, args, profile_as: str) -> list[float]:
    """Wall time of each step after the warm-up; then, if asked, a profile of a few more steps."""
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        train_step(step)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    if profile_as and profile_as in args.profile:
        _profile(train_step, device, args, profile_as)
    return times


def _profile(train_step, device: torch.device, args, label: str, steps: int = 3) -> None:
    """Print GPU busy time against wall time per step, Dynamo's graph and graph-break counts, and the top kernels."""
    from torch._dynamo.utils import counters
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    first = args.warmup + args.steps
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for step in range(first, first + steps):
            train_step(step)
        sync(device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    events = prof.key_averages()
    busy_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3 / steps
    breaks = sum(counters["graph_break"].values())
    print(f"\n[profile {label}] per step: wall {wall_ms:.1f} ms, GPU kernels {busy_ms:.1f} ms; Dynamo graphs "
          f"{counters['stats'].get('unique_graphs', 0)}, graph breaks {breaks} {dict(counters['graph_break'])}")  # fmt: skip
    print(events.table(sort_by="self_device_time_total", row_limit=args.profile_rows, max_name_column_width=90))


def time_deepspeed(raw: dict, device: torch.device, args, reporter_dir: str | None = None,
                   profile_as: str = "") -> dict:  # fmt: skip
    cfg = parse_run_config(raw)
    # The engine and model live in the helper's frame only, so they are gone before the memory is released.
    times, mem = _run_deepspeed(cfg, device, args, reporter_dir, profile_as)
    _free(device)
    return _result(cfg.model, args, times, mem)


def _run_deepspeed(cfg, device: torch.device, args, reporter_dir: str | None, profile_as: str):
    import deepspeed

    model = build_model(cfg.model, seed=0)
    ds = build_ds_config(cfg, 1, device.type)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    if args.compile:
        engine.compile()
    reporter = None
    if reporter_dir is not None:
        from jobs.reporter import Reporter

        reporter = Reporter(reporter_dir, None, None, enabled=True)
    batches = _batches(cfg.model, args.micro_batch, args.seq_len, device, 4)
    aux_coef = cfg.model.aux_loss_coef if cfg.model.is_moe else 0.0
    loss_fn = _loss_fn(args)

    def train_step(step: int) -> None:
        tokens = batches[step % len(batches)]
        loss = loss_fn(engine(tokens[:, :-1], with_aux=True), tokens, aux_coef)
        engine.backward(loss)
        engine.step()
        loss_value = loss.item()
        if reporter is not None:
            values = {"loss": loss_value, "lr": 3e-4, "grad_norm": float(engine.get_global_grad_norm() or 0.0)}
            values.update({f"expert_load/{i}": 1.0 / 16 for i in range(16)})
            values.update({f"tokens/{s}": float(step) for s in ("zh", "en", "other")})
            reporter.heartbeat(step)
            reporter.log(step, values)

    times = _time_steps(train_step, device, args, profile_as)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if reporter is not None:
        reporter.close()
    return times, mem


def time_plain(raw: dict, device: torch.device, args, profile_as: str = "") -> dict:
    """Plain PyTorch: fp32 master weights, bf16 autocast, torch.compile, fused AdamW; no DeepSpeed."""
    cfg = parse_run_config(raw)
    times, mem = _run_plain(cfg, device, args, profile_as)
    _free(device)
    return _result(cfg.model, args, times, mem)


def _run_plain(cfg, device: torch.device, args, profile_as: str):
    model = build_model(cfg.model, seed=0).to(device)
    step_model = torch.compile(model) if args.compile else model
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    batches = _batches(cfg.model, args.micro_batch, args.seq_len, device, 4)
    aux_coef = cfg.model.aux_loss_coef if cfg.model.is_moe else 0.0
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == torch.bfloat16 else contextlib.nullcontext()
    )
    loss_fn = _loss_fn(args)

    def train_step(step: int) -> None:
        tokens = batches[step % len(batches)]
        with autocast:
            loss = loss_fn(step_model(tokens[:, :-1], with_aux=True), tokens, aux_coef)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    times = _time_steps(train_step, device, args, profile_as)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return times, mem


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _result(model_cfg, args, times: list[float], mem: float) -> dict:
    step = sorted(times)[len(times) // 2]
    tokens_per_s = args.micro_batch * args.seq_len / step
    total, active = param_counts(model_cfg)
    flops = flops_per_token(model_cfg, args.seq_len, active) * tokens_per_s
    return {"step_s": step, "tokens_per_s": tokens_per_s, "mfu": flops / (args.peak * 1e12), "params": total,
            "active": active, "mem_gb": mem}  # fmt: skip


def _single_process_env() -> None:
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few steps (runs on CPU)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on for GPU, off for --quick)")  # fmt: skip
    parser.add_argument("--only", default="dense,moe,reporter", help="comma list of: dense, plain, moe, reporter")
    parser.add_argument("--profile", default="", help="comma list of runs (dense, plain, moe) to profile after timing")
    parser.add_argument("--profile-rows", type=int, default=30, help="rows of the profile's kernel table")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    args.steps = args.steps or (3 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.micro_batch = args.micro_batch or (2 if quick else 8)
    args.seq_len = args.seq_len or (64 if quick else 2048)
    args.compile = (not quick) if args.compile is None else args.compile
    precision = "bf16" if device.type == "cuda" or not quick else "fp32"
    args.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    only = set(args.only.split(","))
    args.profile = set(filter(None, args.profile.split(",")))
    if "dense" in only:
        only.add("plain")

    _single_process_env()
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed.ops

        # The shared-memory all-reduce op only serves inference and compiles for minutes (see jobs.train).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        args.peak = measure_peak_tflops(device, torch.bfloat16, 8192, 100)
    else:
        name = "CPU"
        args.peak = measure_peak_tflops(device, args.dtype, 512, 10)
    grouped = grouped_mm_available(device, args.dtype)
    print(f"device {name}; measured {args.dtype} matmul peak {args.peak:.3g} TFLOP/s; torch {torch.__version__}; "
          f"compile {args.compile}; grouped_mm {grouped}; micro-batch {args.micro_batch} x seq {args.seq_len}",
          flush=True)  # fmt: skip

    dense = QUICK_DENSE if quick else DENSE
    moe = QUICK_MOE if quick else MOE
    rows = []
    if "dense" in only:
        raw = run_config(dense, args.micro_batch, args.seq_len, precision, args.steps)
        rows.append(("(a) dense, DeepSpeed ZeRO-1", time_deepspeed(raw, device, args, profile_as="dense")))
    if "plain" in only:
        raw = run_config(dense, args.micro_batch, args.seq_len, precision, args.steps)
        rows.append(("(a) dense, plain PyTorch baseline", time_plain(raw, device, args, profile_as="plain")))
    if "moe" in only:
        raw = run_config(moe, args.micro_batch, args.seq_len, precision, args.steps)
        rows.append(("(b) MLA+MoE, DeepSpeed ZeRO-1", time_deepspeed(raw, device, args, profile_as="moe")))
    if "reporter" in only:
        raw = run_config(dense, args.micro_batch, args.seq_len, precision, args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            without = time_deepspeed(raw, device, args)
            with_reporter = time_deepspeed(raw, device, args, reporter_dir=tmp)
        rows.append(("(c) dense DeepSpeed, no reporter", without))
        rows.append(("(c) dense DeepSpeed, reporter every step", with_reporter))
        overhead = (with_reporter["step_s"] / without["step_s"] - 1.0) * 100

    print()
    print("| run | params (active) | step s | tokens/s | MFU | max mem GiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        print(f"| {label} | {r['params'] / 1e6:.3g} M ({r['active'] / 1e6:.3g} M) | {r['step_s']:.4f} | "
              f"{r['tokens_per_s']:,.0f} | {r['mfu']:.3f} | {r['mem_gb']:.1f} |")  # fmt: skip
    if "reporter" in only:
        print(f"\nreporter overhead: {overhead:+.2f}% step time")
    if device.type == "cpu":
        print("\n(CPU: MFU against a small fp32 matmul loop on this machine; figures only show that the code runs.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
