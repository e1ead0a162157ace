"""Greedy batch-1 decode through the engine against transformers' forward of the same loaded model, step by step.

    python bench/check_decode.py --model-dir DIR [--steps 16] [--prompt-tokens 48]

The fast path's batch-1 decode is the graph-captured step (on CUDA with the NF4 Triton kernel when the start-up
choice picked it). Each step's logits are compared with `model(ids).logits[-1]` of the transformers model the engine
loaded (bitsandbytes' own 4-bit layers), on the same token sequence. Prints the largest difference relative to the
logit scale, whether every argmax agrees, and which kernels ran; writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@torch.no_grad()
def check(model_dir: Path, *, steps: int, prompt_tokens: int) -> dict:
    from jobs.engine.loading import load_engine

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    engine = load_engine(model_dir, device=device, max_batch=1, max_seq_len=512)
    backend, model = engine.backend, engine.backend.model
    vocab = min(backend.vocab, engine.tokenizer.vocab_size)
    ids = torch.randint(0, vocab, (prompt_tokens,), generator=torch.Generator().manual_seed(11)).tolist()
    logits = backend.prefill(slot=0, ids=ids).float()
    worst = scale = 0.0
    agree = 0
    for _ in range(steps):
        want = model(torch.tensor([ids], device=device)).logits[0, -1].float()
        worst = max(worst, float((logits - want).abs().max()))
        scale = max(scale, float(want.abs().max()))
        agree += int(logits.argmax()) == int(want.argmax())
        ids.append(int(want.argmax()))  # both continue on the reference's choice
        logits = backend.decode(rows=[(0, ids[-1], len(ids) - 1)])[0].float()
    return {
        "model_dir": str(model_dir),
        "steps": steps,
        "max_abs_diff": worst,
        "logit_scale": scale,
        "relative": worst / scale if scale else None,
        "argmax_agree": f"{agree}/{steps}",
        **{k: v for k, v in engine.info().items() if k in ("path", "weights", "nf4_kernel", "cuda_graphs", "device")},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = check(args.model_dir, steps=args.steps, prompt_tokens=args.prompt_tokens)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
