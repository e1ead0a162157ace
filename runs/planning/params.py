"""Parameter counts of the reference model (jobs.train.model.Transformer) from its config: total, active, per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    lm_head: int
    final_norm: int
    attention_per_layer: int
    norms_per_layer: int
    dense_mlp_per_layer: int
    routed_experts_per_layer: int
    shared_experts_per_layer: int
    router_per_layer: int
    dense_layers: int
    moe_layers: int
    top_k: int
    num_routed_experts: int
    largest_tensor: int

    @property
    def per_expert(self) -> int:
        return self.routed_experts_per_layer // self.num_routed_experts if self.num_routed_experts else 0

    @property
    def expert(self) -> int:
        """Routed-expert parameters: the only ones expert parallelism spreads."""
        return self.moe_layers * self.routed_experts_per_layer

    @property
    def total(self) -> int:
        per_layer = self.attention_per_layer + self.norms_per_layer
        moe = self.routed_experts_per_layer + self.shared_experts_per_layer + self.router_per_layer
        layers = (self.dense_layers + self.moe_layers) * per_layer
        layers += self.dense_layers * self.dense_mlp_per_layer + self.moe_layers * moe
        return self.embedding + self.lm_head + self.final_norm + layers

    @property
    def non_expert(self) -> int:
        return self.total - self.expert

    @property
    def active(self) -> int:
        """Parameters one token touches: everything but the routed experts it is not sent to."""
        return self.total - self.moe_layers * (self.num_routed_experts - self.top_k) * self.per_expert

    @property
    def active_matmul(self) -> int:
        """Active parameters that do a multiply-add per token (the embedding lookup does none)."""
        return self.active - self.embedding

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "active": self.active,
            "expert": self.expert,
            "non_expert": self.non_expert,
            "embedding": self.embedding,
            "lm_head": self.lm_head,
            "attention_per_layer": self.attention_per_layer,
            "dense_mlp_per_layer": self.dense_mlp_per_layer,
            "routed_experts_per_layer": self.routed_experts_per_layer,
            "shared_experts_per_layer": self.shared_experts_per_layer,
            "router_per_layer": self.router_per_layer,
            "norms_per_layer": self.norms_per_layer,
            "final_norm": self.final_norm,
            "dense_layers": self.dense_layers,
            "moe_layers": self.moe_layers,
            "largest_tensor": self.largest_tensor,
        }


def attention_head_dims(model: dict[str, Any]) -> tuple[int, int]:
    """(query/key width, value width) of one head."""
    if model["attention"] == "mla":
        return model["qk_nope_head_dim"] + model["qk_rope_head_dim"], model["v_head_dim"]
    head = model["hidden_size"] // model["num_heads"]
    return head, head


def count_params(model: dict[str, Any]) -> ParamCounts:
    """Exact parameter counts of jobs.train.model.Transformer (the same as transformers' DeepseekV3ForCausalLM).

    No biases; RMSNorm has one weight vector. MLA: q_a (+ its norm) and q_b, or a plain q projection when
    q_lora_rank is 0; kv_a (with the shared rotary key), its norm, kv_b, o. MHA: q, k, v, o, each hidden x hidden.
    MLPs are SwiGLU (gate, up, down). A MoE layer has its routed experts, its shared experts (one MLP of width
    moe_intermediate_size x num_shared_experts) and a router of num_routed_experts x hidden.
    """
    h, heads, vocab = model["hidden_size"], model["num_heads"], model["vocab_size"]
    tensors = [vocab * h]
    if model["attention"] == "mla":
        qk, v = attention_head_dims(model)
        q_rank, kv_rank, rope = model["q_lora_rank"], model["kv_lora_rank"], model["qk_rope_head_dim"]
        q_mats = [h * q_rank, q_rank * heads * qk] if q_rank else [h * heads * qk]
        mats = [*q_mats, h * (kv_rank + rope), kv_rank * heads * (model["qk_nope_head_dim"] + v), heads * v * h]
        attention = sum(mats) + q_rank + kv_rank
    else:
        mats = [h * h] * 4
        attention = sum(mats)
    tensors += mats
    moe = model["arch"] == "moe"
    layers = model["num_layers"]
    dense_layers = model["first_k_dense"] if moe else layers
    dense_mlp = 3 * h * model["intermediate_size"]
    if dense_layers:
        tensors.append(h * model["intermediate_size"])
    routed = shared = router = top_k = experts = 0
    if moe:
        mi, experts, top_k = model["moe_intermediate_size"], model["num_routed_experts"], model["top_k"]
        routed = experts * 3 * h * mi
        shared = 3 * h * mi * model["num_shared_experts"]
        router = experts * h
        tensors += [h * mi * max(1, model["num_shared_experts"]), router]
    return ParamCounts(
        embedding=vocab * h,
        lm_head=0 if model["tie_embeddings"] else vocab * h,
        final_norm=h,
        attention_per_layer=attention,
        norms_per_layer=2 * h,
        dense_mlp_per_layer=dense_mlp,
        routed_experts_per_layer=routed,
        shared_experts_per_layer=shared,
        router_per_layer=router,
        dense_layers=dense_layers,
        moe_layers=layers - dense_layers,
        top_k=top_k,
        num_routed_experts=experts,
        largest_tensor=max(tensors),
    )
