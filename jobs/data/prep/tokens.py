"""Tokenizer training, tokenization into per-task token files, and the final mix into the trainer's shards.

Training follows the guide's `spm_train` (BPE, character_coverage 0.9999, input_sentence_size 10,000,000,
vocabulary 128,000) scaled to the data: the lines are reservoir-sampled down to input_sentence_size, and the
vocabulary is the smaller of the recipe's and the largest power of two not above one piece per 100 characters
of the sample; SentencePiece refuses a vocabulary smaller than the characters the coverage needs, or larger than
BPE can build from the data, and names the bound in its message, which the next try takes.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import sentencepiece as spm
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from jobs.common.atomic import write_atomic, write_json
from jobs.data.prep.ledger import Ledger
from jobs.data.shards import ShardWriter, dtype_for_vocab
from jobs.data.tokenizer import TRAINER_OPTIONS, file_sha256

CHARS_PER_PIECE = 100
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_BATCH = 256
_NUMPY = {"uint16": np.uint16, "uint32": np.uint32}


class WordCache:
    """SentencePiece encoding through a cache of space-separated words, for models where that is exact.

    Why: SentencePiece's BPE costs ~0.9 us per English word (~220 us for a 250-word document) however often the
    word recurs, and text repeats its words (Zipf): looking each word up costs a few tenths of that. It is exact
    for models that split on spaces before BPE and have no normalisation (the job's own, jobs.data.tokenizer):
    such a model never merges across a space and strips repeated spaces, so a text's ids are the concatenation
    of its words' ids. Checked on the bench's 18,218 kept documents and 40,000 random strings of spaces, tabs,
    newlines, CJK and symbols; a text holding U+2581 (SentencePiece's own space mark) goes to SentencePiece
    whole. Words longer than MAX_WORD (most Chinese text has no spaces) go to SentencePiece too, uncached."""

    MAX_WORD = 40
    MAX_ENTRIES = 500_000

    def __init__(self, sp: spm.SentencePieceProcessor, model_path: str):
        self.sp = sp
        self.enabled = _splits_on_spaces(model_path)
        self._ids: dict[str, list[int]] = {}

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not self.enabled:
            return self.sp.encode(texts)
        out: list[list[int] | None] = []
        whole: list[int] = []  # texts encoded by SentencePiece as they are
        words_of: list[list[str]] = []
        missing: set[str] = set()
        for i, text in enumerate(texts):
            words = text.split(" ")
            if "\u2581" in text or any(len(w) > self.MAX_WORD for w in words):
                whole.append(i)
                words_of.append([])
                out.append(None)
                continue
            words_of.append(words)
            out.append([])
            missing.update(w for w in words if w and w not in self._ids)
        fresh = list(missing)
        if fresh:
            encoded = dict(zip(fresh, self.sp.encode(fresh), strict=True))
            if len(self._ids) < self.MAX_ENTRIES:
                self._ids.update(encoded)
        else:
            encoded = {}
        for i, words in enumerate(words_of):
            ids = out[i]
            if ids is None:
                continue
            for word in words:
                if word:
                    known = self._ids.get(word)
                    ids.extend(encoded[word] if known is None else known)
        if whole:
            for i, ids in zip(whole, self.sp.encode([texts[i] for i in whole]), strict=True):
                out[i] = ids
        return out  # type: ignore[return-value]


def _splits_on_spaces(model_path: str) -> bool:
    """Whether a text's encoding is its space-separated words' encodings in a row (see WordCache)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # generated protobuf code, no stubs
    model.ParseFromString(Path(model_path).read_bytes())
    norm, trainer = model.normalizer_spec, model.trainer_spec
    return (
        trainer.ModelType.Name(trainer.model_type) == "BPE"
        and norm.name == "identity"
        and not norm.precompiled_charsmap
        and norm.add_dummy_prefix
        and norm.remove_extra_whitespaces
        and norm.escape_whitespaces
        and trainer.split_by_whitespace
        and not trainer.treat_whitespace_as_suffix
    )


def scaled_vocab(requested: int, characters: int) -> int:
    by_data = 1 << max(9, (max(1, characters // CHARS_PER_PIECE)).bit_length() - 1)
    return min(requested, by_data)


class TrainTokenizer(PipelineStep):
    name = "train tokenizer"
    type = "prep"

    def __init__(self, ledger: Ledger, out_path: str, work_dir: str, options: dict):
        super().__init__()
        self.ledger = ledger
        self.out_path = out_path
        self.work_dir = work_dir
        self.options = options

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        t0 = time.perf_counter()
        limit = int(self.options["input_sentence_size"])
        rng = Random(0)
        sample: list[str] = []
        seen = characters = 0
        for doc in data or ():
            for line in doc.text.split("\n"):
                if not line:
                    continue
                seen += 1
                characters += len(line)
                if len(sample) < limit:
                    sample.append(line)
                else:
                    j = rng.randrange(seen)
                    if j < limit:
                        sample[j] = line
        if not sample:
            raise RuntimeError("no text is left after filtering and deduplication to train a tokenizer on")
        folder = Path(self.work_dir) / "tokenizer"
        folder.mkdir(parents=True, exist_ok=True)
        text_file = folder / "sample.txt"
        text_file.write_text("\n".join(sample) + "\n", encoding="utf-8")
        sample_chars = sum(len(s) for s in sample)
        requested = int(self.options["vocab_size"])
        vocab = scaled_vocab(requested, sample_chars)
        reason = "the recipe's size" if vocab == requested else f"scaled to {sample_chars:,} characters"
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        prefix = folder / "bpe"
        options: dict[str, Any] = {
            **TRAINER_OPTIONS,
            "character_coverage": float(self.options["character_coverage"]),
            "input_sentence_size": 0,
            "max_sentence_length": 1 << 16,
            "num_threads": threads,
            "minloglevel": 2,
        }
        for _ in range(4):
            try:
                # The size goes in the same dict: TRAINER_OPTIONS names one too, and a keyword given twice is a
                # TypeError, not the RuntimeError the retries below expect.
                spm.SentencePieceTrainer.train(
                    input=str(text_file), model_prefix=str(prefix), **{**options, "vocab_size": vocab}
                )
                break
            except RuntimeError as exc:
                small, large = _TOO_SMALL.search(str(exc)), _TOO_LARGE.search(str(exc))
                if small:
                    vocab = -(-int(small.group(2)) // 64) * 64
                    reason = "raised to the characters the coverage needs"
                elif large:
                    vocab = int(large.group(2)) // 8 * 8
                    reason = "lowered to what BPE can build from the data"
                else:
                    raise
        else:
            raise RuntimeError(f"SentencePiece found no vocabulary size that fits the data (last tried {vocab})")
        write_atomic(self.out_path, Path(f"{prefix}.model").read_bytes())
        write_json(
            folder / "info.json",
            {
                "trained": True,
                "vocab_size": vocab,
                "requested_vocab_size": requested,
                "vocab_reason": reason,
                "character_coverage": float(self.options["character_coverage"]),
                "input_sentence_size": min(limit, seen),
                "requested_input_sentence_size": limit,
                "sentences_seen": seen,
                "characters_seen": characters,
                "seconds": time.perf_counter() - t0,
            },
        )
        return
        yield


class Tokenize(PipelineStep):
    """Encodes kept documents with the tokenizer into `tokens/<source>/<rank>.bin` (the token stream, each
    document followed by eos) and `<rank>.npy` ([tokens incl. eos, characters] per document)."""

    name = "tokenize"
    type = "prep"

    def __init__(self, ledger: Ledger, tokenizer_path: str, out_dir: str):
        super().__init__()
        self.ledger = ledger
        self.tokenizer_path = tokenizer_path
        self.out_dir = out_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        sp = spm.SentencePieceProcessor(model_file=self.tokenizer_path)
        cache = WordCache(sp, self.tokenizer_path)
        dtype = _NUMPY[dtype_for_vocab(sp.vocab_size())]
        eos = sp.eos_id()
        files: dict[str, tuple] = {}
        batch: list = []

        def flush() -> None:
            t0 = time.perf_counter()
            encoded = cache.encode([d.text for d in batch])
            for doc, ids in zip(batch, encoded, strict=True):
                source = doc.metadata["source"]
                if source not in files:
                    folder = Path(self.out_dir) / source
                    folder.mkdir(parents=True, exist_ok=True)
                    tmp = folder / f".{rank:05d}.bin.tmp"
                    files[source] = (open(tmp, "wb"), [], folder)
                fh, lengths, _ = files[source]
                arr = np.empty(len(ids) + 1, dtype=dtype)
                arr[:-1] = ids
                arr[-1] = eos
                fh.write(arr.tobytes())
                chars = len(doc.text)
                lengths.append((arr.shape[0], chars))
                self.ledger.entered("tokenize", source, chars)
                self.ledger.kept("tokenize", source, chars, tokens=arr.shape[0])
                lang = self.ledger.languages[doc.metadata.get("language") or doc.metadata.get("tag") or "?"]
                lang["docs"] += 1
                lang["chars"] += chars
                lang["tokens"] += len(ids)
            self.ledger.seconds["tokenize"] += time.perf_counter() - t0
            batch.clear()

        for doc in data or ():
            batch.append(doc)
            if len(batch) >= _BATCH:
                flush()
            yield doc
        if batch:
            flush()
        for fh, lengths, folder in files.values():
            fh.close()
            np.save(folder / f".{rank:05d}.npy.tmp.npy", np.array(lengths, dtype=np.int64).reshape(-1, 2))
            os.replace(folder / f".{rank:05d}.npy.tmp.npy", folder / f"{rank:05d}.npy")
            os.replace(folder / f".{rank:05d}.bin.tmp", folder / f"{rank:05d}.bin")


def mix_budgets(available: dict[str, int], weights: dict[str, float], mode: str) -> dict[str, int]:
    """Tokens to keep per source: all of them ("keep_all"), or as many as the recipe's weights allow when the
    scarcest source (relative to its weight) is taken whole ("trim")."""
    if mode == "keep_all":
        return dict(available)
    total_weight = sum(weights.values())
    scale = min(available[s] / (weights[s] / total_weight) for s in weights) if weights else 0
    return {s: min(available[s], int(scale * weights[s] / total_weight)) for s in weights}


class Mix(PipelineStep):
    """Writes the final shards (`shards/<source>/`, jobs.data.ShardWriter) from the token files, each source cut
    to its budget at a document boundary, into `shards.tmp/` and then renames it to `shards/`: a failure leaves
    no shards at all."""

    name = "mix"
    type = "prep"

    def __init__(self, ledger: Ledger, tokens_dir: str, job_dir: str, tokenizer_path: str, weights: dict,
                 mode: str, shard_tokens: int):  # fmt: skip
        super().__init__()
        self.ledger = ledger
        self.tokens_dir, self.job_dir, self.tokenizer_path = tokens_dir, job_dir, tokenizer_path
        self.weights, self.mode, self.shard_tokens = weights, mode, shard_tokens

    def _parts(self, source: str) -> list[tuple[Path, np.ndarray]]:
        folder = Path(self.tokens_dir) / source
        parts = []
        for lengths in sorted(folder.glob("[0-9]*.npy")) if folder.is_dir() else []:
            parts.append((lengths.with_suffix(".bin"), np.load(lengths)))
        return parts

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        t0 = time.perf_counter()
        sp = spm.SentencePieceProcessor(model_file=self.tokenizer_path)
        digest = file_sha256(self.tokenizer_path)
        dtype = _NUMPY[dtype_for_vocab(sp.vocab_size())]
        parts = {s: self._parts(s) for s in self.weights}
        available = {s: int(sum(int(p[1][:, 0].sum()) for p in ps)) for s, ps in parts.items()}
        empty = [s for s, n in available.items() if n == 0]
        if empty:
            raise RuntimeError(
                f"source(s) {', '.join(empty)} have no documents left after filtering and deduplication; "
                "lower the recipe's thresholds or remove the source"
            )
        budgets = mix_budgets(available, self.weights, self.mode)
        tmp = Path(self.job_dir) / "shards.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        written = {}
        for source, source_parts in parts.items():
            with ShardWriter(tmp / source, source, sp.vocab_size(), digest, sp.eos_id(), self.shard_tokens) as w:
                taken, full = 0, False
                for bin_path, lengths in source_parts:
                    if not lengths.shape[0]:
                        continue  # a part with no documents left: nothing to map
                    stream = np.memmap(bin_path, dtype=dtype, mode="r")
                    offset = 0
                    for tokens, chars in lengths.tolist():
                        self.ledger.entered("mix", source, chars)
                        full = full or taken + tokens > budgets[source]
                        if full:
                            self.ledger.counted("mix", source, "mix:over_weight")
                            continue
                        self.ledger.kept("mix", source, chars, tokens=tokens)
                        w.add_document(stream[offset : offset + tokens - 1])
                        offset += tokens
                        taken += tokens
                manifest = w.close()
            written[source] = manifest["total_tokens"]
        final = Path(self.job_dir) / "shards"
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        write_json(Path(self.tokens_dir) / "mix.json", {"available": available, "budgets": budgets,
                                                         "written": written, "mode": self.mode})  # fmt: skip
        self.ledger.seconds["mix"] += time.perf_counter() - t0
        return
        yield
