"""A Hugging Face Trainer script under DeepSpeed on one GPU, launched the way the control plane launches an own script,
beside the same script run by hand without DeepSpeed.

  python bench/hf_trainer_gpu.py                 # on a GPU machine: both runs, figures side by side
  python bench/hf_trainer_gpu.py --quick         # tiny model, few steps (a CPU run checks the plumbing only)

Needs torch, transformers and deepspeed; not Django (the GPU machine has none). What it does:
1. writes a run directory as the control plane would for a run of trainer own_script with
   own_script.ds_config_arg "--deepspeed" and ds_config_style "hf": run.json, then ds_config.json by the launcher's
   own command (python -m jobs.train.ds_config), which puts "auto" wherever the Trainer fills values;
2. starts the script with the local backend's command line (workers.backends.commands.deepspeed_node_argv: DeepSpeed's
   per-node launcher, one rank), in the run directory, with the variables an own-script job gets;
3. reads the job's stdout as the watcher does (workers.logscan): the Trainer's log dicts become loss/lr/grad_norm
   points, the end-of-training summary gives train_runtime and samples/s; DeepSpeed op builds are timed from
   their "Time to load" lines;
4. runs the same script with the same arguments as one plain process without --deepspeed (the peer: what the
   author would run by hand), and prints both.
The script is tests/workers/scripts/hf_trainer_script.py (GPT-2 shaped model from a config, random counting data).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.backends.commands import deepspeed_node_argv  # noqa: E402
from workers.logscan import scan_lines, step_line_records  # noqa: E402

SCRIPT = ROOT / "tests" / "workers" / "scripts" / "hf_trainer_script.py"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_json(*, cuda: bool, micro_batch: int, seq_len: int, steps: int) -> dict:
    """The frozen config of an own-script run (tiny preset's shape; only parallel.* and own_script matter here)."""
    return {
        "schema_version": 1,
        "run": {"id": 1, "name": "hf-trainer-bench", "attempt": 1, "trainer": "own_script"},
        "model": {"arch": "dense", "attention": "mha", "vocab_size": 4096, "hidden_size": 64, "num_layers": 2,
                  "num_heads": 4, "max_seq_len": seq_len},
        "parallel": {"zero_stage": 2},
        "batch": {"global_batch_tokens": micro_batch * seq_len, "micro_batch": micro_batch, "grad_accum": 1,
                  "seq_len": seq_len},
        "optimizer": {"lr": 3e-4, "warmup_steps": 0, "torch_adam": True},
        "precision": "bf16" if cuda else "fp32",
        "training": {"total_steps": steps},
        "cluster": {"backend": "local", "nodes": 1, "gpus_per_node": 1, "accelerator": "cuda" if cuda else "cpu"},
        "own_script": {"ds_config_arg": "--deepspeed", "ds_config_style": "hf"},
    }  # fmt: skip


def _script_args(a: argparse.Namespace, out: str, cuda: bool) -> list[str]:
    args = [
        "--output_dir", out, "--max_steps", str(a.steps), "--logging_steps", str(a.logging_steps),
        "--per_device_train_batch_size", str(a.micro_batch), "--learning_rate", "3e-4",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
        "--n_layer", str(a.layers), "--n_embd", str(a.hidden), "--vocab_size", str(a.vocab),
        "--seq_len", str(a.seq_len), "--samples", str(a.micro_batch * a.steps),
        "--dataloader_num_workers", "2",
    ]  # fmt: skip
    args += ["--bf16", "true"] if cuda else ["--use_cpu", "true"]
    return args


def _figures(stdout: str, wall_s: float) -> dict:
    lines = stdout.splitlines()
    records, _ = step_line_records(lines, time_s=0.0)
    series: dict[str, list[float]] = {}
    for r in records:
        for key, value in r["values"].items():
            series.setdefault(key, []).append(value)
    builds = {
        f.data["op"]: f.data["seconds"]
        for f in scan_lines(lines)
        if f.kind == "compile" and f.data is not None and f.data["seconds"]
    }

    def last(key: str) -> float | None:
        return series[key][-1] if series.get(key) else None

    return {
        "wall_s": wall_s,
        "train_runtime_s": last("train_runtime"),
        "samples_per_s": last("samples_per_s"),
        "loss_first": series["loss"][0] if series.get("loss") else None,
        "loss_last": last("loss"),
        "loss_points": len(series.get("loss", [])),
        "lr_points": len(series.get("lr", [])),
        "op_builds_s": builds,
    }


def _product_run(a: argparse.Namespace, tmp: Path, cuda: bool) -> dict:
    run_dir = tmp / "run-1"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps(_run_json(cuda=cuda, micro_batch=a.micro_batch, seq_len=a.seq_len,
                                                           steps=a.steps)))  # fmt: skip
    accel = "cuda" if cuda else "cpu"
    subprocess.run(
        [sys.executable, "-m", "jobs.train.ds_config", "--run-dir", str(run_dir), "--world-size", "1",
         "--accelerator", accel],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    ds = json.loads((run_dir / "ds_config.json").read_text())
    program = [str(SCRIPT), "--deepspeed", str(run_dir / "ds_config.json"), *_script_args(a, "hf-out", cuda)]
    argv = deepspeed_node_argv(sys.executable, program, ranks=1, master_port=_port())
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4"),
        "PYTHONPATH": str(ROOT),
        "CP_RUN_DIR": str(run_dir),
        "CP_DS_CONFIG": str(run_dir / "ds_config.json"),
        "CP_BASE_URL": "http://127.0.0.1:9",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9/api/v1/ingest/1/mlflow",
    }
    if not cuda:
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    if cuda:
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # DeepSpeed's FusedAdam build fails without it (gpu.md)
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=run_dir, env=env, capture_output=True, text=True, timeout=a.timeout)
    wall = time.perf_counter() - t0
    (tmp / "product.stdout.log").write_text(done.stdout)
    (tmp / "product.stderr.log").write_text(done.stderr)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"the DeepSpeed run failed with exit code {done.returncode}")
    figures = _figures(done.stdout + "\n" + done.stderr, wall)
    figures["auto_keys"] = sorted(k for k, v in ds.items() if v == "auto")
    return figures


def _peer_run(a: argparse.Namespace, tmp: Path, cuda: bool) -> dict:
    work = tmp / "peer"
    work.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *_script_args(a, "hf-out", cuda)],
        cwd=work, env=env, capture_output=True, text=True, timeout=a.timeout,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"the plain run failed with exit code {done.returncode}")
    return _figures(done.stdout + "\n" + done.stderr, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--logging-steps", dest="logging_steps", type=int, default=10)
    parser.add_argument("--micro-batch", dest="micro_batch", type=int, default=16)
    parser.add_argument("--seq-len", dest="seq_len", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--timeout", type=int, default=1500)
    parser.add_argument("--keep", help="keep the run directories and logs in this folder")
    a = parser.parse_args()
    if a.quick:
        a.steps, a.logging_steps, a.micro_batch, a.seq_len, a.layers, a.hidden, a.vocab = 8, 2, 4, 32, 2, 64, 512
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    import deepspeed

    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="hf-trainer-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(
        f"device: {device}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"deepspeed {deepspeed.__version__}"
    )
    print(
        f"model: GPT-2 shape, {a.layers} layers x d{a.hidden}, vocab {a.vocab}, sequence {a.seq_len}, "
        f"micro-batch {a.micro_batch}, {a.steps} steps, {'bf16' if cuda else 'fp32'}; logs every {a.logging_steps}"
    )
    product = _product_run(a, tmp, cuda)
    peer = _peer_run(a, tmp, cuda)
    rows = [
        ("wall time of the job (s)", "wall_s", "{:.1f}"),
        ("train_runtime (s, HF)", "train_runtime_s", "{:.1f}"),
        ("samples/s (HF summary)", "samples_per_s", "{:.1f}"),
        ("loss, first log", "loss_first", "{:.3f}"),
        ("loss, last log", "loss_last", "{:.3f}"),
        ("loss points read from the log", "loss_points", "{}"),
        ("lr points read from the log", "lr_points", "{}"),
    ]
    print(f"\n| figure | own script under DeepSpeed (product's launch, hf config) | same script, plain {device} |")
    print("| --- | --- | --- |")
    for label, key, fmt in rows:
        cells = [fmt.format(f[key]) if f[key] is not None else "-" for f in (product, peer)]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    print(f"\nDeepSpeed op builds seen in the log (s): {product['op_builds_s'] or 'none'}")
    print(f'ds_config.json keys left "auto" for the Trainer: {", ".join(product["auto_keys"])}')
    print(f"logs: {tmp}")


if __name__ == "__main__":
    main()
