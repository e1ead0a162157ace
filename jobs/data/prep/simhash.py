"""SimHash fingerprints and the search for near-duplicate pairs among them.

A fingerprint has `bits` bits (a multiple of 64): each bit is the sign of the sum, over the document's shingles
(runs of `shingle` tokens; a Han character is a token), of +1 or -1 by that bit of the shingle's hash. Documents
whose fingerprints differ in at most `max_distance` bits are near duplicates.

Why more than 64 bits: the distance between two fingerprints estimates the angle between the documents' shingle
sets with binomial noise, and with 64 bits that noise lets some unrelated pairs among millions fall within any
distance that still catches edited copies; 128 bits halve the noise's share of the distance.

Finding pairs: comparing every pair is quadratic, so candidates come from `tables` lookups, each keyed on
`key_bits` bits sampled from the fingerprint (bit-sampling locality-sensitive hashing): a pair that differs in
few bits likely agrees on every sampled bit of at least one table. Each candidate is then checked on its full
distance, so a reported pair is always within `max_distance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.data.prep.text import mix64, shingle_hashes

# Bits of the per-shingle hash used for the fingerprint words after the first.
_WORD_SALT = np.uint64(0x2545F4914F6CDD1D)
# Bucket members compared with each other: beyond this, each member meets only its next neighbours in key order
# (such a bucket is a cluster of copies, already linked through its neighbours).
_MAX_BUCKET_PAIRS = 64


@dataclass(frozen=True)
class SimHashConfig:
    bits: int = 128
    shingle: int = 3
    max_distance: int = 19
    tables: int = 64
    key_bits: int = 20
    seed: int = 1

    @property
    def words(self) -> int:
        return self.bits // 64


def fingerprint(token_hashes: np.ndarray, config: SimHashConfig) -> np.ndarray:
    """The fingerprint as `config.words` uint64 words (all zero for a document without shingles)."""
    sh = shingle_hashes(token_hashes, config.shingle)
    if sh.shape[0] == 0:
        return np.zeros(config.words, dtype=np.uint64)
    wide = np.empty((sh.shape[0], config.words), dtype=np.uint64)
    wide[:, 0] = sh
    for w in range(1, config.words):
        wide[:, w] = mix64(sh ^ (_WORD_SALT * np.uint64(w)))
    bits = np.unpackbits(wide.view(np.uint8), axis=1)
    # The bits set per column, as a float32 matrix-vector product (exact below 2**24 shingles): numpy's integer
    # sum down the columns of this narrow matrix costs twice the conversion and the product together.
    votes = np.ones(sh.shape[0], np.float32) @ bits.astype(np.float32) * 2 > sh.shape[0]
    return np.packbits(votes).view(np.uint64)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between fingerprints a[i] and b[i] (arrays [n, words])."""
    return np.bitwise_count(a ^ b).sum(axis=1, dtype=np.int32)


def _sampled_keys(prints: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each fingerprint, the value of the bits at `positions` packed into one integer."""
    word, bit = positions // 64, (positions % 64).astype(np.uint64)
    key = np.zeros(prints.shape[0], dtype=np.uint64)
    for i in range(positions.shape[0]):
        key |= ((prints[:, word[i]] >> bit[i]) & np.uint64(1)) << np.uint64(i)
    return key


def near_pairs(prints: np.ndarray, config: SimHashConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows of `prints` ([n, words]) within `max_distance` bits, and their distances."""
    n = prints.shape[0]
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.int32)
    rng = np.random.default_rng(config.seed)
    found_i, found_j = [], []
    for _ in range(config.tables):
        positions = rng.choice(config.bits, size=config.key_bits, replace=False)
        keys = _sampled_keys(prints, positions)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        same = ordered[1:] == ordered[:-1]
        if not same.any():
            continue
        # Every member of a run of equal keys meets the next `gap` members, for gap = 1.. up to the run's length.
        for gap in range(1, _MAX_BUCKET_PAIRS + 1):
            if gap > 1:
                same = same[:-1] & (ordered[gap:] == ordered[:-gap])
                if not same.any():
                    break
            left = np.flatnonzero(same)
            i, j = order[left], order[left + gap]
            # Candidates are checked as they come: most are chance collisions of the sampled bits (about n**2 / 2
            # / 2**key_bits per table, millions at a few hundred thousand documents), which would otherwise all
            # be gathered and deduplicated first.
            near = distances(prints[i], prints[j]) <= config.max_distance
            found_i.append(i[near])
            found_j.append(j[near])
    i = np.concatenate(found_i) if found_i else np.empty(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.empty(0, np.int64)
    if not i.shape[0]:
        return i, j, np.empty(0, np.int32)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    pair = np.sort(lo.astype(np.int64) * n + hi)
    pair = pair[np.concatenate(([True], pair[1:] != pair[:-1]))]
    lo, hi = pair // n, pair % n
    return lo, hi, distances(prints[lo], prints[hi])


def clusters(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Union-find over the pairs: each item's representative, the smallest index of its cluster."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    rep = np.arange(n)
    for x in np.unique(np.concatenate([left, right])).tolist():
        rep[x] = find(x)
    return rep
