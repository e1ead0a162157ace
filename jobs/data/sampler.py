"""MixedBatcher: weighted mixing of token-shard sources into fixed-length training windows.

How a draw works (all ranks compute the same thing, so no communication is needed):
- For draw d of step s, one generator seeded by (seed, s, d) picks a source for every sequence of every rank,
  an array [world, n_seqs] drawn with the recipe's weights. A rank keeps its own row.
- Each source is one global token stream whose blocks are shuffled anew every epoch. The windows that a draw
  assigns to a source are cut from that stream one after another, in (rank, sequence) order, starting at the
  source's cursor. So ranks never share a window, and the cursors, which every rank advances identically, are
  the whole state: any rank's `state_dict()` restores every rank.
- A window holds seq_len + 1 tokens and the cursor moves by seq_len, so the last target of one window is the
  first input of the next and no token is skipped. A window never wraps across an epoch boundary; the tail
  that does not fit starts the next epoch's stream instead.
"""

import math
import os
import zlib

import numpy as np
import torch

from .locations import resolve_shards_dir, resolve_tokenizer_path
from .shards import MANIFEST, SourceShards
from .tokenizer import file_sha256

STATE_FORMAT = "mixed-batcher"
STATE_VERSION = 1


class _ShuffledStream:
    """A source's tokens cut into near-equal blocks that are visited in a new random order every epoch."""

    def __init__(self, shards: SourceShards, seed: int, block_tokens: int):
        self.shards = shards
        self.total = shards.total_tokens
        self.seed = seed
        self.key = zlib.crc32(shards.source.encode("utf-8"))
        # Small sources still get about 64 blocks (of at least 1024 tokens) so that epochs differ.
        block = min(block_tokens, max(1024, self.total // 64))
        n_blocks = max(1, math.ceil(self.total / block))
        self.bounds = np.linspace(0, self.total, n_blocks + 1).astype(np.int64)
        self._epoch: int | None = None
        self._order_starts: np.ndarray | None = None
        self._order_cum: np.ndarray | None = None

    def _layout(self, epoch: int):
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.key, epoch])))
            order = rng.permutation(len(self.bounds) - 1)
            starts = self.bounds[order]
            lengths = self.bounds[order + 1] - starts
            self._order_starts = starts
            self._order_cum = np.concatenate([[0], np.cumsum(lengths)])
            self._epoch = epoch
        return self._order_starts, self._order_cum

    def read(self, epoch: int, pos: int, length: int) -> np.ndarray:
        starts, cum = self._layout(epoch)
        out = np.empty(length, dtype=np.int64)
        filled = 0
        block = int(np.searchsorted(cum, pos, side="right")) - 1
        while filled < length:
            offset = pos + filled - int(cum[block])
            take = min(length - filled, int(cum[block + 1] - cum[block]) - offset)
            out[filled : filled + take] = self.shards.read(int(starts[block]) + offset, take)
            filled += take
            block += 1
        return out


class MixedBatcher:
    """Batches for one data-parallel rank. All ranks must call `next_batch` with the same arguments in the same
    order (as data-parallel training does); several calls within one step (micro-batches) draw different data."""

    def __init__(self, cfg: dict, rank: int, world: int, seed: int, *, block_tokens: int = 1 << 16):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        if block_tokens < 1:
            raise ValueError("block_tokens must be positive")
        data = cfg.get("data") or {}
        sources = (data.get("recipe") or {}).get("sources") or []
        if not sources:
            raise ValueError("data.recipe.sources is empty: the recipe names no source to train on")
        names = [s["name"] for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.recipe.sources names a source twice: {names}")
        weights = np.array([float(s["weight"]) for s in sources], dtype=np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"recipe weights must be finite, non-negative and not all zero: {weights.tolist()}")

        self.rank, self.world, self.seed = rank, world, int(seed)
        self.block_tokens = block_tokens
        self.shards_dir = resolve_shards_dir(cfg)
        self.tokenizer_path = resolve_tokenizer_path(cfg)
        self._names = names
        self._probs = weights / weights.sum()

        missing = [n for n in names if not os.path.isfile(os.path.join(self.shards_dir, n, MANIFEST))]
        if missing:
            present = sorted(
                d for d in (os.listdir(self.shards_dir) if os.path.isdir(self.shards_dir) else [])
                if os.path.isfile(os.path.join(self.shards_dir, d, MANIFEST))
            )  # fmt: skip
            raise FileNotFoundError(
                f"recipe source(s) {', '.join(missing)} have no shards in shards_dir {self.shards_dir} "
                f"(expected {os.path.join(self.shards_dir, missing[0], MANIFEST)}; sources with shards there: "
                f"{', '.join(present) or 'none'})"
            )
        shards = [SourceShards(os.path.join(self.shards_dir, n)) for n in names]
        self._check_compatible(cfg, shards)
        self._streams = [_ShuffledStream(s, self.seed, block_tokens) for s in shards]

        self._epoch = [0] * len(names)
        self._cursor = [0] * len(names)
        self._consumed = np.zeros((len(names), world), dtype=np.int64)
        self._step: int | None = None
        self._draw = 0

    def _check_compatible(self, cfg: dict, shards: list[SourceShards]) -> None:
        if not os.path.isfile(self.tokenizer_path):
            raise FileNotFoundError(f"tokenizer {self.tokenizer_path} (data.tokenizer) does not exist")
        tokenizer_hash = file_sha256(self.tokenizer_path)
        model_vocab = (cfg.get("model") or {}).get("vocab_size")
        for s in shards:
            if s.tokenizer_sha256 != tokenizer_hash:
                raise ValueError(
                    f"shards of source {s.source!r} in {s.directory} were made with tokenizer sha256 "
                    f"{s.tokenizer_sha256[:12]}..., not with {self.tokenizer_path} ({tokenizer_hash[:12]}...)"
                )
            if model_vocab is not None and s.vocab_size > int(model_vocab):
                raise ValueError(
                    f"shards of source {s.source!r} use a vocabulary of {s.vocab_size}, "
                    f"larger than model.vocab_size {model_vocab}"
                )
            if s.total_tokens < 2:
                raise ValueError(f"source {s.source!r} in {s.directory} holds fewer than 2 tokens")

    @property
    def source_names(self) -> list[str]:
        return list(self._names)

    def _allocate(self, src: int, count: int, seq_len: int) -> list[tuple[int, int]]:
        """(epoch, position) of the next `count` windows of source `src`, advancing its cursor."""
        total = self._streams[src].total
        if seq_len + 1 > total:
            raise ValueError(
                f"source {self._names[src]!r} holds {total} tokens, fewer than one window of seq_len+1 = {seq_len + 1}"
            )
        out: list[tuple[int, int]] = []
        epoch, cursor = self._epoch[src], self._cursor[src]
        while len(out) < count:
            fit = (total - seq_len - 1 - cursor) // seq_len + 1 if cursor + seq_len + 1 <= total else 0
            take = min(fit, count - len(out))
            out.extend((epoch, cursor + k * seq_len) for k in range(take))
            cursor += take * seq_len
            if len(out) < count:
                epoch, cursor = epoch + 1, 0
        self._epoch[src], self._cursor[src] = epoch, cursor
        return out

    def next_batch(self, step: int, n_seqs: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [n_seqs, seq_len+1] (inputs are [:, :-1], targets [:, 1:]) and source_ids [n_seqs]."""
        if n_seqs < 1 or seq_len < 1:
            raise ValueError(f"n_seqs and seq_len must be positive, got {n_seqs} and {seq_len}")
        if step != self._step:
            self._step, self._draw = step, 0
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(step), self._draw])))
        choices = rng.choice(len(self._names), size=(self.world, n_seqs), p=self._probs)
        self._draw += 1

        tokens = np.empty((n_seqs, seq_len + 1), dtype=np.int64)
        flat = choices.reshape(-1)
        for src in range(len(self._names)):
            slots = np.flatnonzero(flat == src)
            if slots.size == 0:
                continue
            windows = self._allocate(src, int(slots.size), seq_len)
            ranks = slots // n_seqs
            self._consumed[src] += np.bincount(ranks, minlength=self.world) * seq_len
            for slot, (epoch, pos) in zip(
                slots[ranks == self.rank], np.asarray(windows)[ranks == self.rank], strict=True
            ):
                tokens[slot % n_seqs] = self._streams[src].read(int(epoch), int(pos), seq_len + 1)
        return torch.from_numpy(tokens), torch.from_numpy(choices[self.rank].astype(np.int64))

    def skip_batch(self, step: int, n_seqs: int, seq_len: int) -> None:
        """Pass over what `next_batch` with these arguments would draw, without reading or counting it: the
        windows are allocated (the cursors move on) but never trained on, so `consumed_tokens` is unchanged."""
        if step != self._step:
            self._step, self._draw = step, 0
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(step), self._draw])))
        choices = rng.choice(len(self._names), size=(self.world, n_seqs), p=self._probs).reshape(-1)
        self._draw += 1
        for src in range(len(self._names)):
            count = int(np.count_nonzero(choices == src))
            if count:
                self._allocate(src, count, seq_len)

    def consumed_tokens(self) -> dict[str, int]:
        """Target tokens (seq_len per sequence) this rank has drawn from each source."""
        return {n: int(self._consumed[i, self.rank]) for i, n in enumerate(self._names)}

    def global_consumed_tokens(self) -> dict[str, int]:
        """Target tokens drawn from each source by all ranks together."""
        return {n: int(self._consumed[i].sum()) for i, n in enumerate(self._names)}

    def epochs(self) -> dict[str, float]:
        """How many passes over each source have been made, fractional."""
        return {n: self._epoch[i] + self._cursor[i] / self._streams[i].total for i, n in enumerate(self._names)}

    def state_dict(self) -> dict:
        """Plain ints, lists and strings (JSON- and torch.save-friendly); identical on every rank."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "seed": self.seed,
            "world": self.world,
            "block_tokens": self.block_tokens,
            "step": self._step,
            "draw": self._draw,
            "sources": {
                n: {
                    "epoch": self._epoch[i],
                    "cursor": self._cursor[i],
                    "total_tokens": self._streams[i].total,
                    "consumed": [int(c) for c in self._consumed[i]],
                }
                for i, n in enumerate(self._names)
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from any rank of the same run. Sources the state does not know start fresh, and
        the recipe's weights may have changed; the seed, world size, blocking and shard contents may not."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a {STATE_FORMAT} v{STATE_VERSION} state: {state.get('format')!r}")
        for key, mine in (("seed", self.seed), ("world", self.world), ("block_tokens", self.block_tokens)):
            if state[key] != mine:
                raise ValueError(f"data state was saved with {key}={state[key]}, this batcher has {key}={mine}")
        saved = state["sources"]
        for i, n in enumerate(self._names):
            if n not in saved:
                continue
            entry = saved[n]
            if entry["total_tokens"] != self._streams[i].total:
                raise ValueError(
                    f"source {n!r} held {entry['total_tokens']} tokens when saved and holds "
                    f"{self._streams[i].total} now: its shards changed, so the saved position is meaningless"
                )
        for i, n in enumerate(self._names):
            entry = saved.get(n)
            if entry is None:
                self._epoch[i], self._cursor[i] = 0, 0
                self._consumed[i] = 0
            else:
                self._epoch[i], self._cursor[i] = int(entry["epoch"]), int(entry["cursor"])
                self._consumed[i] = np.asarray(entry["consumed"], dtype=np.int64)
        self._step, self._draw = state["step"], int(state["draw"])
