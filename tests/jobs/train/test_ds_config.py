"""DeepSpeed JSON generated from run.json, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import json

import pytest

from jobs.common.run_config import parse_run_config
from jobs.train.ds_config import _main as ds_config_main
from jobs.train.ds_config import build_ds_config, lr_at
from tests.jobs.conftest import tiny_run, write_run


def _ds(world: int = 1, accelerator: str = "cpu", **sections) -> dict:
    return build_ds_config(parse_run_config(tiny_run(**sections)), world, accelerator)


def test_batch_precision_clipping_and_optimizer():
    ds = _ds(world=2, batch={"micro_batch": 2})
    assert ds["train_batch_size"] == 2 * 2 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 1.0
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {
            "lr": 0.003,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.01,
            "torch_adam": True,
            "adam_w_mode": True,
        },  # fmt: skip
    }
    assert ds["bf16"] == {"enabled": False} and "data_types" not in ds
    bf16 = _ds(precision="bf16")
    assert bf16["bf16"] == {"enabled": True} and bf16["data_types"] == {"grad_accum_dtype": "fp32"}
    # DeepSpeed refuses fp32 accumulation of bf16 gradients without ZeRO.
    assert "data_types" not in _ds(precision="bf16", parallel={"zero_stage": 0})
    assert "scheduler" not in ds


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages_and_offload(stage):
    ds = _ds(parallel={"zero_stage": stage})
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert ("leaf_module" in zero) == (stage == 3)


def test_offload_uses_torch_adamw_without_compiling_deepspeed_ops():
    ds = _ds(parallel={"zero_stage": 3, "offload_optimizer": True, "offload_param": True})
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert ds["zero_force_ds_cpu_optimizer"] is False
    gpu = _ds(accelerator="cuda", parallel={"zero_stage": 2, "offload_optimizer": True})
    assert gpu["zero_optimization"]["offload_optimizer"]["pin_memory"] is True
    assert "fused" not in gpu["optimizer"]["params"]
    assert _ds(accelerator="cuda")["optimizer"]["params"]["fused"] is True
    assert "zero_force_ds_cpu_optimizer" not in _ds(
        optimizer={"torch_adam": False}, parallel={"offload_optimizer": True}
    )


def test_warmup_then_cosine_to_min_lr():
    cfg = parse_run_config(
        tiny_run(optimizer={"warmup_steps": 4, "lr": 1.0, "min_lr": 0.1}, training={"total_steps": 14})
    )
    assert [lr_at(cfg, s) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert lr_at(cfg, 9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(cfg, 14) == pytest.approx(0.1)
    lrs = [lr_at(cfg, s) for s in range(4, 15)]
    assert lrs == sorted(lrs, reverse=True)
    const = parse_run_config(tiny_run(optimizer={"warmup_steps": 0, "schedule": "constant"}))
    assert lr_at(const, 1) == lr_at(const, 4) == 0.003


def test_cli_writes_ds_config_json(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", tiny_run(batch={"micro_batch": 2}))
    assert ds_config_main(["--run-dir", str(run_dir), "--world-size", "2"]) == 0
    written = json.loads((run_dir / "ds_config.json").read_text())
    assert written == build_ds_config(parse_run_config(tiny_run(batch={"micro_batch": 2})), 2, "cpu")
    assert str(run_dir / "ds_config.json") in capsys.readouterr().out
