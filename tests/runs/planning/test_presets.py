"""The presets: the documented run.json shape, the guide's figures, and a clean bill from the validator."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from runs.planning.presets import PRESETS, preset_config, reconciliation_notes
from runs.planning.validation import validate_config

DOC = Path(__file__).resolve().parents[3] / "docs" / "run-config.md"
# Keys Cluster.spec() adds to the documented cluster section.
CLUSTER_EXTRAS = {"name", "cpu_memory_gb_per_node", "interconnect"}
REFERENCE_CAPS = {
    "tp": [1],
    "pp": [1],
    "sp": False,
    "ep": True,
    "zero_stages": [0, 1, 2, 3],
    "archs": ["dense", "moe"],
    "precisions": ["fp32", "bf16"],
    "reasons": {"tp": "the reference trainer has no tensor-parallel layers"},
}


def _documented_example() -> dict:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"## `run.json`.*?```json\n(.*?)```", text, re.S).group(1)

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "//"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(json.loads(block))


def _tokens_per_step(cfg: dict) -> int:
    par, batch, cluster = cfg["parallel"], cfg["batch"], cfg["cluster"]
    dp = cluster["nodes"] * cluster["gpus_per_node"] // (par["tp"] * par["pp"])
    return batch["micro_batch"] * batch["grad_accum"] * dp * batch["seq_len"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_has_the_documented_shape(name):
    doc = _documented_example()
    cfg = preset_config(name)
    assert set(cfg) == set(doc) - {"run", "reporter"}
    for section, example in doc.items():
        if section in ("run", "reporter") or not isinstance(example, dict):
            continue
        extras = CLUSTER_EXTRAS if section == "cluster" else set()
        assert set(cfg[section]) == set(example) | extras, section
        for key, value in example.items():
            if value is not None and cfg[section][key] is not None:
                assert isinstance(cfg[section][key], type(value)) or (
                    isinstance(value, float) and isinstance(cfg[section][key], int)
                ), f"{section}.{key}"
    assert set(cfg["data"]["recipe"]) == set(doc["data"]["recipe"])
    assert all(set(stage) == {"start_step", "seq_len"} for stage in cfg["curriculum"])
    json.dumps(cfg)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_steps_follow_the_budget(name):
    cfg = preset_config(name)
    per_step = _tokens_per_step(cfg)
    assert cfg["training"]["total_steps"] == math.ceil(cfg["training"]["token_budget"] / per_step)
    off = abs(per_step - cfg["batch"]["global_batch_tokens"]) / cfg["batch"]["global_batch_tokens"] * 100
    assert off <= cfg["batch"]["tolerance_pct"]


def test_presets_validate_clean():
    assert validate_config(preset_config("r1_guide"), trainer="plan_only") == []
    assert validate_config(preset_config("tiny"), capabilities=REFERENCE_CAPS, trainer="reference") == []
    assert validate_config(preset_config("single_h200"), capabilities=REFERENCE_CAPS, trainer="reference") == []


def test_registry_describes_each_preset():
    assert set(PRESETS) == {"r1_guide", "tiny", "single_h200"}
    for name, preset in PRESETS.items():
        assert preset.name == name and preset.label and len(preset.description) > 40
        assert preset.trainer in ("reference", "plan_only")
    assert PRESETS["r1_guide"].trainer == "plan_only"


def test_preset_config_is_an_independent_copy():
    first = preset_config("tiny")
    first["model"]["hidden_size"] = 1
    first["curriculum"].append({"start_step": 5, "seq_len": 1})
    second = preset_config("tiny")
    assert second["model"]["hidden_size"] == 64
    assert len(second["curriculum"]) == 2


def test_unknown_preset_names_the_choices():
    with pytest.raises(KeyError, match="r1_guide, tiny, single_h200"):
        preset_config("huge")


def test_r1_guide_keeps_the_guides_figures():
    cfg = preset_config("r1_guide")
    cluster, par, opt, model = cfg["cluster"], cfg["parallel"], cfg["optimizer"], cfg["model"]
    assert (cluster["nodes"], cluster["gpus_per_node"], cluster["gpu_type"], cluster["gpu_memory_gb"]) == (
        128,
        8,
        "H100",
        80.0,
    )
    assert "400 Gbps RDMA" in cluster["interconnect"]
    assert (par["tp"], par["pp"], par["ep"], par["sp"]) == (8, 4, 2, True)
    assert par["activation_checkpointing"] and par["offload_optimizer"] and par["zero_stage"] in (1, 2)
    assert cfg["batch"]["global_batch_tokens"] == 3_200_000
    assert (opt["lr"], opt["schedule"], opt["warmup_steps"], opt["weight_decay"], opt["grad_clip"]) == (
        6e-5,
        "cosine",
        3000,
        0.01,
        1.0,
    )
    assert [s["seq_len"] for s in cfg["curriculum"]] == [256, 2048, 8192]
    assert cfg["precision"] == "bf16"
    assert model["vocab_size"] == 128_000
    v3_shape = {
        "num_layers": 61,
        "hidden_size": 7168,
        "num_heads": 128,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "num_shared_experts": 1,
        "num_routed_experts": 256,
        "top_k": 8,
        "moe_intermediate_size": 2048,
        "intermediate_size": 18432,
        "first_k_dense": 3,
    }
    assert {k: model[k] for k in v3_shape} == v3_shape


def test_r1_guide_records_what_gave_way():
    cfg = preset_config("r1_guide")
    notes = reconciliation_notes("r1_guide")
    by_figure = {n["figure"]: n for n in notes}
    accum = by_figure["gradient accumulation"]
    assert accum["guide"] == "32" and accum["preset"] == str(cfg["batch"]["grad_accum"]) == "12"
    # 1 x 32 x 32 x 8192: the step the guide's own figures imply.
    assert "8,388,608" in accum["why"] and "3,145,728" in accum["why"]
    assert "671 B" in by_figure["model size"]["preset"] and "1.2 T" in by_figure["model size"]["guide"]
    assert "stage 1" in by_figure["ZeRO-Offload"]["preset"]
    assert all(set(n) == {"figure", "guide", "preset", "why"} for n in notes)
    assert reconciliation_notes("tiny") == [] and reconciliation_notes("nonesuch") == []


def test_tiny_is_laptop_sized():
    cfg = preset_config("tiny")
    model = cfg["model"]
    assert (model["arch"], model["attention"], model["vocab_size"]) == ("moe", "mla", 4096)
    assert (model["hidden_size"], model["num_layers"], model["num_heads"]) == (64, 2, 4)
    assert (model["num_routed_experts"], model["top_k"], model["num_shared_experts"]) == (4, 2, 1)
    assert cfg["batch"]["seq_len"] == 64 and [s["seq_len"] for s in cfg["curriculum"]] == [32, 64]
    cluster = cfg["cluster"]
    assert (cluster["backend"], cluster["nodes"], cluster["gpus_per_node"], cluster["accelerator"]) == (
        "local",
        1,
        2,
        "cpu",
    )
    # ZeRO 0: nothing to shard at this size, and no Muon import (compiled kernels) at start-up.
    assert cfg["parallel"]["zero_stage"] == 0 and cfg["precision"] == "fp32" and cfg["optimizer"]["torch_adam"]
    assert cfg["training"]["total_steps"] == 300 and cfg["training"]["checkpoint_interval"] == 100


def test_single_h200_is_one_gpu_bf16_zero1():
    cfg = preset_config("single_h200")
    cluster = cfg["cluster"]
    assert (cluster["nodes"], cluster["gpus_per_node"], cluster["gpu_type"], cluster["gpu_memory_gb"]) == (
        1,
        1,
        "H200",
        139.0,
    )
    assert cfg["precision"] == "bf16" and cfg["parallel"]["zero_stage"] == 1 and cfg["batch"]["seq_len"] == 2048
    model = cfg["model"]
    assert (model["hidden_size"], model["num_layers"], model["num_routed_experts"], model["top_k"]) == (1024, 8, 16, 4)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_carry_alerts_and_remediation(name):
    cfg = preset_config(name)
    assert cfg["alerts"]["loss_spike_z"] > 0 and cfg["alerts"]["hang_timeout_s"] >= 60
    assert cfg["remediation"]["on_spike"] in ("alert", "rollback")
    assert isinstance(cfg["remediation"]["oom"], list)


@pytest.mark.parametrize("name", ["tiny", "single_h200"])
def test_the_reference_trainer_accepts_its_presets(name):
    from jobs.common.run_config import parse_run_config

    cfg = preset_config(name)
    parsed = parse_run_config(cfg)
    world = cfg["cluster"]["nodes"] * cfg["cluster"]["gpus_per_node"]
    parsed.check_world(world)
    assert parsed.tokens_per_step(world) == _tokens_per_step(cfg)
