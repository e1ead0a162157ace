"""The changes an automatic relaunch makes to run.json: each valid, the global batch kept, the refusals named."""

from __future__ import annotations

import pytest

from jobs.common import relaunch
from jobs.common.run_config import ConfigError, parse_run_config
from tests.jobs.conftest import tiny_run


def test_halving_the_micro_batch_doubles_accumulation_and_keeps_the_global_batch():
    raw = tiny_run()
    change = relaunch.halve_micro_batch(raw)
    before, after = parse_run_config(raw), parse_run_config(change.raw)
    assert (after.batch.micro_batch, after.batch.grad_accum) == (2, 4)
    assert after.tokens_per_step(1) == before.tokens_per_step(1) == 256
    assert "micro_batch 4 -> 2, grad_accum 2 -> 4" in change.description
    assert raw["batch"]["micro_batch"] == 4, "the input is not modified"


def test_a_micro_batch_of_one_cannot_be_halved():
    with pytest.raises(relaunch.CannotChange, match="cannot be halved"):
        relaunch.halve_micro_batch(tiny_run(batch={"micro_batch": 1, "grad_accum": 8}))


def test_flags_turn_on_once_and_offload_lifts_zero_stage_0():
    raw = tiny_run(parallel={"zero_stage": 0})
    ac = relaunch.activation_checkpointing(raw)
    assert ac.raw["parallel"]["activation_checkpointing"] is True
    with pytest.raises(relaunch.CannotChange, match="already on"):
        relaunch.activation_checkpointing(ac.raw)
    off = relaunch.offload_optimizer(raw)
    assert off.raw["parallel"]["offload_optimizer"] is True and off.raw["parallel"]["zero_stage"] == 1
    assert "optimizer moments restart" in off.description


def test_skipped_windows_map_steps_to_data_steps():
    raw = relaunch.skip_data(tiny_run(), first=5, end=8).raw
    raw = relaunch.skip_data(raw, first=10, end=12).raw
    assert raw["relaunch"]["skip_data"] == [[5, 8], [10, 12]]
    steps = [relaunch.data_step(raw, s) for s in range(1, 9)]
    assert steps == [1, 2, 3, 4, 8, 9, 12, 13]
    merged = relaunch.skip_data(raw, first=7, end=11).raw
    assert merged["relaunch"]["skip_data"] == [[5, 12]]


def test_lr_cut_scales_only_its_steps():
    cfg = parse_run_config(relaunch.lr_cut(tiny_run(), factor=0.5, from_step=3, steps=2).raw)
    assert [cfg.relaunch.lr_scale(s) for s in range(1, 7)] == [1.0, 1.0, 0.5, 0.5, 1.0, 1.0]
    with pytest.raises(relaunch.CannotChange):
        relaunch.lr_cut(tiny_run(), factor=1.5, from_step=3, steps=2)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"skip_data": [[3, 3]]}, "relaunch.skip_data[0]"),
        ({"skip_data": [[5, 8], [6, 9]]}, "relaunch.skip_data[1]"),
        ({"skip_data": "3-5"}, "relaunch.skip_data"),
        ({"lr_cut_factor": 0}, "relaunch.lr_cut_factor"),
        ({"lr_cut_steps": -1}, "relaunch.lr_cut_steps"),
    ],
)
def test_bad_relaunch_fields_are_named(section, field):
    with pytest.raises(ConfigError) as err:
        parse_run_config(tiny_run(relaunch=section))
    assert err.value.field == field
