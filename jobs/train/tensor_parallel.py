"""Megatron-style tensor parallelism for the reference model: column/row-parallel linears, a vocabulary-parallel
embedding and cross-entropy, and the process-group layout handed to DeepSpeed as its ``mpu``.

Layout: DeepSpeed's ``PipeModelDataParallelTopology`` (axes pipe, data, model): tensor-parallel ranks are
consecutive, pipeline stages outermost. The grid built from it is DeepSpeed's own ``PipelineParallelGrid``, which
answers the mpu questions DeepSpeed asks (data-parallel group for ZeRO, tensor-parallel rank for the gradient norm).

Sharding rule (``split_dim``): a column-parallel weight is split along its output rows, a row-parallel weight along
its input columns, everything else (norms, the router, MLA's low-rank down-projections, routed experts) is replicated
in the tensor-parallel group. The rule is by parameter name so that the exporter merges a checkpoint's
``mp_rank_XX`` files without building the model. Weights are initialised on the unsharded model and sliced (see
jobs.train.model.build_model), so a sharded run starts from exactly the single-rank weights.

Why replicated parameters need no extra reduction: a column-parallel layer all-reduces the gradient of its input
(``copy_to_tp``) and a row-parallel layer all-reduces its output (``reduce_from_tp``), so activations and their
gradients outside the sharded regions are identical on every tensor-parallel rank.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient (Megatron's ``f``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward; identity gradient (Megatron's ``g``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_tp(x: torch.Tensor, group, size: int) -> torch.Tensor:
    return _CopyToTP.apply(x, group) if size > 1 else x


def reduce_from_tp(x: torch.Tensor, group, size: int) -> torch.Tensor:
    return _ReduceFromTP.apply(x, group) if size > 1 else x


def _all_gather_seq(x: torch.Tensor, group, size: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def _reduce_scatter_seq(x: torch.Tensor, group, size: int, rank: int) -> torch.Tensor:
    if dist.get_backend(group) == "nccl":
        chunks = [c.contiguous() for c in x.chunk(size, dim=1)]
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, chunks, group=group)
        return out
    # gloo has no reduce-scatter: all-reduce and keep this rank's slice.
    full = x.contiguous().clone()
    dist.all_reduce(full, group=group)
    return full.chunk(size, dim=1)[rank].contiguous()


class _GatherSeq(torch.autograd.Function):
    """Sequence shards [B, T/tp, H] -> the whole sequence; the gradient (the same on every rank) is sliced back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TPInfo) -> torch.Tensor:
        ctx.tp = tp
        return _all_gather_seq(x, tp.group, tp.size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tp = ctx.tp
        return grad.chunk(tp.size, dim=1)[tp.rank].contiguous(), None


class _ReduceScatterSeq(torch.autograd.Function):
    """Partial sums over the whole sequence -> this rank's sequence shard of their sum; gradient all-gathered."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TPInfo) -> torch.Tensor:
        ctx.tp = tp
        return _reduce_scatter_seq(x, tp.group, tp.size, tp.rank)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_gather_seq(grad, ctx.tp.group, ctx.tp.size), None


class _SplitSeq(torch.autograd.Function):
    """A tensor the same on every rank -> this rank's sequence shard; gradient all-gathered."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TPInfo) -> torch.Tensor:
        ctx.tp = tp
        return x.chunk(tp.size, dim=1)[tp.rank].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_gather_seq(grad, ctx.tp.group, ctx.tp.size), None


class TPInfo:
    """This rank's place in its tensor-parallel group; ``TPInfo()`` is the unsharded model.

    ``sp``: Megatron-style sequence parallelism. Outside attention and the MLP (the residual stream, the RMSNorms)
    activations are split along the sequence over the tensor-parallel group: a block gathers the sequence on entry
    and its row-parallel output is reduce-scattered back to sequence shards. The norms' weights then see only this
    rank's tokens, so their gradients are all-reduced over the group (``sequence_parallel_norm``).
    """

    def __init__(self, size: int = 1, rank: int = 0, group=None, sp: bool = False) -> None:
        self.size, self.rank, self.group = size, rank, group
        self.sp = sp and size > 1

    def gather_seq(self, x: torch.Tensor) -> torch.Tensor:
        return _GatherSeq.apply(x, self) if self.sp else x

    def reduce_scatter_seq(self, x: torch.Tensor) -> torch.Tensor:
        return _ReduceScatterSeq.apply(x, self) if self.sp else reduce_from_tp(x, self.group, self.size)

    def split_seq(self, x: torch.Tensor) -> torch.Tensor:
        return _SplitSeq.apply(x, self) if self.sp else x

    def shard(self, n: int, what: str) -> int:
        if n % self.size:
            raise ValueError(f"{what} {n} is not divisible by tensor-parallel size {self.size}")
        return n // self.size


def _mark_tensor_parallel(p: torch.Tensor, sharded: bool) -> None:
    # DeepSpeed's is_model_parallel_parameter reads this attribute: a marked parameter's gradient norm is counted on
    # every tensor-parallel rank, an unmarked one on tensor-parallel rank 0 only.
    setattr(p, "tensor_model_parallel", sharded)  # noqa: B010


class ColumnParallelLinear(nn.Linear):
    """y_local = x @ W_local^T, W split along its output rows; the output stays sharded (no gather)."""

    def __init__(self, in_features: int, out_features: int, tp: TPInfo) -> None:
        super().__init__(in_features, tp.shard(out_features, "output features"), bias=False)
        self.tp = tp
        _mark_tensor_parallel(self.weight, tp.size > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.tp.group, self.tp.size), self.weight)


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_local @ W_local^T), W split along its input columns; the input arrives sharded."""

    def __init__(self, in_features: int, out_features: int, tp: TPInfo) -> None:
        super().__init__(tp.shard(in_features, "input features"), out_features, bias=False)
        self.tp = tp
        _mark_tensor_parallel(self.weight, tp.size > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # All-reduce, or with sequence parallelism a reduce-scatter to this rank's sequence shard.
        return self.tp.reduce_scatter_seq(F.linear(x, self.weight))


class VocabParallelEmbedding(nn.Embedding):
    """Rows [rank*V/tp, (rank+1)*V/tp) of the table; tokens outside the slice contribute zeros, then all-reduce."""

    def __init__(self, vocab_size: int, dim: int, tp: TPInfo) -> None:
        super().__init__(tp.shard(vocab_size, "vocab_size"), dim)
        self.tp = tp
        self.vocab_start = tp.rank * self.num_embeddings
        _mark_tensor_parallel(self.weight, tp.size > 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(ids)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return self.tp.reduce_scatter_seq(out)


def vocab_parallel_token_losses(logits: torch.Tensor, targets: torch.Tensor, tp: TPInfo) -> torch.Tensor:
    """Per-token cross-entropy (fp32) from vocabulary-sharded logits [B, T, V/tp], without gathering the vocabulary.

    log-sum-exp over the full vocabulary = max + log(sum of every shard's exp(logit - max)); the target's logit comes
    from the one shard that holds it. The max is a constant shift (no gradient), the sums pass gradients unchanged to
    every shard, which is what the full-vocabulary softmax gradient restricted to the shard is.
    """
    logits = logits.float()
    if tp.size == 1:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    local_max = logits.detach().amax(dim=-1)
    dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=tp.group)
    shifted = logits - local_max.unsqueeze(-1)
    sum_exp = reduce_from_tp(shifted.exp().sum(dim=-1), tp.group, tp.size)
    v_local = logits.shape[-1]
    local_t = targets - tp.rank * v_local
    outside = (local_t < 0) | (local_t >= v_local)
    picked = shifted.gather(-1, local_t.masked_fill(outside, 0).unsqueeze(-1)).squeeze(-1)
    target_logit = reduce_from_tp(picked.masked_fill(outside, 0.0), tp.group, tp.size)
    return sum_exp.log() - target_logit


# Parameter names of the sharded weights (module names as in jobs.train.model; routed experts are replicated).
_COLUMN = re.compile(
    r"(^embed_tokens|^lm_head|self_attn\.(q_proj|q_b_proj|kv_b_proj|k_proj|v_proj)"
    r"|(layers\.\d+\.mlp|shared_experts)\.(gate_proj|up_proj))\.weight$"
)
_ROW = re.compile(r"(self_attn\.o_proj|(layers\.\d+\.mlp|shared_experts)\.down_proj)\.weight$")


def split_dim(name: str) -> int | None:
    """0 for column-parallel (and vocabulary) weights, 1 for row-parallel, None for replicated parameters."""
    if _COLUMN.search(name):
        return 0
    if _ROW.search(name):
        return 1
    return None


def shard_state(full: dict[str, torch.Tensor], tp: TPInfo) -> dict[str, torch.Tensor]:
    """This rank's slices of an unsharded state dict."""
    out = {}
    for name, t in full.items():
        d = split_dim(name)
        out[name] = t if d is None or tp.size == 1 else t.chunk(tp.size, dim=d)[tp.rank].clone()
    return out


def merge_states(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The unsharded state dict from every tensor-parallel rank's state dict (in rank order)."""
    if len(shards) == 1:
        return dict(shards[0])
    out = {}
    for name, t in shards[0].items():
        d = split_dim(name)
        out[name] = t if d is None else torch.cat([s[name] for s in shards], dim=d)
    return out


def prepare_experts_for_tp(model: nn.Module, tp_size: int) -> None:
    """Expert-parallel parameters under tensor parallelism: reduce and count their gradients once, not tp times.

    With tp > 1 DeepSpeed's expert-data-parallel group is made of the ranks of one tensor-parallel group (they hold the
    same experts and see the same tokens), and ZeRO sums expert gradients over that group after dividing by the
    data-parallel size: each replica's identical gradient would count tp times, so it is scaled by 1/tp as it is
    produced. ZeRO then partitions those gradients over the same group, and its norm counts a parameter not marked
    tensor-parallel on tensor-parallel rank 0 only, which would drop the partitions other ranks hold; marked, each
    partition is counted once.
    """
    scale = 1.0 / tp_size
    for p in model.parameters():
        if getattr(p, "allreduce", True) is False:
            _mark_tensor_parallel(p, True)
            p.register_hook(lambda g: g * scale)


def sequence_parallel_norms(model: nn.Module, tp: TPInfo) -> None:
    """All-reduce over the tensor-parallel group the gradients of the RMSNorms that run on sequence shards."""
    if not tp.sp:
        return

    def all_reduce(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=tp.group)
        return grad

    for name, p in model.named_parameters():
        if re.search(r"(^|\.)(norm|input_layernorm|post_attention_layernorm)\.weight$", name):
            p.register_hook(all_reduce)


def build_grid(tp: int, pp: int, dp: int):
    """DeepSpeed's process grid (its ``mpu``) for this layout; every rank must call it (it creates groups)."""
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

    return PipelineParallelGrid(topology=PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp))


def tp_info(grid, sp: bool = False) -> TPInfo:
    if grid is None:
        return TPInfo()
    return TPInfo(
        grid.get_slice_parallel_world_size(), grid.get_slice_parallel_rank(), grid.get_slice_parallel_group(), sp
    )
