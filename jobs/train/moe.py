"""DeepSeek-V3 mixture of experts: sigmoid router with group-limited top-k, shared experts, routed experts that can
be sharded across ranks (expert parallelism) with an all-to-all token exchange.

Routing computes exactly what transformers' DeepseekV3TopkRouter computes (sigmoid scores, top-2-per-group group
selection, top-k, optional renormalisation, routed_scaling_factor), so an exported model gives the same logits.

Expert parallelism: rank r of an EP group of size P holds the experts [r*E/P, (r+1)*E/P). Tokens are sorted by
expert, sent to the owning rank with all_to_all_single, run through the local experts as one grouped matmul per
projection, and sent back. Gradients flow back through the same exchange in reverse. The expert parameters carry
DeepSpeed's MoE markers (``allreduce=False``, ``group_name``) so DeepSpeed averages them over the expert-data-parallel
group only; see ``as_deepspeed_moe``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from jobs.train.tensor_parallel import ColumnParallelLinear, RowParallelLinear, TPInfo


class MLP(nn.Module):
    """SwiGLU feed-forward (HF DeepseekV3MLP / LlamaMLP); with ``tp`` gate/up column-parallel, down row-parallel.

    Routed experts are built without ``tp``: they stay whole (plain nn.Linear) and replicated in the TP group.
    """

    def __init__(self, hidden: int, intermediate: int, tp: TPInfo | None = None) -> None:
        super().__init__()
        if tp is None:
            self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
            self.up_proj = nn.Linear(hidden, intermediate, bias=False)
            self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        else:
            self.gate_proj = ColumnParallelLinear(hidden, intermediate, tp)
            self.up_proj = ColumnParallelLinear(hidden, intermediate, tp)
            self.down_proj = RowParallelLinear(intermediate, hidden, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, hidden: int, num_experts: int, top_k: int, n_group: int, topk_group: int, scaling: float,
                 norm_topk_prob: bool) -> None:  # fmt: skip
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        self.num_experts = num_experts
        self.top_k = top_k
        self.n_group = n_group
        self.topk_group = topk_group
        self.scaling = scaling
        self.norm_topk_prob = norm_topk_prob

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [N, H] -> (expert ids [N, k], weights [N, k] fp32, sigmoid scores [N, E] fp32)."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores
        if self.n_group > 1:
            n = x.shape[0]
            per_group = self.num_experts // self.n_group
            group_scores = scores.view(n, self.n_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
            group_idx = group_scores.topk(self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)
            expert_mask = group_mask.unsqueeze(-1).expand(n, self.n_group, per_group).reshape(n, -1)
            choice = scores.masked_fill(expert_mask == 0, float("-inf"))
        idx = choice.topk(self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, idx)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return idx, weights * self.scaling, scores


def sequence_balance_loss(scores: torch.Tensor, idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (before its coefficient).

    scores [B, T, E] sigmoid affinities, idx [B, T, k]. L = mean_b sum_i f_i * P_i with f_i = E/(k*T) * (tokens of
    the sequence routed to i) and P_i = the mean over the sequence of the normalised affinity to i.
    """
    b, t, k = idx.shape
    probs = scores / scores.sum(dim=-1, keepdim=True)
    p = probs.mean(dim=1)
    counts = torch.zeros(b, num_experts, device=idx.device, dtype=probs.dtype)
    counts.scatter_add_(1, idx.reshape(b, t * k), torch.ones(b, t * k, device=idx.device, dtype=probs.dtype))
    f = counts * (num_experts / (k * t))
    return (f * p).sum(dim=-1).mean()


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with variable splits whose backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits = (out_splits, in_splits)
        ctx.group = group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        out = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return out, None, None, None


class _DispatchTokens(torch.autograd.Function):
    """x[order // k]: each token once per chosen expert, rows in expert order.

    Autograd's gradient of a gather is a scatter-add into x (atomics, or a sort on CUDA). Every token appears exactly
    k times, so the gradient is instead a gather by the inverse permutation and a sum over the k copies: no atomics,
    deterministic, and fusable by torch.compile.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[order // k]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        n = inverse.numel() // ctx.k
        return grad[inverse].view(n, ctx.k, grad.shape[-1]).sum(dim=1), None, None, None


class _PermuteRows(torch.autograd.Function):
    """y[perm] for a permutation perm with inverse inv: the gradient is a gather by inv rather than a scatter-add."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inv)
        return y[perm]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inv,) = ctx.saved_tensors
        return grad[inv], None, None


_GROUPED_MM_OK: dict[tuple, bool] = {}


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs (forward and backward, correctly) here; probed once per device and dtype.

    It needs sm90+ CUDA and bf16, and support differs between torch builds, so a tiny problem is checked against
    per-expert matmuls; any failure keeps the per-expert loop, which is always correct. Call it before
    torch.compile so the compiled graph sees a cached answer.
    """
    key = (_indexed_device(device), dtype)
    if key not in _GROUPED_MM_OK:
        _GROUPED_MM_OK[key] = (
            key[0].type == "cuda"
            and dtype == torch.bfloat16
            and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(key[0]) >= (9, 0)
            and _probe_grouped_mm(key[0], dtype)
        )
    return _GROUPED_MM_OK[key]


def _indexed_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in, so that "cuda" and "cuda:0" share one cache entry.

    A tensor's ``.device`` always carries the index. Without this, a probe made for ``torch.device("cuda")`` before
    torch.compile misses the cache in the forward pass, which then probes again inside the compiled region: Dynamo
    cannot trace the probe's ``torch.Generator`` and breaks the graph there.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _grouped_mm_usable(x: torch.Tensor, hidden: int, intermediate: int) -> bool:
    # Rows must be 16-byte aligned: 8 bf16 values.
    return (
        x.device.type == "cuda"
        and hidden % 8 == 0
        and intermediate % 8 == 0
        and grouped_mm_available(x.device, x.dtype)
    )


def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(24, 16, generator=g).to(device, dtype).requires_grad_()
        w = torch.randn(3, 32, 16, generator=g).to(device, dtype).requires_grad_()
        counts = torch.tensor([8, 0, 16], device=device)
        out = torch._grouped_mm(a, w.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))
        out.float().square().sum().backward()
        a2 = a.detach().clone().requires_grad_()
        w2 = w.detach().clone().requires_grad_()
        ref = torch.cat([a2[:8] @ w2[0].t(), a2[8:] @ w2[2].t()])
        ref.float().square().sum().backward()
        close = lambda u, v: torch.allclose(u.float(), v.float(), rtol=5e-2, atol=5e-2)  # noqa: E731
        return close(out, ref) and close(a.grad, a2.grad) and close(w.grad, w2.grad)
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _mark_expert_parameter(p: Any, group_name: str) -> None:
    """DeepSpeed's MoE convention: an expert parameter is reduced in its expert group, not across all ranks (it
    reads these two attributes, which torch's Parameter type does not declare)."""
    p.allreduce = False
    p.group_name = group_name


class RoutedExperts(nn.Module):
    """The routed experts of one MoE layer; with ep_size > 1 this rank holds num_experts/ep_size of them.

    The module path ``deepspeed_moe.experts.deepspeed_experts.<i>`` is DeepSpeed's native MoE layout: its
    checkpointing writes and reads one file per expert under that name, renumbering local ids to global ones.
    """

    def __init__(self, hidden: int, intermediate: int, num_experts: int, ep_size: int = 1, ep_rank: int = 0,
                 ep_group=None) -> None:  # fmt: skip
        super().__init__()
        if num_experts % ep_size:
            raise ValueError(f"num_experts {num_experts} is not divisible by ep_size {ep_size}")
        self.hidden = hidden
        self.intermediate = intermediate
        self.num_experts = num_experts
        self.ep_size = ep_size
        self.ep_rank = ep_rank
        self.ep_group = ep_group
        self.num_local_experts = num_experts // ep_size
        self.expert_group_name = f"ep_size_{ep_size}"
        self.deepspeed_moe = nn.Module()
        self.deepspeed_moe.experts = nn.Module()
        self.deepspeed_moe.experts.deepspeed_experts = nn.ModuleList(
            MLP(hidden, intermediate) for _ in range(self.num_local_experts)
        )
        if ep_size > 1:
            for p in self.deepspeed_moe.parameters():
                _mark_expert_parameter(p, self.expert_group_name)

    @property
    def local_experts(self) -> list[MLP]:
        experts = self.deepspeed_moe.get_submodule("experts.deepspeed_experts")
        return [e for e in experts.children() if isinstance(e, MLP)]  # every one is an MLP

    @property
    def first_expert(self) -> int:
        return self.ep_rank * self.num_local_experts

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        """Called by the DeepSpeed engine; the EP group was built before the model, so only check it matches."""
        if self.ep_size > 1:
            from deepspeed.utils import groups

            if self.expert_group_name not in groups._get_expert_parallel_group_dict():
                raise RuntimeError(f"expert-parallel group {self.expert_group_name} was not created before the model")

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, H], idx/weights [N, k] -> sum_k weights * expert_k(x), [N, H]."""
        n, k = idx.shape
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)
        # order is a permutation of the n*k (token, choice) slots; its inverse puts expert outputs back in slot order.
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        # One-hot sum, not index_add_: under torch.compile an int64 index_add_ becomes a serialising index_put kernel.
        counts = (flat[:, None] == torch.arange(self.num_experts, device=flat.device)).sum(0)
        x_sorted = _DispatchTokens.apply(x, order, inverse, k)
        if self.ep_size == 1:
            y_sorted = self._run_local(x_sorted, counts)
        else:
            y_sorted = self._run_expert_parallel(x_sorted, counts)
        y = _PermuteRows.apply(y_sorted, inverse, order).view(n, k, -1)
        # Weighting and the sum over the k choices in fp32, as transformers' DeepseekV3MoE accumulates.
        return (y * weights.unsqueeze(-1)).sum(dim=1).to(x.dtype)

    def _run_expert_parallel(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        p, e_local = self.ep_size, self.num_local_experts
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.ep_group)
        # One host copy for both split lists: all_to_all_single takes Python ints.
        splits = torch.stack([counts.view(p, e_local).sum(1), recv_counts.view(p, e_local).sum(1)]).tolist()
        in_splits, out_splits = splits
        x_recv = _AllToAll.apply(x_sorted, out_splits, in_splits, self.ep_group)
        local_ids = torch.arange(e_local, device=x_sorted.device).repeat(p)
        expert_of_row = local_ids.repeat_interleave(recv_counts, output_size=sum(out_splits))
        perm = expert_of_row.argsort(stable=True)
        inv = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))
        y_local = self._run_local(_PermuteRows.apply(x_recv, perm, inv), recv_counts.view(p, e_local).sum(0))
        y_recv = _PermuteRows.apply(y_local, inv, perm)
        return _AllToAll.apply(y_recv, in_splits, out_splits, self.ep_group)

    def _run_local(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x_sorted holds counts[i] rows for local expert i, in expert order."""
        experts = self.local_experts
        if _grouped_mm_usable(x_sorted, self.hidden, self.intermediate):
            offs = counts.cumsum(0).to(torch.int32)
            w_in = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts])
            w_out = torch.stack([e.down_proj.weight for e in experts])
            gate, up = torch._grouped_mm(x_sorted, w_in.transpose(1, 2), offs=offs).chunk(2, dim=-1)
            return torch._grouped_mm(F.silu(gate) * up, w_out.transpose(1, 2), offs=offs)
        # Every expert runs, even on zero rows, so each gets a (zero) gradient and DeepSpeed's per-parameter
        # reduction sees the same parameters on every rank and step.
        chunks = x_sorted.split(counts.tolist())
        return torch.cat([expert(chunk) for expert, chunk in zip(experts, chunks, strict=True)])


class MoEFeedForward(nn.Module):
    """Shared experts (always on) + routed experts chosen per token; returns (output, balance loss, expert counts)."""

    def __init__(self, hidden: int, moe_intermediate: int, num_experts: int, num_shared: int, top_k: int,
                 n_group: int, topk_group: int, scaling: float, norm_topk_prob: bool, ep_size: int = 1,
                 ep_rank: int = 0, ep_group=None, tp: TPInfo | None = None) -> None:  # fmt: skip
        super().__init__()
        self.num_experts = num_experts
        self.gate = Router(hidden, num_experts, top_k, n_group, topk_group, scaling, norm_topk_prob)
        self.tp = tp or TPInfo()
        self.shared_experts = MLP(hidden, moe_intermediate * num_shared, self.tp) if num_shared > 0 else None
        self.experts = RoutedExperts(hidden, moe_intermediate, num_experts, ep_size, ep_rank, ep_group)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, h = x.shape
        flat = x.reshape(b * t, h)
        idx, weights, scores = self.gate(flat)
        # The routed experts are whole on every tensor-parallel rank: with sequence parallelism their output (the
        # same everywhere) is cut to this rank's sequence shard, which is what the shared experts' output is.
        out = self.tp.split_seq(self.experts(flat, idx, weights).view(b, t, h))
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        aux = sequence_balance_loss(scores.view(b, t, -1), idx.view(b, t, -1), self.num_experts)
        experts = torch.arange(self.num_experts, device=idx.device)
        counts = (idx.reshape(-1, 1) == experts).sum(0, dtype=torch.float32)
        return out, aux, counts


def as_deepspeed_moe(model: nn.Module) -> int:
    """Make the expert-parallel layers of ``model`` instances of ``deepspeed.moe.layer.MoE``; returns how many.

    DeepSpeed switches on its MoE handling (expert-data-parallel gradient averaging, MoE optimizer param groups,
    per-expert checkpoint files) by ``isinstance(module, MoE)``. The class is swapped at engine set-up instead of
    inherited so that the model itself imports no DeepSpeed; MoE.__init__ never runs, RoutedExperts provides the
    attributes DeepSpeed reads (num_experts, num_local_experts, expert_group_name, set_deepspeed_parallelism).
    """
    from deepspeed.moe.layer import MoE

    swapped = 0
    classes: dict[type, type] = {}
    for module in model.modules():
        if isinstance(module, RoutedExperts) and module.ep_size > 1 and not isinstance(module, MoE):
            cls = type(module)
            if cls not in classes:
                classes[cls] = type(f"DeepSpeed{cls.__name__}", (cls, MoE), {"forward": cls.forward})
            module.__class__ = classes[cls]
            swapped += 1
    return swapped
