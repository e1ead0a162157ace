"""Tokens/s of the tiny preset on CPU with one and two ranks (DeepSpeed launcher, gloo, OMP_NUM_THREADS=1).

python bench/cpu_tiny.py [--steps 60]
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


def run(ranks: int, steps: int, port: int) -> float:
    from runs.planning.presets import preset_config

    cfg = preset_config("tiny")
    cfg["cluster"]["gpus_per_node"] = ranks
    cfg["batch"].update({"micro_batch": 8, "grad_accum": 1, "global_batch_tokens": 8 * 64 * ranks})
    cfg["curriculum"] = [{"start_step": 0, "seq_len": 64}]
    cfg["optimizer"]["warmup_steps"] = 5
    cfg["training"].update(
        {
            "total_steps": steps,
            "token_budget": 8 * 64 * ranks * steps,
            "checkpoint_interval": 10 * steps,
            "log_interval": 1,
        }
    )
    cfg["run"] = {"id": 0, "name": f"cpu-{ranks}", "attempt": 1, "trainer": "reference"}
    cfg["reporter"] = {"ingest_url": None}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run.json").write_text(json.dumps(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "deepspeed.launcher.runner",
                "--num_gpus",
                str(ranks),
                "--master_port",
                str(port),
                "--module",
                "jobs.train",
                "--run-dir",
                tmp,
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        recs = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        tps = [r["values"]["tokens_per_s"] for r in recs if r.get("kind") == "metrics"]
        return statistics.median(tps[len(tps) // 4 :])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    one = run(1, args.steps, 29711)
    two = run(2, args.steps, 29712)
    print("| ranks | tokens/s (median, last 75 % of steps) |\n| --- | --- |")
    print(f"| 1 | {one:,.0f} |\n| 2 | {two:,.0f} |")
    print(f"two ranks / one rank: {two / one:.2f}x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
