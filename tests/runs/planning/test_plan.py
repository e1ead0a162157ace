"""The plan: parameter counts, memory per GPU, DeepSpeed's estimators, suggestions, and time to the budget."""

from __future__ import annotations

import json
import time

import pytest

from jobs.common.hardware import PEAK_TFLOPS
from runs.planning.memory import GIB
from runs.planning.params import count_params
from runs.planning.plan import PlanError, plan
from runs.planning.presets import preset_config
from runs.planning.validation import validate_config

# transformers' DeepseekV3ForCausalLM, instantiated on the meta device with these presets' shapes (untied, no
# multi-token-prediction module), counts exactly these parameters.
TRANSFORMERS_COUNTS = {"tiny": 669_312, "single_h200": 297_342_976, "r1_guide": 671_008_054_272}


def pure_dp(*, gpus: int = 8, zero: int = 2, offload: bool = False, offload_param: bool = False) -> dict:
    """The single-H200 model on one node of `gpus` H200s, data parallel only."""
    cfg = preset_config("single_h200")
    cfg["cluster"].update({"backend": "slurm", "gpus_per_node": gpus})
    cfg["parallel"].update({"zero_stage": zero, "offload_optimizer": offload, "offload_param": offload_param})
    cfg["batch"]["global_batch_tokens"] = 8 * 16 * gpus * 2048
    cfg["training"]["total_steps"] = -(-cfg["training"]["token_budget"] // cfg["batch"]["global_batch_tokens"])
    return cfg


# --- parameters ---------------------------------------------------------------------------------------------------


def test_tiny_param_count_by_hand():
    h, vocab = 64, 4096
    embed = lm_head = vocab * h
    # MLA with uncompressed queries: q (h -> 4 heads x (16 nope + 8 rope)), kv_a (h -> 32 + 8) and its norm,
    # kv_b (32 -> 4 x (16 + 16)), o (4 x 16 -> h).
    attention = h * 4 * 24 + h * 40 + 32 + 32 * 4 * 32 + 4 * 16 * h
    norms = 2 * h
    dense_mlp = 3 * h * 256
    routed = 4 * 3 * h * 64
    shared = 3 * h * 64
    router = 4 * h
    total = embed + lm_head + h + 2 * (attention + norms) + dense_mlp + routed + shared + router
    counts = count_params(preset_config("tiny")["model"])
    assert attention == counts.attention_per_layer == 16_928
    assert counts.total == total == TRANSFORMERS_COUNTS["tiny"]
    assert counts.active == total - 2 * 3 * h * 64  # 2 of the 4 routed experts idle per token
    assert counts.expert == routed and counts.non_expert == total - routed


def test_dense_mha_param_count_by_hand():
    model = preset_config("tiny")["model"]
    model.update({"arch": "dense", "attention": "mha", "vocab_size": 100, "hidden_size": 8, "num_heads": 2})
    model.update({"intermediate_size": 32, "tie_embeddings": True})
    counts = count_params(model)
    per_layer = 4 * 8 * 8 + 2 * 8 + 3 * 8 * 32
    assert counts.total == 100 * 8 + 2 * per_layer + 8
    assert counts.active == counts.total and counts.expert == 0 and counts.lm_head == 0


@pytest.mark.parametrize("name", list(TRANSFORMERS_COUNTS))
def test_param_counts_match_transformers(name):
    assert count_params(preset_config(name)["model"]).total == TRANSFORMERS_COUNTS[name]


@pytest.mark.parametrize("name", ["tiny", "single_h200"])
def test_param_counts_match_the_reference_trainer(name):
    torch = pytest.importorskip("torch")
    from jobs.common.run_config import parse_run_config
    from jobs.train.model import Transformer

    cfg = preset_config(name)
    with torch.device("meta"):
        model = Transformer(parse_run_config(cfg).model)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg["model"]).total


def test_q_lora_adds_its_projections_and_norm():
    model = preset_config("tiny")["model"]
    plain = count_params(model).attention_per_layer
    model["q_lora_rank"] = 16
    h, heads, qk = 64, 4, 24
    assert count_params(model).attention_per_layer == plain - h * heads * qk + h * 16 + 16 + 16 * heads * qk


# --- the presets' plans -----------------------------------------------------------------------------------------


def test_r1_guide_plan_is_plausible():
    p = plan(preset_config("r1_guide"), preset="r1_guide")
    d = p.to_dict()
    assert (d["world_size"], d["data_parallel"]) == (1024, 32)
    assert d["layout"]["expert_data_parallel"] == 16 and d["layout"]["experts_per_rank"] == 128
    assert d["tokens_per_step"] == 3_145_728 and d["sequences_per_step"] == 384
    assert d["tokens_per_micro_step"] == 32 * 8192
    assert -2.0 < d["global_batch_deviation_pct"] < -1.5
    assert 660e9 < d["params"]["total"] < 680e9  # DeepSeek-V3: 671 B
    assert 35e9 < d["params"]["active"] < 40e9  # 37 B active
    mem = d["memory_gib"]
    assert 15 < mem["weights"] < 25  # ~10.75 B parameters per GPU in bf16
    assert mem["optimizer_states"] == 0  # ZeRO-Offload
    assert mem["activations"] == mem["activations_with_checkpointing"] < 5
    assert mem["activations_without_checkpointing"] > 20
    assert mem["fits"] and 40 < mem["total"] < 80
    assert 30 < mem["cpu_offload_per_node"] < 200 and mem["cpu_fits"]
    compute = d["compute"]
    assert 3e11 < compute["flops_per_token"] < 4e11
    assert compute["peak_tflops_per_gpu"] == 989.0 and compute["mfu"] == 0.4
    assert 7 < compute["time_to_budget_days"] < 60  # weeks, not years
    assert 1e5 < compute["gpu_hours"] < 1.5e6
    assert d["suggestions"] == []
    assert {n["figure"] for n in d["reconciliation_notes"]} >= {"gradient accumulation", "model size"}
    assert d["deepspeed_estimate"]["applies"] is False


def test_r1_guide_without_the_guides_memory_fixes_does_not_fit():
    cfg = preset_config("r1_guide")
    cfg["parallel"].update({"activation_checkpointing": False, "offload_optimizer": False})
    d = plan(cfg).to_dict()
    assert not d["memory_gib"]["fits"]
    actions = {s["action"].split(" ")[0]: s for s in d["suggestions"]}
    assert actions["Turn"]["changes"] == {"parallel.activation_checkpointing": True} and actions["Turn"]["fits"]
    # PP 4 takes ZeRO 0/1 only, TP 16 exceeds a node, micro-batch 1 cannot halve: none of those are offered.
    changes = [s["changes"] for s in d["suggestions"]]
    assert {"parallel.zero_stage": 2} not in changes
    assert not any(c.get("parallel.tp") == 16 for c in changes)
    assert not any("batch.micro_batch" in c for c in changes)
    for s in d["suggestions"]:
        assert s["saves_gib"] > 0 and s["total_gib"] < d["memory_gib"]["total"]


def test_suggestions_hold_what_they_promise():
    cfg = preset_config("single_h200")
    cfg["batch"].update({"micro_batch": 128, "grad_accum": 1})
    p = plan(cfg)
    assert not p.memory.fits and p.suggestions
    for suggestion in p.suggestions:
        changed = preset_config("single_h200")
        changed["batch"].update({"micro_batch": 128, "grad_accum": 1})
        for path, value in suggestion["changes"].items():
            node = changed
            *parents, leaf = path.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        changed["training"]["total_steps"] = plan(changed).total_steps
        assert validate_config(changed, trainer="plan_only") == [], suggestion
        assert plan(changed).to_dict()["memory_gib"]["total"] == suggestion["total_gib"]
        assert plan(changed).tokens_per_step == p.tokens_per_step


def test_tiny_plan():
    d = plan(preset_config("tiny")).to_dict()
    assert (d["world_size"], d["data_parallel"], d["tokens_per_step"], d["total_steps"]) == (2, 2, 2048, 300)
    assert d["memory_gib"]["fits"] and d["memory_gib"]["total"] < 2
    assert d["compute"]["peak_tflops_per_gpu"] == PEAK_TFLOPS["CPU"]["fp32"]
    assert d["compute"]["time_to_budget_s"] < 600  # minutes on a laptop
    assert d["reconciliation_notes"] == []


def test_single_h200_plan():
    d = plan(preset_config("single_h200")).to_dict()
    assert 250e6 < d["params"]["total"] < 350e6 and 80e6 < d["params"]["active"] < 160e6
    assert d["memory_gib"]["fits"] and d["memory_gib"]["gpu_memory"] == 139.0
    assert 5 < d["memory_gib"]["total"] < 60
    assert 0.1 < d["compute"]["time_to_budget_s"] / 3600 < 24


# --- memory rules ----------------------------------------------------------------------------------------------------


def test_zero_stages_shard_more_and_more():
    states = [plan(pure_dp(zero=z)).memory for z in range(4)]
    totals = [m.model_states for m in states]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    params = count_params(preset_config("single_h200")["model"]).total
    # Stage 0 bf16: 2 (weights) + 2 + 4 (grads, fp32 copy) + 12 (master + Adam moments), all replicated.
    assert states[0].model_states == pytest.approx(20 * params)
    # Stage 1: the 16 fp32 bytes sharded over 8; stage 2 also the bf16 gradients; stage 3 also the weights.
    assert states[1].model_states == pytest.approx(4 * params + 16 * params / 8)
    assert states[2].model_states == pytest.approx(2 * params + 18 * params / 8)
    assert states[3].weights > 2 * params / 8  # the gathered layer stays live on top of the shard


def test_offload_moves_states_to_host_memory():
    before = plan(pure_dp(zero=2)).memory
    after = plan(pure_dp(zero=2, offload=True)).memory
    assert after.optimizer_states == 0 and after.cpu_per_node > 0
    assert after.total < before.total
    stage3 = plan(pure_dp(zero=3, offload=True, offload_param=True)).memory
    assert stage3.cpu_per_node > after.cpu_per_node and stage3.weights < before.weights


def test_activation_checkpointing_and_sequence_parallel_cut_activations():
    cfg = preset_config("single_h200")
    full = plan(cfg).memory
    cfg["parallel"]["activation_checkpointing"] = True
    ckpt = plan(cfg).memory
    assert ckpt.activations < full.activations / 3
    assert ckpt.activations_full == full.activations_full
    r1 = preset_config("r1_guide")
    with_sp = plan(r1).memory.activations_full
    r1["parallel"]["sp"] = False
    assert plan(r1).memory.activations_full > with_sp


def test_flash_attention_assumption():
    cfg = preset_config("single_h200")
    assert plan(cfg, flash_attention=False).memory.activations > plan(cfg).memory.activations


# --- DeepSpeed's estimators --------------------------------------------------------------------------------------------


def test_deepspeed_estimator_agrees_in_pure_data_parallel():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    params = count_params(preset_config("single_h200")["model"]).total
    d = plan(pure_dp(zero=2)).to_dict()["deepspeed_estimate"]
    _, gpu = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=8, num_nodes=1, cpu_offload=False)
    assert d["applies"] and d["function"].endswith("estimate_zero2_model_states_mem_needs")
    assert d["model_states_gpu"] == pytest.approx(gpu / GIB, abs=1e-3)
    assert d["ours_model_states_gpu"] == pytest.approx(d["model_states_gpu"], rel=0.01)  # 2 + 18/N either way

    # One GPU: stage 1 keeps nothing replicated that stage 2 would shard, so the two agree exactly.
    d = plan(preset_config("single_h200")).to_dict()["deepspeed_estimate"]
    assert d["ours_model_states_gpu"] == pytest.approx(d["model_states_gpu"], rel=1e-3)

    d = plan(pure_dp(zero=3)).to_dict()["deepspeed_estimate"]
    largest = count_params(preset_config("single_h200")["model"]).largest_tensor
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        params, largest, num_gpus_per_node=8, num_nodes=1, cpu_offload=False, cpu_offload_params=False
    )
    assert d["model_states_gpu"] == pytest.approx(gpu / GIB, abs=1e-3)
    assert d["ours_model_states_gpu"] == pytest.approx(d["model_states_gpu"], rel=0.15)

    d = plan(pure_dp(zero=2, offload=True)).to_dict()["deepspeed_estimate"]
    assert d["ours_model_states_gpu"] == pytest.approx(d["model_states_gpu"], rel=0.15)


def test_deepspeed_estimator_not_applied_outside_pure_data_parallel():
    assert plan(preset_config("r1_guide")).to_dict()["deepspeed_estimate"]["applies"] is False
    assert plan(pure_dp(zero=0)).to_dict()["deepspeed_estimate"]["applies"] is False


# --- time and the rest ---------------------------------------------------------------------------------------------------


def test_step_time_follows_flops_mfu_and_peak():
    cfg = preset_config("single_h200")
    p = plan(cfg, mfu=0.5)
    c = p.compute
    assert c["step_time_s"] == pytest.approx(c["flops_per_step"] / (989e12 * 0.5), rel=1e-3)
    counts = count_params(cfg["model"])
    assert c["flops_per_token_params"] == 6 * (counts.active - counts.embedding)
    assert c["flops_per_token_attention"] == 6 * 8 * 16 * 2048 * (96 + 64)
    slower = plan(cfg, mfu=0.25).compute
    assert slower["time_to_budget_s"] == pytest.approx(2 * c["time_to_budget_s"], rel=1e-3)
    assert plan(cfg, peak_tflops=494.5, mfu=0.5).compute["step_time_s"] == pytest.approx(2 * c["step_time_s"], rel=1e-3)


def test_mfu_from_the_config_and_unknown_gpus():
    cfg = preset_config("single_h200")
    cfg["planning"] = {"mfu": 0.2}
    assert plan(cfg).compute["mfu"] == 0.2
    cfg["cluster"]["gpu_type"] = "MI300X"
    p = plan(cfg)
    assert p.compute["step_time_s"] is None and any("MI300X" in a for a in p.assumptions)
    assert plan(cfg, peak_tflops=1300.0).compute["step_time_s"] > 0
    with pytest.raises(PlanError):
        plan(cfg, mfu=1.5)


def test_invalid_layout_raises_plan_error_naming_the_field():
    cfg = preset_config("single_h200")
    cfg["cluster"].update({"backend": "slurm", "gpus_per_node": 8})
    cfg["parallel"]["pp"] = 3
    with pytest.raises(PlanError) as err:
        plan(cfg)
    assert any(i.field == "parallel.pp" for i in err.value.issues)
    assert isinstance(err.value, ValueError)


def test_plan_dict_is_json_ready_and_complete():
    d = plan(preset_config("r1_guide"), preset="r1_guide").to_dict()
    json.dumps(d)
    assert set(d) == {
        "world_size",
        "data_parallel",
        "layout",
        "tokens_per_step",
        "tokens_per_micro_step",
        "sequences_per_step",
        "global_batch_tokens",
        "global_batch_deviation_pct",
        "total_steps",
        "params",
        "params_per_gpu",
        "memory_gib",
        "deepspeed_estimate",
        "suggestions",
        "compute",
        "reconciliation_notes",
        "assumptions",
    }
    assert len(d["assumptions"]) >= 6 and all(isinstance(a, str) for a in d["assumptions"])
    assert d["params_per_gpu"]["expert"] == pytest.approx(d["params"]["expert"] / 64, rel=1e-6)
    assert d["params_per_gpu"]["non_expert"] == pytest.approx(d["params"]["non_expert"] / 32, rel=1e-6)


def test_plan_is_fast_for_the_form():
    cfg = preset_config("r1_guide")
    cfg["parallel"]["activation_checkpointing"] = False  # the slow path: it does not fit, so suggestions run
    plan(cfg)
    plan(pure_dp())
    start = time.perf_counter()
    for _ in range(10):
        plan(cfg)
        plan(pure_dp())
    assert (time.perf_counter() - start) / 20 < 0.05
