"""Inference latency: eager transformers `generate` against the decode engine, and the HTTP server under load.

  python bench/serve_latency.py                 # one GPU: a ~1.1 B Llama-shaped model, bf16 / NF4 / int8
  python bench/serve_latency.py --tiny          # CPU: the same steps with a tiny model (~1 min)

Steps, all in one run (work files in a temporary folder unless --work-dir):
1. a Llama-shaped model with random weights (hidden 2048, 22 layers, 32 heads, 4 KV heads, SwiGLU 5632, vocab
   32000: ~1.1 B parameters), saved as a bf16 Hugging Face dir with the repo's tokenizer.model; then NF4 (the R1
   guide's BitsAndBytesConfig: double quant, nf4, bf16 compute) and int8 (load_in_8bit) dirs saved from it;
2. a correctness check of the fast path on the bf16 dir: several slots at different lengths decoded in one
   (graph-captured on CUDA) step, each row's logits against transformers' forward over the same tokens;
3. per variant, `jobs.export.latency` (the latency job's own code): prefill of 2,048 tokens, batch-1 decode ms/token
   through the engine, and eager `generate` ms/token on the same model: the baseline (goal: >= 10x);
4. per variant, `python -m jobs.serve` as a subprocess (max batch 32): one streaming request at a time (64-token
   prompt), then two bursts of 32 concurrent streaming requests (prompts of 16 to 255 tokens, new lengths in each
   burst; 128 tokens each, greedy, EOS ignored); the second burst gives the aggregate tokens/s (goal: >= 8x the
   single stream) and p50/p99 time to first token as a client sees them (the first burst's TTFT is kept too).
Prints a table and writes bench/results/serve_latency-<device>.json (or --out-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

FULL = {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
        "intermediate_size": 5632, "vocab_size": 32000, "max_position_embeddings": 4096}  # fmt: skip
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 4096, "max_position_embeddings": 1024}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- model dirs -----------------------------------------------------------------------------------------------
def build_base(out: Path, *, shape: dict, device: torch.device) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    shutil.copy(ROOT / "jobs" / "assets" / "tokenizer.model", out / "tokenizer.model")
    params = sum(p.numel() for p in model.parameters())
    del model
    return params


def quantize(base: Path, out: Path, *, kind: str, device: torch.device) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if kind == "nf4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    else:
        q = BitsAndBytesConfig(load_in_8bit=True)
    # Saved before any forward pass: on CPUs with AVX512-BF16 the first one repacks 4-bit weights (cpu.md).
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=q, device_map={"": str(device)},
                                                 dtype=torch.bfloat16)  # fmt: skip
    model.save_pretrained(out)
    shutil.copy(base / "tokenizer.model", out / "tokenizer.model")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- correctness --------------------------------------------------------------------------------------------------
def check_multislot(model_dir: Path, *, device: torch.device) -> dict:
    """Prefill 3 prompts of different lengths into slots 0, 1, 3, decode one step for all, compare with transformers."""
    from jobs.engine.loading import load_engine

    engine = load_engine(model_dir, device=device, max_batch=4, max_seq_len=512)
    backend, model = engine.backend, engine.backend.model
    gen = torch.Generator().manual_seed(7)
    vocab = min(backend.vocab, engine.tokenizer.vocab_size)
    prompts = {0: 37, 1: 5, 3: 300}
    seqs = {slot: torch.randint(0, vocab, (n + 1,), generator=gen).tolist() for slot, n in prompts.items()}
    prefill_diff = 0.0
    worst = 0.0
    scale = 0.0
    agree = True
    with torch.no_grad():
        for slot, ids in seqs.items():
            got = backend.prefill(slot=slot, ids=ids[:-1]).float()
            want = model(torch.tensor([ids[:-1]], device=device)).logits[0, -1].float()
            prefill_diff = max(prefill_diff, float((got - want).abs().max()))
        logits = backend.decode(rows=[(slot, ids[-1], len(ids) - 1) for slot, ids in seqs.items()]).float()
        for slot, ids in seqs.items():
            want = model(torch.tensor([ids], device=device)).logits[0, -1].float()
            worst = max(worst, float((logits[slot] - want).abs().max()))
            scale = max(scale, float(want.abs().max()))
            agree = agree and int(logits[slot].argmax()) == int(want.argmax())
    info = engine.info()
    del engine, backend, model
    return {"decode_max_abs_diff": worst, "prefill_max_abs_diff": prefill_diff, "logit_scale": scale,
            "argmax_agrees": agree, "cuda_graphs": info["cuda_graphs"], "graph_error": info["graph_error"]}  # fmt: skip


# ---- where a decode step's time goes ---------------------------------------------------------------------------
@torch.no_grad()
def profile_decode(model_dir: Path, *, device: torch.device) -> dict:
    """Kernels per decode step (eager, b=1, KV bucket 256) by name, and GPU busy time vs wall time of graph replays."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from jobs.engine.loading import load_engine

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    engine = load_engine(model_dir, device=device, max_batch=1, max_seq_len=256)
    backend = engine.backend
    backend.prefill(slot=0, ids=list(range(64)))
    rows = [(0, 5, 64)]
    backend.decode(rows=rows)
    backend._decode_body(1, 256)
    sync()

    def kernels(prof) -> list:
        return [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]

    with profile(activities=activities) as prof:
        backend._decode_body(1, 256)
        sync()
    eager = kernels(prof)
    steps = 20
    with profile(activities=activities) as prof:
        for _ in range(steps):
            backend.decode(rows=rows)
        sync()
    replay = kernels(prof)
    start = time.perf_counter()
    for _ in range(steps):
        backend.decode(rows=rows)
    sync()
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    top = sorted(eager, key=lambda e: -e.count)[:14]
    slow = sorted(replay, key=lambda e: -e.device_time_total)[:8]
    out = {
        "weights": engine.info()["weights"],
        "kernels_per_step_eager": sum(e.count for e in eager),
        "kernels_per_step_graph": sum(e.count for e in replay) / steps,
        "gpu_busy_ms_per_step": sum(e.device_time_total for e in replay) / steps / 1e3,
        "wall_ms_per_step": wall_ms,
        "weight_bytes": backend.weight_bytes(),
        "most_launched": [(e.key[:70], e.count) for e in top],
        "most_gpu_time_us": [(e.key[:70], round(e.device_time_total / steps, 1)) for e in slow],
    }
    del engine, backend
    if cuda:
        torch.cuda.empty_cache()
    return out


# ---- HTTP -----------------------------------------------------------------------------------------------------
def _stream(port: int, body: dict) -> dict:
    conn = HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first = None
    usage = None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        obj = json.loads(data)
        if obj.get("choices") and first is None:
            first = time.perf_counter()
        if obj.get("usage"):
            usage = obj["usage"]
    end = time.perf_counter()
    conn.close()
    tokens = usage["completion_tokens"] if usage else 0
    return {"start": start, "end": end, "ttft": (first or end) - start, "tokens": tokens}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def http_bench(model_dir: Path, *, concurrency: int, max_tokens: int, prompt_tokens: int, max_seq_len: int) -> dict:
    state = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    cmd = [sys.executable, "-m", "jobs.serve", "--model", str(model_dir), "--port", "0", "--state-dir", str(state),
           "--max-batch", str(concurrency), "--max-seq-len", str(max_seq_len), "--served-name", "bench"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    errlog = open(state / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=errlog, stderr=subprocess.STDOUT)
    started = time.perf_counter()
    endpoint = state / "endpoint.json"
    try:
        while not endpoint.exists():
            if proc.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(f"server did not come up: {(state / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        port = json.loads(endpoint.read_text())["port"]
        gen = torch.Generator().manual_seed(3)
        vocab = 4096

        def body(n_prompt: int) -> dict:
            ids = torch.randint(0, vocab, (n_prompt,), generator=gen).tolist()
            return {"model": "bench", "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip

        for _ in range(2):  # warm-up
            _stream(port, body(prompt_tokens))
        singles = [_stream(port, body(prompt_tokens)) for _ in range(3)]
        single = statistics.median(r["tokens"] / (r["end"] - r["start"]) for r in singles)

        def burst() -> list[dict]:
            # Prompt lengths vary (16 to 4 x prompt_tokens), so prefill shapes are new in every burst.
            lengths = torch.randint(16, 4 * prompt_tokens, (concurrency,), generator=gen).tolist()
            bodies = [body(n) for n in lengths]
            results: list[dict] = [{}] * concurrency
            barrier = threading.Barrier(concurrency)

            def worker(i: int) -> None:
                barrier.wait()
                results[i] = _stream(port, bodies[i])

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return results

        first_burst = burst()
        results = burst()
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        total = sum(r["tokens"] for r in results)
        ttfts = [r["ttft"] * 1e3 for r in results]
        first_ttfts = [r["ttft"] * 1e3 for r in first_burst]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        sample = [
            ln for ln in metrics.splitlines() if ln.startswith(("cp_serve_requests_total", "cp_serve_generation"))
        ]
        return {
            "server_ready_s": round(ready_s, 1),
            "single_stream_tokens_per_s": round(single, 1),
            "single_stream_ttft_ms": round(statistics.median(r["ttft"] for r in singles) * 1e3, 2),
            "concurrency": concurrency,
            "concurrent_tokens_per_s": round(total / wall, 1),
            "concurrent_completion_tokens": total,
            "concurrent_wall_s": round(wall, 3),
            "ttft_p50_ms": round(_pct(ttfts, 50), 2),
            "ttft_p99_ms": round(_pct(ttfts, 99), 2),
            "first_burst_ttft_p50_ms": round(_pct(first_ttfts, 50), 2),
            "first_burst_ttft_p99_ms": round(_pct(first_ttfts, 99), 2),
            "burst_prompt_tokens": f"16..{4 * prompt_tokens - 1}",
            "aggregate_vs_single": round(total / wall / single, 2),
            "metrics_sample": sample[:12],
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        errlog.close()
        removed = not endpoint.exists()
        shutil.rmtree(state, ignore_errors=True)
        if not removed:
            log("warning: endpoint.json was still there after SIGTERM")


# ---- report -------------------------------------------------------------------------------------------------------
def table(report: dict) -> str:
    head = ("variant", "eager ms/tok", "engine ms/tok", "speedup", "prefill ms", "http 1 tok/s", "http N tok/s",
            "N/1", "TTFT p50/p99 ms", "memory GiB")  # fmt: skip
    rows = [head]
    for v in report["variants"]:
        h = v.get("http", {})
        rows.append((
            v["name"], f"{v['eager_generate_ms_per_token']:.2f}", f"{v['decode_ms_per_token']:.3f}",
            f"{v['speedup_vs_eager']:.1f}x", f"{v['prefill_ms']:.1f}", f"{h.get('single_stream_tokens_per_s', '-')}",
            f"{h.get('concurrent_tokens_per_s', '-')}", f"{h.get('aggregate_vs_single', '-')}",
            f"{h.get('ttft_p50_ms', '-')}/{h.get('ttft_p99_ms', '-')}", f"{v['memory_bytes'] / 2**30:.2f}",
        ))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (checks that every step runs)")
    p.add_argument("--variants", default="base,nf4,int8")
    p.add_argument("--work-dir", default=None, help="keep the model dirs here (default: a temporary folder)")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--prefill-tokens", type=int, default=None)
    p.add_argument("--decode-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eager-repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--skip-http", action="store_true")
    args = p.parse_args()
    from jobs.export.latency import device_name, run

    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda")
    shape = TINY if args.tiny else FULL
    prefill = args.prefill_tokens or (256 if args.tiny else 2048)
    decode = args.decode_tokens or (32 if args.tiny else 128)
    variants = [v for v in args.variants.split(",") if v]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="serve-latency-"))
    report: dict = {"device": device_name(device), "tiny": args.tiny, "model_shape": shape, "torch": torch.__version__,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "variants": [], "errors": []}  # fmt: skip
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "cpu-tiny" if args.tiny else report["device"].lower().replace("nvidia ", "").replace(" ", "-")
    out = out_dir / f"serve_latency-{tag}.json"

    def save() -> None:  # after every stage, so a run cut short still leaves its figures
        out.write_text(json.dumps(report, indent=1) + "\n")

    try:
        import transformers

        report["transformers"] = transformers.__version__
        base = work / "base"
        if not (base / "config.json").exists():
            t = time.perf_counter()
            report["parameters"] = build_base(base, shape=shape, device=device)
            log(f"built {report['parameters'] / 1e9:.3f} B-parameter model in {time.perf_counter() - t:.1f} s")
        for kind in ("nf4", "int8"):
            if kind in variants and not (work / kind / "config.json").exists():
                t = time.perf_counter()
                quantize(base, work / kind, kind=kind, device=device)
                log(f"quantized {kind} in {time.perf_counter() - t:.1f} s")
        try:
            report["check_multislot_bf16"] = check_multislot(base, device=device)
            log(f"multi-slot check: {report['check_multislot_bf16']}")
            save()
        except Exception as exc:
            report["errors"].append(f"check: {type(exc).__name__}: {exc}")
            log(f"check failed: {exc!r}")
        if device.type == "cuda":
            report["decode_profile"] = {}
            for name in variants:
                try:
                    report["decode_profile"][name] = profile_decode(work / name, device=device)
                    log(f"profile {name}: {json.dumps(report['decode_profile'][name])}")
                except Exception as exc:
                    report["errors"].append(f"profile {name}: {type(exc).__name__}: {exc}")
                    log(f"profile {name} failed: {exc!r}")
            save()
        latency = run(artifact_dir=work, prefill_tokens=prefill, decode_tokens=decode, variants=variants,
                      repeats=args.repeats, eager_repeats=args.eager_repeats, device=str(device))  # fmt: skip
        report["errors"] += latency["errors"]
        for v in latency["variants"]:
            log(f"latency {v['name']}: {json.dumps(v)}")
            report["variants"].append(v)
            save()
            if args.skip_http:
                continue
            try:
                v["http"] = http_bench(work / v["name"], concurrency=args.concurrency, max_tokens=decode,
                                       prompt_tokens=64, max_seq_len=1024)  # fmt: skip
                log(f"http {v['name']}: {json.dumps(v['http'])}")
                save()
            except Exception as exc:
                report["errors"].append(f"http {v['name']}: {type(exc).__name__}: {exc}")
                log(f"http {v['name']} failed: {exc!r}")
    finally:
        save()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(report))
    print(f"errors: {report['errors']}" if report["errors"] else "errors: none")
    print(f"wrote {out}")
    return 0 if report["variants"] and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
