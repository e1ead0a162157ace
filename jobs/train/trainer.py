"""The reference trainer's program: ``python -m jobs.train --run-dir DIR [--resume latest|TAG]`` or ``--capabilities``.

Runs under the ``deepspeed`` launcher, ``torchrun``, Slurm's ``srun`` (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, the
first host of the job's node list as MASTER_ADDR) or as one plain process, on CPU (gloo) or CUDA (NCCL); the
accelerator is DeepSpeed's choice (``DS_ACCELERATOR=cpu`` forces CPU). Reads RUN_DIR/run.json, writes
RUN_DIR/ds_config.json, metrics through jobs.reporter (rank 0 only) and checkpoints under RUN_DIR/checkpoints.

The last stdout line of rank 0 is ``JOB_STATUS {"status": ..., "step": ...}``; exit codes are in jobs.common.failures.
Environment: ``CP_RUN_TOKEN`` (ingest token, else RUN_DIR/token), ``CP_PEAK_TFLOPS`` (peak TFLOP/s of one device
for the mfu metric), and the test-only fault injection variables documented in jobs.train.faults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from jobs.common import hardware
from jobs.common.failures import (
    EXIT_ERROR,
    EXIT_NAN,
    EXIT_OK,
    EXIT_OOM,
    NonFiniteLoss,
    is_oom,
    rank_ended,
    rank_started,
)
from jobs.common.run_config import ConfigError, RunConfig, expected_total_steps, load_capabilities, load_run_config
from jobs.train import checkpoint
from jobs.train.ds_config import build_ds_config, lr_at, write_ds_config
from jobs.train.faults import FaultInjector
from jobs.train.model import build_model, flops_per_token, param_counts
from jobs.train.moe import as_deepspeed_moe
from jobs.train.rendezvous import launch_env
from jobs.train.tensor_parallel import build_grid, prepare_experts_for_tp, sequence_parallel_norms, tp_info

if TYPE_CHECKING:
    from jobs.reporter import Reporter  # imported on rank 0 only, when it reports

CHECKPOINT_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")


def _mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def peak_tflops(name: str, precision: str) -> tuple[float, str]:
    """(peak TFLOP/s of one device named `name`, where the figure came from), for the mfu metric."""
    env = os.environ.get("CP_PEAK_TFLOPS", "").strip()
    if env:
        return float(env), "env CP_PEAK_TFLOPS"
    row = hardware.accelerator(name)
    if row is None:
        return hardware.PEAK_TFLOPS["H100"][precision], f"unknown GPU {name!r}: H100 {precision} figure"
    if row.name == "CPU":
        return row.peak_tflops[precision], "nominal CPU figure, not a measured peak"
    return row.peak_tflops[precision], f"table {row.name} {precision}"


def _read_token(run_dir: Path) -> str | None:
    if os.environ.get("CP_RUN_TOKEN"):
        return os.environ["CP_RUN_TOKEN"]
    path = run_dir / "token"
    return path.read_text().strip() if path.exists() else None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Matrices and embeddings decay; norm gains do not. Names let DeepSpeed split off its MoE groups."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


class Trainer:
    def __init__(self, run_dir: Path, cfg: RunConfig, resume: str | None) -> None:
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        from jobs.data import MixedBatcher

        self.run_dir = run_dir
        self.cfg = cfg
        self.resume = resume
        self.dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        cfg.check_world(self.world)
        self.dp = cfg.dp_size(self.world)
        accel = get_accelerator()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if accel.device_name() == "cuda":
            accel.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.accelerator = self.device.type
        self.faults = FaultInjector(self.rank, run_dir)
        self.reporter: Reporter | None = None
        self.step = 0
        # The last data step drawn (docs/run-config.md, relaunch.skip_data): equal to the step unless a relaunch
        # skipped a window of data.
        self.data_step = 0
        self.last_loss: float | None = None
        self.last_values: dict[str, float] = {}
        self.where: dict = {}
        self.optimizer_reset = False

        seed = cfg.training.seed
        torch.manual_seed(seed)
        par = cfg.parallel
        # DeepSpeed's process grid is its mpu: ZeRO then shards over the data-parallel group only.
        self.grid = build_grid(par.tp, par.pp, self.dp) if par.tp * par.pp > 1 else None
        tp = tp_info(self.grid, par.sp)
        self.dp_rank = self.grid.get_data_parallel_rank() if self.grid is not None else self.rank
        # One rank per data-parallel replica reports its losses and token counts (the others hold copies).
        self.reports = tp.rank == 0
        ep = par.ep
        ep_rank, ep_group = 0, None
        if ep > 1:
            from deepspeed.utils import groups

            # With tp > 1 DeepSpeed forms the expert-parallel groups from ranks of equal tensor-parallel rank.
            groups._create_expert_and_data_parallel(ep, mp_size=par.tp if par.tp > 1 else None)
            ep_rank = groups._get_expert_parallel_rank(f"ep_size_{ep}")
            ep_group = groups._get_expert_parallel_group(f"ep_size_{ep}")
        self.model = build_model(cfg.model, seed, ep, ep_rank, ep_group, par.activation_checkpointing, tp)
        sequence_parallel_norms(self.model, tp)
        self.total_params, self.active_params = param_counts(cfg.model, self.model if tp.size == 1 else None)
        as_deepspeed_moe(self.model)
        # Under tp x ep the ranks of tp rank > 0 and data-parallel rank 0 write their own model-states files.
        self.tp_expert_copy: int | None = None
        if tp.size > 1 and ep > 1:
            prepare_experts_for_tp(self.model, tp.size)
            self.tp_expert_copy = tp.rank if tp.rank > 0 and self.dp_rank == 0 else -1

        ds = build_ds_config(cfg, self.world, self.accelerator)
        if self.rank == 0:
            write_ds_config(run_dir, ds)
        self.pipe = None
        if par.pp > 1:
            from jobs.train.pipeline import build_pipeline

            # The PipelineModule brings its own grid (the same topology) and DeepSpeed takes it as the mpu.
            grid = self.grid
            assert grid is not None  # pp > 1 always builds one
            self.pipe = build_pipeline(self.model, pp=par.pp, topology=grid.topology(),
                                       aux_coef=cfg.model.aux_loss_coef if cfg.model.is_moe else 0.0)  # fmt: skip
            self.reports = self.reports and grid.get_stage_id() == par.pp - 1
        trained = self.pipe if self.pipe is not None else self.model
        self.engine, *_ = deepspeed.initialize(
            model=trained,
            model_parameters=_param_groups(trained, cfg.optimizer.weight_decay),
            config=ds,
            mpu=self.grid if self.pipe is None else None,
        )
        self.layout = {"tp": par.tp, "pp": par.pp, "ep": par.ep, "sp": par.sp, "dp": self.dp}
        self.batcher = MixedBatcher(cfg.raw, rank=self.dp_rank, world=self.dp, seed=seed)
        self.sources = self.batcher.source_names
        self.peak_tflops, self.peak_source = peak_tflops(device_name(self.device), cfg.precision)

    # -- reporting -------------------------------------------------------------------------------------------
    def open_reporter(self) -> None:
        if self.rank != 0:
            return
        from jobs.reporter import Reporter

        r = self.cfg.reporter
        self.reporter = Reporter(
            str(self.run_dir),
            r.ingest_url,
            _read_token(self.run_dir),
            enabled=True,
            batch_size=r.batch_size,
            flush_interval_s=r.flush_interval_s,
            system_metrics_s=r.system_metrics_s,
            wall_time=r.wall_time,
        )

    def event(self, kind: str, step: int, **fields) -> None:
        if self.reporter is not None:
            self.reporter.event(kind, step, **fields)

    def close_reporter(self) -> None:
        if self.reporter is not None:
            self.reporter.close(timeout=10.0)
            self.reporter = None

    # -- training --------------------------------------------------------------------------------------------
    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def _restore(self) -> str | None:
        if not self.resume:
            return None
        ckpt_dir = self.run_dir / "checkpoints"
        if Path(self.resume).is_absolute():
            # A checkpoint folder of another run (the control plane's resume and fork buttons).
            ckpt_dir, tag = Path(self.resume).parent, Path(self.resume).name
        else:
            tag = checkpoint.resolve_tag(ckpt_dir, self.resume)
        # A relaunch that turned on optimizer offload may have moved a stage-0 run to ZeRO-1: the weights carry
        # over, the optimizer's moments cannot (DeepSpeed keeps the two layouts apart).
        saved_zero = checkpoint.has_zero_optimizer_state(ckpt_dir, tag)
        self.optimizer_reset = saved_zero != (self.cfg.parallel.zero_stage >= 1)
        shared, mine = checkpoint.load(self.engine, ckpt_dir, tag, module_only=self.optimizer_reset,
                                       layout=self.layout)  # fmt: skip
        self.step = int(shared["step"])
        self.data_step = int(shared.get("data_step", self.step))
        self.batcher.load_state_dict(mine["data"])
        checkpoint.set_rng_state(mine["rng"])
        return tag

    def _save(self, step: int) -> None:
        rank_state = {"data": self.batcher.state_dict(), "rng": checkpoint.rng_state()}
        # What the checkpoints page shows beside each checkpoint: the headline metrics of the step it was saved at.
        metrics = {k: v for k, v in self.last_values.items() if k in CHECKPOINT_METRICS and math.isfinite(v)}
        if self.last_loss is not None:
            metrics.setdefault("loss", self.last_loss)
        entry = checkpoint.save(
            self.engine,
            self.run_dir / "checkpoints",
            step,
            rank_state,
            {"tokens": self.batcher.consumed_tokens(), "data_step": self.data_step},
            metrics,
            self.cfg.training.keep_checkpoints,
            self.cfg.training.keep_every,
            self.tp_expert_copy,
            self.layout,
        )
        if entry is not None:
            self.event("checkpoint_saved", step, tag=entry["tag"], path=entry["path"], bytes=entry["bytes"],
                       seconds=entry["seconds"])  # fmt: skip

    def run(self) -> dict:
        from jobs.data import curriculum_seq_len

        cfg = self.cfg
        total = cfg.training.total_steps
        resumed_from = self._restore()
        tokens_per_step = cfg.tokens_per_step(self.world)
        if self.rank == 0 and cfg.training.token_budget:
            want = expected_total_steps(cfg.training.token_budget, tokens_per_step)
            if want != total:
                print(f"warning: training.total_steps {total} != ceil(token_budget / tokens_per_step) = {want}",
                      file=sys.stderr)  # fmt: skip
        self.event(
            "started",
            self.step,
            world_size=self.world,
            dp=self.dp,
            tp=cfg.parallel.tp,
            pp=cfg.parallel.pp,
            ep=cfg.parallel.ep,
            zero_stage=cfg.parallel.zero_stage,
            precision=cfg.precision,
            device=str(self.device),
            params=self.total_params,
            active_params=self.active_params,
            tokens_per_step=tokens_per_step,
            total_steps=total,
            resumed_from=resumed_from,
            optimizer_reset=bool(resumed_from) and self.optimizer_reset,
            data_step=self.data_step,
            skip_data=[list(w) for w in cfg.relaunch.skip_data],
            lr_cut=(
                {
                    "factor": cfg.relaunch.lr_cut_factor,
                    "from_step": cfg.relaunch.lr_cut_from_step,
                    "steps": cfg.relaunch.lr_cut_steps,
                }
                if cfg.relaunch.lr_cut_steps
                else None
            ),  # fmt: skip
            peak_tflops=self.peak_tflops,
            peak_source=self.peak_source,
        )
        started = time.time()
        while self.step < total:
            step = self.step + 1
            seq_len = curriculum_seq_len(cfg.raw, step - 1)
            self._skip_data(step)
            self.faults.maybe_hang(step)
            values, skipped = self._train_step(step, seq_len)
            self.last_values = values
            self.step = step
            if self.reporter is not None:
                self.reporter.heartbeat(step)
                if step % cfg.training.log_interval == 0 or step == total:
                    self.reporter.log(step, values)
                    self._print_progress(step, values, skipped)
            interval = cfg.training.checkpoint_interval
            if (interval and step % interval == 0) or step == total:
                self._save(step)
        elapsed = time.time() - started
        self.event("finished", self.step, seconds=round(elapsed, 3), loss=self.last_loss)
        return {"status": "succeeded", "step": self.step, "loss": self.last_loss}

    def _skip_data(self, step: int) -> None:
        """Pass over the data steps a relaunch skips before `step`, drawing them as the run would have (so what
        follows is the same data as without the window) but never training on them."""
        from jobs.data import curriculum_seq_len

        want = self.cfg.relaunch.data_step(step)
        first = self.data_step + 1
        if want == first:
            return
        gas, micro = self.cfg.batch.grad_accum, self.cfg.batch.micro_batch
        for d in range(first, want):
            seq_len = curriculum_seq_len(self.cfg.raw, d - 1)
            for _ in range(gas):
                self.batcher.skip_batch(d - 1, micro * self.cfg.batch.seq_len // seq_len, seq_len)
        self.data_step = want - 1
        self.event("data_skipped", step, first=first, end=want, batches=want - first)
        if self.rank == 0:
            print(f"step {step}: skipped data steps {first}-{want - 1} ({want - first} batches)", flush=True)

    def _print_progress(self, step: int, values: dict, skipped: bool) -> None:
        shown = " ".join(f"{k}={values[k]:.4g}" for k in ("loss", "lr", "grad_norm", "tokens_per_s") if k in values)
        print(f"step {step}/{self.cfg.training.total_steps} {shown}{' (skipped: non-finite loss)' if skipped else ''}",
              flush=True)  # fmt: skip

    def _train_step(self, step: int, seq_len: int) -> tuple[dict, bool]:
        if self.pipe is not None:
            return self._train_step_pipe(step, seq_len)
        cfg = self.cfg
        engine = self.engine
        gas = cfg.batch.grad_accum
        n_seqs = cfg.batch.micro_batch * cfg.batch.seq_len // seq_len
        n_src = len(self.sources)
        n_exp = cfg.model.num_routed_experts if cfg.model.is_moe else 0
        aux_coef = cfg.model.aux_loss_coef if cfg.model.is_moe else 0.0
        lr = lr_at(cfg, step) * cfg.relaunch.lr_scale(step)
        self._set_lr(lr)
        self.data_step = data_step = cfg.relaunch.data_step(step)
        dev = self.device
        ce_sum = torch.zeros((), device=dev)
        aux_sum = torch.zeros((), device=dev)
        bad = torch.zeros((), device=dev)
        src_loss = torch.zeros(n_src, device=dev)
        src_count = torch.zeros(n_src, device=dev)
        expert_counts = torch.zeros(max(n_exp, 1), device=dev)
        t0 = time.perf_counter()
        for micro in range(gas):
            self.where = {"step": step, "micro_step": micro, "seq_len": seq_len, "n_seqs": n_seqs}
            tokens, source_ids = self.batcher.next_batch(data_step - 1, n_seqs, seq_len)
            tokens = tokens.to(dev, non_blocking=True)
            source_ids = source_ids.to(dev, non_blocking=True)
            self.faults.maybe_oom(step, micro, dev, micro_batch=cfg.batch.micro_batch,
                                  checkpointing=cfg.parallel.activation_checkpointing)  # fmt: skip
            logits, aux, counts = engine(tokens[:, :-1], with_aux=True)
            seq_loss = self.model.token_losses(logits, tokens[:, 1:]).mean(dim=1)
            ce = seq_loss.mean()
            loss = self.faults.poison(ce + aux_coef * aux, data_step, micro)
            finite = torch.isfinite(loss)
            # A non-finite loss on any rank must leave every gradient NaN so that the optimizer step is skipped
            # everywhere; multiplying a finite loss by exactly 1.0 changes nothing.
            engine.backward(loss * torch.where(finite, 1.0, float("nan")))
            with torch.no_grad():
                ce_sum += loss.detach() - aux_coef * aux.detach()
                aux_sum += aux.detach()
                bad += (~finite).float()
                src_loss.index_add_(0, source_ids, seq_loss.detach().float())
                src_count.index_add_(0, source_ids, torch.ones_like(seq_loss, dtype=torch.float32))
                if counts is not None:
                    expert_counts += counts.sum(dim=0)
            if micro < gas - 1:
                engine.step()
        consumed = self.batcher.consumed_tokens()
        stats = torch.cat(
            [
                torch.stack([ce_sum, aux_sum, bad]).double(),
                src_loss.double(),
                src_count.double(),
                torch.tensor([consumed[s] for s in self.sources], dtype=torch.float64, device=dev),
                expert_counts.double(),
            ]
        )
        if not self.reports:
            # Copies of a replica's figures: counted once, except the non-finite flag every rank must see.
            stats = stats * torch.nn.functional.one_hot(torch.tensor(2), stats.numel()).to(stats)
        self.dist.all_reduce(stats)
        figures: list[float] = stats.tolist()
        n_bad = figures[2]
        if n_bad:
            self.event("nan", step, micro_batch=cfg.batch.micro_batch, policy=cfg.training.nan_policy,
                       action="abort" if cfg.training.nan_policy == "abort" else "skip_step",
                       ranks_micro_batches_bad=int(n_bad), loss=str(figures[0] / (gas * self.dp)))  # fmt: skip
            if cfg.training.nan_policy == "abort":
                raise NonFiniteLoss(step)
            self._step_without_update()
        else:
            engine.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t0

        values: dict[str, float] = {"lr": lr, "seq_len": float(seq_len)}
        if not n_bad:
            loss_value = figures[0] / (gas * self.dp)
            self.last_loss = loss_value
            values["loss"] = loss_value
            if aux_coef:
                values["aux_loss"] = figures[1] / (gas * self.dp)
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
        base = 3
        for i, name in enumerate(self.sources):
            count = figures[base + n_src + i]
            if count and not n_bad:
                values[f"loss/{name}"] = figures[base + i] / count
            values[f"tokens/{name}"] = figures[base + 2 * n_src + i]
        values["tokens"] = sum(figures[base + 2 * n_src : base + 3 * n_src])
        if n_exp:
            routed = figures[base + 3 * n_src : base + 3 * n_src + n_exp]
            slots = sum(routed) or 1.0
            for i, c in enumerate(routed):
                values[f"expert_load/{i}"] = c / slots
        step_tokens = n_seqs * seq_len * gas * self.dp
        values["tokens_per_s"] = step_tokens / elapsed
        values["samples_per_s"] = n_seqs * gas * self.dp / elapsed
        achieved = flops_per_token(cfg.model, seq_len, self.active_params) * values["tokens_per_s"]
        values["mfu"] = achieved / (self.peak_tflops * 1e12 * self.world)
        values["mem_gb"] = _mem_gb(dev)
        values["step_time_s"] = elapsed
        return values, bool(n_bad)

    def _train_step_pipe(self, step: int, seq_len: int) -> tuple[dict, bool]:
        """One optimizer step through DeepSpeed's 1F1B pipeline schedule (grad_accum micro-batches).

        The pipeline engine returns the mean loss of the step (balance loss included for MoE) and keeps per-token
        losses on the last stage, so per-source losses and expert loads are not reported under pipeline parallelism.
        A non-finite loss aborts (nan_policy 'skip' is refused for pp > 1 by the run config).
        """
        cfg = self.cfg
        gas = cfg.batch.grad_accum
        n_seqs = cfg.batch.micro_batch * cfg.batch.seq_len // seq_len
        lr = lr_at(cfg, step) * cfg.relaunch.lr_scale(step)
        self._set_lr(lr)
        self.data_step = data_step = cfg.relaunch.data_step(step)
        self.where = {"step": step, "seq_len": seq_len, "n_seqs": n_seqs}
        batches = []
        for _ in range(gas):
            tokens, _sources = self.batcher.next_batch(data_step - 1, n_seqs, seq_len)
            tokens = tokens.to(self.device)
            batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
        t0 = time.perf_counter()
        loss = float(self.engine.train_batch(iter(batches)))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        if not math.isfinite(loss):
            self.event("nan", step, micro_batch=cfg.batch.micro_batch, policy="abort", action="abort",
                       loss=str(loss))  # fmt: skip
            raise NonFiniteLoss(step)
        consumed = self.batcher.consumed_tokens()
        assert self.pipe is not None  # the pipeline's step, taken only with one
        ce_values = self.pipe.ce_values
        ce = float(sum(v.item() for v in ce_values)) if self.reports else 0.0
        ce_values.clear()
        stats = [ce] + [float(consumed[s]) if self.reports else 0.0 for s in self.sources]
        reduced = torch.tensor(stats, dtype=torch.float64)
        self.dist.all_reduce(reduced)
        ce_loss, *source_tokens = reduced.tolist()
        ce_loss /= gas * self.dp
        values: dict[str, float] = {"lr": lr, "seq_len": float(seq_len), "loss": ce_loss}
        if cfg.model.is_moe and cfg.model.aux_loss_coef:
            values["aux_loss"] = (loss - ce_loss) / cfg.model.aux_loss_coef
        self.last_loss = ce_loss
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        for name, c in zip(self.sources, source_tokens, strict=True):
            values[f"tokens/{name}"] = c
        values["tokens"] = float(sum(source_tokens))
        step_tokens = n_seqs * seq_len * gas * self.dp
        values["tokens_per_s"] = step_tokens / elapsed
        values["samples_per_s"] = n_seqs * gas * self.dp / elapsed
        achieved = flops_per_token(cfg.model, seq_len, self.active_params) * values["tokens_per_s"]
        values["mfu"] = achieved / (self.peak_tflops * 1e12 * self.world)
        values["mem_gb"] = _mem_gb(self.device)
        values["step_time_s"] = elapsed
        return values, False

    def _step_without_update(self) -> None:
        """Finish a step whose gradients are NaN without changing any weight (nan_policy 'skip')."""
        engine = self.engine
        optimizer = engine.optimizer
        if hasattr(optimizer, "overflow"):
            # ZeRO and DeepSpeed's bf16 optimizers find the NaN gradient norm themselves and skip the update.
            engine.step()
        else:
            # Without ZeRO or a bf16 wrapper DeepSpeed steps torch's optimizer as is: with no gradients that is a
            # no-op, the overflow flag makes the engine count the step as skipped, and clipping is switched off
            # for the call because DeepSpeed's clip_grad_norm_ fails on an empty gradient list.
            for p in self.model.parameters():
                p.grad = None
            clip = engine._config.gradient_clipping
            optimizer.overflow = True
            engine._config.gradient_clipping = 0.0
            try:
                engine.step()
            finally:
                engine._config.gradient_clipping = clip
                # Removed, not reset: a later skipped step must take this branch again.
                del optimizer.overflow
        if engine.was_step_applied():
            raise RuntimeError("DeepSpeed applied an optimizer step with non-finite gradients")


def _skip_shm_comm_op() -> None:
    """Keep DeepSpeed from compiling its shared-memory CPU all-reduce (about 4 minutes on first use).

    That op serves only DeepSpeed's inference_all_reduce; training collectives go through gloo either way.
    DeepSpeed documents __compatible_ops__ as one cached dict whose edits persist.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _status_line(status: dict) -> None:
    print("JOB_STATUS " + json.dumps(status), flush=True)


def _finish(trainer: Trainer | None, rank: int, status: dict, code: int, run_dir: Path | None = None) -> int:
    if run_dir is not None:
        rank_ended(run_dir, rank, status=status, exit_code=code)
    if trainer is not None:
        trainer.close_reporter()
    sys.stderr.flush()
    if rank == 0:
        _status_line(status)
    return code


def _on_sigterm(run_dir: Path, rank: int):
    """DeepSpeed's launcher stops the other ranks with SIGTERM when one fails: such a rank says so in its record,
    so that the watcher never takes it for the one that failed."""

    def handler(signum, frame):
        rank_ended(run_dir, rank, status={"status": "terminated", "error": "stopped by SIGTERM"}, exit_code=-15)
        os._exit(128 + signum)

    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description="reference trainer")
    parser.add_argument("--run-dir", help="run directory holding run.json")
    parser.add_argument("--resume", help="'latest' or a checkpoint tag such as step_000100")
    parser.add_argument("--capabilities", action="store_true", help="print jobs/train/capabilities.json and exit")
    # The deepspeed launcher appends --local_rank; the value is also in the LOCAL_RANK variable.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.capabilities:
        print(json.dumps(load_capabilities(), indent=2))
        return EXIT_OK
    if not args.run_dir:
        parser.error("--run-dir is required")

    os.environ.update(launch_env(dict(os.environ)))
    rank = int(os.environ["RANK"])
    run_dir = Path(args.run_dir)
    rank_started(run_dir, rank)
    signal.signal(signal.SIGTERM, _on_sigterm(run_dir, rank))
    try:
        cfg = load_run_config(run_dir)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return _finish(None, rank, {"status": "error", "step": 0, "error": str(exc)}, EXIT_ERROR, run_dir)

    trainer = None
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        backend = "nccl" if get_accelerator().device_name() == "cuda" else "gloo"
        if backend == "gloo":
            _skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend=backend)
        trainer = Trainer(run_dir, cfg, args.resume)
        trainer.open_reporter()
        status = trainer.run()
        trainer.dist.barrier()
        # The process group is not torn down: python -m jobs.train leaves with os._exit once this returns, and a
        # teardown racing the other ranks' exits has aborted finished ranks (see jobs/train/__main__.py).
        return _finish(trainer, rank, status, EXIT_OK, run_dir)
    except NonFiniteLoss as exc:
        status = {"status": "nan", "step": exc.step, "policy": "abort"}
        code = EXIT_NAN
    except Exception as exc:  # every failure must still end in a status line and an exit code
        traceback.print_exc()
        where = dict(trainer.where) if trainer is not None else {}
        if is_oom(exc):
            step = where.pop("step", 0)
            if trainer is not None:
                trainer.event("oom", step, micro_batch=cfg.batch.micro_batch, error=str(exc)[:500], **where)
            status = {"status": "oom", "step": step, "micro_batch": cfg.batch.micro_batch, "error": str(exc)[:300]}
            code = EXIT_OOM
        else:
            step = trainer.step if trainer is not None else 0
            status = {"status": "error", "step": step, "error": f"{type(exc).__name__}: {exc}"[:500]}
            code = EXIT_ERROR
    # After a failure other ranks may be blocked in a collective: leave without tearing the process group down.
    _finish(trainer, rank, status, code, run_dir)
    sys.stdout.flush()
    os._exit(code)
