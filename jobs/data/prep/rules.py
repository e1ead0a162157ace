"""Quality rules in the manner of Gopher (quality and repetition), C4 and FineWeb, with Chinese settings.

datatrove ships these rules as filters (GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter,
FineWebQualityFilter) with the thresholds used here as defaults. Its filters split words with a language's
spaCy/NLTK tokenizer, which costs more than all the rules together; these apply the same thresholds to the
tokens of `text.tokenize` (words, and single characters in Chinese) with numpy, and report the first rule a
document fails. Differences from datatrove's: C4's line-level edits (dropping lines) are not made, only its
whole-document rules apply; duplicated n-grams count every character covered by a repeated n-gram.

Chinese has no spaces, so the "words" of the Gopher rules are characters there: the word-length rule is off,
stop words are Chinese function characters, n-gram rules use twice the n (two characters make about one word),
and FineWeb's short line is 10 characters instead of 30.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from jobs.data.prep.text import SHINGLE_MULTIPLIER, Tokens, codepoints, tokenize

FAMILIES = ("gopher", "c4", "fineweb")
TERMINAL = tuple(".!?。！？…\"'”’»)")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_SENTENCE_END = re.compile(r"[.!?。！？]+")

STOP_WORDS = {
    "en": "the be to of and that have with",
    "fr": "le la les de des et un une est que",
    "de": "der die das und ist nicht ein eine zu den",
    "es": "el la los de y que en un una es",
    "it": "il la di e che un una è per non",
    "ru": "и в не на что он с как по это",
    "zh": "的 了 是 在 和 有 我 这 他 不 也 就 都 上",
}


@dataclass(frozen=True)
class LanguageRules:
    min_words: int = 50
    max_words: int = 100_000
    min_avg_word: float | None = 3.0
    max_avg_word: float | None = 10.0
    max_symbol_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_ngrams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_ngrams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    c4_min_sentences: int = 5
    fineweb_line_punct: float = 0.12
    fineweb_short_line: int = 30
    fineweb_short_lines: float = 0.67
    fineweb_char_dup: float = 0.01
    fineweb_list_ratio: float = 0.3
    stop_hashes: frozenset[int] = field(default_factory=frozenset, compare=False)


def _stop_hashes(language: str) -> frozenset[int]:
    return frozenset(tokenize(codepoints(STOP_WORDS[language])).hashes.tolist())


DEFAULT_RULES = LanguageRules()
ZH_RULES = LanguageRules(
    min_avg_word=None,
    max_avg_word=None,
    top_ngrams=((4, 0.2), (6, 0.18), (8, 0.16)),
    dup_ngrams=((10, 0.15), (12, 0.14), (14, 0.13), (16, 0.12), (18, 0.11), (20, 0.10)),
    fineweb_short_line=10,
    stop_hashes=_stop_hashes("zh"),
)
RULES = {lang: LanguageRules(stop_hashes=_stop_hashes(lang)) for lang in STOP_WORDS if lang != "zh"}
RULES["zh"] = ZH_RULES


def rules_for(language: str) -> LanguageRules:
    return RULES.get(language, DEFAULT_RULES)


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, their characters): Gopher's find_duplicates."""
    seen: set[str] = set()
    count = chars = 0
    for part in parts:
        if part in seen:
            count += 1
            chars += len(part)
        else:
            seen.add(part)
    return count, chars


class _Runs:
    """Hashes of a document's runs of n tokens (shingle_hashes(hashes, n, mix=False)) for the n the rules ask, each
    built from two shorter ones already at hand: h(i, a + b) = h(i, a) * P**b + h(i + a, b). The rules ask for
    up to nine lengths per document, and building each from the tokens would take n array passes."""

    __slots__ = ("by_n", "size")

    def __init__(self, hashes: np.ndarray):
        self.by_n = {1: hashes}
        self.size = hashes.shape[0]

    def get(self, n: int) -> np.ndarray:
        runs = self.by_n.get(n)
        if runs is None:
            m = max(k for k in self.by_n if k < n)
            rest = self.get(n - m)
            count = self.size - n + 1
            runs = self.by_n[m][:count] * _POWERS[n - m] + rest[m : m + count]
            self.by_n[n] = runs
        return runs


# P**k modulo 2**64, P the multiplier of text.shingle_hashes.
_POWERS = [np.uint64(pow(int(SHINGLE_MULTIPLIER), k, 1 << 64)) for k in range(64)]


def _top_ngram_chars(tokens: Tokens, runs: _Runs, n: int, spaced: bool) -> int:
    """Characters of the most frequent n-gram times its count (0 when no n-gram repeats)."""
    count = len(tokens) - n + 1
    if count <= 1:
        return 0
    sh = runs.get(n)
    ordered = np.sort(sh)
    edges = np.flatnonzero(ordered[1:] != ordered[:-1])
    if edges.shape[0] == count - 1:
        return 0
    bounds = np.concatenate(([-1], edges, [count - 1]))
    lengths = bounds[1:] - bounds[:-1]
    top = int(np.argmax(lengths))
    first = int(np.argmax(sh == ordered[bounds[top] + 1]))
    width = int(tokens.lengths[first : first + n].sum()) + ((n - 1) if spaced else 0)
    return width * int(lengths[top])


def _repeated_ngram_chars(tokens: Tokens, runs: _Runs, n: int) -> int:
    """Characters covered by n-grams that repeat an earlier one."""
    count = len(tokens) - n + 1
    if count <= 1:
        return 0
    sh = runs.get(n)
    order = np.argsort(sh, kind="stable")
    ordered = sh[order]
    later = ordered[1:] == ordered[:-1]
    if not later.any():
        return 0
    starts = order[1:][later]
    size = len(tokens) + 1
    cover = np.bincount(starts, minlength=size) - np.bincount(starts + n, minlength=size)
    covered = np.cumsum(cover[:-1]) > 0
    return int(tokens.lengths[covered].sum())


def check(text: str, language: str, tokens: Tokens, families: tuple[str, ...] = FAMILIES) -> str | None:
    """The first rule `text` fails ("gopher:stop_words", "c4:lorem_ipsum", ...), or None when it passes all.
    `tokens` are the lower-cased text's tokens; `language` picks the settings (RULES)."""
    r = rules_for(language)
    if "gopher" in families:
        failed = _gopher_repetition(text, tokens, r, spaced=language != "zh") or _gopher_quality(text, tokens, r)
        if failed:
            return failed
    if "c4" in families:
        failed = _c4(text, r)
        if failed:
            return failed
    if "fineweb" in families:
        return _fineweb(text, tokens, r)
    return None


def _gopher_repetition(text: str, tokens: Tokens, r: LanguageRules, spaced: bool) -> str | None:
    length = len(text)
    if not length:
        return "gopher:empty"
    if "\n" in text:
        paragraphs = _PARAGRAPHS.split(text)
        dup, chars = _duplicates(paragraphs)
        if dup / len(paragraphs) > r.dup_para_frac:
            return "gopher:dup_paragraphs"
        if chars / length > r.dup_para_char_frac:
            return "gopher:dup_paragraph_chars"
        lines = _LINES.split(text)
        dup, chars = _duplicates(lines)
        if dup / len(lines) > r.dup_line_frac:
            return "gopher:dup_lines"
        if chars / length > r.dup_line_char_frac:
            return "gopher:dup_line_chars"
    runs = _Runs(tokens.hashes)
    for n, frac in r.top_ngrams:
        top = _top_ngram_chars(tokens, runs, n, spaced)
        if top / length > frac:
            return "gopher:top_ngram"
        if top == 0:
            break  # no n-gram repeats, so no longer one does
    # A repeated n-gram holds repeated shorter ones, so the shortest n bounds every longer one: when it stays
    # under the smallest threshold, the longer n need no look.
    floor = min(frac for _, frac in r.dup_ngrams)
    for i, (n, frac) in enumerate(r.dup_ngrams):
        repeated = _repeated_ngram_chars(tokens, runs, n) / length
        if repeated > frac:
            return "gopher:dup_ngrams"
        if i == 0 and repeated <= floor:
            break
    return None


def _gopher_quality(text: str, tokens: Tokens, r: LanguageRules) -> str | None:
    words = len(tokens)
    if words < r.min_words:
        return "gopher:too_few_words"
    if words > r.max_words:
        return "gopher:too_many_words"
    if r.min_avg_word is not None and r.max_avg_word is not None:
        mean = float(tokens.lengths.mean())
        if not r.min_avg_word <= mean <= r.max_avg_word:
            return "gopher:word_length"
    if (text.count("#") + text.count("...") + text.count("…")) / words > r.max_symbol_ratio:
        return "gopher:symbols"
    lines = text.split("\n")
    if len(lines) > 1:
        bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-", "*")))
        if bullets / len(lines) > r.max_bullet_lines:
            return "gopher:bullet_lines"
        ellipsis = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
        if ellipsis / len(lines) > r.max_ellipsis_lines:
            return "gopher:ellipsis_lines"
    if np.count_nonzero(tokens.numeric) / words > 1 - r.min_alpha_words:
        return "gopher:alpha_words"
    if r.stop_hashes and len(r.stop_hashes.intersection(tokens.hashes.tolist())) < r.min_stop_words:
        return "gopher:stop_words"
    return None


def _c4(text: str, r: LanguageRules) -> str | None:
    lower = text.lower()
    if "lorem ipsum" in lower:
        return "c4:lorem_ipsum"
    if "{" in text:
        return "c4:curly_bracket"
    # Only whether there are enough matters: stop at the threshold instead of listing every sentence end.
    if sum(1 for _ in islice(_SENTENCE_END.finditer(text), r.c4_min_sentences)) < r.c4_min_sentences:
        return "c4:too_few_sentences"
    return None


def _fineweb(text: str, tokens: Tokens, r: LanguageRules) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "fineweb:empty"
    if sum(1 for line in lines if line.endswith(TERMINAL)) / len(lines) < r.fineweb_line_punct:
        return "fineweb:line_punctuation"
    if sum(1 for line in lines if len(line) <= r.fineweb_short_line) / len(lines) > r.fineweb_short_lines:
        return "fineweb:short_lines"
    if len(lines) > 1:
        _, chars = _duplicates(lines)
        if chars / max(1, len(text) - text.count("\n")) > r.fineweb_char_dup:
            return "fineweb:duplicate_lines"
    if text.count("\n") / max(1, len(tokens)) > r.fineweb_list_ratio:
        return "fineweb:list_ratio"
    return None
