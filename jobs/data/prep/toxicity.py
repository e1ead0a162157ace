"""Toxicity word lists per language (jobs/assets/prep/wordlists/<language>.tsv): term, dimension.

Terms are matched as whole runs of tokens (words; single characters in Chinese, so a Chinese term matches anywhere
in the text) through their hashes: a set lookup per term length, no scan of the text. Every language's list
applies to every document: a source tagged English can still hold a French insult.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.data.prep.settings import LANGUAGE_TAGS
from jobs.data.prep.text import SHINGLE_MULTIPLIER, Tokens, codepoints, shingle_hashes, tokenize

WORDLISTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "prep" / "wordlists"


def load_wordlist(language: str) -> dict[str, str]:
    """term -> dimension (insult, profanity, threat) from WORDLISTS_DIR/<language>.tsv; lines starting with #
    are comments."""
    path = WORDLISTS_DIR / f"{language}.tsv"
    if not path.is_file():
        return {}
    terms = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            term, _, dimension = line.partition("\t")
            terms[term.strip().lower()] = dimension.strip() or "insult"
    return terms


class WordLists:
    def __init__(self, languages: tuple[str, ...] = LANGUAGE_TAGS):
        self.dimension: dict[str, str] = {}
        # Every term as the hash of its run of tokens (a Han character is a token), grouped by run length: a
        # document holds the term when one of its runs of that many tokens has the same hash.
        self._terms: dict[int, dict[int, str]] = {}
        firsts: list[int] = []
        for language in languages:
            for term, dimension in load_wordlist(language).items():
                hashes = tokenize(codepoints(term)).hashes
                if not hashes.shape[0]:
                    continue
                self.dimension[term] = dimension
                key = int(shingle_hashes(hashes, hashes.shape[0], mix=False)[0])
                self._terms.setdefault(hashes.shape[0], {})[key] = term
                firsts.append(int(hashes[0]))
        # First tokens of all terms, sorted: most documents hold none, and need no look at longer runs.
        self._firsts = np.unique(np.array(firsts, dtype=np.uint64))

    def find(self, text: str, tokens: Tokens) -> tuple[str, str] | None:
        """(term, dimension) of a listed term in the document whose lower-cased text has `tokens`, else None."""
        hashes = tokens.hashes
        if not self._firsts.shape[0] or not hashes.shape[0]:
            return None
        at = np.minimum(np.searchsorted(self._firsts, hashes), self._firsts.shape[0] - 1)
        starts = np.flatnonzero(self._firsts[at] == hashes)
        if not starts.shape[0]:
            return None
        # Only runs that begin with a term's first token can be a term: their hashes (shingle_hashes' polynomial,
        # computed at those few starts only).
        for n, terms in self._terms.items():
            fit = starts[starts + n <= hashes.shape[0]]
            if not fit.shape[0]:
                continue
            runs = hashes[fit]
            for k in range(1, n):
                runs = runs * SHINGLE_MULTIPLIER + hashes[fit + k]
            hit = terms.keys() & set(runs.tolist())
            if hit:
                term = terms[min(hit)]
                return term, self.dimension[term]
        return None
