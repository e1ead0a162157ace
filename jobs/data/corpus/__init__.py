"""Deterministic generator of the bundled sample corpus: one paragraph (document) per line.

The text is produced from templates and word lists written for this project, so the corpus carries no third-party
text. Each language module holds only its word lists and sentence templates, on one base (``base.Paragraph``): a
paragraph's person and topic, and the weighted draw of its sentences. `random.Random` with an integer seed gives
the same stream on every CPython 3 version, which keeps the regenerated assets byte-identical.
"""

from random import Random

from . import de, en, es, fr, it, ru, zh

SOURCES = ("zh", "en", "other")
# The "other" source mixes several languages, a paragraph at a time.
OTHER_LANGUAGES = ((fr, 25), (de, 25), (es, 22), (it, 18), (ru, 10))
_SOURCE_SEEDS = {"zh": 101, "en": 202, "other": 303}


def generate(source: str, target_bytes: int, seed: int = 0) -> list[str]:
    """Paragraphs of `source` until their UTF-8 size (with newlines) reaches `target_bytes`."""
    if source not in _SOURCE_SEEDS:
        raise ValueError(f"unknown corpus source {source!r}; known: {', '.join(SOURCES)}")
    rng = Random(_SOURCE_SEEDS[source] * 1_000_003 + seed)
    modules = [m for m, _ in OTHER_LANGUAGES]
    weights = [w for _, w in OTHER_LANGUAGES]
    lines, size = [], 0
    while size < target_bytes:
        if source == "zh":
            line = zh.paragraph(rng)
        elif source == "en":
            line = en.paragraph(rng)
        else:
            line = rng.choices(modules, weights)[0].paragraph(rng)
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    return lines
