"""The generic decode path: any causal LM transformers can load (e.g. DeepseekV3 with MLA + MoE), on its own forward.

What it is, honestly: correct and slow. Each request keeps its own transformers cache (whatever the model's forward
creates: a DynamicCache for DeepseekV3); prefill is one forward over the prompt; each decode step calls the model
once per busy request, one token each, eagerly, one after another. Requests are interleaved step by step (a new
request joins between steps, streams advance together), but their compute is not batched: batching would need
padding and masks that each architecture handles its own way, and a wrong mask silently changes the output.
No CUDA graphs. The engine's scheduler, sampling, stops and streaming are the same as on the fast path.
"""

from __future__ import annotations

import inspect

import torch


class HFBackend:
    path = "hf-generic"

    def __init__(self, *, model, max_batch: int, max_seq_len: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.vocab = model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config") else (
            model.config.vocab_size
        )  # fmt: skip
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed past_key_values to cache (the old name still works until 5.40).
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.caches: dict[int, object] = {}

    def info(self) -> dict:
        return {
            "path": self.path,
            "architecture": type(self.model).__name__,
            "device": str(self.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "cuda_graphs": 0,
        }

    def cache_bytes(self) -> int:
        return 0

    def _forward(self, slot: int, ids: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": ids, "use_cache": True}
        if slot in self.caches:
            kwargs[self.cache_kw] = self.caches[slot]
        out = self.model(**kwargs)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        self.caches[slot] = cache
        return out.logits[0, -1]

    @torch.no_grad()
    def prefill(self, *, slot: int, ids: list[int]) -> torch.Tensor:
        self.caches.pop(slot, None)
        return self._forward(slot, torch.tensor([ids], device=self.device))

    def prefill_many(self, *, items: list[tuple[int, list[int]]]) -> torch.Tensor:
        return torch.stack([self.prefill(slot=slot, ids=ids) for slot, ids in items])

    @torch.no_grad()
    def decode(self, *, rows: list[tuple[int, int, int]]) -> torch.Tensor:
        top = max(r[0] for r in rows) + 1
        logits = None
        for slot, token, _position in rows:
            row = self._forward(slot, torch.tensor([[token]], device=self.device))
            if logits is None:
                logits = torch.zeros((top, row.shape[-1]), device=row.device, dtype=row.dtype)
            logits[slot] = row
        assert logits is not None
        return logits

    def release(self, *, slot: int) -> None:
        self.caches.pop(slot, None)
