"""run.json parsing: the contract's example parses, and every refusal names the field to fix."""

from __future__ import annotations

import json

import pytest

from jobs.common.run_config import FIELDS, REQUIRED, ConfigError, load_run_config, parse_run_config
from tests.jobs.conftest import REPO, TINY_RUN, tiny_run


def _doc_example() -> dict:
    """The run.json shown in docs/run-config.md, without its "//" commentary keys."""
    text = (REPO / "docs" / "run-config.md").read_text()
    block = text.split("## `run.json` (schema_version 1)\n```json\n", 1)[1].split("\n```", 1)[0]

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "//"}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(json.loads(block, object_pairs_hook=lambda pairs: dict(p for p in pairs if p[0] != "//")))


def test_the_documented_example_parses():
    cfg = parse_run_config(_doc_example())
    assert cfg.model.is_moe and cfg.model.is_mla and cfg.model.qk_head_dim == 24
    assert cfg.parallel.zero_stage == 2 and cfg.batch.seq_len == 64
    assert [s.seq_len for s in cfg.curriculum] == [32, 64]
    assert cfg.tokens_per_step(2) == 2048
    cfg.check_world(2)


def test_load_run_config_reports_missing_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="run.json: not found"):
        load_run_config(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ConfigError, match="run.json: invalid JSON"):
        load_run_config(tmp_path)


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"model": {"arch": "sparse"}}, "model.arch"),
        ({"model": {"hidden_size": "64"}}, "model.hidden_size"),
        ({"model": {"tie_embeddings": 1}}, "model.tie_embeddings"),
        ({"model": {"num_layers": True}}, "model.num_layers"),
        ({"model": {"top_k": 5}}, "model.top_k"),
        ({"model": {"first_k_dense": 2}}, "model.first_k_dense"),
        ({"model": {"n_group": 3}}, "model.n_group"),
        ({"model": {"attention": "mha", "num_heads": 5}}, "model.num_heads"),
        ({"model": {"qk_rope_head_dim": 7}}, "model.qk_rope_head_dim"),
        ({"parallel": {"tp": 3}}, "parallel.tp"),
        ({"parallel": {"tp": 4}}, "parallel.tp"),
        ({"parallel": {"pp": 3}}, "parallel.pp"),
        ({"parallel": {"pp": 4}}, "parallel.pp"),  # more stages than the 2 layers
        ({"parallel": {"pp": 2}}, "parallel.zero_stage"),
        ({"parallel": {"pp": 2, "zero_stage": 1}, "model": {"tie_embeddings": True}}, "model.tie_embeddings"),
        ({"parallel": {"tp": 2, "ep": 2, "zero_stage": 0}}, "parallel.zero_stage"),
        (
            {"parallel": {"tp": 2, "sp": True}, "curriculum": [{"start_step": 0, "seq_len": 1}]},
            "curriculum[0].seq_len",
        ),
        ({"parallel": {"sp": True}}, "parallel.sp"),
        ({"parallel": {"zero_stage": 4}}, "parallel.zero_stage"),
        ({"parallel": {"ep": 3}}, "parallel.ep"),
        ({"parallel": {"ep": 2, "zero_stage": 3}}, "parallel.ep"),
        ({"parallel": {"offload_param": True}}, "parallel.offload_param"),
        ({"parallel": {"offload_optimizer": True, "zero_stage": 0}}, "parallel.offload_optimizer"),
        ({"model": {"arch": "dense"}, "parallel": {"ep": 2}}, "parallel.ep"),
        ({"batch": {"micro_batch": 0}}, "batch.micro_batch"),
        ({"batch": {"seq_len": 128}}, "batch.seq_len"),
        ({"optimizer": {"name": "sgd"}}, "optimizer.name"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas"),
        ({"optimizer": {"min_lr": 1.0}}, "optimizer.min_lr"),
        ({"optimizer": {"schedule": "step"}}, "optimizer.schedule"),
        ({"precision": "fp16"}, "precision"),
        ({"curriculum": [{"start_step": 0, "seq_len": 12}]}, "curriculum[0].seq_len"),
        ({"curriculum": [{"start_step": 5, "seq_len": 16}]}, "curriculum[0].start_step"),
        ({"curriculum": [{"start_step": 0, "seq_len": 32}, {"start_step": 3, "seq_len": 16}]}, "curriculum[1].seq_len"),
        ({"training": {"nan_policy": "ignore"}}, "training.nan_policy"),
        ({"training": {"total_steps": 0}}, "training.total_steps"),
        ({"reporter": {"batch_size": 0}}, "reporter.batch_size"),
    ],
)
def test_invalid_fields_are_named(sections, field):
    with pytest.raises(ConfigError) as err:
        parse_run_config(tiny_run(**sections))
    assert str(err.value).startswith(field + ":"), str(err.value)
    assert err.value.field == field


def test_world_size_checks_name_the_field():
    cfg = parse_run_config(tiny_run(parallel={"ep": 2}))
    with pytest.raises(ConfigError, match=r"^parallel.ep: 2 must divide the data-parallel size 1"):
        cfg.check_world(1)
    with pytest.raises(ConfigError, match=r"^batch.global_batch_tokens: .* 100.0% off 256"):
        cfg.check_world(2)
    parse_run_config(tiny_run(batch={"micro_batch": 2}, parallel={"ep": 2})).check_world(2)


def test_optional_model_keys_take_defaults():
    raw = tiny_run()
    for key in ("n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob"):
        raw["model"].pop(key, None)
    model = parse_run_config(raw).model
    assert (model.n_group, model.topk_group, model.routed_scaling_factor, model.norm_topk_prob) == (1, 1, 1.0, True)
    assert TINY_RUN["model"]["arch"] == "moe"


def _minimal() -> dict:
    """TINY_RUN's sections with only the fields FIELDS marks required."""
    raw: dict = {"schema_version": 1, **{s: {} for s in ("model", "parallel", "batch", "optimizer", "training")}}
    for name, spec in FIELDS.items():
        section, _, key = name.partition(".")
        if spec.default is REQUIRED and not section.startswith("curriculum"):
            raw.setdefault(section, {})[key] = TINY_RUN[section][key]
    return raw


def test_fields_hold_the_parsers_defaults_and_required_keys():
    cfg = parse_run_config(_minimal())
    for name, spec in FIELDS.items():
        section, _, key = name.partition(".")
        if section.startswith("curriculum") or spec.default is REQUIRED:
            continue
        value = getattr(cfg, section) if section == "precision" else getattr(getattr(cfg, section), key)
        if spec.default_from:
            assert name == "model.intermediate_size" and value == 4 * cfg.model.hidden_size
        else:
            assert value == (tuple(spec.default) if isinstance(spec.default, list) else spec.default), name
    assert FIELDS["model.top_k"].default == 2 and FIELDS["optimizer.lr"].default is REQUIRED
    assert FIELDS["training.token_budget"].kinds == (int,) and FIELDS["reporter.ingest_url"].default is None
    for name, spec in FIELDS.items():
        section, _, key = name.partition(".")
        if spec.default is REQUIRED and not section.startswith("curriculum"):
            raw = _minimal()
            del raw[section][key]
            with pytest.raises(ConfigError) as err:
                parse_run_config(raw)
            assert err.value.field == name and err.value.message == "required"


def test_every_field_is_in_the_documented_example_or_listed_as_optional():
    example = _doc_example()
    text = (REPO / "docs" / "run-config.md").read_text()
    optional = text.split("Optional `model` keys", 1)[1].split("\n\n", 1)[0]
    relaunch = json.loads(
        "{" + text.split("## What a relaunch changes", 1)[1].split("```json\n", 1)[1].split("```", 1)[0] + "}"
    )
    own_script = json.loads(
        "{" + text.split("may add an `own_script` section", 1)[1].split("```json\n", 1)[1].split("```", 1)[0] + "}"
    )
    for name in FIELDS:
        section, _, key = name.partition(".")
        if section == "curriculum[]":
            assert all(key in stage for stage in example["curriculum"])
        elif section == "precision":
            assert "precision" in example
        elif section == "relaunch":
            assert key in relaunch["relaunch"], name
        elif section == "own_script":
            assert key in own_script["own_script"], name
        else:
            assert key in example[section] or f"`{key}`" in optional, name
