"""jobs.export.quantize on real short CPU training runs: artifacts, report, progress, held-out slice, reload check, errors."""

from __future__ import annotations

import json
import math
import struct
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")

from jobs.common.run_config import parse_run_config
from jobs.data import MixedBatcher
from jobs.data.locations import default_shards_dir, default_tokenizer_path
from jobs.export.hf import export
from jobs.export.quantize import RELOAD_RTOL, eval_windows, load_model, trainer_positions, trainer_state
from jobs.train.checkpoint import read_index
from jobs.train.model import build_model
from tests.jobs.conftest import PYTHON, REPO, describe, run_trainer, tiny_run, trainer_env, write_run

STAGES = ["export", "eval:base"] + [f"{s}:{m}" for m in ("nf4", "int8") for s in ("quantize", "eval", "verify")]
LLAMA = {"arch": "dense", "attention": "mha", "num_heads": 4}


def _train(root: Path, **sections) -> Path:
    run_dir = write_run(root / "run", tiny_run(training={"total_steps": 4}, **sections))
    proc = run_trainer(run_dir, launcher="none")
    assert proc.returncode == 0, describe(proc)
    return run_dir


def _quantize(run_dir: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "jobs.export.quantize", "--run-dir", str(run_dir), "--out", str(out), "--device", "cpu", *args]
    return subprocess.run(cmd, cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)


def _report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, describe(proc)
    last = proc.stdout.rstrip().splitlines()[-1]
    assert last.startswith("QUANT_REPORT "), describe(proc)
    return json.loads(last.removeprefix("QUANT_REPORT "))


def _tensors(path: Path) -> dict[str, dict]:
    """A safetensors file's header: name -> {dtype, shape, data_offsets}."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    return header


def _nbytes(entry: dict) -> int:
    return entry["data_offsets"][1] - entry["data_offsets"][0]


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """The default tiny model (moe + mla -> DeepseekV3ForCausalLM) trained 4 steps and quantized with both methods."""
    root = tmp_path_factory.mktemp("moe")
    run_dir = _train(root)
    proc = _quantize(run_dir, root / "art", "--tag", "latest")
    return run_dir, root / "art", proc


def test_artifacts_report_and_progress(moe):
    run_dir, art, proc = moe
    report = _report(proc)
    assert report == json.loads((art / "report.json").read_text())
    lines = proc.stdout.splitlines()
    assert all(line.startswith(("QUANT_PROGRESS ", "QUANT_REPORT ")) for line in lines), proc.stdout
    progress = [json.loads(line.removeprefix("QUANT_PROGRESS ")) for line in lines if line.startswith("QUANT_PROGRESS")]
    assert [p["stage"] for p in progress] == [*STAGES, "done"]
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    final = json.loads((art / "progress.json").read_text())
    assert final["stage"] == "done" and final["fraction"] == 1.0 and final["updated_at"] > 0
    assert not list(art.glob(".*.tmp"))

    assert report["source"] == {"run_dir": str(run_dir), "tag": "step_000004", "step": 4}
    assert report["architecture"] == "DeepseekV3ForCausalLM" and report["device"] == "cpu"
    assert report["eval"]["tokens"] == 4096
    assert "Shard token streams" in report["eval"]["description"] and "4 steps" in report["eval"]["description"]
    assert [a["method"] for a in report["artifacts"]] == ["nf4", "int8"]
    tokenizer = Path(default_tokenizer_path()).read_bytes()
    for entry in [report["base"], *report["artifacts"]]:
        folder = Path(entry["path"])
        assert {"config.json", "model.safetensors", "tokenizer.model"} <= {p.name for p in folder.iterdir()}
        assert (folder / "tokenizer.model").read_bytes() == tokenizer
        assert entry["bytes"] == (folder / "model.safetensors").stat().st_size > 0
        assert entry["seconds"] >= 0 and math.isfinite(entry["perplexity"])
    assert json.loads((art / "base" / "config.json").read_text())["dtype"] == "bfloat16"
    for artifact in report["artifacts"]:
        assert artifact["reload_max_abs_diff"] <= 1e-3
    base_ppl = report["base"]["perplexity"]
    nf4, int8 = report["artifacts"]
    # 4 training steps leave the model near uniform over 4096 tokens; quantization must not move it far.
    assert base_ppl < 4096 * 1.5
    assert 0.8 < nf4["perplexity"] / base_ppl < 1.25
    assert 0.95 < int8["perplexity"] / base_ppl < 1.05


def test_quantized_linear_weights_are_smaller(moe):
    """On a tiny model the unquantized embeddings and lm_head are most of the bytes (NF4's per-layer quantization
    tables even make the nf4 file larger), so compare the quantized Linear weights themselves."""
    _, art, proc = moe
    _report(proc)
    base = _tensors(art / "base" / "model.safetensors")
    nf4 = _tensors(art / "nf4" / "model.safetensors")
    int8 = _tensors(art / "int8" / "model.safetensors")
    packed = [k for k in nf4 if k + ".quant_map" in nf4]
    assert len(packed) == 14  # 4 attention projections a layer, the dense MLP (layer 0), the shared expert (1)
    for name in packed:
        assert nf4[name]["dtype"] == "U8" and _nbytes(nf4[name]) * 4 == _nbytes(base[name]), name  # 4 bits vs 16
        assert int8[name]["dtype"] == "I8" and _nbytes(int8[name]) * 2 == _nbytes(base[name]), name
    assert (
        sum(_nbytes(nf4[k]) + _nbytes(nf4[k + ".absmax"]) for k in packed) < sum(_nbytes(base[k]) for k in packed) / 3
    )
    # transformers keeps DeepSeek-V3's routed experts as fused parameters, which bitsandbytes leaves in bf16.
    assert nf4["model.layers.1.mlp.experts.0.gate_proj.weight"]["dtype"] == "BF16"
    assert nf4["model.embed_tokens.weight"]["dtype"] == "BF16" and nf4["lm_head.weight"]["dtype"] == "BF16"


def test_saved_nf4_artifact_computes_what_the_in_memory_model_computes(moe):
    """Quantize the exported base here, in this process, and compare its logits with the job's saved nf4 folder."""
    _, art, proc = moe
    _report(proc)
    ids = torch.randint(0, 4096, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fresh = load_model(path=art / "base", device="cpu", method="nf4")(input_ids=ids).logits.float()
        saved = load_model(path=art / "nf4", device="cpu")(input_ids=ids).logits.float()
    assert (saved - fresh).abs().max().item() <= RELOAD_RTOL * fresh.abs().max().item()


def test_reload_check_catches_a_save_after_the_cpu_repacking(tmp_path):
    """The bug the job avoids (docs/reference cpu.md): on an AVX512-BF16 CPU, saving a 4-bit model after a forward
    pass stores re-quantized scales. The job's tolerance must see the difference. Dimensions are multiples of 64 so
    that bitsandbytes' repacking runs at all."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack")
    cfg = parse_run_config(tiny_run(model={**LLAMA, "hidden_size": 64, "intermediate_size": 128})).model
    export(cfg, build_model(cfg, seed=3).state_dict(), tmp_path / "base", "bf16")
    model = _repacking(load_model(path=tmp_path / "base", device="cpu", method="nf4"))
    ids = torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()  # repacks every Linear4bit in place
        model.save_pretrained(tmp_path / "after")
        reloaded = _repacking(load_model(path=tmp_path / "after", device="cpu"))(input_ids=ids).logits.float()
    assert (reloaded - logits).abs().max().item() > RELOAD_RTOL * logits.abs().max().item()


def _repacking(model):
    """bitsandbytes' default on this CPU, which load_model switches off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    return model


def test_replayed_data_draws_match_the_trainers_own_record(moe):
    """The held-out slice rests on replaying the trainer's draws: from step 2's saved state to the run's last step
    the replay must reach exactly the positions the trainer saved at step 4."""
    run_dir, _, _ = moe
    cfg = parse_run_config(json.loads((run_dir / "run.json").read_text()))
    assert [e["tag"] for e in read_index(run_dir / "checkpoints")] == ["step_000002", "step_000004"]
    at2 = trainer_state(tag_dir=run_dir / "checkpoints" / "step_000002")
    at4 = trainer_state(tag_dir=run_dir / "checkpoints" / "step_000004")
    assert at2["step"] == 2 and at4["step"] == 4
    assert at2["data"]["sources"] != at4["data"]["sources"]
    assert trainer_positions(cfg=cfg, data_state=at2["data"], step=2) == at4["data"]["sources"]
    windows, info = eval_windows(cfg=cfg, data_state=at2["data"], step=2, tokens=4096)
    assert windows.shape == (128, 33)
    assert {n: s["windows"] for n, s in info["sources"].items()} == {"zh": 58, "en": 45, "other": 25}
    for name, source in info["sources"].items():
        assert source["from"] == "shards" and source["start"] == at4["data"]["sources"][name]["cursor"] + 1


def test_sources_read_whole_fall_back_to_fresh_corpus_text_or_fail(tmp_path):
    """A run long enough to read every bundled source gets fresh generated paragraphs; custom shards cannot."""
    raw = tiny_run(batch={"micro_batch": 64, "global_batch_tokens": 4096}, training={"total_steps": 400})
    cfg = parse_run_config(raw)
    state = MixedBatcher(raw, rank=0, world=1, seed=1234).state_dict()
    windows, info = eval_windows(cfg=cfg, data_state=state, step=0, tokens=1024)
    assert windows.shape == (32, 33) and windows.max() < 4096
    assert {s["from"] for s in info["sources"].values()} == {"corpus"}
    assert "fresh paragraphs" in info["description"]
    (tmp_path / "shards").symlink_to(default_shards_dir())
    custom = parse_run_config({**raw, "data": {**raw["data"], "shards_dir": str(tmp_path / "shards")}})
    with pytest.raises(ValueError, match="no held-out windows"):
        eval_windows(cfg=custom, data_state=state, step=0, tokens=1024)


def test_bad_tag_fails_with_one_clear_line(moe, tmp_path):
    run_dir, _, _ = moe
    proc = _quantize(run_dir, tmp_path / "art", "--tag", "step_000999")
    assert proc.returncode == 1, describe(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("quantize: error: FileNotFoundError: checkpoint 'step_000999' not found"), last
    assert "step_000002, step_000004" in last
    progress = json.loads((tmp_path / "art" / "progress.json").read_text())
    assert progress["stage"] == "failed" and "step_000999" in progress["message"]
    assert "QUANT_REPORT" not in proc.stdout and not (tmp_path / "art" / "report.json").exists()


def test_dense_mha_model_quantizes_as_llama(tmp_path):
    run_dir = _train(tmp_path, model=LLAMA)
    report = _report(_quantize(run_dir, tmp_path / "art", "--tag", "step_000002", "--eval-tokens", "1000"))
    assert report["architecture"] == "LlamaForCausalLM" and report["source"]["step"] == 2
    assert report["eval"]["tokens"] == 32 * 32  # 1000 rounded up to whole windows of 32
    assert [a["method"] for a in report["artifacts"]] == ["nf4", "int8"]
    for artifact in report["artifacts"]:
        assert artifact["bytes"] > 0 and artifact["reload_max_abs_diff"] <= 1e-3
        assert 0.8 < artifact["perplexity"] / report["base"]["perplexity"] < 1.25


def test_empty_methods_export_and_measure_the_base_only(moe, tmp_path):
    """The control plane passes ``--methods ""`` for an export without quantization."""
    run_dir, _, _ = moe
    report = _report(_quantize(run_dir, tmp_path / "art", "--tag", "latest", "--methods", "", "--eval-tokens", "64"))
    assert report["artifacts"] == [] and report["eval"]["tokens"] == 64
    assert math.isfinite(report["base"]["perplexity"])
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["base", "progress.json", "report.json"]
    assert json.loads((tmp_path / "art" / "progress.json").read_text())["stage"] == "done"
