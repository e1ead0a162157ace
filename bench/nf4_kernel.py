"""The NF4 decode kernel on one GPU: correctness through the engine, and time per projection shape.

  python bench/nf4_kernel.py --model-dir DIR/nf4 [--out FILE]      # an NF4 dir as bench/serve_latency.py saves it

1. Loads the dir through the engine with 4 slots (batch buckets 1, 2, 4): the engine's start-up self-check and
   kernel choice (``jobs.engine.linear.NF4_CHOICE``: per batch size and weight shape, the chosen Triton config,
   microseconds per layer and GB/s over the packed bytes + absmax, and all projections against bitsandbytes);
2. decodes three slots at different lengths in one graph step (batch bucket 4) and compares each row's logits
   with transformers' forward over the same tokens (bitsandbytes' kernels), as serve_latency does for bf16;
3. per projection shape at batch 1, from CUDA graphs over all the layers of that shape (weights streamed from
   memory, as in a decode step): the Triton kernel, bitsandbytes' gemv_4bit, and a bf16 ``F.linear`` on random
   bf16 weights of the same shape, in microseconds per layer and GB/s of weight bytes read.
Prints one JSON object (``NF4_KERNEL <json>``) and writes it to --out if given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import triton

    from bench.serve_latency import check_multislot
    from jobs.engine import linear as engine_linear
    from jobs.engine import nf4 as engine_nf4
    from jobs.engine.linear import NF4Linear, _graph_seconds
    from jobs.engine.loading import load_engine

    device = torch.device("cuda")
    report: dict = {"torch": torch.__version__, "triton": triton.__version__, "device": torch.cuda.get_device_name()}
    t0 = time.perf_counter()
    report["check_multislot_nf4"] = check_multislot(Path(args.model_dir), device=device)
    report["check_load_s"] = round(time.perf_counter() - t0, 1)
    report["choice_4_slots"] = json.loads(json.dumps(engine_linear.NF4_CHOICE, default=str))

    engine = load_engine(args.model_dir, device=device, max_batch=1, max_seq_len=256)
    backend = engine.backend
    report["nf4_kernel"] = backend.info()["nf4_kernel"]
    lins = [p for layer in backend.layers for key, lin in layer.items() if "norm" not in key
            for p in getattr(lin, "parts", [lin]) if isinstance(p, NF4Linear)]  # fmt: skip
    groups: dict[tuple, list[NF4Linear]] = {}
    for lin in lins:
        groups.setdefault(lin.shape, []).append(lin)
    shapes = {}
    total = {"triton": 0.0, "gemv_4bit": 0.0, "bf16": 0.0}
    for shape, group in groups.items():
        n, k = shape
        x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
        cfg = group[0].triton_plan[1] if group[0].triton_plan else None
        nbytes = sum(lin.packed.numel() + lin.absmax.numel() * 4 for lin in group)
        t_tri = _graph_seconds(lambda g=group, c=cfg, a=x: [lin.triton(a, c) for lin in g])
        t_gemv = _graph_seconds(lambda g=group, a=x: [
            torch.ops.bitsandbytes.gemv_4bit.default(a, lin.packed, list(lin.shape), lin.absmax, lin.code,
                                                     lin.blocksize) for lin in g])  # fmt: skip
        dense = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in group]
        t_bf16 = _graph_seconds(lambda d=dense, a=x: [F.linear(a, w) for w in d])
        del dense
        total["triton"] += t_tri
        total["gemv_4bit"] += t_gemv
        total["bf16"] += t_bf16
        bf16_bytes = n * k * 2 * len(group)
        shapes[f"{n}x{k}"] = {
            "layers": len(group), "config": cfg, "nf4_bytes_per_layer": nbytes // len(group),
            "triton_us": round(t_tri / len(group) * 1e6, 2), "triton_GB_s": round(nbytes / t_tri / 1e9, 1),
            "gemv_4bit_us": round(t_gemv / len(group) * 1e6, 2), "gemv_4bit_GB_s": round(nbytes / t_gemv / 1e9, 1),
            "bf16_us": round(t_bf16 / len(group) * 1e6, 2), "bf16_GB_s": round(bf16_bytes / t_bf16 / 1e9, 1),
        }  # fmt: skip
    report["batch1_by_shape"] = shapes
    report["batch1_all_projections_us"] = {key: round(v * 1e6, 1) for key, v in total.items()}
    report["triton_max_rows"] = engine_nf4.MAX_ROWS
    line = json.dumps(report)
    print("NF4_KERNEL " + line, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    ok = report["check_multislot_nf4"]["argmax_agrees"] and report["nf4_kernel"].startswith("triton")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
