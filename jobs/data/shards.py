"""Token shard format (documented in docs/run-config.md, "Token shards").

SHARDS_DIR/<source>/manifest.json plus shard_00000.bin, shard_00001.bin, ...: raw little-endian token ids
(uint16 when the vocabulary fits, else uint32), documents concatenated with `eos_id` after each one. A source
is the concatenation of its shards in manifest order. The manifest is written last (atomically), so a
directory without one is an unfinished write and readers refuse it.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from jobs.common.atomic import write_atomic

FORMAT = "cp-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
_NUMPY_DTYPES = {"uint16": "<u2", "uint32": "<u4"}


def dtype_for_vocab(vocab_size: int) -> str:
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.bin"


class ShardWriter:
    """Writes one source's token stream as fixed-size shards; `close()` writes the manifest and returns it."""

    def __init__(
        self,
        directory: str | os.PathLike,
        source: str,
        vocab_size: int,
        tokenizer_sha256: str,
        eos_id: int,
        shard_tokens: int = 1 << 24,
    ):
        if shard_tokens <= 0:
            raise ValueError("shard_tokens must be positive")
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} is outside the vocabulary of {vocab_size}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / MANIFEST).exists():
            raise FileExistsError(f"{self.directory} already holds a finished shard set")
        self.source = source
        self.vocab_size = vocab_size
        self.tokenizer_sha256 = tokenizer_sha256
        self.eos_id = eos_id
        self.dtype = dtype_for_vocab(vocab_size)
        self.shard_tokens = shard_tokens
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._shards: list[dict] = []
        self._documents = 0
        self._closed = False

    def add_document(self, ids) -> None:
        """Append one document's token ids followed by the end-of-document token."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {arr.min()}..{arr.max()}")
        self._buffer.append(arr)
        self._buffer.append(np.array([self.eos_id], dtype=np.int64))
        self._buffered += arr.size + 1
        self._documents += 1
        while self._buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, count: int) -> None:
        stream = np.concatenate(self._buffer)
        head, rest = stream[:count], stream[count:]
        self._buffer = [rest] if rest.size else []
        self._buffered = int(rest.size)
        name = shard_name(len(self._shards))
        data = head.astype(_NUMPY_DTYPES[self.dtype]).tobytes()
        (self.directory / name).write_bytes(data)
        self._shards.append({"file": name, "tokens": int(head.size), "sha256": hashlib.sha256(data).hexdigest()})

    def close(self) -> dict:
        if self._closed:
            raise RuntimeError("ShardWriter already closed")
        self._closed = True
        if self._buffered:
            self._flush(self._buffered)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "source": self.source,
            "tokenizer_sha256": self.tokenizer_sha256,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype,
            "byte_order": "little",
            "eos_id": self.eos_id,
            "documents": self._documents,
            "total_tokens": sum(s["tokens"] for s in self._shards),
            "shards": self._shards,
        }
        write_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and not self._closed:
            self.close()


def read_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{path}: not a {FORMAT} v{VERSION} manifest "
            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})"
        )
    if manifest.get("dtype") not in _NUMPY_DTYPES:
        raise ValueError(f"{path}: unsupported dtype {manifest.get('dtype')!r}")
    return manifest


class SourceShards:
    """Read-only view of one source's shards as a single memory-mapped token stream."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        dtype = np.dtype(_NUMPY_DTYPES[self.manifest["dtype"]])
        self._arrays = []
        for shard in self.manifest["shards"]:
            path = self.directory / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            actual = path.stat().st_size
            if actual != expected:
                raise ValueError(f"{path}: {actual} bytes, the manifest says {shard['tokens']} tokens ({expected} B)")
            if shard["tokens"]:
                self._arrays.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard["tokens"],)))
        lengths = [a.shape[0] for a in self._arrays]
        self._starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.total_tokens = int(self._starts[-1])
        if self.total_tokens != self.manifest.get("total_tokens", self.total_tokens):
            raise ValueError(f"{self.directory}: shard token counts do not add up to total_tokens")

    @property
    def source(self) -> str:
        return self.manifest["source"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eos_id"])

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer_sha256"]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the source stream as int64, crossing shard boundaries as needed."""
        if start < 0 or length < 0 or start + length > self.total_tokens:
            raise IndexError(f"range [{start}, {start + length}) outside a stream of {self.total_tokens} tokens")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while filled < length:
            local = pos - int(self._starts[shard])
            take = min(length - filled, self._arrays[shard].shape[0] - local)
            out[filled : filled + take] = self._arrays[shard][local : local + take]
            filled += take
            pos += take
            shard += 1
        return out

    def verify(self) -> None:
        """Check every shard against its manifest checksum (reads all data; meant for data-prep jobs)."""
        for shard in self.manifest["shards"]:
            digest = hashlib.sha256((self.directory / shard["file"]).read_bytes()).hexdigest()
            if digest != shard["sha256"]:
                raise ValueError(f"{self.directory / shard['file']}: checksum mismatch")
