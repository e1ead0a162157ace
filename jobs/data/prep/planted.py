"""A generated corpus with planted exact duplicates, near duplicates (edits of known size), junk, toxic lines and
documents in the wrong language, each labelled with what it is: what the tests and bench/data_prep.py check the
prep job against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from random import Random

from jobs.data.prep import samples

MIX = (("zh", 45), ("en", 35), ("other", 20))
RATES = {"exact": 0.05, "near": 0.05, "junk": 0.05, "toxic": 0.03, "wrong_language": 0.01}


@dataclass(frozen=True)
class Planted:
    source: str
    language: str
    text: str
    kind: str  # clean, exact, near, junk:<kind>, toxic:words, toxic:threat, wrong_language
    of: int | None = None  # for exact and near: the index of the document copied
    edits: int = 0


def corpus(n_docs: int, seed: int = 0, rates: dict[str, float] | None = None,
           mix: tuple[tuple[str, int], ...] = MIX) -> list[Planted]:  # fmt: skip
    """`n_docs` documents; the first few of each source are always clean, so copies have originals to copy."""
    rates = {**RATES, **(rates or {})}
    rng = Random(seed)
    docs: list[Planted] = []
    clean_of: dict[str, list[int]] = {name: [] for name, _ in mix}
    names, weights = [m[0] for m in mix], [m[1] for m in mix]
    kinds = list(rates)
    for _ in range(n_docs):
        source = rng.choices(names, weights)[0]
        language = samples.other_language(rng) if source == "other" else source
        roll, kind = rng.random(), "clean"
        for k in kinds:
            if roll < rates[k]:
                kind = k
                break
            roll -= rates[k]
        if kind in ("exact", "near") and len(clean_of[source]) < 3:
            kind = "clean"
        if kind == "clean":
            clean_of[source].append(len(docs))
            docs.append(Planted(source, language, samples.clean_document(language, rng), "clean"))
        elif kind == "exact":
            i = rng.choice(clean_of[source])
            original = docs[i]
            docs.append(Planted(source, original.language, original.text, "exact", of=i))
        elif kind == "near":
            i = rng.choice(clean_of[source])
            original = docs[i]
            # 1-5 edits of a word, or 2-10 of a character in Chinese (a character is about half a word).
            edits = rng.randint(1, 5) * (2 if original.language == "zh" else 1)
            text = samples.near_duplicate(original.text, original.language, edits, rng)
            docs.append(Planted(source, original.language, text, "near", of=i, edits=edits))
        elif kind == "junk":
            junk = rng.choice(samples.JUNK_KINDS)
            docs.append(Planted(source, language, samples.junk_document(junk, language, rng), f"junk:{junk}"))
        elif kind == "toxic":
            listed = rng.random() < 0.5
            line = samples.toxic_line(language, rng, listed=listed)
            text = samples.with_line(samples.clean_document(language, rng), line, language, rng)
            docs.append(Planted(source, language, text, "toxic:words" if listed else "toxic:threat"))
        else:
            wrong = "en" if language == "zh" else "zh"
            docs.append(Planted(source, wrong, samples.clean_document(wrong, rng), "wrong_language"))
    return docs


def write(docs: list[Planted], folder: Path, formats: dict[str, str] | None = None) -> dict[str, Path]:
    """One file per source: JSONL ({"text": ...}) by default, or plain text (a document a line, newlines in
    a document made spaces) where `formats` says "text". Returns the path of each source's file."""
    formats = formats or {}
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    handles = {}
    try:
        for doc in docs:
            if doc.source not in handles:
                fmt = formats.get(doc.source, "jsonl")
                paths[doc.source] = folder / f"{doc.source}.{'txt' if fmt == 'text' else 'jsonl'}"
                handles[doc.source] = (paths[doc.source].open("w", encoding="utf-8"), fmt)
            fh, fmt = handles[doc.source]
            if fmt == "text":
                fh.write(doc.text.replace("\n", " ") + "\n")
            else:
                fh.write(json.dumps({"text": doc.text}, ensure_ascii=False) + "\n")
    finally:
        for fh, _ in handles.values():
            fh.close()
    return paths
