"""A Triton NF4 GEMV for the decode path: y = x @ dequant(W).T for a few rows of x (M <= 32).

Why: batch-1 decode reads every weight once per token, so NF4 (a quarter of bf16's bytes) should be faster than
bf16. bitsandbytes' one-row kernel (``gemv_4bit`` / ``gemm_4bit``'s ``kgemm_4bit_inference_naive``) moves only
~0.75 TB/s on an H200, so NF4 decoded slower than bf16 (1.90 against 1.76 ms/token).

The weights stay as bitsandbytes stores them (``jobs.engine.linear`` hands them over): ``packed`` is the [N, K]
weight flattened row-major, two 4-bit codes a byte (the even element in the high nibble, the odd one in the low
nibble); ``absmax`` is one fp32 scale per ``blocksize`` consecutive elements (double quantization already undone);
``code`` is the 16-entry table (NF4's normal-float levels). Element (n, k) = code[nibble] * absmax[(n*K + k) // bs].

Rows of x up to FMA_MAX_ROWS (``_nf4_fma_kernel``, the decode case): each program owns ``BLOCK_N`` output rows and
walks K in steps of ``NB`` quantization blocks, reading the weight as int32 words (4 packed bytes, 8 elements;
16-byte vector loads along K). Per word, inline PTX (``_word_asm``) loads the 8 matching bf16 elements of x (16
bytes), turns them into fp32 with a shift / mask, and looks the 8 codes up with a warp shuffle: lane n of each
half-warp holds code[n] (``_LANE_CODE_ASM``, once per program), so a lookup is a shift and a ``shfl.sync.idx`` with
no address arithmetic and no memory access; 8 FMAs give the word's partial sum. The asm keeps everything in the
word tile's register layout (a ``tl.load`` gather gets a layout of its own, and each tile would go through shared
memory to match). Each quantization block's sum is scaled once by its absmax. The next step's words are loaded
before the current step is computed (register double buffering). On the H200 this runs the 88 batch-1 projections
of a 1.1 B Llama in ~570 us against bitsandbytes' ~900 us (bench/README.md has per-shape figures).
More rows (up to MAX_ROWS, ``_nf4_dot_kernel``): the tile is dequantized to bf16 and multiplied on the tensor cores
(``tl.dot``, rows padded to 16 or 32), as bitsandbytes' reference does (dequantize, then a matmul). It is plain
Triton (gathers, layout conversions) and measured ~5x slower than bitsandbytes at 4 rows on the H200; the engine
times both per batch size at start-up and uses the faster.
Accumulation is fp32; the output is written in x's dtype (bf16). No split over K: its partial sums would need a
zeroed buffer or a second kernel, i.e. more kernels in the decode graph; the programs are sized so that there are
enough of them instead. Under TRITON_INTERPRET=1 (CPU tests) the PTX is replaced by the same arithmetic in Triton.

Requirements checked by ``supported``: CUDA (or the Triton interpreter on CPU in tests), bf16 activations,
K % blocksize == 0, blocksize a power of two >= 32, fewer than 2**31 bytes of weight, quant_type "nf4", the packed
data 16-byte aligned. Kernels are compiled on their
first call, so callers run every shape once before capturing a CUDA graph; a launch does no host sync.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: without it the engine uses bitsandbytes' kernels
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None

MAX_ROWS = 32  # larger M (prefill) goes to bitsandbytes' gemm_4bit (dequantize + cuBLAS)
FMA_MAX_ROWS = 2


def available() -> bool:
    return triton is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    def _word_asm() -> str:
        """PTX for one 32-bit word of packed weights (4 bytes: 8 elements) against the 8 matching elements of x.

        $1: the word; $2: the address of the 4 int32 words of x that pair with it (bf16 pairs x[2i], x[2i+1]);
        $3: this lane's entry of the code table (lanes l and l + 16 hold code[l]). $0 = sum over the 8 elements of
        code[nibble] * x. The lookup is a warp shuffle: in each half-warp, lane n holds code[n], and shfl.idx with
        segment mask 0x10 reads lane (own half | low 4 bits of the index), so a nibble needs no masking, only a
        shift, and no address arithmetic: two instructions per weight, no memory access. Written as asm so that
        it keeps the register layout of the word tile (a tl.load gather gets a layout of its own, and tiles would
        go through shared memory to match)."""
        lines = [
            "{", ".reg .b32 t, e, o, x0, x1, x2, x3, c, d;", ".reg .f32 s;",
            "ld.global.nc.v4.b32 {x0, x1, x2, x3}, [$2];",
        ]  # fmt: skip
        for i in range(4):
            hi = f"shr.b32 t, $1, {8 * i + 4};\nshfl.sync.idx.b32 c, $3, t, 0x100F, 0xffffffff;"
            lo = (f"shr.b32 t, $1, {8 * i};\nshfl.sync.idx.b32 d, $3, t, 0x100F, 0xffffffff;" if i
                  else "shfl.sync.idx.b32 d, $3, $1, 0x100F, 0xffffffff;")  # fmt: skip
            lines += [hi, lo, f"shl.b32 e, x{i}, 16;", f"and.b32 o, x{i}, 0xFFFF0000;"]
            lines += ["mul.rn.f32 s, c, e;" if i == 0 else "fma.rn.f32 s, c, e, s;", "fma.rn.f32 s, d, o, s;"]
        lines += ["mov.b32 $0, s;", "}"]
        return "\n".join(lines)

    _WORD_ASM = tl.constexpr(_word_asm())
    # this lane's table entry: code[laneid % 16]
    _LANE_CODE_ASM = tl.constexpr(
        "{\n.reg .b32 t;\n.reg .b64 a;\nmov.u32 t, %laneid;\nand.b32 t, t, 15;\nmul.wide.u32 a, t, 4;\n"
        "add.s64 a, a, $2;\nld.global.nc.b32 $0, [a];\n}"
    )

    @triton.jit
    def _word_dot(w, x_addr, lane_code, xp_ptr, x_offs, code_ptr, USE_ASM: tl.constexpr):
        """sum over the 8 elements of each packed word of code[nibble] * x (see _word_asm); x_offs / x_addr: the
        index / address of the word's first x pair."""
        if USE_ASM:
            s = tl.inline_asm_elementwise(_WORD_ASM, "=r,r,l,r", [w, x_addr, lane_code], dtype=tl.float32,
                                          is_pure=True, pack=1)  # fmt: skip
        else:  # the same arithmetic in plain Triton (the interpreter cannot run PTX)
            s = tl.zeros(w.shape, dtype=tl.float32)
            for i in tl.static_range(4):
                byte = (w >> (8 * i)) & 0xFF
                xw = tl.load(xp_ptr + x_offs + i)
                xe = (xw << 16).to(tl.float32, bitcast=True)
                xo = (xw & -65536).to(tl.float32, bitcast=True)
                s += tl.load(code_ptr + (byte >> 4)) * xe + tl.load(code_ptr + (byte & 0xF)) * xo
        return s

    @triton.jit
    def _nf4_fma_kernel(
        xp_ptr, x_addr0, w_ptr, absmax_ptr, code_ptr, code_addr, out_ptr, M, N, words_per_row, n_blocks,
        stride_xm, stride_om,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, QB: tl.constexpr, EVEN_K: tl.constexpr,
        USE_ASM: tl.constexpr,
    ):  # fmt: skip
        """y[m, n] for m < M <= BLOCK_M <= 2, fp32 FMAs. The weight is read as int32 words (8 elements each); x as
        int32 words too, each a pair of bf16 (x[2i], x[2i+1]); x_addr0 is x's address, stride_xm in words."""
        WPB: tl.constexpr = QB // 8  # words per quantization block
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_in = tl.minimum(rows, N - 1)  # rows past N re-read the last row; their results are not stored
        blk = tl.arange(0, NB)
        t = tl.arange(0, WPB)
        w_offs = rows_in[:, None, None] * words_per_row + blk[None, :, None] * WPB + t[None, None, :]
        a_offs = rows_in[:, None] * n_blocks + blk[None, :]
        x_offs = (blk[:, None] * WPB + t[None, :]) * 4  # x pair index of each word's first element pair
        acc0 = tl.zeros([BLOCK_N, NB], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_N, NB], dtype=tl.float32)
        if USE_ASM:
            lane_code = tl.inline_asm_elementwise(_LANE_CODE_ASM, "=r,r,l", [tl.zeros([1, 1, 1], tl.int32), code_addr],
                                                  dtype=tl.float32, is_pure=True, pack=1)  # fmt: skip
        else:
            lane_code = tl.zeros([1, 1, 1], tl.float32)

        # step 0's words, loaded before the loop; each iteration loads the next step's words first
        if EVEN_K:
            w_next = tl.load(w_ptr + w_offs)
        else:
            w_next = tl.load(w_ptr + w_offs, mask=(blk < n_blocks)[None, :, None], other=0)
        for b0 in range(0, n_blocks, NB):
            w = w_next
            nb0 = b0 + NB
            w_next = tl.load(w_ptr + w_offs + nb0 * WPB, mask=((nb0 + blk) < n_blocks)[None, :, None], other=0)
            if EVEN_K:
                a = tl.load(absmax_ptr + a_offs + b0)
            else:
                a = tl.load(absmax_ptr + a_offs + b0, mask=((b0 + blk) < n_blocks)[None, :], other=0.0)
            # past K (not EVEN_K) the words are 0 and x's address is clamped into row 0: products of nothing
            xo0 = tl.minimum(b0 * QB // 2 + x_offs, words_per_row * 4 - 4)
            x_addr = x_addr0 + xo0.to(tl.int64) * 4
            s = _word_dot(w, x_addr[None, :, :], lane_code, xp_ptr, xo0[None, :, :], code_ptr, USE_ASM)
            acc0 += tl.sum(s, axis=2) * a
            if BLOCK_M > 1:
                s1 = _word_dot(w, x_addr[None, :, :] + stride_xm * 4, lane_code, xp_ptr + stride_xm, xo0[None, :, :],
                               code_ptr, USE_ASM)  # fmt: skip
                acc1 += tl.sum(s1, axis=2) * a
        n_ok = rows < N
        out = out_ptr + rows
        tl.store(out, tl.sum(acc0, axis=1).to(out_ptr.dtype.element_ty), mask=n_ok)
        if BLOCK_M > 1:
            tl.store(out + stride_om, tl.sum(acc1, axis=1).to(out_ptr.dtype.element_ty), mask=n_ok & (M > 1))

    @triton.jit
    def _nf4_dot_kernel(
        x_ptr, w_ptr, absmax_ptr, code_ptr, out_ptr, M, N, K, n_blocks, stride_xm, stride_om,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, QB: tl.constexpr, EVEN_K: tl.constexpr,
        UPCAST_DOT: tl.constexpr,
    ):  # fmt: skip
        """y[m, n] for 4 < M <= BLOCK_M: the tile dequantized to x's dtype, then tensor-core dots (fp32 acc)."""
        HALF: tl.constexpr = QB // 2
        BLOCK_K: tl.constexpr = NB * QB
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_in = tl.minimum(rows, N - 1)
        blk = tl.arange(0, NB)
        j = tl.arange(0, HALF)
        half_k = K // 2
        w_offs = rows_in[:, None, None] * half_k + blk[None, :, None] * HALF + j[None, None, :]
        a_offs = rows_in[:, None] * n_blocks + blk[None, :]
        m_idx = tl.arange(0, BLOCK_M)
        kk = tl.arange(0, BLOCK_K)
        x_offs = m_idx[:, None] * stride_xm + kk[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for b0 in range(0, n_blocks, NB):
            if EVEN_K:
                q = tl.load(w_ptr + w_offs + b0 * HALF)
                a = tl.load(absmax_ptr + a_offs + b0)
                xm = tl.load(x_ptr + x_offs + b0 * QB, mask=(m_idx < M)[:, None], other=0.0)
            else:
                ok = (b0 + blk) < n_blocks
                q = tl.load(w_ptr + w_offs + b0 * HALF, mask=ok[None, :, None], other=0)
                a = tl.load(absmax_ptr + a_offs + b0, mask=ok[None, :], other=0.0)
                okx = (m_idx < M)[:, None] & ((b0 * QB + kk) < K)[None, :]
                xm = tl.load(x_ptr + x_offs + b0 * QB, mask=okx, other=0.0)
            w_hi = tl.load(code_ptr + (q >> 4).to(tl.int32)) * a[:, :, None]
            w_lo = tl.load(code_ptr + (q & 0xF).to(tl.int32)) * a[:, :, None]
            w = tl.reshape(tl.interleave(w_hi, w_lo), [BLOCK_N, BLOCK_K]).to(x_ptr.dtype.element_ty)
            if UPCAST_DOT:  # the interpreter's bf16 dot is wrong; the same products in fp32 (exact for bf16 inputs)
                acc = tl.dot(xm.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(xm, tl.trans(w), acc)
        out = out_ptr + m_idx[:, None] * stride_om + rows[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(m_idx[:, None] < M) & (rows[None, :] < N))


# (BLOCK_N, NB, num_warps): a program owns BLOCK_N output rows and reads NB quantization blocks of each per step.
# The first entry is the default; ``candidates`` lists what the engine times at start-up (per weight shape, on all
# the layers of that shape, inside a CUDA graph) to pick one. With K 2048 and bs 64, NB 32 is a row's whole K: a
# program issues all of its loads at once. On the H200, batch 1, (4, 32, 4) won for all four Llama shapes (N / 4
# programs of 4 KB each: many programs per SM keep the bytes in flight).
FMA_CONFIGS = {
    1: [(4, 32, 4), (8, 32, 4), (16, 32, 4), (8, 32, 8), (16, 32, 8), (32, 16, 4), (8, 16, 4), (16, 8, 4), (32, 8, 4)],
    2: [(8, 32, 4), (4, 32, 4), (8, 32, 8), (16, 16, 4), (8, 8, 4)],
}
DOT_CONFIGS = {16: [(32, 4, 4), (64, 4, 4)], 32: [(32, 4, 4)]}
Config = tuple[int, int, int]


def block_m(m: int) -> int:
    if m <= FMA_MAX_ROWS:
        return m
    return 16 if m <= 16 else 32


def candidates(m: int) -> list[Config]:
    bm = block_m(m)
    return list((FMA_CONFIGS if bm <= FMA_MAX_ROWS else DOT_CONFIGS)[bm])


def _launch_shape(m: int, k: int, blocksize: int, config: Config | None) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, NB, num_warps) for an [m, k] x [n, k]^T product."""
    bm = block_m(m)
    bn, nb, warps = config or candidates(m)[0]
    nb = max(1, min(nb, _pow2_floor(k // blocksize)))  # no wider than K
    if bm > FMA_MAX_ROWS:
        nb = max(nb, -(-16 // blocksize))  # a dot needs K >= 16 per step
    return bm, bn, nb, warps


def _pow2_floor(v: int) -> int:
    return 1 << (max(v, 1).bit_length() - 1)


def supported(*, packed: torch.Tensor, shape: tuple[int, int], blocksize: int, quant_type: str,
              dtype: torch.dtype) -> str | None:  # fmt: skip
    """Why this kernel cannot serve the weight with activations of ``dtype`` (None when it can)."""
    if triton is None:
        return "triton is not installed"
    if dtype != torch.bfloat16:
        return f"activations in {dtype} (the kernel reads bf16 pairs)"
    if not (packed.is_cuda or interpreting()):
        return "not on CUDA"
    n, k = shape
    if quant_type != "nf4":
        return f"quant_type {quant_type}"
    if blocksize < 32 or blocksize & (blocksize - 1):
        return f"blocksize {blocksize}"
    if k % blocksize:
        return f"K {k} is not a multiple of the blocksize {blocksize}"
    if n * k // 2 >= 2**31:
        return "weight of 2**31 bytes or more"
    if packed.dtype != torch.uint8 or not packed.is_contiguous() or packed.data_ptr() % 16:
        return (
            f"packed storage ({packed.dtype}, contiguous {packed.is_contiguous()}, at {packed.data_ptr() % 16} mod 16)"
        )
    return None


def nf4_matmul(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, *,
               shape: tuple[int, int], blocksize: int, config: Config | None = None) -> torch.Tensor:  # fmt: skip
    """x [M, K] (M <= 32, bf16) times the NF4 weight [N, K] transposed: [M, N] in x's
    dtype. ``absmax`` fp32 [N*K/blocksize], ``code`` fp32 [16], ``packed`` uint8 (N*K/2 bytes)."""
    m, k = x.shape
    n = shape[0]
    assert k == shape[1] and 0 < m <= MAX_ROWS, (x.shape, shape)
    if x.stride(1) != 1 or x.stride(0) % 8 or x.data_ptr() % 16:
        x = x.contiguous()  # the kernel reads x in 16-byte pieces
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    bm, bn, nb, warps = _launch_shape(m, k, blocksize, config)
    even = (k // blocksize) % nb == 0
    grid = (triton.cdiv(n, bn),)
    if bm <= FMA_MAX_ROWS:
        xp = x.view(torch.int32)  # bf16 pairs; rows are whole 16-byte pieces (K % 32 == 0)
        words = packed.view(torch.int32)
        _nf4_fma_kernel[grid](xp, x.data_ptr(), words, absmax, code, code.data_ptr(), out, m, n, k // 8, k // blocksize,
                              xp.stride(0), out.stride(0), BLOCK_M=bm, BLOCK_N=bn, NB=nb, QB=blocksize,
                              EVEN_K=even, USE_ASM=not interpreting(), num_warps=warps)  # fmt: skip
    else:
        _nf4_dot_kernel[grid](x, packed, absmax, code, out, m, n, k, k // blocksize, x.stride(0), out.stride(0),
                              BLOCK_M=bm, BLOCK_N=bn, NB=nb, QB=blocksize, EVEN_K=even,
                              UPCAST_DOT=interpreting(), num_warps=warps)  # fmt: skip
    return out


def reference(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, *,
              shape: tuple[int, int], blocksize: int) -> torch.Tensor:  # fmt: skip
    """The same product in fp32 with plain torch ops (tests; no bitsandbytes needed)."""
    q = packed.reshape(-1)
    idx = torch.stack(((q >> 4).long(), (q & 0xF).long()), dim=-1).reshape(-1)
    w = code.float()[idx].reshape(-1, blocksize) * absmax.float().reshape(-1, 1)
    return x.float() @ w.reshape(shape).T


def self_check(device: torch.device, *, blocksizes: set[int], ks: set[int], rows: list[int]) -> str | None:
    """Every kernel variant that ``rows`` can use, on random NF4 layers of each (K, blocksize), against
    bitsandbytes' ``dequantize_4bit`` then a matmul. None when all agree, else what differed.

    Tolerances (relative to the reference): the norm of the difference 4e-3 and its largest element 1e-2 of the
    largest output. Rows of up to FMA_MAX_ROWS multiply fp32 weights (code * absmax) in fp32, and the reference
    does too; the tensor-core path rounds the weights to bf16 first, as bitsandbytes does, and so does its
    reference. What is left is the order of fp32 sums and the bf16 rounding of the output (~2e-3 relative)."""
    import bitsandbytes.functional as bnbf

    gen = torch.Generator(device="cpu").manual_seed(1234)
    n = 197  # not a multiple of any BLOCK_N: the clamped last rows are exercised
    for bs in sorted(blocksizes):
        for k in sorted(ks):
            if k % bs:
                continue
            w = torch.randn(n, k, generator=gen).to(device)
            packed, state = bnbf.quantize_4bit(w, blocksize=bs, quant_type="nf4")
            deq = bnbf.dequantize_4bit(packed, state).float()
            absmax, code = state.absmax.float(), state.code.float()
            for m in rows:
                x = torch.randn(m, k, generator=gen).to(device, torch.bfloat16)
                w_ref = deq if block_m(m) <= FMA_MAX_ROWS else deq.to(torch.bfloat16).float()
                want = x.float() @ w_ref.T
                for cfg in candidates(m):
                    got = nf4_matmul(x, packed.view(-1), absmax, code, shape=(n, k), blocksize=bs, config=cfg).float()
                    diff = got - want
                    rel = float(diff.norm() / want.norm())
                    worst = float(diff.abs().max() / want.abs().max())
                    if not (rel <= 4e-3 and worst <= 1e-2):  # NaN fails too
                        return (
                            f"rows {m}, K {k}, blocksize {bs}, config {cfg}: relative error {rel:.2e}, max {worst:.2e}"
                        )
    return None
