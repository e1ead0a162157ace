"""Out-of-memory and non-finite loss: recognised, reported as events, the contract's exit codes."""

from __future__ import annotations

import pytest
import torch

from jobs.common.failures import EXIT_NAN, EXIT_OOM, is_oom
from jobs.export.hf import checkpoint_state_dict
from jobs.train.faults import FaultInjector
from tests.jobs.conftest import describe, events, job_status, metrics_by_step, read_records, run_trainer, trainer_env


def test_is_oom_recognises_the_allocators_errors():
    with pytest.raises(RuntimeError) as real_cpu_oom:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert is_oom(real_cpu_oom.value)
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


def test_fault_injector_targets_one_rank(monkeypatch):
    monkeypatch.setenv("CP_INJECT_NAN_AT_STEP", "2")
    monkeypatch.setenv("CP_INJECT_RANK", "1")
    loss = torch.tensor(1.5)
    assert FaultInjector(rank=0).poison(loss, 2, 0) == loss
    assert torch.isnan(FaultInjector(rank=1).poison(loss, 2, 0))
    assert FaultInjector(rank=1).poison(loss, 2, 1) == loss
    assert FaultInjector(rank=1).poison(loss, 3, 0) == loss


def test_injected_oom_reports_event_and_exits_3(make_run):
    run_dir = make_run(training={"total_steps": 4})
    proc = run_trainer(run_dir, launcher="none", env=trainer_env(CP_INJECT_OOM_AT_STEP="3"))
    assert proc.returncode == EXIT_OOM, describe(proc)
    status = job_status(proc)
    assert status["status"] == "oom" and status["step"] == 3 and status["micro_batch"] == 4
    assert proc.stdout.rstrip().splitlines()[-1].startswith("JOB_STATUS ")
    records = read_records(run_dir)
    (oom,) = events(records, "oom")
    assert oom["step"] == 3 and oom["micro_batch"] == 4 and oom["micro_step"] == 0
    assert "can't allocate memory" in oom["error"]
    assert sorted(metrics_by_step(records)) == [1, 2]
    assert not events(records, "finished")


def test_nan_with_abort_policy_reports_and_exits_4(make_run):
    run_dir = make_run(training={"total_steps": 4, "nan_policy": "abort"})
    proc = run_trainer(run_dir, launcher="none", env=trainer_env(CP_INJECT_NAN_AT_STEP="2"))
    assert proc.returncode == EXIT_NAN, describe(proc)
    assert job_status(proc) == {"status": "nan", "step": 2, "policy": "abort"}
    records = read_records(run_dir)
    (nan,) = events(records, "nan")
    assert nan["step"] == 2 and nan["action"] == "abort" and nan["loss"] == "nan"
    assert sorted(metrics_by_step(records)) == [1]


def _assert_step_2_skipped(run_dir):
    records = read_records(run_dir)
    (nan,) = events(records, "nan")
    assert nan["step"] == 2 and nan["action"] == "skip_step"
    metrics = metrics_by_step(records)
    assert sorted(metrics) == [1, 2, 3] and "loss" not in metrics[2] and "loss" in metrics[3]
    before = checkpoint_state_dict(run_dir / "checkpoints" / "step_000001")
    after = checkpoint_state_dict(run_dir / "checkpoints" / "step_000002")
    final = checkpoint_state_dict(run_dir / "checkpoints" / "step_000003")
    name = "layers.0.self_attn.o_proj.weight"
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} changed in the skipped step"
    assert not torch.equal(after[name], final[name]), "the step after the skipped one must update"


SKIP_RUN = {"total_steps": 3, "checkpoint_interval": 1, "nan_policy": "skip"}


@pytest.mark.parametrize(
    ("zero_stage", "precision"), [(0, "fp32"), (1, "bf16"), (3, "fp32")], ids=["zero0-fp32", "zero1-bf16", "zero3"]
)
def test_nan_with_skip_policy_leaves_weights_unchanged(make_run, zero_stage, precision):
    run_dir = make_run(training=SKIP_RUN, parallel={"zero_stage": zero_stage}, precision=precision)
    proc = run_trainer(run_dir, launcher="none", env=trainer_env(CP_INJECT_NAN_AT_STEP="2"))
    assert proc.returncode == 0, describe(proc)
    assert job_status(proc)["status"] == "succeeded"
    _assert_step_2_skipped(run_dir)


def test_nan_on_one_rank_skips_the_step_on_every_rank(make_run):
    """ZeRO-2 over 2 ranks under torchrun; only rank 1 sees the NaN, yet no rank updates."""
    run_dir = make_run(training=SKIP_RUN, batch={"micro_batch": 2})
    env = trainer_env(CP_INJECT_NAN_AT_STEP="2", CP_INJECT_RANK="1")
    proc = run_trainer(run_dir, nproc=2, launcher="torchrun", env=env)
    assert proc.returncode == 0, describe(proc)
    _assert_step_2_skipped(run_dir)
