"""The reference trainer's model: DeepSeek-V3's architecture at small scale, and a dense variant.

- ``arch="moe"``: the first ``first_k_dense`` layers use a dense SwiGLU MLP, the rest DeepSeekMoE (shared + routed
  experts, jobs.train.moe). ``arch="dense"``: every layer dense.
- ``attention="mla"``: Multi-head Latent Attention with the decoupled rotary key (jobs.train.attention); ``"mha"``: Llama
  attention.
- RMSNorm pre-norm blocks, rotary position embeddings, optional tied embeddings.

Module names mirror transformers' DeepseekV3ForCausalLM / LlamaForCausalLM (without the ``model.`` prefix) so that
jobs.export.hf is a rename. Weight initialisation is a pure function of the seed and each expert's *global* id, so a
model sharded over expert-parallel ranks starts from exactly the weights of the unsharded one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from jobs.common.run_config import ModelConfig
from jobs.train.attention import RMSNorm, RotaryTables, build_attention
from jobs.train.moe import MLP, MoEFeedForward, RoutedExperts
from jobs.train.tensor_parallel import (
    ColumnParallelLinear,
    TPInfo,
    VocabParallelEmbedding,
    shard_state,
    vocab_parallel_token_losses,
)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, ep_size: int, ep_rank: int, ep_group,
                 tp: TPInfo | None = None) -> None:  # fmt: skip
        super().__init__()
        tp = tp or TPInfo()
        self.tp = tp
        self.index = index
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = build_attention(cfg, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: MoEFeedForward | MLP
        if cfg.is_moe_layer(index):
            self.mlp = MoEFeedForward(
                cfg.hidden_size,
                cfg.moe_intermediate_size,
                cfg.num_routed_experts,
                cfg.num_shared_experts,
                cfg.top_k,
                cfg.n_group,
                cfg.topk_group,
                cfg.routed_scaling_factor,
                cfg.norm_topk_prob,
                ep_size,
                ep_rank,
                ep_group,
                tp,
            )
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, tp)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.mlp, MoEFeedForward)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        # With sequence parallelism x is this rank's sequence shard; attention and the MLP see the whole sequence
        # and hand back a shard (their row-parallel output is reduce-scattered).
        x = x + self.self_attn(self.tp.gather_seq(self.input_layernorm(x)), cos, sin)
        h = self.tp.gather_seq(self.post_attention_layernorm(x))
        if self.is_moe:
            out, aux, counts = self.mlp(h)
            return x + out, aux, counts
        return x + self.mlp(h), None, None


class Transformer(nn.Module):
    """With ``tp`` (tensor parallelism) the embedding and lm_head are vocabulary-parallel: forward returns this rank's
    slice of the vocabulary's logits, and ``token_losses`` computes the cross-entropy without gathering them."""

    def __init__(self, cfg: ModelConfig, ep_size: int = 1, ep_rank: int = 0, ep_group=None,
                 activation_checkpointing: bool = False, tp: TPInfo | None = None) -> None:  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.tp = tp or TPInfo()
        self.activation_checkpointing = activation_checkpointing
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, self.tp)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, ep_size, ep_rank, ep_group, self.tp) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, self.tp)
        if cfg.tie_embeddings:
            # Sharing the Parameter (not reading embed_tokens.weight in forward) lets ZeRO-3 gather it in lm_head.
            self.lm_head.weight = self.embed_tokens.weight
        self.rope_dim = cfg.qk_rope_head_dim if cfg.is_mla else cfg.head_dim
        self.rotary = RotaryTables(self.rope_dim, cfg.max_seq_len, cfg.rope_theta)

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        """The layers, typed (nn.ModuleList yields plain modules); every one is a DecoderLayer."""
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    @property
    def moe_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.decoder_layers if layer.is_moe]

    def forward(self, input_ids: torch.Tensor, with_aux: bool = False):
        """Logits [B, T, V]; with_aux=True returns forward_with_aux's triple (the DeepSpeed engine passes kwargs)."""
        out = self.forward_with_aux(input_ids)
        return out if with_aux else out[0]

    def forward_with_aux(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (logits [B, T, V], summed MoE balance loss, per-expert routed-token counts [n_moe_layers, E] or None)."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(input_ids.shape[1])
        aux_total = x.new_zeros((), dtype=torch.float32)
        counts = []
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x, aux, cnt = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x, aux, cnt = layer(x, cos, sin)
            if aux is not None:
                aux_total = aux_total + aux
                counts.append(cnt)
        logits = self.lm_head(self.tp.gather_seq(self.norm(x)))
        return logits, aux_total, torch.stack(counts) if counts else None

    def token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy of forward's logits (whole or this rank's vocabulary slice), fp32."""
        return vocab_parallel_token_losses(logits, targets, self.tp)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy in fp32, shape of targets."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def _expert_seed(seed: int, layer: int, expert: int) -> int:
    return (seed * 1_000_003 + layer * 10_007 + expert) % (2**63)


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> None:
    """Normal(0, init_std) for matrices and embeddings, ones for norms; routed experts seeded by global expert id."""
    std = model.cfg.init_std
    gen = torch.Generator().manual_seed(seed)
    expert_params = set()
    for layer in model.decoder_layers:
        for module in layer.modules():
            if isinstance(module, RoutedExperts):
                for i, expert in enumerate(module.local_experts):
                    g = torch.Generator().manual_seed(_expert_seed(seed, layer.index, module.first_expert + i))
                    for p in expert.parameters():
                        expert_params.add(p)
                        p.copy_(torch.randn(p.shape, generator=g) * std)
    for name, p in model.named_parameters():
        if p in expert_params:
            continue
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def build_model(cfg: ModelConfig, seed: int, ep_size: int = 1, ep_rank: int = 0, ep_group=None,
                activation_checkpointing: bool = False, tp: TPInfo | None = None) -> Transformer:  # fmt: skip
    """The model of this rank, initialised as the slice of the unsharded model's weights for the same seed.

    Under tensor parallelism the unsharded model (this rank's experts only) is built and initialised first, then
    sliced: every layout starts from the single-rank weights. That costs one unsharded copy of the dense weights in
    host memory at start-up.
    """
    model = Transformer(cfg, ep_size, ep_rank, ep_group, activation_checkpointing, tp)
    if model.tp.size == 1:
        init_weights(model, seed)
        return model
    full = Transformer(cfg, ep_size, ep_rank, ep_group)
    init_weights(full, seed)
    model.load_state_dict(shard_state(full.state_dict(), model.tp))
    return model


def param_counts(cfg: ModelConfig, model: Transformer | None = None) -> tuple[int, int]:
    """(total parameters, parameters one token multiplies through), of the whole model (every expert).

    Active excludes the embedding lookup (unless tied, when it is the lm_head matmul) and the routed experts a token
    is not sent to; it includes the router and lm_head. A trainer passes the model it built (this rank's experts);
    without one, a model is built on the meta device, whose weight initialisation imports torch._dynamo (2-4 s on a
    CPU: time a launch would wait for).
    """
    if model is None:
        with torch.device("meta"):
            model = Transformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    per_expert = 0
    for layer in model.moe_layers:
        experts = next(m for m in layer.modules() if isinstance(m, RoutedExperts)).local_experts
        per_expert = sum(p.numel() for p in experts[0].parameters())
        total += per_expert * (cfg.num_routed_experts - len(experts))
    active = total if cfg.tie_embeddings else total - model.embed_tokens.weight.numel()
    active -= len(model.moe_layers) * per_expert * (cfg.num_routed_experts - cfg.top_k)
    return total, active


def flops_per_token(cfg: ModelConfig, seq_len: int, active_params: int | None = None) -> float:
    """Training FLOPs per token: 6 * active params (matmuls, fwd+bwd) + attention scores and values.

    The attention term, 6 * layers * seq_len * heads * (qk_head_dim + v_head_dim), is PaLM's 12*L*H*Q*T written
    for MLA's unequal key and value widths; it counts the full (not causal-halved) score matrix, as PaLM does.
    """
    if active_params is None:
        active_params = param_counts(cfg)[1]
    attn = 6 * cfg.num_layers * seq_len * cfg.num_heads * (cfg.qk_head_dim + cfg.attn_v_head_dim)
    return 6.0 * active_params + attn
