"""The Triton NF4 kernel (jobs/engine/nf4.py) on CPU, under the Triton interpreter (TRITON_INTERPRET=1).

The interpreter runs the kernels' Triton code with numpy: the indexing, masking, nibble order, absmax blocks and
the per-row / tensor-core paths are checked here against bitsandbytes' own quantize / dequantize on CPU. What it
cannot run is the PTX that the GPU build uses for the table lookup (a warp shuffle); the kernel's plain-Triton
twin of it runs instead, and on CUDA the engine checks the PTX build against bitsandbytes at start-up
(``nf4_kernel.self_check``) before using it. The interpreter also rounds float -> bf16 by truncation, not to
nearest, hence tolerances of 1e-2 here (the GPU self-check uses 4e-3).

Runs in a subprocess: TRITON_INTERPRET is read when the kernels are defined (module import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs.engine import nf4 as nf4_kernel

ROOT = Path(__file__).resolve().parents[3]

# Run under TRITON_INTERPRET=1. triton 3.6's interpreter turns a scalar argument into a 1-element numpy array and
# calls int() on it for range(); numpy >= 2.4 refuses that for arrays that are not 0-d, so __index__ is patched.
SCRIPT = r"""
import json, sys
import numpy as np
import triton.runtime.interpreter as ti

try:
    int(np.array([1]))
except TypeError:
    _orig = ti._patch_lang_tensor

    def _patched(tensor, scope):
        _orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    ti._patch_lang_tensor = _patched

import torch
import bitsandbytes.functional as bnbf
from jobs.engine import nf4 as E

torch.manual_seed(0)
results = []
for n, k, bs in [(40, 256, 64), (33, 320, 64), (16, 128, 32), (20, 512, 128)]:
    w = torch.randn(n, k)
    packed, state = bnbf.quantize_4bit(w, blocksize=bs, quant_type="nf4")
    deq = bnbf.dequantize_4bit(packed, state).float()
    absmax, code = state.absmax.float(), state.code.float()
    ours_ref = E.reference(torch.eye(k), packed, absmax, code, shape=(n, k), blocksize=bs).T
    results.append({"case": f"reference {n}x{k} bs{bs}", "err": float((ours_ref - deq).abs().max()), "tol": 0.0})
    for m in (1, 2, 3, 16, 17, 32):
        x = torch.randn(m, k).to(torch.bfloat16)
        w_ref = deq if E.block_m(m) <= E.FMA_MAX_ROWS else deq.to(torch.bfloat16).float()
        want = x.float() @ w_ref.T
        for cfg in E.candidates(m):
            got = E.nf4_matmul(x, packed.reshape(-1), absmax, code, shape=(n, k), blocksize=bs, config=cfg).float()
            assert got.shape == (m, n), got.shape
            err = float((got - want).norm() / want.norm())
            results.append({"case": f"{n}x{k} bs{bs} rows {m} config {cfg}", "err": err, "tol": 1e-2})

# The engine's projection object routes small batches to the kernel when told to.
import bitsandbytes as bnb
from jobs.engine.linear import make_linear

layers = [bnb.nn.Linear4bit(256, o, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4") for o in (64, 32, 32)]
for layer in layers:
    layer.weight = bnb.nn.Params4bit(torch.randn(layer.out_features, 256) * 0.05, requires_grad=False,
                                     quant_type="nf4", blocksize=64)._quantize("cpu")
    layer.weight.quant_state.nested = False
fused = make_linear(layers)
reason = E.supported(packed=fused.packed.view(-1), shape=fused.shape, blocksize=fused.blocksize,
                     quant_type=fused.quant_type, dtype=fused.compute_dtype)
assert reason is None, reason
x = torch.randn(2, 256).to(torch.bfloat16)
want = torch.cat([x.float() @ bnbf.dequantize_4bit(l.weight.data, l.weight.quant_state).float().T for l in layers], -1)
fused.triton_plan = (None, None, (16, 4, 4))
got = fused(x).float()
results.append({"case": "fused q/k/v-like NF4Linear, 2 rows", "err": float((got - want).norm() / want.norm()),
                "tol": 1e-2})
print("RESULTS " + json.dumps(results))
"""


def _interpreter_usable() -> str | None:
    if not nf4_kernel.available():
        return "triton is not installed (pip install triton==3.6.0 to run the kernel under its interpreter)"
    try:
        import triton.runtime.interpreter  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the triton build
        return f"triton's interpreter does not import here: {exc}"
    return None


@pytest.mark.timeout(600)
def test_kernel_matches_bitsandbytes_under_the_interpreter():
    why = _interpreter_usable()
    if why:
        pytest.skip(why)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=570)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-4000:]
        pytest.fail(f"interpreter run failed (exit {proc.returncode}):\n{tail}")
    results = json.loads(lines[-1].removeprefix("RESULTS "))
    assert len(results) >= 50
    bad = [r for r in results if not r["err"] <= r["tol"]]
    assert not bad, bad


def test_supported_says_why_not(monkeypatch):
    packed = torch.zeros(64 * 256 // 2, dtype=torch.uint8)
    kw = {"packed": packed, "shape": (64, 256), "blocksize": 64, "quant_type": "nf4", "dtype": torch.bfloat16}
    if not nf4_kernel.available():
        assert nf4_kernel.supported(**kw) == "triton is not installed"
        return
    if not nf4_kernel.interpreting():
        assert nf4_kernel.supported(**kw) == "not on CUDA"
    monkeypatch.setattr(nf4_kernel, "interpreting", lambda: True)  # CPU tensors allowed, as under the interpreter
    assert nf4_kernel.supported(**kw) is None
    assert "fp4" in nf4_kernel.supported(**{**kw, "quant_type": "fp4"})
    assert "float16" in nf4_kernel.supported(**{**kw, "dtype": torch.float16})
    assert "multiple" in nf4_kernel.supported(**{**kw, "shape": (64, 224), "packed": packed[: 64 * 224 // 2]})


def test_block_rows_and_candidates():
    assert [nf4_kernel.block_m(m) for m in (1, 2, 3, 16, 17, 32)] == [1, 2, 16, 16, 32, 32]
    for m in (1, 2, 4, 32):
        assert nf4_kernel.candidates(m), m
