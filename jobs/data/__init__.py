"""Training data for the jobs: token shards, the mixing sampler, the curriculum and the bundled assets."""

from .curriculum import curriculum_seq_len, validate_curriculum
from .locations import default_shards_dir, default_tokenizer_path, resolve_shards_dir, resolve_tokenizer_path
from .sampler import MixedBatcher
from .shards import ShardWriter, SourceShards, dtype_for_vocab, read_manifest
from .tokenizer import load_tokenizer

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
