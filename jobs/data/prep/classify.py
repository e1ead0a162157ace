"""Linear classifiers over hashed character n-grams, in numpy: language, quality and toxicity.

Why not fastText: the three models read the same features, so one hashing pass per document serves all three
(fastText would tokenise the text once per model), training on the shipped sample is deterministic and takes
seconds, and a model is an .npz that loads with numpy alone on any node. A model file holds:

    format "cp-hashed-ngram-linear", version 1, kind "softmax" | "logistic", labels [str], ngrams [int],
    buckets_log2 int, weights float16 [2**buckets_log2, K], bias float32 [K]

`logistic` models have one column and score the probability of `labels[1]` (e.g. "toxic"). A user's own model
in this format replaces a shipped one (the recipe's `quality.model` / `toxicity.model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.data.prep.text import codepoints

FORMAT = "cp-hashed-ngram-linear"
VERSION = 1
MODELS_DIR = Path(__file__).resolve().parents[2] / "assets" / "prep"


@dataclass(frozen=True)
class FeatureSpec:
    ngrams: tuple[int, ...] = (1, 2, 3, 4)
    buckets_log2: int = 18

    def buckets(self, cps: np.ndarray) -> list[np.ndarray]:
        """Bucket of every character n-gram of the lower-cased text's code points, one array per n in `ngrams`
        (ascending), the n-gram starting at position i at index i. Polynomial hashes grow one character at a
        time; multiply-shift picks the bucket."""
        out = []
        shift = np.uint64(64 - self.buckets_log2)
        h = cps.astype(np.uint64)
        for n in range(1, max(self.ngrams) + 1):
            if n > 1:
                h = h[:-1] * _POLY + cps[n - 1 :]
            if n in self.ngrams and h.shape[0]:
                # Below 2**buckets_log2, so the view as signed indices is exact (and needs no copy).
                out.append(((h * _BUCKET[n % len(_BUCKET)]) >> shift).view(np.int64))
        return out

    def indices_at(self, cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All of buckets() in one array, and where each n-gram starts."""
        blocks = self.buckets(cps)
        if not blocks:
            return np.empty(0, np.intp), np.empty(0, np.intp)
        return np.concatenate(blocks).astype(np.intp), np.concatenate([np.arange(b.shape[0]) for b in blocks])

    def indices(self, lower_text: str) -> np.ndarray:
        return self.indices_at(codepoints(lower_text))[0]


_POLY = np.uint64(0x9E3779B97F4A7C15)
# Odd multipliers of the multiply-shift bucket hash, one per n-gram length.
_BUCKET = tuple(np.uint64(c) for c in (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB,
                                       0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F))  # fmt: skip


class ModelError(ValueError):
    """A model file that is missing or not in the format above; the message names the file."""


@dataclass
class LinearModel:
    kind: str
    labels: tuple[str, ...]
    spec: FeatureSpec
    weights: np.ndarray  # float32 [buckets, K]
    bias: np.ndarray  # float32 [K]

    def logits(self, idx: np.ndarray) -> np.ndarray:
        if idx.shape[0] == 0:
            return self.bias.copy()
        return self.weights[idx].sum(axis=0) / np.sqrt(idx.shape[0]) + self.bias

    def probabilities(self, idx: np.ndarray) -> np.ndarray:
        """softmax: one probability per label; logistic: [p(labels[1])]."""
        z = self.logits(idx)
        if self.kind == "logistic":
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z - z.max())
        return e / e.sum()

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as fh:
            np.savez_compressed(
                fh,
                format=np.array(FORMAT),
                version=np.array(VERSION),
                kind=np.array(self.kind),
                labels=np.array(self.labels),
                ngrams=np.array(self.spec.ngrams, dtype=np.int64),
                buckets_log2=np.array(self.spec.buckets_log2),
                weights=self.weights.astype(np.float16),
                bias=self.bias.astype(np.float32),
            )

    @classmethod
    def load(cls, path: str | Path) -> LinearModel:
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != FORMAT or int(data["version"]) != VERSION:
                    raise ModelError(f"{path}: not a {FORMAT} v{VERSION} model file")
                spec = FeatureSpec(tuple(int(n) for n in data["ngrams"]), int(data["buckets_log2"]))
                model = cls(
                    kind=str(data["kind"]),
                    labels=tuple(str(s) for s in data["labels"]),
                    spec=spec,
                    weights=data["weights"].astype(np.float32),
                    bias=data["bias"].astype(np.float32),
                )
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"{path}: cannot read a classifier model ({exc})") from exc
        if model.weights.shape[0] != 1 << spec.buckets_log2 or model.weights.shape[1] != model.bias.shape[0]:
            raise ModelError(f"{path}: weights {model.weights.shape} do not match buckets_log2 and bias")
        if model.kind not in ("softmax", "logistic"):
            raise ModelError(f"{path}: kind must be softmax or logistic, not {model.kind!r}")
        return model


def train(
    docs: list[np.ndarray],
    targets: np.ndarray,
    *,
    kind: str,
    labels: tuple[str, ...],
    spec: FeatureSpec,
    epochs: int = 6,
    lr: float = 0.2,
    l2: float = 1e-6,
    seed: int = 0,
) -> LinearModel:
    """Stochastic gradient descent on cross-entropy, one document at a time in a seeded order, so the same
    sample gives the same weights. `docs` holds each document's feature indices; `targets` class numbers
    (softmax) or 0/1 (logistic)."""
    k = 1 if kind == "logistic" else len(labels)
    weights = np.zeros((1 << spec.buckets_log2, k), dtype=np.float32)
    bias = np.zeros(k, dtype=np.float32)
    rng = np.random.default_rng(seed)
    model = LinearModel(kind, labels, spec, weights, bias)
    for epoch in range(epochs):
        rate = lr / (1 + epoch)
        for i in rng.permutation(len(docs)):
            idx = docs[i]
            if idx.shape[0] == 0:
                continue
            p = model.probabilities(idx)
            if kind == "logistic":
                grad = p - float(targets[i])
            else:
                grad = p.copy()
                grad[int(targets[i])] -= 1.0
            scale = np.float32(rate / np.sqrt(idx.shape[0]))
            np.add.at(weights, idx, -(scale * grad).astype(np.float32))
            if l2:
                weights[idx] *= np.float32(1 - rate * l2)
            bias -= np.float32(rate) * grad.astype(np.float32)
    # Round through the file's float16 so a trained model scores exactly as its saved copy.
    model.weights = weights.astype(np.float16).astype(np.float32)
    return model


class Classifiers:
    """The language, quality and toxicity models scored from one feature pass: when their feature specs agree
    (the shipped ones do) their weights sit side by side in one matrix, so each document gathers one row per
    n-gram once."""

    def __init__(self, language: LinearModel, quality: LinearModel, toxicity: LinearModel):
        self.language, self.quality, self.toxicity = language, quality, toxicity
        self.shared = language.spec == quality.spec == toxicity.spec
        k = len(language.labels)
        self._lang = slice(0, k)
        self._quality, self._toxic = k, k + 1
        if self.shared:
            self._matrix = np.ascontiguousarray(np.hstack([language.weights, quality.weights, toxicity.weights]))
            self._bias = np.concatenate([language.bias, quality.bias, toxicity.bias])

    def score(self, lower_cps: np.ndarray, sentence_end: np.ndarray) -> Scores:
        """Scores of one document from its lower-cased code points; `sentence_end` (a bool per code point) cuts it
        into the sentences toxicity is scored on (an n-gram belongs to the sentence it starts in)."""
        length = lower_cps.shape[0]
        # First position of each sentence: the start, and the position after each sentence end.
        starts = np.flatnonzero(sentence_end[:-1]) + 1
        starts = np.concatenate(([0], starts)) if length else np.zeros(1, np.int64)
        if not self.shared:
            return self._score_apart(lower_cps, starts)
        blocks = self.language.spec.buckets(lower_cps)
        if not blocks:
            z = self._bias
            return Scores(_softmax(z[self._lang]), _sigmoid(z[self._quality]), _sigmoid(z[self._toxic]))
        # Each n's rows added at the position its n-gram starts: per position, the sum over the n-grams starting
        # there, whose sums over the document and over each sentence are the models' inputs.
        at = np.take(self._matrix, blocks[0], axis=0)
        counts = np.ones(length, np.float32) if blocks[0].shape[0] == length else np.zeros(length, np.float32)
        if blocks[0].shape[0] != length:
            counts[: blocks[0].shape[0]] += 1
        for block in blocks[1:]:
            at[: block.shape[0]] += np.take(self._matrix, block, axis=0)
            counts[: block.shape[0]] += 1
        total = sum(b.shape[0] for b in blocks)
        z = np.ones(at.shape[0], np.float32) @ at / np.sqrt(total) + self._bias
        sums = np.add.reduceat(at[:, self._toxic], starts)
        per_sentence = np.add.reduceat(counts, starts)
        used = per_sentence > 0
        toxic = _sigmoid((sums[used] / np.sqrt(per_sentence[used])).max() + self._bias[self._toxic])
        return Scores(_softmax(z[self._lang]), _sigmoid(z[self._quality]), toxic)

    def _score_apart(self, lower_cps: np.ndarray, starts: np.ndarray) -> Scores:
        out = []
        for model in (self.language, self.quality):
            idx, _ = model.spec.indices_at(lower_cps)
            out.append(model.probabilities(idx))
        idx, pos = self.toxicity.spec.indices_at(lower_cps)
        sentence = np.searchsorted(starts, pos, side="right") - 1
        toxic = _segment_max(self.toxicity.weights[idx, 0], sentence, starts.shape[0], self.toxicity.bias[0])
        return Scores(out[0], float(out[1][0]), toxic)


@dataclass(frozen=True)
class Scores:
    language: np.ndarray  # one probability per label of the language model
    quality: float  # probability that the document is good text
    toxicity: float  # the worst sentence's probability of being toxic


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _sigmoid(z) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _segment_max(values: np.ndarray, segment: np.ndarray, segments: int, bias: float) -> float:
    if values.shape[0] == 0:
        return _sigmoid(bias)
    sums = np.bincount(segment, weights=values, minlength=segments)
    counts = np.bincount(segment, minlength=segments)
    used = counts > 0
    return _sigmoid((sums[used] / np.sqrt(counts[used])).max() + bias)
