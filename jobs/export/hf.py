"""Export trained weights as a Hugging Face model directory (config.json + model.safetensors).

- moe+mla and dense+mla -> ``DeepseekV3ForCausalLM`` (dense+mla as a DeepSeek-V3 whose layers are all dense:
  first_k_dense_replace = num_layers). Routed experts are written per expert (``mlp.experts.<i>.gate_proj.weight``,
  the layout of the published DeepSeek-V3 checkpoints), which every transformers version that has DeepseekV3 loads;
  ``e_score_correction_bias`` is written as zeros because the trainer balances with the auxiliary loss, not a bias.
  RoPE is exported with rope_interleave=false, the rotate-half layout the trainer uses.
- dense+mha -> ``LlamaForCausalLM``.
- moe+mha has no Hugging Face architecture with DeepSeek's routing; export refuses it.

Usage: ``python -m jobs.export.hf --run-dir RUN --out DIR [--tag latest|step_000100] [--dtype fp32|bf16]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from jobs.common.run_config import ModelConfig, load_run_config

_EXPERT_PATH = "mlp.experts.deepspeed_moe.experts.deepspeed_experts."
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def hf_architecture(cfg: ModelConfig) -> str:
    if cfg.is_mla:
        return "DeepseekV3ForCausalLM"
    if not cfg.is_moe:
        return "LlamaForCausalLM"
    raise ValueError("model: moe with mha attention has no Hugging Face architecture with the same routing")


def hf_config(cfg: ModelConfig, dtype: str = "fp32") -> dict:
    torch_dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }
    arch = hf_architecture(cfg)
    if arch == "LlamaForCausalLM":
        return {"architectures": [arch], "model_type": "llama", "head_dim": cfg.head_dim, "mlp_bias": False, **common}
    moe = cfg.is_moe
    return {
        "architectures": [arch],
        "model_type": "deepseek_v3",
        **common,
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "n_shared_experts": cfg.num_shared_experts if moe else 0,
        "n_routed_experts": cfg.num_routed_experts if moe else 2,
        "num_experts_per_tok": cfg.top_k if moe else 1,
        "n_group": cfg.n_group if moe else 1,
        "topk_group": cfg.topk_group if moe else 1,
        "routed_scaling_factor": cfg.routed_scaling_factor,
        "norm_topk_prob": cfg.norm_topk_prob,
        "first_k_dense_replace": cfg.first_k_dense if moe else cfg.num_layers,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "q_lora_rank": cfg.q_lora_rank or None,
        "kv_lora_rank": cfg.kv_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "rope_interleave": False,
        "num_nextn_predict_layers": 0,
    }


def hf_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: str = "fp32") -> dict[str, torch.Tensor]:
    """Our full (all experts, global ids) state dict -> HF tensor names, contiguous, in ``dtype``."""
    hf_architecture(cfg)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[name] = tensor
            continue
        out["model." + name.replace(_EXPERT_PATH, "mlp.experts.")] = tensor
    for i in range(cfg.num_layers):
        if cfg.is_moe_layer(i):
            out[f"model.layers.{i}.mlp.gate.e_score_correction_bias"] = torch.zeros(cfg.num_routed_experts)
    want = _DTYPES[dtype]
    # The router runs in fp32 in both implementations (transformers keeps gate.weight in fp32 too).
    return {
        k: v.detach()
        .to("cpu", torch.float32 if k.endswith(("mlp.gate.weight", "e_score_correction_bias")) else want)
        .contiguous()
        .clone()
        for k, v in out.items()
    }


def export(cfg: ModelConfig, state: dict[str, torch.Tensor], out_dir: str | Path, dtype: str = "fp32") -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_dict(cfg, state, dtype)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, dtype), indent=2) + "\n")
    return out


def checkpoint_state_dict(tag_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full model weights from one DeepSpeed checkpoint folder: tensor-parallel shards and the experts of every
    expert-parallel rank merged (experts are replicated in a tensor-parallel group: rank 0's copy is read).

    ZeRO-3 (per-rank ``zero_pp_rank_*_model_states.pt`` files) keeps only partitions, so its weights are rebuilt
    from the optimizer shards with DeepSpeed's zero_to_fp32; the other stages keep whole non-expert weights in mp_rank_00_model_states.pt and one
    file per (MoE layer, global expert).
    """
    tag_dir = Path(tag_dir)
    if (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").exists():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name))
    from jobs.train.pipeline import merge_pipeline_layers
    from jobs.train.tensor_parallel import merge_states

    layer_files = sorted(tag_dir.glob("layer_*-model_*-model_states.pt"))
    if layer_files:
        # Pipeline-parallel: one file per (pipeline layer, tensor-parallel rank).
        per_tp: dict[int, dict[int, dict]] = {}
        for path in layer_files:
            m = re.match(r"layer_(\d+)-model_(\d+)-model_states\.pt$", path.name)
            if m:
                state = torch.load(path, map_location="cpu", weights_only=False)
                per_tp.setdefault(int(m.group(2)), {})[int(m.group(1))] = state
        num_layers = max(per_tp[0]) - 1
        return merge_states([merge_pipeline_layers(per_tp[t], num_layers) for t in sorted(per_tp)])
    # DeepSpeed checkpoints pickle its config objects next to the tensors; they are our own files. Tensor-parallel
    # runs write one mp_rank_XX file per tensor-parallel rank, merged along each weight's split dimension.
    shards = [
        torch.load(path, map_location="cpu", weights_only=False)["module"]
        for path in sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    ]
    merged = merge_states(shards)
    pattern = re.compile(r"layer_\d+_expert_\d+_mp_rank_00_model_states\.pt$")
    for path in sorted(tag_dir.iterdir()):
        if pattern.match(path.name):
            merged.update(torch.load(path, map_location="cpu", weights_only=False))
    return merged


def _main(argv: list[str] | None = None) -> int:
    from jobs.train.checkpoint import resolve_tag

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run_dir)
    ckpt_dir = Path(args.run_dir) / "checkpoints"
    tag = resolve_tag(ckpt_dir, args.tag)
    out = export(cfg.model, checkpoint_state_dict(ckpt_dir / tag), args.out, args.dtype)
    print(json.dumps({"exported": str(out), "tag": tag, "architecture": hf_architecture(cfg.model)}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
