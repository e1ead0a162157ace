"""Tiny model dirs for the engine, server and latency tests, as ``jobs.export.quantize`` lays them out.

Weights are random with a spread (std 1/sqrt(fan-in)) so that the logits have clear winners: a greedy comparison
with transformers then tests the arithmetic, not which of two near-equal logits floating-point noise favours.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from jobs.common.run_config import parse_run_config
from jobs.export.hf import export
from jobs.train.model import build_model
from tests.jobs.conftest import REPO, tiny_run

TOKENIZER = REPO / "jobs" / "assets" / "tokenizer.model"


def _spread(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.ndim == 2 and not name.endswith("mlp.gate.weight"):
            out[name] = torch.randn(t.shape, generator=gen) / t.shape[-1] ** 0.5
        else:
            out[name] = t
    return out


def export_tiny(out: Path, *, seed: int = 1, dtype: str = "fp32", **model) -> Path:
    """A tiny run config's model exported with hf_export (dense+mha -> Llama, moe+mla -> DeepseekV3)."""
    cfg = parse_run_config(tiny_run(model={"max_seq_len": 256, **model})).model
    state = _spread(build_model(cfg, seed=seed).state_dict(), seed)
    export(cfg, state, out, dtype)
    shutil.copy(TOKENIZER, out / "tokenizer.model")
    return out


def export_llama(out: Path, *, seed: int = 1, dtype: str = "fp32") -> Path:
    return export_tiny(out, seed=seed, dtype=dtype, arch="dense", attention="mha", num_heads=4, hidden_size=64,
                       intermediate_size=128)  # fmt: skip


def save_llama_gqa(out: Path, *, seed: int = 2) -> Path:
    """A Llama with grouped-query attention (8 query heads over 2 KV heads), which hf_export does not produce."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(_spread(model.state_dict(), seed))
    model.save_pretrained(out)
    shutil.copy(TOKENIZER, out / "tokenizer.model")
    return out


def quantize(src: Path, out: Path, *, kind: str) -> Path:
    """NF4 with the R1 guide's config, or int8; saved before any forward pass (the CPU repack bug)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if kind == "nf4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    else:
        q = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map={"": "cpu"},
                                                 dtype=torch.bfloat16)  # fmt: skip
    model.save_pretrained(out)
    shutil.copy(TOKENIZER, out / "tokenizer.model")
    return out


def hf_greedy(model, prompt: list[int], n: int, eos_ids) -> list[int]:
    """transformers' generate(do_sample=False) tokens after the prompt (stops at EOS like the engine)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=sorted(eos_ids),
                             pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))  # fmt: skip
    return out[0, len(prompt) :].tolist()
