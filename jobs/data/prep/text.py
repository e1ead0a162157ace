"""Text primitives shared by the prep steps: normalisation, code points, hashed character n-grams, scripts.

Every feature is computed on a document's code points as one numpy array, so a step costs a few array passes per
document instead of a Python loop per character or per word.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")
_HSPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")

# Multipliers of the polynomial n-gram hash (odd 64-bit constants) and the splitmix64 finaliser's.
_POLY = np.uint64(0x9E3779B97F4A7C15)
SHINGLE_MULTIPLIER = _POLY
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


# NFKC's only change to most Chinese text is its full-width punctuation (U+FF01-FF5E become their ASCII forms).
# Replacing those (the commonest first) by their NFKC forms leaves NFKC's result the same, and usually leaves a
# text that the quick check finds normalised: the full pass, ~10x the cost, runs only when it does not.
_FULLWIDTH = tuple((wide, chr(ord(wide) - 0xFEE0)) for wide in "，？：！；（）％")
# After NFKC and _CONTROL, the only horizontal whitespace left is these: a text without any of them has no run
# of spaces to squeeze (most texts), and the squeezing pass, one regex match per space, is skipped.
_HSPACE_SIGNS = ("  ", "\t", "\u1680")


def normalise(text: str) -> str:
    """Unicode NFKC, control and zero-width characters dropped, runs of spaces and tabs made one space, lines
    stripped, at most one blank line in a row, no leading or trailing whitespace."""
    if not unicodedata.is_normalized("NFKC", text):
        for wide, narrow in _FULLWIDTH:
            text = text.replace(wide, narrow)
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    if any(sign in text for sign in _HSPACE_SIGNS):
        text = _HSPACE.sub(" ", text)
    if "\n" in text:
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def codepoints(text: str) -> np.ndarray:
    """The text's code points as uint32 (UTF-32 is one unit per code point, so no surrogate handling)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over every output bit (uint64 in, uint64 out)."""
    x = x ^ (x >> _S30)
    x = x * _MIX1
    x = x ^ (x >> _S27)
    x = x * _MIX2
    return x ^ (x >> _S31)


def ngram_hashes(cps: np.ndarray, n: int, salt: int = 0) -> np.ndarray:
    """64-bit hashes of every character n-gram of `cps` (empty when the text is shorter than n)."""
    count = cps.shape[0] - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    wide = cps.astype(np.uint64)
    h = np.full(count, np.uint64(salt * 0x51ED27 + n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _POLY + wide[k : k + count]
        return mix64(h)


def is_cjk(cps: np.ndarray) -> np.ndarray:
    """Han ideographs (unified, extension A, compatibility, extension B)."""
    return (
        ((cps >= 0x4E00) & (cps <= 0x9FFF))
        | ((cps >= 0x3400) & (cps <= 0x4DBF))
        | ((cps >= 0xF900) & (cps <= 0xFAFF))
        | ((cps >= 0x20000) & (cps <= 0x2A6DF))
    )


def cjk_fraction(cps: np.ndarray) -> float:
    if cps.shape[0] == 0:
        return 0.0
    return float(np.count_nonzero(is_cjk(cps))) / cps.shape[0]


# Class of each BMP code point for tokenizing: 0 not part of a word, 1 letter, 2 digit, 3 Han character.
_OTHER, _LETTER, _DIGIT, _HAN = 0, 1, 2, 3


def _class_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=np.uint8)
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isalnum():
            table[cp] = _DIGIT if ch.isdigit() else _LETTER
    cps = np.arange(0x10000, dtype=np.uint32)
    table[is_cjk(cps)] = _HAN
    return table


_CLASS = _class_table()
_K = np.uint64(0xD6E8FEB86659FD93)


class Tokens:
    """A document cut into tokens: maximal runs of letters and digits, except that every Han character is a token
    of its own (Chinese has no spaces; a character is the unit the rules and shingles count, as words are
    elsewhere). `hashes` are stable 64-bit hashes of the lower-cased tokens (the same in every process, unlike
    Python's `hash`), `lengths` their lengths in characters."""

    __slots__ = ("hashes", "lengths", "numeric", "cjk")

    def __init__(self, hashes: np.ndarray, lengths: np.ndarray, numeric: np.ndarray, cjk: int):
        self.hashes = hashes
        self.lengths = lengths
        self.numeric = numeric  # tokens made of digits only
        self.cjk = cjk  # how many tokens are Han characters

    def __len__(self) -> int:
        return int(self.hashes.shape[0])


_NO_TOKENS = Tokens(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, bool), 0)


def tokenize(cps: np.ndarray) -> Tokens:
    """Tokens of a document's code points (pass the lower-cased text's code points for case-blind hashes)."""
    n = cps.shape[0]
    if n == 0:
        return _NO_TOKENS
    cls = _CLASS[np.minimum(cps, 0xFFFF)]
    if (cps > 0xFFFF).any():  # Han extension B counts as Han; other planes hold no word characters here
        astral = cps > 0xFFFF
        cls[astral] = np.where((cps[astral] >= 0x20000) & (cps[astral] <= 0x2A6DF), _HAN, _OTHER)
    word = cls != _OTHER
    han = cls == _HAN
    # A token starts at a word character whose predecessor is not one, and at every Han character (and at the
    # character after one).
    start = word.copy()
    start[1:] &= ~word[:-1] | han[1:] | han[:-1]
    idx = np.flatnonzero(word)
    m = idx.shape[0]
    if m == 0:
        return _NO_TOKENS
    first = np.flatnonzero(start[idx])  # index in idx of each token's first character
    bounds = np.concatenate((first, [m]))
    lengths = bounds[1:] - bounds[:-1]
    pos = np.arange(m, dtype=np.uint64) - np.repeat(first.astype(np.uint64), lengths)  # place within its token
    contrib = mix64(cps[idx].astype(np.uint64) + pos * _K)
    hashes = mix64(np.add.reduceat(contrib, first))
    letters = np.add.reduceat(cls[idx] != _DIGIT, first)
    return Tokens(hashes, lengths, letters == 0, int(np.count_nonzero(han)))


def shingle_hashes(hashes: np.ndarray, n: int, mix: bool = True) -> np.ndarray:
    """Hashes of every run of n consecutive tokens (the token hashes themselves when n == 1). `mix` spreads the
    bits (fingerprints need that); equality tests within one document do without."""
    count = hashes.shape[0] - n + 1
    if count <= 0:
        return hashes[:0] if n > 1 else hashes
    if n == 1:
        return hashes
    with np.errstate(over="ignore"):
        h = hashes[:count].copy()
        for k in range(1, n):
            h = h * _POLY + hashes[k : k + count]
        return mix64(h) if mix else h
