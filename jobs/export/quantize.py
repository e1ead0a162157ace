"""Quantize a checkpoint for serving: Hugging Face export, then NF4 and int8 artifacts, each measured and re-checked.

Why a job of its own: the R1 guide serves 4-bit weights made with transformers' ``BitsAndBytesConfig`` (guide §6),
and an artifact is only worth serving once its quality loss is known and its saved folder is known to compute what
was measured. So for each method this job quantizes the bf16 export with the guide's config, saves it before
running it, measures perplexity on held-out tokens beside the base model's, and reloads the saved folder in a fresh
model to compare logits.

Held-out tokens: the shards have no held-out split, so the job replays the trainer's draws (``MixedBatcher``) from
the checkpoint's saved data state to the run's ``total_steps`` and cuts windows past the last position the trainer
reads in each source's epoch-0 stream, split over the recipe's sources by weight. A source the run reads whole
falls back, when it is one of the bundled sources, to fresh paragraphs of the bundled corpus generator that are not
in its shards; otherwise the job fails.

bitsandbytes 0.50.2 problems worked around here (docs/run-config.md says what a loader of the artifacts must do):
- On CPUs with AVX512-BF16 a Linear4bit's first forward repacks its weights in place; a model saved after that
  reloads with re-quantized scales (other logits), and the repacking crashes on layers whose in_features is not a
  multiple of 64 or out_features not of 32. The job saves before any forward and switches repacking off
  (``support_avx512bf16_for_cpu=False``) on every Linear4bit, which also gives the same numbers on every CPU.
- ``MatMul8bitLt`` takes inputs of at most 3 dimensions; DeepSeek-V3's ``kv_b_proj`` gets 4, so int8 layers are
  run on inputs flattened to 2-D.

Usage: ``python -m jobs.export.quantize --run-dir RUN --tag TAG --out DIR [--methods nf4,int8] [--eval-tokens 4096]
[--device auto|cpu|cuda]``; the last stdout line is ``QUANT_REPORT <report.json>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from jobs.common.atomic import write_atomic
from jobs.common.run_config import RunConfig, load_run_config
from jobs.data import MixedBatcher, corpus, curriculum_seq_len, load_tokenizer
from jobs.data.locations import default_corpus_dir, default_shards_dir, resolve_shards_dir, resolve_tokenizer_path
from jobs.export.hf import checkpoint_state_dict, export, hf_architecture
from jobs.train.checkpoint import read_index, resolve_tag

METHODS = ("nf4", "int8")
EVAL_BATCH = 16
# The reload runs the same bytes through the same kernels, so its logits should match exactly. A save that went
# wrong (such as one after the CPU repacking) moves them by several times this tolerance; it leaves room for
# reduction-order noise only.
RELOAD_RTOL = 1e-3
CORPUS_EVAL_SEED = 1  # the bundled shards hold the generator's seed-0 text


def quant_config(*, method: str):
    from transformers import BitsAndBytesConfig

    if method == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    return BitsAndBytesConfig(load_in_8bit=True)


def _flatten_around(module: torch.nn.Module) -> None:
    """The module sees its input as 2-D (leading dimensions flattened) and gives its output the input's leading
    dimensions back, through torch's forward hooks."""
    leading: list[torch.Size] = []

    def before(_module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0]
        leading.append(x.shape[:-1])
        return (x.reshape(-1, x.shape[-1]), *args[1:])

    def after(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.reshape(*leading.pop(), -1)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def load_model(*, path: Path, device: str, method: str | None = None):
    """A bf16 model from ``path`` (quantized on loading when ``method`` is given), made safe to run: see above."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    # An explicit quantization_config=None would drop the one a saved artifact's config.json holds.
    extra = {"quantization_config": quant_config(method=method)} if method else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=device, **extra)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
        elif isinstance(module, bnb.nn.Linear8bitLt):
            _flatten_around(module)
    return model.eval()


@torch.no_grad()
def evaluate(*, model, windows: torch.Tensor, device: str) -> tuple[float, torch.Tensor]:
    """Perplexity over every target of ``windows`` [n, seq_len + 1], and the fp32 logits of the first batch."""
    nll, first = 0.0, None
    for chunk in windows.split(EVAL_BATCH):
        chunk = chunk.to(device)
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
        first = logits.cpu() if first is None else first
    assert first is not None, "no windows to evaluate"
    return math.exp(nll / windows[:, 1:].numel()), first


def trainer_positions(*, cfg: RunConfig, data_state: dict, step: int) -> dict[str, dict]:
    """Each source's (epoch, cursor) once the trainer has run ``total_steps``: its saved state at ``step``, then
    the calls of ``Trainer._train_step`` replayed (``next_batch(step - 1, n_seqs, seq_len)`` per micro-step)."""
    batcher = MixedBatcher(cfg.raw, rank=0, world=data_state["world"], seed=data_state["seed"])
    batcher.load_state_dict(data_state)
    for s in range(step + 1, cfg.training.total_steps + 1):
        if min(batcher.epochs().values()) >= 1:
            break  # every source is read whole
        seq_len = curriculum_seq_len(cfg.raw, s - 1)
        for _ in range(cfg.batch.grad_accum):
            batcher.next_batch(s - 1, cfg.batch.micro_batch * cfg.batch.seq_len // seq_len, seq_len)
    return batcher.state_dict()["sources"]


def _split(*, weights: dict[str, float], total: int) -> dict[str, int]:
    """``total`` windows over the sources in proportion to the recipe's weights (largest remainder)."""
    share = {n: w / sum(weights.values()) * total for n, w in weights.items()}
    counts = {n: int(s) for n, s in share.items()}
    for n in sorted(share, key=lambda n: counts[n] - share[n])[: total - sum(counts.values())]:
        counts[n] += 1
    return counts


def _shard_windows(*, cfg: RunConfig, source: str, start: int, count: int, seed: int) -> torch.Tensor:
    raw = {**cfg.raw, "data": {**cfg.raw["data"], "recipe": {"sources": [{"name": source, "weight": 1.0}]}}}
    batcher = MixedBatcher(raw, rank=0, world=1, seed=seed)
    state = batcher.state_dict()
    state["sources"][source]["cursor"] = start
    batcher.load_state_dict(state)
    return batcher.next_batch(0, count, cfg.batch.seq_len)[0]


def _corpus_windows(*, cfg: RunConfig, source: str, count: int) -> torch.Tensor:
    sp = load_tokenizer(resolve_tokenizer_path(cfg.raw))
    in_shards = set(Path(default_corpus_dir(), f"{source}.txt").read_text(encoding="utf-8").splitlines())
    need, size = count * (cfg.batch.seq_len + 1), 8 * count * cfg.batch.seq_len
    ids: list[int] = []
    while len(ids) < need:
        fresh = [line for line in corpus.generate(source, size, seed=CORPUS_EVAL_SEED) if line not in in_shards]
        ids = [t for doc in sp.encode(fresh) for t in (*doc, sp.eos_id())]
        size *= 2
    return torch.tensor(ids[:need]).view(count, -1)


def eval_windows(*, cfg: RunConfig, data_state: dict, step: int, tokens: int) -> tuple[torch.Tensor, dict]:
    """Held-out windows [n, seq_len + 1] (``tokens`` targets, rounded up to whole windows) and their description."""
    seq_len, total_steps = cfg.batch.seq_len, cfg.training.total_steps
    weights = {s["name"]: float(s["weight"]) for s in cfg.raw["data"]["recipe"]["sources"]}
    positions = trainer_positions(cfg=cfg, data_state=data_state, step=step)
    bundled = resolve_shards_dir(cfg.raw) == default_shards_dir()
    parts, sources = [], {}
    for name, count in _split(weights=weights, total=math.ceil(tokens / seq_len)).items():
        if not count:
            continue
        pos = positions[name]
        start = pos["cursor"] + 1  # the trainer's last window ends on its cursor
        if pos["epoch"] == 0 and start + count * seq_len + 1 <= pos["total_tokens"]:
            parts.append(_shard_windows(cfg=cfg, source=name, start=start, count=count, seed=data_state["seed"]))
            sources[name] = {"windows": count, "from": "shards", "start": start, "total_tokens": pos["total_tokens"]}
        elif bundled and name in corpus.SOURCES:
            parts.append(_corpus_windows(cfg=cfg, source=name, count=count))
            sources[name] = {"windows": count, "from": "corpus"}
        else:
            raise ValueError(f"source {name!r}: the run's {total_steps} steps read all but {pos['total_tokens'] - start}"
                             f" of its {pos['total_tokens']} tokens; no held-out windows ({count} x {seq_len + 1} needed)")  # fmt: skip
    windows = torch.cat(parts)
    split = ", ".join(f"{n} {s['windows']}" for n, s in sources.items())
    held = ", ".join(f"{n} from {s['start']} of {s['total_tokens']}" for n, s in sources.items() if "start" in s)
    fresh = ", ".join(n for n, s in sources.items() if s["from"] == "corpus")
    text = (f"{windows.shape[0] * seq_len} target tokens in {windows.shape[0]} windows of {seq_len}, split over the "
            f"recipe's sources by weight ({split}).")  # fmt: skip
    if held:
        text += (f" Shard token streams (epoch-0 order, seed {data_state['seed']}) past the last position the trainer"
                 f" reads in this run's {total_steps} steps: {held}.")  # fmt: skip
    if fresh:
        text += (f" {fresh}: read whole by the run, so fresh paragraphs of the bundled corpus generator (seed "
                 f"{CORPUS_EVAL_SEED}; the shards hold seed 0), none of them in the shards.")  # fmt: skip
    return windows, {"tokens": int(windows[:, 1:].numel()), "description": text, "sources": sources}


class Progress:
    """progress.json (replaced atomically) and a ``QUANT_PROGRESS`` stdout line per stage."""

    def __init__(self, *, out: Path, stages: list[str]):
        self.out, self.stages, self.fraction, self.stdout = out, stages, 0.0, sys.stdout

    def write(self, *, stage: str, message: str) -> None:
        if stage in self.stages:
            self.fraction = self.stages.index(stage) / len(self.stages)
        elif stage == "done":
            self.fraction = 1.0
        record = {"stage": stage, "fraction": round(self.fraction, 4), "message": message, "updated_at": time.time()}
        write_atomic(self.out / "progress.json", json.dumps(record) + "\n")
        print("QUANT_PROGRESS " + json.dumps(record), file=self.stdout, flush=True)


def _weights_bytes(*, folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def trainer_state(*, tag_dir: Path) -> dict:
    """The trainer's client state saved with the checkpoint (step, every rank's data-sampler state)."""
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (tag_dir / name).exists():
            # DeepSpeed pickles its config objects beside the tensors; these are our own files.
            states = torch.load(tag_dir / name, map_location="cpu", weights_only=False, mmap=True)
            if "trainer" in states and "ranks" in states:
                return {"step": int(states["trainer"]["step"]), "data": states["ranks"][0]["data"]}
    raise ValueError(f"{tag_dir} holds no trainer state (step, data sampler): not written by jobs.train")


def quantize(*, run_dir: Path, tag: str, out: Path, methods: list[str], eval_tokens: int, device: str,
             progress: Progress) -> dict:  # fmt: skip
    cfg = load_run_config(run_dir)
    architecture = hf_architecture(cfg.model)
    ckpt_dir = run_dir / "checkpoints"
    try:
        tag = resolve_tag(ckpt_dir, tag)
    except FileNotFoundError as exc:
        have = ", ".join(e["tag"] for e in read_index(ckpt_dir)) or "none"
        raise FileNotFoundError(f"{exc} (checkpoints in its index: {have})") from None
    import bitsandbytes  # noqa: F401  (fail here, before any work, when it is missing)

    progress.write(stage="export", message=f"exporting {tag} as {architecture} (bf16) and choosing held-out tokens")
    started = time.time()
    state = trainer_state(tag_dir=ckpt_dir / tag)
    base = export(cfg.model, checkpoint_state_dict(ckpt_dir / tag), out / "base", "bf16")
    tokenizer = resolve_tokenizer_path(cfg.raw)
    shutil.copyfile(tokenizer, base / "tokenizer.model")
    base_seconds = time.time() - started
    windows, eval_info = eval_windows(cfg=cfg, data_state=state["data"], step=state["step"], tokens=eval_tokens)

    progress.write(stage="eval:base", message=f"perplexity of the base model on {eval_info['tokens']} tokens")
    base_ppl, _ = evaluate(model=load_model(path=base, device=device), windows=windows, device=device)
    artifacts = []
    for method in methods:
        folder = out / method
        progress.write(stage=f"quantize:{method}", message=f"quantizing with bitsandbytes {method} into {folder}")
        started = time.time()
        model = load_model(path=base, device=device, method=method)
        model.save_pretrained(folder)  # before any forward pass: see the module docstring
        shutil.copyfile(tokenizer, folder / "tokenizer.model")
        seconds = time.time() - started
        progress.write(stage=f"eval:{method}", message=f"perplexity of {method} on {eval_info['tokens']} tokens")
        ppl, logits = evaluate(model=model, windows=windows, device=device)
        del model
        progress.write(stage=f"verify:{method}", message=f"reloading {folder} and comparing its logits")
        _, reloaded = evaluate(model=load_model(path=folder, device=device), windows=windows[:EVAL_BATCH],
                               device=device)  # fmt: skip
        diff, scale = (reloaded - logits).abs().max().item(), logits.abs().max().item()
        if diff > RELOAD_RTOL * scale:
            raise RuntimeError(f"{method}: the saved artifact reloads to other logits (max abs diff {diff:.3g} > "
                               f"{RELOAD_RTOL} x max |logit| {scale:.3g})")  # fmt: skip
        artifacts.append({"method": method, "path": str(folder), "bytes": _weights_bytes(folder=folder),
                          "seconds": round(seconds, 3), "perplexity": ppl, "reload_max_abs_diff": diff})  # fmt: skip
    return {
        "source": {"run_dir": str(run_dir), "tag": tag, "step": state["step"]},
        "architecture": architecture,
        "device": device,
        "eval": eval_info,
        "base": {
            "path": str(base),
            "bytes": _weights_bytes(folder=base),
            "perplexity": base_ppl,
            "seconds": round(base_seconds, 3),
        },
        "artifacts": artifacts,
    }


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if len(set(methods)) != len(methods) or not set(methods) <= set(METHODS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(METHODS)}, got {text!r}")
    return methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--tag", required=True, help="a checkpoint folder name (step_000100) or 'latest'")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--methods", type=_methods, default=list(METHODS), help="nf4,int8; empty: export only")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    if args.eval_tokens < 1:
        parser.error("--eval-tokens must be positive")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # a report from an earlier attempt must not outlive this one
    stages = ["export", "eval:base", *(f"{s}:{m}" for m in args.methods for s in ("quantize", "eval", "verify"))]
    progress = Progress(out=out, stages=stages)
    try:
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available")
        with contextlib.redirect_stdout(sys.stderr):  # keep library prints (DeepSpeed's) off the QUANT_ lines
            report = quantize(run_dir=args.run_dir.resolve(), tag=args.tag, out=out, methods=args.methods,
                              eval_tokens=args.eval_tokens, device=device, progress=progress)  # fmt: skip
    except Exception as exc:  # one clear line for the control plane, whatever went wrong
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        if isinstance(exc, ModuleNotFoundError) and exc.name == "bitsandbytes":
            message = "bitsandbytes is not installed (pip install bitsandbytes==0.50.2 accelerate)"
        progress.write(stage="failed", message=message)
        print(f"quantize: error: {message}", file=sys.stderr)
        return 1
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    progress.write(stage="done", message=f"{', '.join(['base', *args.methods])} written to {out}")
    print("QUANT_REPORT " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
