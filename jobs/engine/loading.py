"""Loading a model dir (bf16, NF4 or int8 as ``jobs.export.quantize`` writes them) into a decode engine.

``load_engine(model_dir)`` loads the model with transformers (quantized dirs carry their ``quantization_config``),
bf16 on CUDA when there is one, else on CPU in fp32 (CPU is for tests: fp32 makes the results match transformers'
``generate`` exactly; bf16 weights widen to fp32 without loss). Then it picks a backend:
- ``jobs.engine.llama.LlamaBackend`` for ``LlamaForCausalLM``: our forward over a static KV cache, decode steps in
  CUDA graphs (see that module);
- ``jobs.engine.hf.HFBackend`` for every other architecture: transformers' own forward, one request at a time.

The scheduler (``jobs.engine.scheduler.Engine``) then drives that backend.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

from jobs.engine.scheduler import Engine
from jobs.engine.text import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


def _eos_ids(model, tokenizer: Tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_id is not None:
        ids.add(int(tokenizer.eos_id))
    return ids


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_model(model_dir: str | Path, *, device: torch.device, dtype: torch.dtype | None = None):
    """transformers' model for a model dir: bf16 on CUDA, fp32 on CPU unless ``dtype`` says otherwise."""
    from transformers import AutoModelForCausalLM

    from jobs.engine.linear import unpack_4bit_for_cpu

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, device_map={"": str(device)})
    model.eval().requires_grad_(False)
    for module in model.modules():
        kind = type(module).__name__
        if device.type == "cpu" and kind in ("Linear4bit", "LinearNF4", "LinearFP4"):
            unpack_4bit_for_cpu(module)
        elif kind == "Linear8bitLt":
            # bitsandbytes' int8 matmul takes at most 3-D inputs; DeepSeek-V3's kv_b_proj gets 4-D ones.
            module.forward = functools.partial(_flat_forward, module.forward)
    return model


def _flat_forward(forward, x: torch.Tensor) -> torch.Tensor:
    return forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def load_engine(model_dir: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                max_batch: int = 32, max_seq_len: int = 4096, cuda_graphs: bool = True, fast_path: bool = True,
                pad_to_buckets: bool = False) -> Engine:  # fmt: skip
    """Load a model dir and build the engine (see the module docstring for the choices made).

    ``pad_to_buckets`` runs the CUDA graphs' padded batch/KV shapes eagerly (so CPU tests cover them);
    ``fast_path=False`` forces the generic path.
    """
    from jobs.engine.hf import HFBackend
    from jobs.engine.llama import LlamaBackend, unsupported_reason

    started = time.perf_counter()
    dev = torch.device(device) if device is not None else default_device()
    model = load_model(model_dir, device=dev, dtype=dtype)
    tokenizer = load_tokenizer(model_dir)
    reason = unsupported_reason(model) if fast_path else "fast path switched off"
    backend: LlamaBackend | HFBackend
    if reason is None:
        backend = LlamaBackend(model=model, max_batch=max_batch, max_seq_len=max_seq_len, cuda_graphs=cuda_graphs,
                               pad_to_buckets=pad_to_buckets)  # fmt: skip
    else:
        log.info("generic path for %s: %s", model_dir, reason)
        backend = HFBackend(model=model, max_batch=max_batch, max_seq_len=max_seq_len)
    return Engine(backend=backend, tokenizer=tokenizer, eos_ids=_eos_ids(model, tokenizer), model_dir=str(model_dir),
                  load_seconds=time.perf_counter() - started)  # fmt: skip
