"""The decode engine's projections: one callable per (possibly fused) linear layer, whatever the weight format.

The fast Llama path (``jobs.engine_llama``) reuses the weights transformers loaded instead of copying them:
- bf16/fp32 ``nn.Linear``: ``F.linear`` on the weight.
- bitsandbytes ``Linear4bit`` (NF4/FP4): the packed 4-bit data as loaded. With double quantization the per-block
  absmax is itself 8-bit; bitsandbytes dequantizes it on every call, so it is dequantized ONCE here (fp32, 1/16 of
  the bf16 weight's size) and each projection is one kernel: ``gemv_4bit`` for one row on CUDA, ``gemm_4bit``
  (bitsandbytes' fused kernel for small batches, dequantize + matmul for large ones) otherwise.
- bitsandbytes ``Linear8bitLt``: weight-only int8 (the stored int8 rows times their fp32 row scale), computed in the
  activation dtype. bitsandbytes' own forward also quantizes the activations and pulls outlier columns
  (|x| > 6) out at run time, which needs a host sync and so cannot live in a CUDA graph; weight-only int8 computes
  the same stored weights more accurately, not less.

Fusing: q/k/v and gate/up are concatenated along the output dimension into one weight, so a layer makes 4
projection calls, not 7. The module parameters are then re-pointed at views of the fused tensor, so the weights
are held once and the transformers model keeps working (it serves as the reference and for ``generate``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DenseLinear:
    def __init__(self, *, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class NF4Linear:
    """A 4-bit weight with its absmax dequantized once; ``use_gemv`` picks gemv_4bit for one-row inputs on CUDA."""

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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        a = x.reshape(-1, k).to(self.compute_dtype)
        if self.use_gemv and a.shape[0] == 1:
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


def unpack_4bit_for_cpu(module: nn.Module) -> None:
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


def _nf4_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, object]:
    import bitsandbytes.functional as bnbf

    state = module.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    return module.weight.data, absmax.float().contiguous(), state


def _int8_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    w = module.weight
    scb = getattr(w, "SCB", None)
    if scb is None:
        scb = module.state.SCB
    cb = w.data if w.data.dtype == torch.int8 else module.state.CB
    return cb, scb.float() / 127.0


def _repoint_int8(module: nn.Module, view: torch.Tensor) -> None:
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
        if len(modules) == 1:
            return DenseLinear(weight=modules[0].weight, bias=modules[0].bias)
        if not fuse:
            return SplitLinear(parts=[make_linear([m]) for m in modules])
        fused = torch.cat([m.weight.data for m in modules], dim=0)
        for m, view in zip(modules, fused.split([m.weight.shape[0] for m in modules]), strict=True):
            m.weight.data = view
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


def choose_nf4_kernel(linears: Sequence[object], *, dtype: torch.dtype) -> str:
    """On CUDA, time gemv_4bit against gemm_4bit for one-row inputs on the largest NF4 projection; use the faster.

    Both are single kernels with the absmax already dequantized; which one wins depends on the GPU and shape.
    Returns the choice ("gemv_4bit", "gemm_4bit", or "n/a").
    """
    nf4 = [lin for lin in linears if isinstance(lin, NF4Linear) and lin.packed.is_cuda]
    if not nf4:
        return "n/a"
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
