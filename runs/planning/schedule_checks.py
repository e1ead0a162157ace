"""Checks of a run config's batch (tokens per step against the global batch), steps and token budget, optimizer
schedule and sequence-length curriculum."""

from __future__ import annotations

import math
from typing import Any

from runs.planning.fields import (
    MAX_GRAD_ACCUM,
    MISSING,
    NAN_POLICIES,
    OPTIMIZERS,
    SCHEDULES,
    ConfigReader,
    divisors,
    nearest,
)

# How far the batch search looks: micro-batches up to max(64, twice the current one) but at most MAX_SEARCH_MICRO,
# so the form stays responsive; accumulation up to its own range (MAX_GRAD_ACCUM).
MAX_SEARCH_MICRO = 4096


# --- batch, training, optimizer --------------------------------------------------------------------------------


def nearest_batch_pair(
    *, target_tokens: int, tokens_per_sequence: int, tolerance_pct: float, micro_batch: int, grad_accum: int
) -> tuple[int, int] | None:
    """The (micro_batch, grad_accum) closest to the given pair whose tokens per step are within tolerance.

    `tokens_per_sequence` is dp x seq_len: the tokens one sequence per rank per micro step adds. "Closest" is in
    log scale (doubling either costs 1), ties going to the smaller token error, then the smaller micro-batch.
    """
    best: tuple[float, float, int, int] | None = None
    for micro in range(1, min(max(64, 2 * micro_batch), MAX_SEARCH_MICRO) + 1):
        ideal = target_tokens / (micro * tokens_per_sequence)
        for accum in {math.floor(ideal), math.ceil(ideal)}:
            if not 1 <= accum <= MAX_GRAD_ACCUM:
                continue
            error = abs(micro * accum * tokens_per_sequence - target_tokens) / target_tokens * 100
            if error > tolerance_pct + 1e-9:
                continue
            # Rounded so that equal distances tie exactly and the next criteria decide.
            distance = round(abs(math.log2(micro / micro_batch)) + abs(math.log2(accum / grad_accum)), 9)
            key = (distance, round(error, 9), micro, accum)
            if best is None or key < best:
                best = key
    return None if best is None else (best[2], best[3])


def check_batch(r: ConfigReader, *, model: dict[str, Any], par: dict[str, Any]) -> dict[str, Any]:
    b: dict[str, Any] = {
        n: r.integer(f"batch.{n}") for n in ("global_batch_tokens", "micro_batch", "grad_accum", "seq_len")
    }
    b["tolerance_pct"] = r.number("batch.tolerance_pct")
    seq, max_seq = b["seq_len"], model.get("max_seq_len")
    if seq is not None and max_seq is not None and seq > max_seq:
        r.add(
            "batch.seq_len",
            f"batch.seq_len is {seq:,} but model.max_seq_len is {max_seq:,}; the model has no "
            f"positions past that, so lower seq_len to {max_seq:,} or raise max_seq_len.",
            {"batch.seq_len": max_seq},
        )
    b["tokens_per_step"] = None
    needed = (b["global_batch_tokens"], b["micro_batch"], b["grad_accum"], seq, b["tolerance_pct"], par.get("dp"))
    if any(v is None for v in needed):
        return b
    target, micro, accum, _, tol, dp = needed
    per_sequence = dp * seq
    tokens = micro * accum * per_sequence
    b["tokens_per_step"] = tokens
    off_pct = 100.0 * (tokens - target) / target
    if abs(off_pct) <= tol + 1e-9:
        return b
    formula = (
        f"batch.micro_batch {micro} x batch.grad_accum {accum} x data-parallel {dp} x seq_len {seq:,} = "
        f"{tokens:,} tokens per step, {off_pct:+.1f} % off batch.global_batch_tokens {target:,} "
        f"(tolerance {tol:g} %)"
    )
    pair = nearest_batch_pair(
        target_tokens=target, tokens_per_sequence=per_sequence, tolerance_pct=tol, micro_batch=micro, grad_accum=accum
    )
    if pair is not None:
        m, a = pair
        r.add(
            "batch.micro_batch",
            f"{formula}; the nearest pair that hits it is batch.micro_batch {m} with batch.grad_accum {a} "
            f"({m * a * per_sequence:,} tokens); set those.",
            {"batch.micro_batch": m, "batch.grad_accum": a},
        )
    else:
        smallest = per_sequence
        r.add(
            "batch.micro_batch",
            f"{formula}; no micro-batch/accumulation pair reaches it, since one "
            f"sequence per rank already makes {smallest:,} tokens per micro step; set "
            f"batch.global_batch_tokens to {tokens:,} to keep this micro-batch and "
            "accumulation (or shorten seq_len / use fewer data-parallel ranks).",
            {"batch.global_batch_tokens": tokens},
        )
    return b


def check_training(r: ConfigReader, *, batch: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {
        n: r.integer(f"training.{n}")
        for n in (
            "total_steps",
            "token_budget",
            "checkpoint_interval",
            "keep_checkpoints",
            "keep_every",
            "seed",
            "log_interval",
        )
    }
    r.choice("training.nan_policy", NAN_POLICIES)
    per_step, budget, steps = batch.get("tokens_per_step"), t["token_budget"], t["total_steps"]
    if per_step and budget is not None and steps is not None:
        expected = math.ceil(budget / per_step)
        if steps != expected:
            r.add(
                "training.total_steps",
                f"training.total_steps is {steps:,} but a token budget of {budget:,} at "
                f"{per_step:,} tokens per step takes ceil(budget / tokens per step) = "
                f"{expected:,} steps; set total_steps to {expected:,}.",
                {"training.total_steps": expected},
            )
    return t


def check_optimizer(r: ConfigReader, *, training: dict[str, Any]) -> None:
    r.choice("optimizer.name", OPTIMIZERS)
    r.choice("optimizer.schedule", SCHEDULES)
    r.flag("optimizer.torch_adam")
    lr, min_lr = r.number("optimizer.lr"), r.number("optimizer.min_lr")
    for name in ("eps", "weight_decay", "grad_clip"):
        r.number(f"optimizer.{name}")
    if lr is not None and min_lr is not None and min_lr > lr:
        r.add(
            "optimizer.min_lr",
            f"optimizer.min_lr {min_lr:g} is above the peak lr {lr:g}; the schedule decays "
            f"towards min_lr, so set it at or below {lr:g} (commonly lr / 10).",
            {"optimizer.min_lr": lr / 10},
        )
    betas = r.raw("optimizer.betas")
    if betas is not MISSING:
        if not isinstance(betas, list) or len(betas) != 2:
            r.add(
                "optimizer.betas",
                f"optimizer.betas must be a pair [beta1, beta2], not {betas!r}; enter two values such as [0.9, 0.95].",
                {"optimizer.betas": [0.9, 0.95]},
            )
        else:
            for i in range(2):
                r.number(f"optimizer.betas.{i}")
    warmup, steps = r.integer("optimizer.warmup_steps"), training.get("total_steps")
    if warmup is not None and steps is not None and warmup >= steps:
        r.add(
            "optimizer.warmup_steps",
            f"optimizer.warmup_steps is {warmup:,} but the run has {steps:,} steps, so "
            "the learning rate would never leave warm-up; set it below total_steps "
            "(a few percent of them is usual).",
            {"optimizer.warmup_steps": max(0, steps // 20)},
        )


# --- curriculum --------------------------------------------------------------------------------------------------


def check_curriculum(
    r: ConfigReader, *, model: dict[str, Any], batch: dict[str, Any], training: dict[str, Any]
) -> None:
    stages = r.raw("curriculum")
    if stages is MISSING:
        return
    if not isinstance(stages, list) or not stages:
        r.add(
            "curriculum",
            "curriculum must be a non-empty list of {start_step, seq_len} stages; use "
            '[{"start_step": 0, "seq_len": <batch.seq_len>}] for a fixed length.',
        )
        return
    seq, max_seq, steps = batch.get("seq_len"), model.get("max_seq_len"), training.get("total_steps")
    prev_start: int | None = None
    prev_len: int | None = None
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            r.add(
                f"curriculum.{i}",
                f"curriculum.{i} must be an object {{start_step, seq_len}}, not {stage!r}; rewrite that stage.",
            )
            prev_start = prev_len = None
            continue
        start, length = r.integer(f"curriculum.{i}.start_step"), r.integer(f"curriculum.{i}.seq_len")
        if i == 0 and start is not None and start != 0:
            r.add(
                "curriculum.0.start_step",
                f"curriculum.0.start_step is {start:,}; the curriculum must start at step 0 so that every step has "
                "a sequence length; set it to 0.",
                {"curriculum.0.start_step": 0},
            )
        if start is not None and prev_start is not None and start <= prev_start:
            r.add(
                f"curriculum.{i}.start_step",
                f"curriculum.{i}.start_step is {start:,}, not after the previous stage's {prev_start:,}; order the "
                "stages by start_step, each later than the one before.",
            )
        if start is not None and steps is not None and i > 0 and start >= steps:
            r.add(
                f"curriculum.{i}.start_step",
                f"curriculum.{i}.start_step is {start:,}, but the run ends after {steps:,} steps, so the stage "
                "would never run; start it earlier or remove it.",
            )
        if length is not None:
            if prev_len is not None and length < prev_len:
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, shorter than the previous stage's {prev_len:,}; the "
                    f"curriculum only lengthens sequences, so use at least {prev_len:,}.",
                    {f"curriculum.{i}.seq_len": prev_len},
                )
            if seq is not None and length > seq:
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, longer than batch.seq_len {seq:,} (the final, longest "
                    f"length); lower the stage to at most {seq:,} or raise batch.seq_len.",
                    {f"curriculum.{i}.seq_len": seq},
                )
            elif seq is not None and seq % length:
                valid = [d for d in divisors(seq) if prev_len is None or d >= prev_len]
                best = nearest(valid, length)
                fix = (
                    f"use a divisor such as {best:,}"
                    if best is not None
                    else f"no divisor of {seq:,} is at least the previous stage's {prev_len:,}, so lower that stage too"
                )
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, which does not divide batch.seq_len {seq:,}; the "
                    "trainer keeps tokens per step constant by running seq_len / stage length sequences in "
                    f"each micro-batch slot, so {fix}.",
                    {f"curriculum.{i}.seq_len": best} if best is not None else None,
                )
            if max_seq is not None and length > max_seq:
                r.add(
                    f"curriculum.{i}.seq_len",
                    f"curriculum.{i}.seq_len is {length:,}, longer than model.max_seq_len {max_seq:,}; lower it or "
                    "raise max_seq_len.",
                    {f"curriculum.{i}.seq_len": max_seq},
                )
        prev_start, prev_len = start, length
    last = len(stages) - 1
    if prev_len is not None and seq is not None and prev_len != seq:
        r.add(
            f"curriculum.{last}.seq_len",
            f"curriculum.{last}.seq_len (the last stage) is {prev_len:,} but batch.seq_len is {seq:,}; "
            "batch.seq_len is the final (longest) length, so make them equal.",
            {f"curriculum.{last}.seq_len": seq},
        )
