"""The exported Hugging Face model computes the same logits as ours (fp32, tolerance 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.common.run_config import parse_run_config
from jobs.export.hf import _main as export_main
from jobs.export.hf import export, hf_architecture
from jobs.train.model import build_model
from tests.jobs.conftest import tiny_run, write_run


def _ours_and_theirs(tmp_path, **model_overrides):
    transformers = pytest.importorskip("transformers")
    cfg = parse_run_config(tiny_run(model=model_overrides)).model
    model = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        # Random router weights give real routing choices rather than near-ties at init scale.
        for layer in model.moe_layers:
            layer.mlp.gate.weight.normal_(0.0, 1.0)
    export(cfg, model.state_dict(), tmp_path / "hf")
    cls = getattr(transformers, hf_architecture(cfg))
    hf = cls.from_pretrained(tmp_path / "hf", attn_implementation="eager", torch_dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(input_ids=ids).logits
    return cfg, ours, theirs


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"q_lora_rank": 16, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5, "num_routed_experts": 8},
        {"norm_topk_prob": False, "tie_embeddings": True, "first_k_dense": 0, "num_shared_experts": 2},
    ],
    ids=["moe-mla", "moe-mla-qlora-grouped", "moe-untied-norm-off"],
)
def test_deepseek_v3_logits_match(tmp_path, overrides):
    cfg, ours, theirs = _ours_and_theirs(tmp_path, **overrides)
    assert cfg.is_moe
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_dense_mla_exports_as_deepseek_v3_with_dense_layers(tmp_path):
    cfg, ours, theirs = _ours_and_theirs(tmp_path, arch="dense")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["first_k_dense_replace"] == cfg.num_layers
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_dense_mha_exports_as_llama(tmp_path):
    cfg, ours, theirs = _ours_and_theirs(tmp_path, arch="dense", attention="mha", num_heads=4)
    assert hf_architecture(cfg) == "LlamaForCausalLM"
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_moe_mha_is_refused():
    cfg = parse_run_config(tiny_run(model={"attention": "mha"})).model
    with pytest.raises(ValueError, match="no Hugging Face architecture"):
        hf_architecture(cfg)


def test_cli_exports_a_saved_checkpoint(tmp_path):
    """The command-line path reads run.json and a DeepSpeed-style checkpoint folder."""
    transformers = pytest.importorskip("transformers")
    run_dir = write_run(tmp_path / "run", tiny_run())
    cfg = parse_run_config(tiny_run()).model
    model = build_model(cfg, seed=5).eval()
    tag_dir = run_dir / "checkpoints" / "step_000002"
    tag_dir.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, tag_dir / "mp_rank_00_model_states.pt")
    (run_dir / "checkpoints" / "index.json").write_text(json.dumps([{"step": 2, "tag": "step_000002"}]))
    assert export_main(["--run-dir", str(run_dir), "--out", str(tmp_path / "hf"), "--dtype", "bf16"]) == 0
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    assert hf.dtype == torch.bfloat16
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(hf.float()(input_ids=ids).logits, model(ids), rtol=3e-2, atol=3e-2)
