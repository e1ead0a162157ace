"""Step time of each parallel layout of the reference trainer on CPU (gloo), and the measured 1F1B pipeline bubble
against the formula (p - 1) / (m + p - 1).

python bench/parallel_layouts.py [--steps 12] [--arch dense|moe]

Every layout trains the tiny preset's model on the same global batch (micro-batch divided by the data-parallel size).
The bubble: a pipeline step with m micro-batches over p stages takes T(m) = (m + p - 1) * t when each stage spends t
per micro-batch (forward + backward), so t is the slope of T over m, measured from runs with m = 2, 4 and 8; the
measured bubble of a run is 1 - m * t / T(m), the share of the step the stages wait.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

SEQ, GLOBAL_SEQS = 64, 8
# name -> (parallel section, ranks)
LAYOUTS = {
    "single": ({}, 1),
    "tp2": ({"tp": 2}, 2),
    "sp2": ({"tp": 2, "sp": True}, 2),
    "ep2": ({"ep": 2}, 2),
    "pp2": ({"pp": 2, "zero_stage": 1}, 2),
    "tp2xpp2": ({"tp": 2, "pp": 2, "zero_stage": 1}, 4),
    "pp2xdp2": ({"pp": 2, "zero_stage": 1}, 4),
}


def run_layout(parallel: dict, ranks: int, *, arch: str, steps: int, grad_accum: int, port: int) -> float:
    """Median step time (s) over the last half of the steps."""
    from runs.planning.presets import preset_config

    dp = ranks // (parallel.get("tp", 1) * parallel.get("pp", 1))
    cfg = preset_config("tiny")
    cfg["model"]["arch"] = arch
    cfg["parallel"].update({"zero_stage": 1, **parallel})
    cfg["cluster"]["gpus_per_node"] = ranks
    micro = GLOBAL_SEQS // dp
    tokens = GLOBAL_SEQS * grad_accum * SEQ
    cfg["batch"].update({"micro_batch": micro, "grad_accum": grad_accum, "seq_len": SEQ, "global_batch_tokens": tokens})
    cfg["curriculum"] = [{"start_step": 0, "seq_len": SEQ}]
    cfg["optimizer"]["warmup_steps"] = 1
    cfg["training"].update({"total_steps": steps, "token_budget": tokens * steps, "checkpoint_interval": 0})
    cfg["run"] = {"id": 0, "name": "layout-bench", "attempt": 1, "trainer": "reference"}
    cfg["reporter"] = {"ingest_url": None}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run.json").write_text(json.dumps(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(port), "-m", "jobs.train", "--run-dir", tmp]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        recs = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        times = [r["values"]["step_time_s"] for r in recs if r.get("kind") == "metrics"]
        return statistics.median(times[len(times) // 2 :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--arch", choices=["dense", "moe"], default="moe")
    args = parser.parse_args()
    port = 29800
    print(f"| layout | ranks | step time (s, median), grad_accum 2, {args.arch} |\n| --- | --- | --- |")
    for name, (parallel, ranks) in LAYOUTS.items():
        if parallel.get("ep", 1) > 1 and args.arch == "dense":
            continue  # expert parallelism needs experts
        port += 1
        t = run_layout(parallel, ranks, arch=args.arch, steps=args.steps, grad_accum=2, port=port)
        print(f"| {name} | {ranks} | {t:.3f} |", flush=True)

    p = 2
    print(
        f"\n1F1B bubble, pp {p} (2 ranks):\n| micro-batches m | step time T(m) (s) | measured bubble | (p-1)/(m+p-1) |"
    )
    print("| --- | --- | --- | --- |")
    ms = [2, 4, 8]
    times = {}
    for m in ms:
        port += 1
        times[m] = run_layout({"pp": p, "zero_stage": 1}, p, arch=args.arch, steps=args.steps, grad_accum=m, port=port)
    # Least-squares slope of T over m: the time each stage spends per micro-batch.
    mean_m, mean_t = statistics.mean(ms), statistics.mean(times.values())
    slope = sum((m - mean_m) * (times[m] - mean_t) for m in ms) / sum((m - mean_m) ** 2 for m in ms)
    for m in ms:
        measured = 1 - m * slope / times[m]
        print(f"| {m} | {times[m]:.3f} | {measured:.2f} | {(p - 1) / (m + p - 1):.2f} |")
    print(f"\nper-micro-batch stage time t = {slope * 1000:.1f} ms (slope of T over m); {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
