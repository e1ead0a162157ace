"""Attention blocks: DeepSeek-V3 Multi-head Latent Attention and plain multi-head attention, plus RMSNorm and RoPE.

Parameter names follow Hugging Face's DeepseekV3Attention / LlamaAttention so that export is a rename-free copy and
the exported model computes the same function (checked by tests/jobs/export/test_hf.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jobs.common.run_config import ModelConfig
from jobs.train.tensor_parallel import ColumnParallelLinear, RowParallelLinear, TPInfo, copy_to_tp

# transformers builds MLA's inner q_a/kv_a norms with its default eps, not config.rms_norm_eps.
MLA_INNER_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalising in fp32 keeps bf16 training stable and matches the HF reference bit for bit in fp32.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotary_tables(dim: int, seq_len: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [seq_len, dim] in fp32, laid out as cat(freqs, freqs) for rotate_half."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    pos = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class RotaryTables(nn.Module):
    """cos/sin tables for positions [0, max_seq_len), built once as non-persistent fp32 buffers and sliced per call.

    Rebuilding them every step costs a pow/cos/sin per element inside the fused rotary kernels; a slice of the same
    table holds the same values (each entry depends only on its position and frequency). Non-persistent, so neither
    checkpoints nor the HF export see them. Longer sequences than the table fall back to building one on the fly.
    """

    cos: torch.Tensor  # buffers, registered in __init__
    sin: torch.Tensor

    def __init__(self, dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.dim, self.theta = dim, theta
        cos, sin = rotary_tables(dim, max_seq_len, theta, torch.device("cpu"))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.cos.shape[0] or self.cos.is_meta:
            return rotary_tables(self.dim, seq_len, self.theta, self.cos.device)
        return self.cos[:seq_len], self.sin[:seq_len]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, L, dim]; cos/sin: [L, dim] (fp32, cast to x's dtype as HF does)."""
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class MultiHeadLatentAttention(nn.Module):
    """MLA: keys/values come from a low-rank latent (kv_lora_rank) plus a decoupled rotary key shared by all heads.

    Under tensor parallelism each rank holds num_heads/tp heads: q_proj/q_b_proj and kv_b_proj are column-parallel
    over heads, o_proj row-parallel; the low-rank down-projections (q_a_proj, kv_a_proj_with_mqa) and their norms are
    replicated. The shared rotary key feeds only this rank's heads, so its gradient is all-reduced (copy_to_tp).
    """

    def __init__(self, cfg: ModelConfig, tp: TPInfo | None = None) -> None:
        super().__init__()
        tp = tp or TPInfo()
        self.tp = tp
        h = tp.shard(cfg.num_heads, "num_heads")
        self.num_heads = h
        self.nope_dim = cfg.qk_nope_head_dim
        self.rope_dim = cfg.qk_rope_head_dim
        self.qk_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        self.v_dim = cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.scale = self.qk_dim**-0.5
        if cfg.q_lora_rank > 0:
            self.q_a_proj = nn.Linear(cfg.hidden_size, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, MLA_INNER_NORM_EPS)
            self.q_b_proj = ColumnParallelLinear(cfg.q_lora_rank, cfg.num_heads * self.qk_dim, tp)
        else:
            self.q_proj = ColumnParallelLinear(cfg.hidden_size, cfg.num_heads * self.qk_dim, tp)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.hidden_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, MLA_INNER_NORM_EPS)
        self.kv_b_proj = ColumnParallelLinear(cfg.kv_lora_rank, cfg.num_heads * (self.nope_dim + self.v_dim), tp)
        self.o_proj = RowParallelLinear(cfg.num_heads * self.v_dim, cfg.hidden_size, tp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.num_heads
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, n, h, self.qk_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)

        kv_latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(kv_latent)).view(b, n, h, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k_rope = copy_to_tp(k_rope, self.tp.group, self.tp.size).view(b, 1, n, self.rope_dim)

        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope, cos, sin)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(b, h, n, self.rope_dim)), dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, h * self.v_dim))


class MultiHeadAttention(nn.Module):
    """Llama-style attention: rotary on the whole head, no biases; q/k/v column-parallel over heads, o row-parallel."""

    def __init__(self, cfg: ModelConfig, tp: TPInfo | None = None) -> None:
        super().__init__()
        tp = tp or TPInfo()
        self.num_heads = tp.shard(cfg.num_heads, "num_heads")
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = ColumnParallelLinear(d, d, tp)
        self.k_proj = ColumnParallelLinear(d, d, tp)
        self.v_proj = ColumnParallelLinear(d, d, tp)
        self.o_proj = RowParallelLinear(d, d, tp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        d = self.num_heads * self.head_dim
        shape = (b, n, self.num_heads, self.head_dim)
        q = apply_rope(self.q_proj(x).view(shape).transpose(1, 2), cos, sin)
        k = apply_rope(self.k_proj(x).view(shape).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, d))


def build_attention(cfg: ModelConfig, tp: TPInfo | None = None) -> nn.Module:
    return MultiHeadLatentAttention(cfg, tp) if cfg.is_mla else MultiHeadAttention(cfg, tp)
