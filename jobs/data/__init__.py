"""Training data for the jobs: token shards, the mixing sampler, the curriculum and the bundled assets.

The names below load on first use (PEP 562): the sampler imports torch, which costs a data-prep worker process
seconds per start, and the prep job (jobs.data.prep) uses none of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "MixedBatcher": ".sampler",
    "ShardWriter": ".shards",
    "SourceShards": ".shards",
    "curriculum_seq_len": ".curriculum",
    "default_shards_dir": ".locations",
    "default_tokenizer_path": ".locations",
    "dtype_for_vocab": ".shards",
    "load_tokenizer": ".tokenizer",
    "read_manifest": ".shards",
    "resolve_shards_dir": ".locations",
    "resolve_tokenizer_path": ".locations",
    "validate_curriculum": ".curriculum",
}

__all__ = [
    "MixedBatcher",
    "ShardWriter",
    "SourceShards",
    "curriculum_seq_len",
    "default_shards_dir",
    "default_tokenizer_path",
    "dtype_for_vocab",
    "load_tokenizer",
    "read_manifest",
    "resolve_shards_dir",
    "resolve_tokenizer_path",
    "validate_curriculum",
]

if TYPE_CHECKING:
    from .curriculum import curriculum_seq_len, validate_curriculum
    from .locations import default_shards_dir, default_tokenizer_path, resolve_shards_dir, resolve_tokenizer_path
    from .sampler import MixedBatcher
    from .shards import ShardWriter, SourceShards, dtype_for_vocab, read_manifest
    from .tokenizer import load_tokenizer


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
