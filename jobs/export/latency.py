"""The latency benchmark job: prefill and decode times of an artifact dir's variants through the decode engine.

Usage: ``python -m jobs.export.latency --artifact-dir ART_DIR --out FILE [--prefill-tokens 2048] [--decode-tokens 128]
[--variants base,nf4,int8] [--repeats 3]``

For each variant folder present (``base/``, ``nf4/``, ``int8/``), in one process, one variant loaded at a time:
- ``prefill_ms``: one prompt of ``--prefill-tokens`` random token ids through the engine's prefill (the cache write
  and the last position's logits), median of the repeats;
- ``decode_ms_per_token`` / ``decode_tokens_per_s``: one request (batch 1) through the engine's scheduler, greedy,
  EOS ignored, ``--decode-tokens`` tokens after a 64-token prompt; time from the first token to the last over the
  tokens in between, median of the repeats. This includes sampling, detokenization and the scheduler, not just
  the forward pass;
- ``eager_generate_ms_per_token``: the same model's transformers ``generate`` (eager, its own cache, greedy) on the
  same prompt: (time for N tokens - time for 1 token) / (N - 1), median of the repeats: the baseline;
- ``speedup_vs_eager`` = eager / engine ms per token;
- ``memory_bytes``: on CUDA the peak allocated while the variant was loaded and measured (weights, static KV cache
  of ``prompt + tokens`` positions, CUDA graph pools, generate's own cache); on CPU the model's and the KV cache's
  bytes (no allocator peak to read there).
Every timed run comes after a warm-up run and is bracketed by ``torch.cuda.synchronize()`` on CUDA.

Writes FILE as JSON ``{"device", "prefill_tokens", "variants": [{"name", "prefill_ms", "decode_ms_per_token",
"decode_tokens_per_s", "eager_generate_ms_per_token", "speedup_vs_eager", "memory_bytes", ...}], ...}`` and prints
``LATENCY_REPORT <json>`` on one line. Exit code 0 when at least one variant was measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("jobs.export.latency")

VARIANTS = ("base", "nf4", "int8")
DECODE_PROMPT_TOKENS = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def measure_variant(model_dir: str | Path, *, prefill_tokens: int, decode_tokens: int, repeats: int,
                    eager_repeats: int | None = None, device: str | None = None) -> dict:  # fmt: skip
    """All figures for one model dir (see the module docstring)."""
    from jobs.engine.loading import load_engine
    from jobs.engine.sampling import SamplingParams

    eager_repeats = repeats if eager_repeats is None else eager_repeats
    dev = torch.device(device) if device else (torch.device("cuda") if torch.cuda.is_available() else None)
    if dev is not None and dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    max_seq_len = max(prefill_tokens, DECODE_PROMPT_TOKENS + decode_tokens) + 16
    engine = load_engine(model_dir, device=dev, max_batch=1, max_seq_len=max_seq_len)
    backend, dev = engine.backend, engine.backend.device
    vocab = min(backend.vocab, engine.tokenizer.vocab_size)
    gen = torch.Generator().manual_seed(1234)
    long_ids = torch.randint(0, vocab, (prefill_tokens,), generator=gen).tolist()
    short_ids = long_ids[:DECODE_PROMPT_TOKENS]
    greedy = SamplingParams(max_tokens=decode_tokens, temperature=0.0, ignore_eos=True)

    # Engine: prefill and batch-1 decode (warm-up first: CUDA/cuBLAS initialisation, allocator growth).
    backend.prefill(slot=0, ids=long_ids)
    engine.generate([short_ids], SamplingParams(max_tokens=min(8, decode_tokens), temperature=0.0, ignore_eos=True))
    prefill = [_timed(dev, lambda: backend.prefill(slot=0, ids=long_ids)) for _ in range(repeats)]
    decode = []
    for _ in range(repeats):
        _sync(dev)
        (handle,) = engine.generate([short_ids], greedy)
        assert handle.finished_at is not None and handle.first_token_at is not None  # generate() returns finished
        decode.append((handle.finished_at - handle.first_token_at) / max(len(handle.token_ids) - 1, 1))

    # The decode step alone (graph replay or eager forward, no sampling or scheduler), for the breakdown.
    steps = min(50, max_seq_len - DECODE_PROMPT_TOKENS - 1)
    _sync(dev)
    start = time.perf_counter()
    for i in range(steps):
        backend.decode(rows=[(0, short_ids[-1], DECODE_PROMPT_TOKENS + i)])
    _sync(dev)
    step_ms = (time.perf_counter() - start) / steps * 1e3

    # The baseline: transformers' eager generate on the same model object.
    model = backend.model
    ids = torch.tensor([short_ids], device=dev)

    def hf_generate(n: int):
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                           attention_mask=torch.ones_like(ids))  # fmt: skip

    hf_generate(min(32, decode_tokens))  # warm-up: its first runs are slow (allocator, kernel selection)
    eager = []
    for _ in range(eager_repeats):
        one = _timed(dev, lambda: hf_generate(1))
        full = _timed(dev, lambda: hf_generate(decode_tokens))
        eager.append((full - one) / max(decode_tokens - 1, 1))

    if dev.type == "cuda":
        memory = torch.cuda.max_memory_allocated(dev)
        memory_kind = "cuda_peak_allocated"
    else:
        memory = model.get_memory_footprint() + backend.cache_bytes()
        memory_kind = "cpu_model_plus_kv_cache"
    decode_ms = statistics.median(decode) * 1e3
    eager_ms = statistics.median(eager) * 1e3
    info = engine.info()
    result = {
        "name": Path(model_dir).name,
        "prefill_ms": round(statistics.median(prefill) * 1e3, 3),
        "decode_ms_per_token": round(decode_ms, 4),
        "decode_tokens_per_s": round(1e3 / decode_ms, 2),
        "eager_generate_ms_per_token": round(eager_ms, 4),
        "speedup_vs_eager": round(eager_ms / decode_ms, 2),
        "memory_bytes": int(memory),
        "memory_kind": memory_kind,
        "model_bytes": int(model.get_memory_footprint()),
        "decode_step_ms": round(step_ms, 4),
        "engine_path": info["path"],
        "weights": info.get("weights"),
        "cuda_graphs": info.get("cuda_graphs", 0),
        "graph_error": info.get("graph_error"),
        "nf4_kernel": info.get("nf4_kernel"),
        "int8_kernel": info.get("int8_kernel"),
        "prefill_ms_runs": [round(x * 1e3, 3) for x in prefill],
        "decode_ms_runs": [round(x * 1e3, 4) for x in decode],
        "eager_ms_runs": [round(x * 1e3, 4) for x in eager],
    }
    return result  # the engine and model go with this frame; run() collects them before the next variant


def run(*, artifact_dir: str | Path, prefill_tokens: int, decode_tokens: int, variants: list[str], repeats: int,
        eager_repeats: int | None = None, device: str | None = None) -> dict:  # fmt: skip
    art = Path(artifact_dir)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {"device": device_name(dev), "prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens,
                    "decode_prompt_tokens": DECODE_PROMPT_TOKENS, "repeats": repeats, "variants": [],
                    "skipped": [], "errors": []}  # fmt: skip
    for name in variants:
        folder = art / name
        if not (folder / "config.json").exists():
            report["skipped"].append(name)
            continue
        try:
            report["variants"].append(
                measure_variant(
                    folder,
                    prefill_tokens=prefill_tokens,
                    decode_tokens=decode_tokens,
                    repeats=repeats,
                    eager_repeats=eager_repeats,
                    device=str(dev),
                )  # fmt: skip
            )
        except Exception as exc:  # one broken variant must not lose the others' figures
            log.exception("variant %s failed", name)
            report["errors"].append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return report


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.export.latency", description=__doc__.splitlines()[0])
    p.add_argument("--artifact-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prefill-tokens", type=int, default=2048)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.prefill_tokens < 1 or args.decode_tokens < 2 or args.repeats < 1:
        p.error("--prefill-tokens >= 1, --decode-tokens >= 2 and --repeats >= 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {','.join(unknown)}; choose from {','.join(VARIANTS)}")
    if not Path(args.artifact_dir).is_dir():
        p.error(f"--artifact-dir {args.artifact_dir}: not a directory")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run(artifact_dir=args.artifact_dir, prefill_tokens=args.prefill_tokens,
                 decode_tokens=args.decode_tokens, variants=variants, repeats=args.repeats)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("LATENCY_REPORT " + json.dumps(report, separators=(",", ":")), flush=True)
    return 0 if report["variants"] else 1


if __name__ == "__main__":
    sys.exit(_main())
