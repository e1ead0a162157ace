"""Checkpoints: DeepSpeed save/load plus the run directory's ``checkpoints/index.json`` and retention.

One folder per step (``step_000100``) written by ``engine.save_checkpoint``. The trainer's own state (step,
data-sampler state and RNG state of every rank) travels in DeepSpeed's ``client_state``: rank 0 gathers the
per-rank states, so the one model-states file holds all of them and each rank takes its own back on resume.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from jobs.common.atomic import write_atomic

INDEX = "index.json"
# The parallel layout a checkpoint was written under (tp, pp, ep, sp, dp).
LAYOUT = "layout.json"


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def read_index(ckpt_dir: str | Path) -> list[dict]:
    path = Path(ckpt_dir) / INDEX
    if not path.exists():
        return []
    return json.loads(path.read_text())


def _write_index(ckpt_dir: Path, entries: list[dict]) -> None:
    write_atomic(ckpt_dir / INDEX, json.dumps(entries, indent=1) + "\n")


def resolve_tag(ckpt_dir: str | Path, which: str) -> str:
    """'latest' -> the newest indexed checkpoint (DeepSpeed's ``latest`` file if there is no index); else ``which``."""
    ckpt_dir = Path(ckpt_dir)
    if which != "latest":
        if not (ckpt_dir / which).is_dir():
            raise FileNotFoundError(f"checkpoint {which!r} not found in {ckpt_dir}")
        return which
    entries = read_index(ckpt_dir)
    if entries:
        return max(entries, key=lambda e: e["step"])["tag"]
    latest = ckpt_dir / "latest"
    if latest.exists():
        return latest.read_text().strip()
    raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_dir}")


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def kept_steps(steps: list[int], *, keep: int, keep_every: int = 0) -> set[int]:
    """Retention: the newest ``keep`` checkpoints plus every step that is a multiple of ``keep_every``."""
    kept = set(sorted(steps)[-keep:]) if keep > 0 else set()
    if keep_every > 0:
        kept |= {s for s in steps if s % keep_every == 0}
    return kept


def _write_tp_expert_copy(engine, tag_dir: Path, tp_rank: int) -> None:
    """The model-states files DeepSpeed leaves out for tensor-parallel rank ``tp_rank`` > 0 of a tp x ep run.

    DeepSpeed writes MoE checkpoints from expert-data-parallel rank 0 only; with tp > 1 that group is the
    tensor-parallel group, so only tp rank 0's ``mp_rank_00`` files appear, and loading on rank r looks for
    ``mp_rank_r``. Rank r's file is rank 0's with this rank's own (sharded) non-expert weights; the expert files are
    copies, the routed experts being replicated in the tensor-parallel group.
    """
    base = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    own = engine.module.state_dict()
    base["module"] = {k: own[k].detach().clone() for k in base["module"]}
    torch.save(base, tag_dir / f"mp_rank_{tp_rank:02d}_model_states.pt")
    for path in tag_dir.glob("layer_*_expert_*_mp_rank_00_model_states.pt"):
        shutil.copyfile(path, tag_dir / path.name.replace("_mp_rank_00_", f"_mp_rank_{tp_rank:02d}_"))


def save(engine, ckpt_dir: str | Path, step: int, rank_state: dict, shared_state: dict, metrics: dict,
         keep: int, keep_every: int = 0, tp_expert_copy: int | None = None,
         layout: dict | None = None) -> dict | None:  # fmt: skip
    """Collective: every rank calls it. Returns the index entry on rank 0, None elsewhere.

    ``rank_state`` differs per rank (data sampler, RNG); ``shared_state`` is the same everywhere (counters).
    ``tp_expert_copy`` (tp x ep runs, on every rank): this rank's tensor-parallel rank if it must write its files
    itself, else -1.
    """
    import torch.distributed as dist

    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    world = dist.get_world_size()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rank_state)
    started = time.time()
    client_state = {"trainer": {**shared_state, "step": step}, "ranks": gathered, "world_size": world}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)
    dist.barrier()
    if tp_expert_copy is not None:
        if tp_expert_copy > 0:
            _write_tp_expert_copy(engine, ckpt_dir / tag, tp_expert_copy)
        dist.barrier()
    if dist.get_rank() != 0:
        return None
    path = ckpt_dir / tag
    if layout is not None:
        write_atomic(path / LAYOUT, json.dumps(layout) + "\n")
    entry = {
        "step": step,
        "tag": tag,
        "path": str(path.resolve()),
        "bytes": _folder_bytes(path),
        "time": time.time(),
        "seconds": round(time.time() - started, 3),
        "metrics": metrics,
    }
    entries = [e for e in read_index(ckpt_dir) if e["step"] != step] + [entry]
    entries.sort(key=lambda e: e["step"])
    kept = kept_steps([e["step"] for e in entries], keep=keep, keep_every=keep_every)
    for old in entries:
        if old["step"] not in kept:
            shutil.rmtree(ckpt_dir / old["tag"], ignore_errors=True)
    _write_index(ckpt_dir, [e for e in entries if e["step"] in kept])
    return entry


def has_zero_optimizer_state(ckpt_dir: str | Path, tag: str) -> bool:
    """Whether the checkpoint's optimizer state is in ZeRO's per-rank files (stages 1-3) rather than inside the
    model-states file (stage 0): DeepSpeed cannot load one layout into an engine of the other."""
    return any((Path(ckpt_dir) / tag).glob("*optim_states.pt"))


def check_layout(tag_dir: str | Path, layout: dict) -> None:
    """Refuse to resume a checkpoint written under another parallel layout, naming both.

    Tensor- and pipeline-parallel shards, ZeRO partitions and the data sampler's per-rank positions are laid out
    for the layout that wrote them; DeepSpeed would fail on them later with an unrelated message. A checkpoint can
    still be exported (jobs.export.hf merges any layout) and a new run started from the exported weights.
    """
    path = Path(tag_dir) / LAYOUT
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    # Sequence parallelism changes no shard: switching it on or off resumes.
    keys = ("tp", "pp", "ep", "dp")
    if any(saved.get(k) != layout.get(k) for k in keys):
        shown = lambda d: " ".join(f"{k}={d.get(k)}" for k in keys)  # noqa: E731
        raise ValueError(
            f"checkpoint {Path(tag_dir).name} was written under the layout {shown(saved)}; this job is "
            f"{shown(layout)}: a checkpoint resumes under the layout that wrote it"
        )


def load(engine, ckpt_dir: str | Path, tag: str, *, module_only: bool = False,
         layout: dict | None = None) -> tuple[dict, dict]:  # fmt: skip
    """Collective. Returns (shared trainer state, this rank's state). ``module_only`` restores the weights and
    the trainer's state but leaves the optimizer fresh (its saved layout does not fit this engine)."""
    import torch.distributed as dist

    if layout is not None:
        check_layout(Path(ckpt_dir) / tag, layout)

    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_module_only=module_only)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {tag!r} from {ckpt_dir}")
    world = dist.get_world_size()
    if client_state.get("world_size") != world:
        raise ValueError(
            f"checkpoint {tag} was written by {client_state.get('world_size')} ranks; this job has {world}: "
            "the data sampler's per-rank positions cannot be remapped"
        )
    return client_state["trainer"], client_state["ranks"][dist.get_rank()]
