"""A relaunch's changes, as the trainer carries them out: resume with half the micro-batch, skip a data window,
cut the learning rate, turn on optimizer offload from ZeRO stage 0."""

from __future__ import annotations

import json

import torch

from jobs.common import relaunch
from jobs.common.failures import EXIT_NAN, EXIT_OOM
from jobs.common.run_config import parse_run_config
from jobs.data import MixedBatcher
from jobs.train.ds_config import lr_at
from tests.jobs.conftest import (
    describe,
    events,
    job_status,
    metrics_by_step,
    read_records,
    run_trainer,
    tiny_run,
    trainer_env,
    write_run,
)


def test_skip_batch_passes_over_exactly_what_next_batch_would_draw():
    raw = tiny_run()
    straight = MixedBatcher(raw, rank=0, world=1, seed=3)
    batches = [straight.next_batch(step, 4, 16)[0] for step in range(6)]
    skipping = MixedBatcher(raw, rank=0, world=1, seed=3)
    skipping.next_batch(0, 4, 16)
    before = skipping.consumed_tokens()
    for step in (1, 2, 3):
        skipping.skip_batch(step, 4, 16)
    assert skipping.consumed_tokens() == before, "skipped data is not counted as trained on"
    assert torch.equal(skipping.next_batch(4, 4, 16)[0], batches[4])
    assert torch.equal(skipping.next_batch(5, 4, 16)[0], batches[5])


def _write(run_dir, raw):
    (run_dir / "run.json").write_text(json.dumps(raw))


def test_an_oom_run_resumes_with_half_the_micro_batch_and_finishes(tmp_path):
    raw = tiny_run(training={"total_steps": 6, "checkpoint_interval": 2, "token_budget": 1536})
    run_dir = write_run(tmp_path / "run", raw)
    env = trainer_env(CP_INJECT_OOM_AT_STEP="4", CP_INJECT_OOM_MIN_MICRO_BATCH="4")
    proc = run_trainer(run_dir, launcher="none", env=env)
    assert proc.returncode == EXIT_OOM, describe(proc)
    assert job_status(proc)["step"] == 4
    change = relaunch.halve_micro_batch(raw)
    _write(run_dir, change.raw)
    proc = run_trainer(run_dir, "--resume", "latest", launcher="none", env=env)
    assert proc.returncode == 0, describe(proc)
    records = read_records(run_dir)
    started = events(records, "started")[-1]
    assert started["resumed_from"] == "step_000002" and started["tokens_per_step"] == 256
    assert sorted(metrics_by_step(records)) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "ds_config.json").read_text())["train_micro_batch_size_per_gpu"] == 2


def test_a_rollback_skips_the_bad_window_and_cuts_the_lr(tmp_path):
    raw = tiny_run(training={"total_steps": 8, "checkpoint_interval": 2, "token_budget": 2048})
    run_dir = write_run(tmp_path / "run", raw)
    env = trainer_env(CP_INJECT_NAN_AT_STEP="5")
    proc = run_trainer(run_dir, launcher="none", env=env)
    assert proc.returncode == EXIT_NAN, describe(proc)
    changed = relaunch.skip_data(raw, first=5, end=7).raw
    changed = relaunch.lr_cut(changed, factor=0.5, from_step=3, steps=3).raw
    _write(run_dir, changed)
    proc = run_trainer(run_dir, "--resume", "step_000002", launcher="none", env=env)
    assert proc.returncode == 0, describe(proc)
    records = read_records(run_dir)
    (skipped,) = events(records, "data_skipped")
    assert (skipped["step"], skipped["first"], skipped["end"], skipped["batches"]) == (5, 5, 7, 2)
    started = events(records, "started")[-1]
    assert started["skip_data"] == [[5, 7]] and started["lr_cut"]["factor"] == 0.5
    after = {r["step"]: r["values"] for r in records if r["kind"] == "metrics" and r["time"] >= started["time"]}
    assert sorted(after) == [3, 4, 5, 6, 7, 8]
    cfg = parse_run_config(changed)
    for step, values in after.items():
        scale = 0.5 if 3 <= step <= 5 else 1.0
        assert values["lr"] == lr_at(cfg, step) * scale
        assert values["loss"] == values["loss"], f"step {step} met the bad batch"
    ckpt = torch.load(run_dir / "checkpoints" / "step_000008" / "mp_rank_00_model_states.pt", weights_only=False)
    assert ckpt["trainer"]["data_step"] == 10


def test_offload_from_zero_stage_0_resumes_weights_with_fresh_optimizer_moments(tmp_path):
    raw = tiny_run(parallel={"zero_stage": 0}, training={"total_steps": 4, "checkpoint_interval": 2})
    run_dir = write_run(tmp_path / "run", raw)
    proc = run_trainer(run_dir, launcher="none", env=trainer_env(CP_INJECT_OOM_AT_STEP="3"))
    assert proc.returncode == EXIT_OOM, describe(proc)
    _write(run_dir, relaunch.offload_optimizer(raw).raw)
    proc = run_trainer(run_dir, "--resume", "latest", launcher="none")
    assert proc.returncode == 0, describe(proc)
    started = events(read_records(run_dir), "started")[-1]
    assert started["optimizer_reset"] is True and started["zero_stage"] == 1
    assert job_status(proc)["status"] == "succeeded"
