"""Every parallel layout computes the single-rank run: 20 fp32 steps of the tiny dense and MoE models, resumed halfway.

Each layout is launched under torchrun on this machine's CPU cores (gloo). The layout keeps the global batch: the
micro-batch is divided by the data-parallel size, so every layout trains on exactly the same tokens.
"""

from __future__ import annotations

import os

import pytest
import torch

from jobs.common.run_config import parse_run_config
from jobs.export.hf import checkpoint_state_dict
from jobs.train.model import build_model
from tests.jobs.conftest import describe, metrics_by_step, read_records, run_trainer, tiny_run, write_run
from tests.jobs.train.test_trainer import _copy_until

STEPS = 20
HALF = 10
TOL = 1e-4

# name -> (parallel section, ranks)
LAYOUTS = {
    "tp2": ({"tp": 2}, 2),
    "tp2_dp2": ({"tp": 2}, 4),
    "ep2": ({"ep": 2}, 2),
    "tp2_ep2": ({"tp": 2, "ep": 2}, 4),
    "pp2": ({"pp": 2, "zero_stage": 1}, 2),
    "tp2_pp2": ({"tp": 2, "pp": 2, "zero_stage": 1}, 4),
    "sp2": ({"tp": 2, "sp": True}, 2),
    "pp2_dp2": ({"pp": 2, "zero_stage": 1}, 4),
    "tp2_pp2_dp2": ({"tp": 2, "pp": 2, "zero_stage": 1}, 8),
}
CASES = [
    ("dense", "tp2"),
    ("moe", "tp2"),
    ("moe", "ep2"),
    ("moe", "tp2_ep2"),
    ("dense", "tp2_dp2"),
    ("dense", "pp2"),
    ("moe", "pp2"),
    ("dense", "tp2_pp2"),
    ("dense", "sp2"),
    ("moe", "sp2"),
    ("moe", "tp2_pp2"),
    ("dense", "pp2_dp2"),
    ("dense", "tp2_pp2_dp2"),
    ("moe", "tp2_pp2_dp2"),
]
# Each case is two torchrun launches (20 steps, then a resume from step 10): one to four minutes on a 2-core machine.
# By default the suite runs four cases that together cover every axis (TP, SP, PP, EP and DP, MoE inside pipeline
# stages, the 8-rank combination), so CI stays well inside its hour; CP_LAYOUTS=all runs every case,
# CP_LAYOUTS="moe-pp2 dense-sp2" a choice.
CI_CASES = ("moe-tp2_ep2", "moe-pp2", "dense-sp2", "dense-tp2_pp2_dp2")


def _chosen() -> list[tuple[str, str]]:
    raw = os.environ.get("CP_LAYOUTS", "").split()
    names = {f"{a}-{lay}" for a, lay in CASES} if raw == ["all"] else set(raw or CI_CASES)
    return [(a, lay) for a, lay in CASES if f"{a}-{lay}" in names]


def _raw(arch: str, parallel: dict, ranks: int) -> dict:
    dp = ranks // (parallel.get("tp", 1) * parallel.get("pp", 1))
    return tiny_run(
        model={"arch": arch},
        parallel=parallel,
        batch={"micro_batch": 4 // dp},
        training={"total_steps": STEPS, "checkpoint_interval": HALF, "token_budget": None},
    )


def _curve(run_dir) -> dict[int, tuple[float, float]]:
    return {s: (v["loss"], v["grad_norm"]) for s, v in metrics_by_step(read_records(run_dir)).items() if "loss" in v}


@pytest.fixture(scope="module")
def single_rank(tmp_path_factory):
    """arch -> the single-rank run directory (built on first use)."""
    runs = {}

    def get(arch: str):
        if arch not in runs:
            run_dir = write_run(tmp_path_factory.mktemp(f"single_{arch}") / "run", _raw(arch, {}, 1))
            proc = run_trainer(run_dir, launcher="none", timeout=600)
            assert proc.returncode == 0, describe(proc)
            runs[arch] = run_dir
        return runs[arch]

    return get


def _assert_same_curve(ours: dict, ref: dict, steps) -> None:
    assert sorted(ours) == list(steps)
    for step in steps:
        assert ours[step][0] == pytest.approx(ref[step][0], abs=TOL), f"loss at step {step}"
        assert ours[step][1] == pytest.approx(ref[step][1], abs=TOL), f"grad_norm at step {step}"


@pytest.mark.parametrize(("arch", "layout"), _chosen(), ids=[f"{a}-{lay}" for a, lay in _chosen()])
def test_layout_loss_curve_equals_single_rank_and_resume_reproduces_it(tmp_path, single_rank, arch, layout):
    parallel, ranks = LAYOUTS[layout]
    ref_dir = single_rank(arch)
    run_dir = write_run(tmp_path / "run", _raw(arch, parallel, ranks))
    proc = run_trainer(run_dir, nproc=ranks, timeout=900)
    assert proc.returncode == 0, describe(proc)
    ref = _curve(ref_dir)
    _assert_same_curve(_curve(run_dir), ref, range(1, STEPS + 1))

    resumed = _copy_until(run_dir, tmp_path / "resumed", HALF)
    proc = run_trainer(resumed, "--resume", f"step_{HALF:06d}", nproc=ranks, timeout=900)
    assert proc.returncode == 0, describe(proc)
    _assert_same_curve(_curve(resumed), ref, range(HALF + 1, STEPS + 1))

    # The sharded checkpoint merges into the single-rank model's weights, which give the same logits.
    tag = f"step_{STEPS:06d}"
    merged = checkpoint_state_dict(run_dir / "checkpoints" / tag)
    reference = checkpoint_state_dict(ref_dir / "checkpoints" / tag)
    assert merged.keys() == reference.keys()
    cfg = parse_run_config(_raw(arch, {}, 1)).model
    ours_model, ref_model = build_model(cfg, seed=0), build_model(cfg, seed=0)
    ours_model.load_state_dict(merged)
    ref_model.load_state_dict(reference)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours_model(ids), ref_model(ids), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_resumes_only_under_the_layout_that_wrote_it(tmp_path):
    from jobs.train.checkpoint import LAYOUT, check_layout

    tag = tmp_path / "step_000010"
    tag.mkdir()
    (tag / LAYOUT).write_text('{"tp": 2, "pp": 1, "ep": 1, "sp": false, "dp": 1}')
    check_layout(tag, {"tp": 2, "pp": 1, "ep": 1, "sp": True, "dp": 1})  # sequence parallelism shards nothing
    with pytest.raises(ValueError, match="layout tp=2 pp=1 ep=1 dp=1; this job is tp=1 pp=1 ep=1 dp=2"):
        check_layout(tag, {"tp": 1, "pp": 1, "ep": 1, "sp": False, "dp": 2})
