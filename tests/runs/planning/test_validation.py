"""Every validation rule, good and bad, and the capabilities file the reference-trainer rules read."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from runs.planning import capabilities
from runs.planning.capabilities import CapabilitiesUnavailable, trainer_capabilities
from runs.planning.fields import RANGES, FieldIssue
from runs.planning.presets import preset_config
from runs.planning.schedule_checks import nearest_batch_pair
from runs.planning.validation import validate_config

FIX = re.compile(
    r"\b(set|use|choose|turn|lower|raise|enter|order|remove|adjust|merge|start|make|point|pick|add|name|tick|"
    r"restore|rewrite|fix|clear)\b"
)
CAPS = {
    "tp": [1],
    "pp": [1],
    "sp": False,
    "ep": True,
    "zero_stages": [0, 1, 2, 3],
    "archs": ["dense", "moe"],
    "precisions": ["fp32", "bf16"],
    "reasons": {"tp": "the reference trainer has no tensor-parallel layers"},
}


def _set(cfg: dict, path: str, value) -> dict:
    node = cfg
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return cfg


def _consistent(cfg: dict) -> dict:
    """Re-derive the batch target and step count from the layout, so a test isolates the rule it is about."""
    par, batch, cluster = cfg["parallel"], cfg["batch"], cfg["cluster"]
    dp = cluster["nodes"] * cluster["gpus_per_node"] // (par["tp"] * par["pp"])
    per_step = batch["micro_batch"] * batch["grad_accum"] * dp * batch["seq_len"]
    batch["global_batch_tokens"] = per_step
    cfg["training"]["total_steps"] = math.ceil(cfg["training"]["token_budget"] / per_step)
    return cfg


def gpu_cfg(*, nodes: int = 1, gpus_per_node: int = 8, **parallel) -> dict:
    cfg = preset_config("single_h200")
    cfg["cluster"].update({"backend": "slurm", "nodes": nodes, "gpus_per_node": gpus_per_node})
    cfg["parallel"].update(parallel)
    return _consistent(cfg)


def issues_on(cfg: dict, field: str, *, trainer: str = "plan_only", caps: dict | None = None) -> list[FieldIssue]:
    return [i for i in validate_config(cfg, capabilities=caps, trainer=trainer) if i.field == field]


def one(cfg: dict, field: str, **kw) -> FieldIssue:
    """The issue on `field`, checked to name the field and a fix."""
    found = issues_on(cfg, field, **kw)
    assert found, f"no issue on {field}: {validate_config(cfg, capabilities=kw.get('caps'), trainer='plan_only')}"
    issue = found[0]
    assert field in issue.message, issue.message
    assert FIX.search(issue.message), issue.message
    return issue


def clean(cfg: dict, **kw) -> bool:
    return validate_config(cfg, capabilities=kw.get("caps", CAPS), trainer=kw.get("trainer", "plan_only")) == []


# --- ranges, types, presence ---------------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return path.replace("*", "0")


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_numeric_field_has_a_range(key):
    rng = RANGES[key]
    path = _concrete(key)
    too_high = rng.hi if rng.hi_open else rng.hi + 1
    too_low = rng.lo if rng.lo_open else rng.lo - 1
    for value in (too_high, too_low):
        cfg = _set(preset_config("r1_guide"), path, rng.kind(value))
        issue = one(cfg, path)
        assert "must be" in issue.message and "range" in issue.message


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("parallel.tp", "8", "whole number"),
        ("parallel.tp", True, "whole number"),
        ("batch.micro_batch", 2.0, "whole number"),
        ("optimizer.lr", "fast", "a number"),
        ("optimizer.lr", float("nan"), "must be"),
        ("parallel.sp", 1, "true or false"),
        ("model.arch", "rnn", "choose one of moe, dense"),
        ("precision", "fp16", "choose one of fp32, bf16"),
        ("cluster.backend", "k8s", "choose one of local, slurm, hostfile"),
        ("data.tokenizer", 5, "path or null"),
        ("cluster.gpu_type", "", "name the accelerator"),
    ],
)
def test_wrong_types_and_choices(path, value, words):
    issue = one(_set(preset_config("tiny"), path, value), path)
    assert words in issue.message


def test_missing_field_and_missing_section():
    cfg = preset_config("tiny")
    del cfg["batch"]["seq_len"]
    assert "missing" in one(cfg, "batch.seq_len").message
    cfg = preset_config("tiny")
    del cfg["parallel"]
    issues = validate_config(cfg, trainer="plan_only")
    assert [i.field for i in issues] == ["parallel"]
    assert "section is missing" in issues[0].message
    assert validate_config([], trainer="plan_only")[0].field == "config"


def test_all_issues_are_reported_not_just_the_first():
    cfg = preset_config("tiny")
    cfg["optimizer"]["lr"] = -1.0
    cfg["parallel"]["zero_stage"] = 7
    cfg["curriculum"][0]["start_step"] = 5
    cfg["data"]["recipe"]["sources"][0]["weight"] = 10.0
    fields = {i.field for i in validate_config(cfg, trainer="plan_only")}
    assert {"optimizer.lr", "parallel.zero_stage", "curriculum.0.start_step", "data.recipe.sources"} <= fields


def test_issue_serialises():
    issue = FieldIssue("batch.micro_batch", "m", {"batch.micro_batch": 2})
    assert issue.to_dict() == {"field": "batch.micro_batch", "message": "m", "suggestion": {"batch.micro_batch": 2}}
    assert FieldIssue("x", "y").suggestion is None


# --- model ---------------------------------------------------------------------------------------------------------


def test_mha_heads_must_divide_hidden():
    cfg = preset_config("tiny")
    cfg["model"]["attention"] = "mha"
    assert clean(cfg)
    cfg["model"]["num_heads"] = 6
    issue = one(cfg, "model.num_heads")
    assert issue.suggestion == {"model.num_heads": 4}
    cfg["model"]["num_heads"] = 64  # head size 1: odd, rotary needs pairs
    assert "odd" in one(cfg, "model.num_heads").message


def test_rope_dim_must_be_even():
    cfg = _set(preset_config("tiny"), "model.qk_rope_head_dim", 7)
    assert one(cfg, "model.qk_rope_head_dim").suggestion == {"model.qk_rope_head_dim": 8}


def test_top_k_at_most_routed_experts():
    cfg = _set(preset_config("tiny"), "model.top_k", 4)
    assert clean(cfg)
    cfg["model"]["top_k"] = 5
    issue = one(cfg, "model.top_k")
    assert issue.suggestion == {"model.top_k": 4} and "4 routed experts" in issue.message


def test_moe_needs_a_moe_layer():
    cfg = _set(preset_config("tiny"), "model.first_k_dense", 2)
    assert one(cfg, "model.first_k_dense").suggestion == {"model.first_k_dense": 1}


# --- cluster and layout --------------------------------------------------------------------------------------------


def test_local_backend_is_one_node():
    cfg = _consistent(_set(preset_config("tiny"), "cluster.nodes", 2))
    assert one(cfg, "cluster.nodes").suggestion == {"cluster.nodes": 1}
    cfg["cluster"]["backend"] = "slurm"
    assert clean(cfg)


def test_tp_times_pp_must_divide_the_gpus():
    cfg = gpu_cfg(pp=2)
    assert clean(cfg)
    cfg["parallel"]["pp"] = 3
    issue = one(cfg, "parallel.pp")
    assert issue.suggestion == {"parallel.pp": 2}
    assert "1, 2, 4, 8" in issue.message and "8 GPUs" in issue.message


def test_tp_must_stay_inside_a_node():
    cfg = gpu_cfg(nodes=2, tp=8)
    assert clean(cfg)
    cfg = gpu_cfg(nodes=2, tp=16)
    issue = one(cfg, "parallel.tp")
    assert "node" in issue.message and "NVLink" in issue.message
    assert issue.suggestion == {"parallel.tp": 8}


def test_tp_must_divide_heads():
    cfg = gpu_cfg(tp=8)
    cfg["model"]["num_heads"] = 12
    issue = one(cfg, "parallel.tp")
    assert "model.num_heads is 12" in issue.message and "1, 2, 4" in issue.message
    assert issue.suggestion == {"parallel.tp": 4}


def test_pp_at_most_layers():
    cfg = gpu_cfg(pp=4)
    cfg["model"].update({"num_layers": 2, "first_k_dense": 1})
    assert one(cfg, "parallel.pp").suggestion == {"parallel.pp": 2}
    cfg["parallel"]["pp"] = 2
    assert clean(_consistent(cfg))


def test_ep_divides_data_parallel_and_experts():
    assert clean(gpu_cfg(ep=4))
    issue = one(gpu_cfg(ep=3), "parallel.ep")
    assert "data-parallel size 8" in issue.message and "16 routed experts" in issue.message
    assert issue.suggestion == {"parallel.ep": 2}
    issue = one(gpu_cfg(ep=16), "parallel.ep")
    assert "data-parallel size 8" in issue.message and "routed experts" not in issue.message
    cfg = gpu_cfg(ep=8)
    cfg["model"]["num_routed_experts"] = 12
    issue = one(cfg, "parallel.ep")
    assert "12 routed experts" in issue.message and issue.suggestion == {"parallel.ep": 4}


def test_ep_refused_on_a_dense_model():
    cfg = preset_config("tiny")
    cfg["model"]["arch"] = "dense"
    assert clean(cfg)
    cfg["parallel"]["ep"] = 2
    assert one(cfg, "parallel.ep").suggestion == {"parallel.ep": 1}


def test_sequence_parallel_needs_tp():
    assert clean(gpu_cfg(tp=2, sp=True))
    issue = one(gpu_cfg(sp=True), "parallel.sp")
    assert "Megatron" in issue.message and issue.suggestion == {"parallel.sp": False}


def test_offload_rules():
    assert clean(gpu_cfg(zero_stage=3, offload_param=True, offload_optimizer=True))
    assert one(gpu_cfg(zero_stage=2, offload_param=True), "parallel.offload_param").suggestion == {
        "parallel.offload_param": False
    }
    assert clean(gpu_cfg(zero_stage=1, offload_optimizer=True))
    issue = one(gpu_cfg(zero_stage=0, offload_optimizer=True), "parallel.offload_optimizer")
    assert issue.suggestion == {"parallel.zero_stage": 1}


def test_zero_2_and_3_refused_with_pipeline():
    assert clean(gpu_cfg(pp=2, zero_stage=1))
    for stage in (2, 3):
        issue = one(gpu_cfg(pp=2, zero_stage=stage), "parallel.zero_stage")
        assert "pipeline engine" in issue.message and issue.suggestion == {"parallel.zero_stage": 1}


# --- batch ---------------------------------------------------------------------------------------------------------


def test_batch_miss_proposes_the_nearest_pair():
    cfg = _set(preset_config("tiny"), "batch.micro_batch", 3)
    issue = one(cfg, "batch.micro_batch")
    assert "768" in issue.message and "2,048" in issue.message
    # 16 sequences per rank are needed; 4 x 4 and 8 x 2 are equally near 3 x 2, and the smaller micro-batch wins.
    assert issue.suggestion == {"batch.micro_batch": 4, "batch.grad_accum": 4}
    cfg["batch"].update({"micro_batch": 4, "grad_accum": 4})
    assert clean(cfg)
    cfg["batch"].update({"micro_batch": 8, "grad_accum": 3})
    assert one(cfg, "batch.micro_batch").suggestion == {"batch.micro_batch": 8, "batch.grad_accum": 2}


def test_batch_rule_on_the_guides_own_numbers():
    cfg = _set(preset_config("r1_guide"), "batch.grad_accum", 32)
    issue = one(cfg, "batch.micro_batch")
    assert "8,388,608" in issue.message and "3,200,000" in issue.message
    assert issue.suggestion == {"batch.micro_batch": 1, "batch.grad_accum": 12}


def test_batch_target_below_one_sequence_per_rank():
    cfg = _set(preset_config("tiny"), "batch.global_batch_tokens", 100)
    issue = one(cfg, "batch.micro_batch")
    assert "no micro-batch/accumulation pair" in issue.message
    assert issue.suggestion == {"batch.global_batch_tokens": 2048}


def test_batch_tolerance_is_honoured():
    cfg = _set(preset_config("tiny"), "batch.global_batch_tokens", 2100)
    assert clean(cfg)  # 2,048 is 2.5 % off, inside 5 %
    cfg["batch"]["tolerance_pct"] = 1.0
    assert issues_on(cfg, "batch.micro_batch")


def test_nearest_batch_pair():
    pair = nearest_batch_pair(
        target_tokens=3_200_000, tokens_per_sequence=32 * 8192, tolerance_pct=5.0, micro_batch=1, grad_accum=32
    )
    assert pair == (1, 12)
    pair = nearest_batch_pair(
        target_tokens=4096, tokens_per_sequence=128, tolerance_pct=0.0, micro_batch=8, grad_accum=1
    )
    assert pair == (8, 4)
    assert (
        nearest_batch_pair(target_tokens=10, tokens_per_sequence=128, tolerance_pct=5.0, micro_batch=1, grad_accum=1)
        is None
    )


def test_seq_len_within_model_positions():
    cfg = _set(preset_config("tiny"), "model.max_seq_len", 48)
    assert one(cfg, "batch.seq_len").suggestion == {"batch.seq_len": 48}
    assert issues_on(cfg, "curriculum.1.seq_len")


def test_total_steps_follow_the_budget():
    cfg = _set(preset_config("tiny"), "training.total_steps", 299)
    assert one(cfg, "training.total_steps").suggestion == {"training.total_steps": 300}


# --- optimizer -----------------------------------------------------------------------------------------------------


def test_optimizer_rules():
    cfg = _set(preset_config("tiny"), "optimizer.min_lr", 0.01)
    assert one(cfg, "optimizer.min_lr").suggestion == {"optimizer.min_lr": 0.0001}
    cfg = _set(preset_config("tiny"), "optimizer.warmup_steps", 300)
    assert one(cfg, "optimizer.warmup_steps").suggestion == {"optimizer.warmup_steps": 15}
    cfg["optimizer"]["warmup_steps"] = 299
    assert clean(cfg)
    cfg = _set(preset_config("tiny"), "optimizer.betas", [0.9])
    assert one(cfg, "optimizer.betas").suggestion == {"optimizer.betas": [0.9, 0.95]}
    cfg = _set(preset_config("tiny"), "optimizer.betas", [0.9, 1.0])
    one(cfg, "optimizer.betas.1")


# --- curriculum ----------------------------------------------------------------------------------------------------


def _with_curriculum(*stages: tuple[int, int]) -> dict:
    cfg = preset_config("tiny")
    cfg["curriculum"] = [{"start_step": s, "seq_len": n} for s, n in stages]
    return cfg


def test_curriculum_good():
    assert clean(_with_curriculum((0, 16), (50, 32), (100, 64)))
    assert clean(_with_curriculum((0, 64)))
    assert clean(_with_curriculum((0, 32), (100, 32), (200, 64)))


def test_curriculum_must_start_at_zero():
    assert one(_with_curriculum((10, 32), (100, 64)), "curriculum.0.start_step").suggestion == {
        "curriculum.0.start_step": 0
    }


def test_curriculum_start_steps_increase():
    assert "order the stages" in one(_with_curriculum((0, 16), (100, 32), (100, 64)), "curriculum.2.start_step").message


def test_curriculum_lengths_never_decrease():
    issue = one(_with_curriculum((0, 32), (50, 16), (100, 64)), "curriculum.1.seq_len")
    assert issue.suggestion == {"curriculum.1.seq_len": 32}


def test_curriculum_lengths_divide_seq_len():
    issue = one(_with_curriculum((0, 32), (100, 48), (200, 64)), "curriculum.1.seq_len")
    assert "does not divide" in issue.message and issue.suggestion == {"curriculum.1.seq_len": 32}


def test_curriculum_ends_at_seq_len():
    issue = one(_with_curriculum((0, 32)), "curriculum.0.seq_len")
    assert issue.suggestion == {"curriculum.0.seq_len": 64}


def test_curriculum_stage_after_the_run_ends():
    assert "never run" in one(_with_curriculum((0, 32), (400, 64)), "curriculum.1.start_step").message


def test_curriculum_must_not_be_empty():
    cfg = preset_config("tiny")
    cfg["curriculum"] = []
    one(cfg, "curriculum")


# --- data, alerts, remediation -------------------------------------------------------------------------------------


def _with_weights(*weights: float) -> dict:
    cfg = preset_config("tiny")
    cfg["data"]["recipe"]["sources"] = [{"name": f"s{i}", "weight": w} for i, w in enumerate(weights)]
    return cfg


def test_recipe_weights_sum_to_100():
    assert clean(_with_weights(45, 35, 20))
    assert clean(_with_weights(33.333, 33.333, 33.333))  # 99.999: within 0.01
    assert "add up to 90" in one(_with_weights(45, 35, 10), "data.recipe.sources").message
    one(_with_weights(100, 0), "data.recipe.sources.1.weight")
    one(_with_weights(101), "data.recipe.sources.0.weight")


def test_recipe_sources_named_once():
    cfg = _with_weights(50, 50)
    cfg["data"]["recipe"]["sources"][1]["name"] = "s0"
    assert "twice" in one(cfg, "data.recipe.sources.1.name").message
    cfg["data"]["recipe"]["sources"] = []
    one(cfg, "data.recipe.sources")


def test_remediation_steps():
    cfg = _set(preset_config("tiny"), "remediation.oom", ["halve_micro_batch", "pray"])
    assert one(cfg, "remediation.oom").suggestion == {"remediation.oom": ["halve_micro_batch"]}
    cfg["remediation"]["oom"] = ["offload_optimizer", "offload_optimizer"]
    assert one(cfg, "remediation.oom").suggestion == {"remediation.oom": ["offload_optimizer"]}


def test_bundled_tokenizer_needs_its_vocabulary():
    cfg = _set(preset_config("tiny"), "model.vocab_size", 1000)
    assert one(cfg, "model.vocab_size", trainer="reference", caps=CAPS).suggestion == {"model.vocab_size": 4096}
    assert not issues_on(cfg, "model.vocab_size", trainer="plan_only")
    cfg["data"]["tokenizer"] = "/data/tok.model"
    assert not issues_on(cfg, "model.vocab_size", trainer="reference", caps=CAPS)


def test_schema_version_and_trainer():
    cfg = _set(preset_config("tiny"), "schema_version", 2)
    assert one(cfg, "schema_version").suggestion == {"schema_version": 1}
    one(preset_config("tiny"), "run.trainer", trainer="mine")


# --- what the reference trainer can run ----------------------------------------------------------------------------


def test_reference_trainer_capabilities_refuse_with_reason():
    cfg = gpu_cfg(tp=2, sp=True)
    issue = one(cfg, "parallel.tp", trainer="reference", caps=CAPS)
    assert "no tensor-parallel layers" in issue.message and issue.suggestion == {"parallel.tp": 1}
    one(cfg, "parallel.sp", trainer="reference", caps=CAPS)
    for trainer in ("plan_only", "own_script"):
        assert validate_config(cfg, capabilities=CAPS, trainer=trainer) == []


@pytest.mark.parametrize(
    ("caps_change", "cfg_change", "field"),
    [
        ({"pp": [1]}, {"parallel.pp": 2}, "parallel.pp"),
        ({"ep": False}, {"parallel.ep": 2}, "parallel.ep"),
        ({"zero_stages": [0, 1, 2]}, {"parallel.zero_stage": 3}, "parallel.zero_stage"),
        ({"archs": ["dense"]}, {}, "model.arch"),
        ({"precisions": ["fp32"]}, {}, "precision"),
    ],
)
def test_each_capability_is_checked(caps_change, cfg_change, field):
    cfg = gpu_cfg()
    for path, value in cfg_change.items():
        _set(cfg, path, value)
    caps = {**CAPS, **caps_change}
    assert one(_consistent(cfg), field, trainer="reference", caps=caps)
    assert not issues_on(cfg, field, trainer="reference", caps=CAPS | {"pp": [1, 2]})


@pytest.mark.parametrize(("path", "value"), [("precision", 0), ("model.arch", 3), ("parallel.tp", "two")])
def test_a_value_of_the_wrong_kind_for_a_capability_is_an_issue_not_an_error(path, value):
    cfg = gpu_cfg()
    _set(cfg, path, value)
    assert issues_on(cfg, path, trainer="reference", caps=CAPS)


def test_capabilities_file_absent_or_malformed(tmp_path, monkeypatch):
    monkeypatch.setattr(capabilities, "CAPABILITIES_PATH", tmp_path / "capabilities.json")
    issue = one(preset_config("tiny"), "run.trainer", trainer="reference")
    assert "does not exist" in issue.message and "plan_only" in issue.message
    (tmp_path / "capabilities.json").write_text('{"tp": "all"}')
    assert "malformed" in one(preset_config("tiny"), "run.trainer", trainer="reference").message
    assert "must be" in one(preset_config("tiny"), "run.trainer", trainer="reference", caps={"tp": [1]}).message


def test_capabilities_file_is_read_cached_and_reread_on_change(tmp_path, monkeypatch):
    path = tmp_path / "capabilities.json"
    path.write_text(json.dumps(CAPS))
    monkeypatch.setattr(capabilities, "CAPABILITIES_PATH", path)
    first = trainer_capabilities()
    assert first["tp"] == [1] and trainer_capabilities() is first
    assert validate_config(preset_config("tiny"), trainer="reference") == []
    path.write_text(json.dumps({**CAPS, "tp": [1, 2]}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert trainer_capabilities()["tp"] == [1, 2]
    path.write_text("not json")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
    with pytest.raises(CapabilitiesUnavailable, match="not valid JSON"):
        trainer_capabilities()


@pytest.mark.parametrize(
    ("caps_change", "cfg_change", "field"),
    [
        ({"attentions": ["mla"]}, {"model.attention": "mha"}, "model.attention"),
        ({"nan_policies": ["abort"]}, {"training.nan_policy": "skip"}, "training.nan_policy"),
        ({"accelerators": ["cpu"]}, {}, "cluster.accelerator"),
        # The schema's schedules are cosine and constant; a trainer may declare fewer.
        ({"schedules": ["cosine"]}, {"optimizer.schedule": "constant"}, "optimizer.schedule"),
        (
            {"activation_checkpointing": False},
            {"parallel.activation_checkpointing": True},
            "parallel.activation_checkpointing",
        ),
        ({"ep_max_zero_stage": 2}, {"parallel.ep": 2, "parallel.zero_stage": 3}, "parallel.zero_stage"),
    ],
)
def test_optional_capabilities_are_checked_when_declared(caps_change, cfg_change, field):
    cfg = gpu_cfg()
    for path, value in cfg_change.items():
        _set(cfg, path, value)
    assert validate_config(cfg, capabilities=CAPS, trainer="plan_only") == []
    assert not issues_on(cfg, field, trainer="reference", caps=CAPS)
    one(cfg, field, trainer="reference", caps={**CAPS, **caps_change})


def test_the_trainers_own_capabilities_file():
    caps = trainer_capabilities()
    assert caps["tp"] == [1, 2, 4, 8] and caps["pp"] == [1, 2, 4, 8] and caps["reasons"]["tp"]
    assert validate_config(preset_config("tiny"), trainer="reference") == []
    assert validate_config(preset_config("single_h200"), trainer="reference") == []
    issues = {i.field for i in validate_config(preset_config("r1_guide"), trainer="reference")}
    # Tensor, pipeline and sequence parallelism run: the guide's layout is launchable on a cluster that has the GPUs.
    assert issues == set()
