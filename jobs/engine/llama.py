"""The fast decode path for Llama-architecture models (bf16, NF4, int8), on the weights transformers loaded.

Why our own forward: transformers' eager ``generate`` spends a 1.1 B model's decode step launching ~700 small
kernels from Python (26.7 ms/token on an H200 while reading the weights takes ~0.5 ms). Here the decode step is a
fixed-shape function over static buffers, captured once per (batch bucket, KV-length bucket) in a CUDA graph, so a
step is one graph launch. On CPU the same code runs eagerly.

- KV cache: static, ``[layers, max_batch, max_seq_len, 2 * kv_heads, head_dim]`` (a position's K and V side by
  side, so one indexed copy per layer writes both). A request owns one slot (a batch row) from prefill to its end.
- Decode: rows [0, b) of the static input buffer (token id and position per row) for the smallest bucket
  b in (1, 2, 4, 8, 16, 32, max_batch) covering the highest busy slot; free rows compute harmless garbage at
  position 0 of their own slot. Attention reads the first L cache positions, L the smallest KV bucket
  (256, 1024, 4096, ..., max_seq_len) covering the longest row, masked per row by its position. GQA without
  copying K/V: the query heads of one KV head are laid out as that head's "query rows".
- Prefill: eager, causal SDPA over the prompt, writing the slot's cache; requests admitted together are prefilled
  in one pass over their concatenated prompts (block-diagonal causal mask).
- Norms, RoPE (tables built once, as transformers builds them) and SwiGLU as in ``LlamaForCausalLM``. On CUDA, for
  fewer kernels per step: the fused ``F.rms_norm`` (weight applied in fp32 before rounding; transformers rounds
  first) and RoPE's add as one ``addcmul``, so bf16 results differ from transformers' in the last bit now and
  then; on CPU transformers' exact order of operations, so fp32 results match its tokens.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from jobs.engine.linear import choose_int8_kernel, choose_nf4_kernel, make_linear

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
# Prefill shapes change with every prompt length. cuDNN's attention (which PyTorch prefers on an H100/H200)
# builds an execution plan per new shape, which under a burst of new prompt lengths costs more than the prefill
# itself (bench/README.md, serve_latency); the flash and memory-efficient kernels have no such step.
# Decode shapes are fixed per CUDA graph, so decode keeps PyTorch's choice.
_PREFILL_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
KV_BUCKETS = (256, 1024, 4096, 16384, 65536)


def unsupported_reason(model) -> str | None:
    """Why the fast path cannot run this model (None when it can)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama" or type(model).__name__ != "LlamaForCausalLM":
        return f"architecture {type(model).__name__} is not LlamaForCausalLM"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention/MLP biases"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") in ("dynamic", "longrope"):
        return f"rope_type {rope.get('rope_type')} depends on the sequence length"
    return None


def _buckets(candidates: tuple[int, ...], top: int) -> list[int]:
    return sorted({c for c in candidates if c < top} | {top})


class LlamaBackend:
    """Prefill and decode for one Llama model over a static KV cache of ``max_batch`` slots."""

    path = "llama-fast"

    def __init__(self, *, model, max_batch: int, max_seq_len: int, cuda_graphs: bool = True,
                 pad_to_buckets: bool = False):  # fmt: skip
        cfg = model.config
        inner = model.model
        self.model = model
        self.device = inner.embed_tokens.weight.device
        self.dtype = inner.embed_tokens.weight.dtype
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.group = self.n_heads // self.n_kv
        self.scale = self.head_dim**-0.5
        self.hidden = cfg.hidden_size
        self.vocab = cfg.vocab_size
        self.exact = self.device.type != "cuda"  # CPU: transformers' exact op order (tests compare tokens)
        self.embed = inner.embed_tokens.weight
        self.final_norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = make_linear([model.lm_head])
        self.layers: list[dict[str, Any]] = []  # each layer's projections, and its norms' (weight, eps)
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                {
                    "in_norm": (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                    "post_norm": (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                    "qkv": make_linear([attn.q_proj, attn.k_proj, attn.v_proj]),
                    "o": make_linear([attn.o_proj]),
                    "gate_up": make_linear([mlp.gate_proj, mlp.up_proj]),
                    "down": make_linear([mlp.down_proj]),
                }
            )  # fmt: skip
        linears = [lin for layer in self.layers for key, lin in layer.items() if "norm" not in key]
        self.weights = self._weight_format(linears)
        parts = [p for lin in [*linears, self.lm_head] for p in getattr(lin, "parts", [lin])]
        self.nf4_kernel = (
            choose_nf4_kernel(parts, dtype=self.dtype, batches=_buckets(BATCH_BUCKETS, max_batch))
            if self.device.type == "cuda"
            else "n/a"
        )
        self.int8_kernel = choose_int8_kernel(linears, dtype=self.dtype)
        self._rope_tables(inner.rotary_emb)
        # K and V of a position side by side: [layers, slots, positions, 2 * kv_heads, head_dim].
        shape = (len(self.layers), max_batch, max_seq_len, 2 * self.n_kv, self.head_dim)
        self.kv_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.arange = torch.arange(max(max_seq_len, max_batch), device=self.device)
        # Row r: (token id, position) of slot r. Rows [0, b) are one contiguous block, copied host->device at once.
        self.io = torch.zeros((max_batch, 2), dtype=torch.long, device=self.device)
        self.io_host = torch.zeros((max_batch, 2), dtype=torch.long, pin_memory=self.device.type == "cuda")
        self.io_np = self.io_host.numpy()  # filled from Python without a tensor op per element
        self.logits = torch.zeros((max_batch, self.vocab), device=self.device, dtype=self.dtype)
        self.batch_buckets = _buckets(BATCH_BUCKETS, max_batch)
        self.kv_buckets = _buckets(KV_BUCKETS, max_seq_len)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.graph_error: str | None = None
        self.pad_to_buckets = pad_to_buckets  # CPU tests: run the graphs' padded shapes eagerly
        if cuda_graphs and self.device.type == "cuda":
            self._capture()

    # ---- set-up -----------------------------------------------------------------------------------------------
    @staticmethod
    def _weight_format(linears) -> str:
        names = {type(lin).__name__ for lin in linears}
        if "NF4Linear" in names:
            return "nf4"
        if "Int8Linear" in names:
            return "int8"
        return "dense"

    def _rope_tables(self, rotary) -> None:
        inv_freq = rotary.inv_freq.to(self.device, torch.float32)
        positions = torch.arange(self.max_seq_len, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        scaling = getattr(rotary, "attention_scaling", 1.0)
        self.cos = (emb.cos() * scaling).to(self.dtype)
        sin = (emb.sin() * scaling).to(self.dtype)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]: one roll instead of slice/negate/concat.
        self.sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    @torch.no_grad()
    def _capture(self) -> None:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                # Every shape once before capture: library handles, kernel plans and heuristics are set up here,
                # not inside a capture.
                for b in self.batch_buckets:
                    for length in self.kv_buckets:
                        self._decode_body(b, length)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            pool = torch.cuda.graph_pool_handle()
            for b in reversed(self.batch_buckets):
                for length in reversed(self.kv_buckets):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self._decode_body(b, length)
                    self.graphs[(b, length)] = graph
            torch.cuda.synchronize()
        except Exception as exc:  # a capture failure leaves a working eager engine, and says so
            log.exception("CUDA graph capture failed; decoding eagerly")
            self.graphs.clear()
            self.graph_error = f"{type(exc).__name__}: {exc}"
            torch.cuda.synchronize()

    def info(self) -> dict:
        return {
            "path": self.path,
            "weights": self.weights,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "cuda_graphs": len(self.graphs),
            "graph_error": self.graph_error,
            "nf4_kernel": self.nf4_kernel,
            "int8_kernel": self.int8_kernel,
            "batch_buckets": self.batch_buckets,
            "kv_buckets": self.kv_buckets,
        }

    def cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def weight_bytes(self) -> int:
        """Bytes of projection weights one decode step reads (the floor of a step's memory traffic)."""
        total = 0
        lins = [lin for layer in self.layers for key, lin in layer.items() if "norm" not in key] + [self.lm_head]
        for lin in lins:
            for part in getattr(lin, "parts", [lin]):
                for attr in ("weight", "packed", "absmax"):
                    t = getattr(part, attr, None)
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
        return total

    # ---- math -------------------------------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, weight_eps: tuple[torch.Tensor, float]) -> torch.Tensor:
        weight, eps = weight_eps
        if not self.exact:
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def _qkv(self, layer: dict, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """h [n, hidden] -> qkv [n, heads + 2 kv_heads, d] with RoPE applied in place to the q and k heads.

        K and V stay side by side, so one copy writes both into the cache."""
        n = h.shape[0]
        qkv = layer["qkv"](h).view(n, self.n_heads + 2 * self.n_kv, self.head_dim)
        qk = qkv[:, : self.n_heads + self.n_kv]
        rolled = torch.roll(qk, self.head_dim // 2, dims=-1)
        if self.exact:  # transformers' order of rounding
            torch.add(qk * cos, rolled * sin, out=qk)
        else:
            torch.addcmul(qk * cos, rolled, sin, out=qk)
        return qkv

    def _mlp_residual(self, layer: dict, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + layer["o"](attn)
        h = self._norm(x, layer["post_norm"])
        gate, up = layer["gate_up"](h).chunk(2, dim=-1)
        return x + layer["down"](F.silu(gate) * up)

    def _split_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., t, 2 kv_heads, d] -> K and V as [..., kv_heads, t, d] views."""
        return kv[..., : self.n_kv, :].transpose(-3, -2), kv[..., self.n_kv :, :].transpose(-3, -2)

    def _decode_body(self, b: int, length: int) -> None:
        """One decode step for rows [0, b) attending over the first ``length`` cache positions; fixed shapes."""
        ids, pos = self.io[:b, 0], self.io[:b, 1]
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin_signed[pos].unsqueeze(1)
        visible = self.arange[:length].unsqueeze(0) <= pos.unsqueeze(1)
        # Additive mask built once per step (a boolean one would be converted again in every layer).
        mask = torch.where(visible, 0.0, float("-inf")).to(self.dtype).view(b, 1, 1, length)
        rows = self.arange[:b]
        for i, layer in enumerate(self.layers):
            qkv = self._qkv(layer, self._norm(x, layer["in_norm"]), cos, sin)
            cache = self.kv_cache[i]
            cache[rows, pos] = qkv[:, self.n_heads :]
            k, v = self._split_kv(cache[:b, :length])
            out = F.scaled_dot_product_attention(
                qkv[:, : self.n_heads].reshape(b, self.n_kv, self.group, self.head_dim),
                k,
                v,
                attn_mask=mask,
                scale=self.scale,
            )
            x = self._mlp_residual(layer, x, out.reshape(b, self.n_heads * self.head_dim))
        self.logits[:b].copy_(self.lm_head(self._norm(x, self.final_norm)))

    def _expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.group > 1:
            return k.repeat_interleave(self.group, dim=-3), v.repeat_interleave(self.group, dim=-3)
        return k, v

    # ---- the engine's interface -------------------------------------------------------------------------------
    @torch.no_grad()
    @sdpa_kernel(_PREFILL_SDPA)
    def prefill(self, *, slot: int, ids: list[int]) -> torch.Tensor:
        """Run the prompt through the model into ``slot``'s cache; returns the last position's logits [vocab]."""
        t = len(ids)
        x = F.embedding(torch.tensor(ids, device=self.device), self.embed)
        cos, sin = self.cos[:t].unsqueeze(1), self.sin_signed[:t].unsqueeze(1)
        for i, layer in enumerate(self.layers):
            qkv = self._qkv(layer, self._norm(x, layer["in_norm"]), cos, sin)
            self.kv_cache[i, slot, :t] = qkv[:, self.n_heads :]
            k, v = self._expand_kv(*self._split_kv(qkv[:, self.n_heads :]))
            q = qkv[:, : self.n_heads].transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True, scale=self.scale
            )
            x = self._mlp_residual(layer, x, out[0].transpose(0, 1).reshape(t, self.n_heads * self.head_dim))
        return self.lm_head(self._norm(x[-1:], self.final_norm))[0]

    @torch.no_grad()
    @sdpa_kernel(_PREFILL_SDPA)
    def prefill_many(self, *, items: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Several prompts in one forward pass (returns logits [n, vocab]), instead of one pass each.

        A decode-sized model is launch-bound on short prompts: 32 requests arriving together took 32 passes of
        ~550 kernels before the first decode step. Here the prompts are concatenated; projections run once over
        all tokens, attention is one call with a block-diagonal causal mask, one indexed copy writes every
        token's K/V into its slot. Callers keep the total small (the mask is tokens x tokens)."""
        if len(items) == 1:
            slot, ids = items[0]
            return self.prefill(slot=slot, ids=ids).unsqueeze(0)
        lengths = [len(ids) for _, ids in items]
        total = sum(lengths)
        host = np.empty((4, total), dtype=np.int64)  # token, position, slot, segment
        offset = 0
        for n, ((slot, ids), t) in enumerate(zip(items, lengths, strict=True)):
            host[0, offset : offset + t] = ids
            host[1, offset : offset + t] = np.arange(t)
            host[2, offset : offset + t] = slot
            host[3, offset : offset + t] = n
            offset += t
        meta = torch.from_numpy(host).to(self.device)
        tokens, pos, slots, seg = meta[0], meta[1], meta[2], meta[3]
        visible = (seg.unsqueeze(0) == seg.unsqueeze(1)) & (pos.unsqueeze(0) <= pos.unsqueeze(1))
        mask = torch.where(visible, 0.0, float("-inf")).to(self.dtype).view(1, 1, total, total)
        x = F.embedding(tokens, self.embed)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin_signed[pos].unsqueeze(1)
        for i, layer in enumerate(self.layers):
            qkv = self._qkv(layer, self._norm(x, layer["in_norm"]), cos, sin)
            self.kv_cache[i][slots, pos] = qkv[:, self.n_heads :]
            k, v = self._expand_kv(*self._split_kv(qkv[:, self.n_heads :]))
            q = qkv[:, : self.n_heads].transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask, scale=self.scale
            )
            x = self._mlp_residual(layer, x, out[0].transpose(0, 1).reshape(total, self.n_heads * self.head_dim))
        last = torch.tensor(np.cumsum(lengths) - 1, device=self.device)
        return self.lm_head(self._norm(x.index_select(0, last), self.final_norm))

    @torch.no_grad()
    def decode(self, *, rows: list[tuple[int, int, int]]) -> torch.Tensor:
        """rows: (slot, token id, position) for every busy slot; returns logits [b, vocab], row i = slot i."""
        top_slot = max(r[0] for r in rows) + 1
        top_pos = max(r[2] for r in rows) + 1
        if self.graphs or self.pad_to_buckets:
            b = next(x for x in self.batch_buckets if x >= top_slot)
            length = next(x for x in self.kv_buckets if x >= top_pos)
        else:
            b, length = top_slot, top_pos
        host = self.io_np
        host[:b] = 0
        for slot, token, position in rows:
            host[slot, 0] = token
            host[slot, 1] = position
        # The previous step's copy has finished: the engine read that step's sampled tokens back since.
        self.io[:b].copy_(self.io_host[:b], non_blocking=True)
        graph = self.graphs.get((b, length))
        if graph is not None:
            graph.replay()
        else:
            self._decode_body(b, length)
        return self.logits[:b]

    def release(self, *, slot: int) -> None:
        """Nothing to free: a slot's stale cache entries are masked out until the next prefill overwrites them."""
