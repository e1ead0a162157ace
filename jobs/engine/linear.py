"""The decode engine's projections: one callable per (possibly fused) linear layer, whatever the weight format.

The fast Llama path (``jobs.engine.llama``) reuses the weights transformers loaded instead of copying them:
- bf16/fp32 ``nn.Linear``: ``F.linear`` on the weight.
- bitsandbytes ``Linear4bit`` (NF4/FP4): the packed 4-bit data as loaded. With double quantization the per-block
  absmax is itself 8-bit; bitsandbytes dequantizes it on every call, so it is dequantized ONCE here (fp32, 1/16 of
  the bf16 weight's size) and each projection is one kernel. On CUDA, for up to 32 rows (decode), our Triton NF4
  kernel (``jobs.engine.nf4``) when triton imports, the weight fits it and its start-up self-check against
  bitsandbytes passes, for the batch sizes where it timed faster; otherwise ``gemv_4bit`` for one row,
  ``gemm_4bit`` (bitsandbytes' fused kernel for small batches, dequantize + matmul for large ones) for more.
- bitsandbytes ``Linear8bitLt``: weight-only int8 (the stored int8 rows times their fp32 row scale), computed in the
  activation dtype. bitsandbytes' own forward also quantizes the activations and pulls outlier columns
  (|x| > 6) out at run time, which needs a host sync and so cannot live in a CUDA graph; weight-only int8 computes
  the same stored weights more accurately, not less.

Fusing: q/k/v and gate/up are concatenated along the output dimension into one weight, so a layer makes 4
projection calls, not 7. The module parameters are then re-pointed at views of the fused tensor, so the weights
are held once and the transformers model keeps working (it serves as the reference and for ``generate``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jobs.engine import nf4 as nf4_kernel

log = logging.getLogger(__name__)


class DenseLinear:
    def __init__(self, *, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class NF4Linear:
    """A 4-bit weight with its absmax dequantized once. ``triton_plan[m]``: the Triton kernel's config for m rows
    (None: bitsandbytes); else ``use_gemv`` picks gemv_4bit for one-row inputs on CUDA, gemm_4bit the rest."""

    def __init__(self, *, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                 quant_type: str, shape: tuple[int, int], compute_dtype: torch.dtype):  # fmt: skip
        self.packed = packed
        self.absmax = absmax
        self.code = code
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.shape = shape
        self.compute_dtype = compute_dtype
        self.out_features = shape[0]
        self.use_gemv = packed.is_cuda
        self.triton_plan: tuple[nf4_kernel.Config | None, ...] = ()

    def triton(self, a: torch.Tensor, config: nf4_kernel.Config | None = None) -> torch.Tensor:
        return nf4_kernel.nf4_matmul(a, self.packed.view(-1), self.absmax, self.code, shape=self.shape,
                                     blocksize=self.blocksize, config=config)  # fmt: skip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        a = x.reshape(-1, k).to(self.compute_dtype)
        m = a.shape[0]
        if m < len(self.triton_plan) and self.triton_plan[m] is not None:
            out = self.triton(a, self.triton_plan[m])
        elif self.use_gemv and m == 1:
            out = torch.ops.bitsandbytes.gemv_4bit.default(
                a, self.packed, list(self.shape), self.absmax, self.code, self.blocksize
            )
        else:
            out = torch.ops.bitsandbytes.gemm_4bit.default(
                a, self.packed, list(self.shape), self.absmax, self.blocksize, self.quant_type
            )
        return out.reshape(*lead, self.out_features).to(x.dtype)


class Int8Linear:
    """Weight-only int8: y = (x @ W_int8^T) * row_scale. ``torch._weight_int8pack_mm`` when it computes that
    correctly on this device (probed once), else the int8 weight is widened to the activation dtype per call."""

    def __init__(self, *, weight: torch.Tensor, scale: torch.Tensor):
        self.weight = weight
        self.scale = scale.float()
        self.out_features = weight.shape[0]
        self._scales: dict[torch.dtype, torch.Tensor] = {}
        self.use_pack_mm = _int8pack_mm_works(weight.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale = self._scales.get(x.dtype)
        if scale is None:
            scale = self._scales[x.dtype] = self.scale.to(x.dtype)
        lead, k = x.shape[:-1], x.shape[-1]
        a = x.reshape(-1, k)
        if self.use_pack_mm:
            out = torch._weight_int8pack_mm(a, self.weight, scale)
        else:
            out = F.linear(a, self.weight.to(x.dtype)) * scale
        return out.reshape(*lead, self.out_features)


class SplitLinear:
    """Projections that could not be fused (mixed formats or misaligned blocks): called in turn, outputs joined."""

    def __init__(self, *, parts: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.parts = list(parts)
        self.out_features = sum(p.out_features for p in self.parts)  # type: ignore[attr-defined]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


_PACK_MM_OK: dict[str, bool] = {}


def _int8pack_mm_works(device: torch.device) -> bool:
    key = str(device)
    if key not in _PACK_MM_OK:
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            w = torch.randint(-127, 128, (48, 64), generator=g, dtype=torch.int8).to(device)
            s = (torch.rand(48, generator=g) + 0.5).to(device)
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            x = torch.randn(3, 64, generator=g).to(device, dtype)
            got = torch._weight_int8pack_mm(x, w, s.to(dtype)).float()
            want = F.linear(x.float(), w.float()) * s
            _PACK_MM_OK[key] = bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max())))
        except (RuntimeError, NotImplementedError, AttributeError):
            _PACK_MM_OK[key] = False
    return _PACK_MM_OK[key]


def _bnb_kind(module: nn.Module) -> str:
    name = type(module).__name__
    if name in ("Linear4bit", "LinearNF4", "LinearFP4"):
        return "nf4"
    if name == "Linear8bitLt":
        return "int8"
    if isinstance(module, nn.Linear):
        return "dense"
    raise TypeError(f"unsupported projection module {name}")


# A bitsandbytes Linear4bit or Linear8bitLt: nn.Module's types do not describe their weights' quant_state, CB or SCB.
BnbLinear = Any


def unpack_4bit_for_cpu(module: BnbLinear) -> None:
    """Keep a bitsandbytes 4-bit module in the standard layout on CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights into a CPU-only layout on the first forward pass;
    our kernels read the standard layout, so that repacking is switched off (and undone if it already happened).
    """
    if _bnb_kind(module) != "nf4":
        return
    module.support_avx512bf16_for_cpu = False
    state = module.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            module.weight.data, state
        )


def _nf4_parts(module: BnbLinear) -> tuple[torch.Tensor, torch.Tensor, Any]:
    import bitsandbytes.functional as bnbf

    state = module.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return module.weight.data, absmax.float().contiguous(), state


def _int8_parts(module: BnbLinear) -> tuple[torch.Tensor, torch.Tensor]:
    w = module.weight
    scb = getattr(w, "SCB", None)
    if scb is None:
        scb = module.state.SCB
    cb = w.data if w.data.dtype == torch.int8 else module.state.CB
    return cb, scb.float() / 127.0


def _repoint_int8(module: BnbLinear, view: torch.Tensor) -> None:
    module.weight.data = view
    if getattr(module.weight, "CB", None) is not None:
        module.weight.CB = view
    if getattr(module.state, "CB", None) is not None:
        module.state.CB = view


def make_linear(modules: Sequence[nn.Module], *, fuse: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """One callable computing ``cat([m(x) for m in modules], -1)`` with the modules' own weights."""
    kinds = {_bnb_kind(m) for m in modules}
    if len(kinds) != 1 or any(getattr(m, "bias", None) is not None for m in modules if len(modules) > 1):
        return SplitLinear(parts=[make_linear([m]) for m in modules])
    kind = kinds.pop()
    if kind == "dense":
        dense = [m for m in modules if isinstance(m, nn.Linear)]  # all of them: _bnb_kind said so
        if len(dense) == 1:
            return DenseLinear(weight=dense[0].weight, bias=dense[0].bias)
        if not fuse:
            return SplitLinear(parts=[make_linear([d]) for d in dense])
        fused = torch.cat([d.weight.data for d in dense], dim=0)
        for d, view in zip(dense, fused.split([d.weight.shape[0] for d in dense]), strict=True):
            d.weight.data = view
        return DenseLinear(weight=fused)
    if kind == "nf4":
        parts = [_nf4_parts(m) for m in modules]
        states = [p[2] for p in parts]
        k = states[0].shape[1]
        bs = states[0].blocksize
        same = all(
            s.shape[1] == k and s.blocksize == bs and s.quant_type == states[0].quant_type
            and torch.equal(s.code, states[0].code) and (s.shape[0] * k) % bs == 0
            for s in states
        )  # fmt: skip
        if len(modules) > 1 and (not fuse or not same):
            return SplitLinear(parts=[make_linear([m]) for m in modules])
        packed = torch.cat([p[0].reshape(-1) for p in parts]) if len(parts) > 1 else parts[0][0].reshape(-1)
        if len(parts) > 1:
            sizes = [p[0].numel() for p in parts]
            for m, view in zip(modules, packed.split(sizes), strict=True):
                m.weight.data = view.view(-1, 1)
        absmax = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        n = sum(s.shape[0] for s in states)
        compute = getattr(modules[0], "compute_dtype", None) or states[0].dtype
        return NF4Linear(packed=packed.view(-1, 1), absmax=absmax, code=states[0].code.float(), blocksize=bs,
                         quant_type=states[0].quant_type, shape=(n, k), compute_dtype=compute)  # fmt: skip
    parts8 = [_int8_parts(m) for m in modules]
    if len(modules) == 1:
        weight = parts8[0][0]
        if weight.data_ptr() % 64 or not weight.is_contiguous():
            # Weights mapped straight from a safetensors file can sit at any offset; the CPU int8 kernel
            # crashes on those, so the weight moves to a fresh (aligned) tensor, which the module then uses too.
            weight = weight.contiguous().clone()
            _repoint_int8(modules[0], weight)
        return Int8Linear(weight=weight, scale=parts8[0][1])
    if not fuse:
        return SplitLinear(parts=[make_linear([m]) for m in modules])
    fused = torch.cat([p[0] for p in parts8], dim=0)
    for m, view in zip(modules, fused.split([p[0].shape[0] for p in parts8]), strict=True):
        _repoint_int8(m, view)
    return Int8Linear(weight=fused, scale=torch.cat([p[1] for p in parts8]))


def _time_calls(fn: Callable[[], object], *, cuda: bool, n: int = 50) -> float:
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def choose_int8_kernel(linears: Sequence[object], *, dtype: torch.dtype) -> str:
    """Time ``_weight_int8pack_mm`` (where it is correct here) against widen + matmul on the largest int8
    projection for one-row inputs; use the faster everywhere. Returns the choice, or "n/a" without int8 weights."""
    int8 = [lin for lin in linears if isinstance(lin, Int8Linear)]
    if not int8:
        return "n/a"
    if not int8[0].use_pack_mm:
        return "widen+matmul"
    probe = max(int8, key=lambda lin: lin.weight.numel())
    x = torch.randn(1, probe.weight.shape[1], device=probe.weight.device, dtype=dtype)
    timings = {}
    for use in (True, False):
        probe.use_pack_mm = use
        timings[use] = _time_calls(lambda: probe(x), cuda=probe.weight.is_cuda, n=20)
    best = timings[True] <= timings[False]
    for lin in int8:
        lin.use_pack_mm = best
    return "int8pack_mm" if best else "widen+matmul"


def _graph_seconds(fn: Callable[[], object], *, reps: int = 5, rounds: int = 3) -> float:
    """GPU time of one ``fn()`` replayed from a CUDA graph (launch gaps as in the decode graph, no Python), the best
    of ``rounds`` means over ``reps`` replays. Two eager calls first (kernels compile there, not in the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / reps)
    del graph
    return best


def _triton_unusable(nf4: Sequence[NF4Linear], *, rows: list[int]) -> str | None:
    for lin in nf4:
        why = nf4_kernel.supported(packed=lin.packed, shape=lin.shape, blocksize=lin.blocksize,
                                   quant_type=lin.quant_type, dtype=lin.compute_dtype)  # fmt: skip
        if why:
            return why
    try:
        return nf4_kernel.self_check(nf4[0].packed.device, blocksizes={lin.blocksize for lin in nf4},
                                     ks={lin.shape[1] for lin in nf4}, rows=rows)  # fmt: skip
    except Exception as exc:  # a kernel that does not compile or launch here: bitsandbytes' kernels instead
        log.exception("Triton NF4 self-check failed")
        return f"self-check raised {type(exc).__name__}: {str(exc)[:300]}"


def _on_gpu(t: torch.Tensor) -> bool:
    return t.is_cuda


NF4_CHOICE: dict = {}  # the last choose_nf4_kernel's details (kernel per batch size, timings): for reports


def _triton_calls(group: list[NF4Linear], config: nf4_kernel.Config, a: torch.Tensor) -> list[torch.Tensor]:
    return [lin.triton(a, config) for lin in group]


def _planned_calls(
    nf4: Sequence[NF4Linear], x: dict[int, torch.Tensor], chosen: dict[tuple, nf4_kernel.Config]
) -> list[torch.Tensor]:
    return [lin.triton(x[lin.shape[1]], chosen[(lin.shape, lin.blocksize)]) for lin in nf4]


def _bnb_calls(nf4: Sequence[NF4Linear], x: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    return [lin(x[lin.shape[1]]) for lin in nf4]


def choose_nf4_kernel(linears: Sequence[object], *, dtype: torch.dtype, batches: Sequence[int] = (1,)) -> str:
    """Pick the NF4 kernels on CUDA; returns what was chosen (for ``info()``), "n/a" without CUDA NF4 weights.

    1. bitsandbytes: gemv_4bit against gemm_4bit for one-row inputs, timed on the largest projection (the
       absmax is already dequantized for both; which wins depends on the GPU and shape).
    2. Our Triton kernel, when usable (``_triton_unusable``: triton, the weight layout, the self-check): for each
       batch size in ``batches`` up to 32, per weight shape, the fastest of ``nf4_kernel.candidates`` (each timed
       over all the layers of that shape, streaming from memory as in a decode step), then all projections with
       those against bitsandbytes' kernel; the faster serves that batch size (and the sizes below it down to the
       previous one). Timed from CUDA graphs, as decode runs.
    """
    nf4 = [lin for lin in linears if isinstance(lin, NF4Linear) and _on_gpu(lin.packed)]
    NF4_CHOICE.clear()
    if not nf4:
        return "n/a"
    bnb_kernel = _choose_bnb_nf4(nf4, dtype=dtype)
    rows = sorted({b for b in batches if b <= nf4_kernel.MAX_ROWS})
    if not rows:
        return bnb_kernel
    why = _triton_unusable(nf4, rows=sorted({*rows, *(r - 1 for r in rows if r > 2)}))
    if why:
        NF4_CHOICE.update(kernel=bnb_kernel, triton_unusable=why)
        log.warning("NF4: %s (Triton kernel not used: %s)", bnb_kernel, why)
        return f"{bnb_kernel} (triton not used: {why})"
    device = nf4[0].packed.device
    groups: dict[tuple, list[NF4Linear]] = {}
    for lin in nf4:
        groups.setdefault((lin.shape, lin.blocksize), []).append(lin)
    use: dict[int, dict[tuple, nf4_kernel.Config] | None] = {}
    detail: dict[int, dict[str, Any]] = {}
    for m in rows:
        x = {k: torch.randn(m, k, device=device, dtype=nf4[0].compute_dtype) for k in {lin.shape[1] for lin in nf4}}
        chosen: dict[tuple, nf4_kernel.Config] = {}
        for key, group in groups.items():
            xk = x[key[0][1]]
            timings = {cfg: _graph_seconds(partial(_triton_calls, group, cfg, xk)) for cfg in nf4_kernel.candidates(m)}
            chosen[key] = min(timings, key=timings.__getitem__)
            nbytes = sum(lin.packed.numel() + lin.absmax.numel() * 4 for lin in group)
            detail.setdefault(m, {})[f"{key[0][0]}x{key[0][1]}"] = {
                "layers": len(group), "config": list(chosen[key]),
                "us_per_layer": round(timings[chosen[key]] / len(group) * 1e6, 2),
                "GB_per_s": round(nbytes / timings[chosen[key]] / 1e9, 1),
            }  # fmt: skip
        t_triton = _graph_seconds(partial(_planned_calls, nf4, x, chosen))
        t_bnb = _graph_seconds(partial(_bnb_calls, nf4, x))  # triton_plan still empty: bitsandbytes' kernel
        use[m] = chosen if t_triton < t_bnb else None
        detail[m]["all_projections_us"] = {"triton": round(t_triton * 1e6, 1), "bitsandbytes": round(t_bnb * 1e6, 1)}
    plans: dict[int, list] = {id(lin): [None] * (nf4_kernel.MAX_ROWS + 1) for lin in nf4}
    lower = 0
    for m in rows:  # batch sizes between two timed ones go with the larger (the decode graphs pad up to it)
        configs = use[m]
        if configs is not None:
            for lin in nf4:
                plans[id(lin)][lower + 1 : m + 1] = [configs[(lin.shape, lin.blocksize)]] * (m - lower)
        lower = m
    for lin in nf4:
        lin.triton_plan = tuple(plans[id(lin)])
    on = [m for m in rows if use[m] is not None]
    if len(on) == len(rows):
        summary = "triton"
    elif not on:
        summary = bnb_kernel + " (triton timed slower)"
    else:
        summary = f"triton (batch {','.join(map(str, on))}), bitsandbytes otherwise"
    NF4_CHOICE.update(kernel=summary, per_batch=detail)
    log.info("NF4 kernels: %s %s", summary, detail)
    return summary


def _choose_bnb_nf4(nf4: Sequence[NF4Linear], *, dtype: torch.dtype) -> str:
    """Time gemv_4bit against gemm_4bit for one-row inputs on the largest NF4 projection; use the faster."""
    probe = max(nf4, key=lambda lin: lin.shape[0] * lin.shape[1])
    x = torch.randn(1, probe.shape[1], device=probe.packed.device, dtype=dtype)
    outputs = {}
    for use_gemv in (True, False):
        probe.use_gemv = use_gemv
        outputs[use_gemv] = probe(x).float()
    want = outputs[False]
    if not torch.allclose(outputs[True], want, rtol=2e-2, atol=2e-2 * float(want.abs().max())):
        for lin in nf4:
            lin.use_gemv = False
        return "gemm_4bit (gemv_4bit disagreed)"
    timings = {}
    for use_gemv in (True, False):
        probe.use_gemv = use_gemv
        timings[use_gemv] = _time_calls(lambda: probe(x), cuda=True)
    best = timings[True] <= timings[False]
    for lin in nf4:
        lin.use_gemv = best
    return "gemv_4bit" if best else "gemm_4bit"
