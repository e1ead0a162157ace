"""What every language's generator shares: a paragraph's state and how its sentences are drawn.

A language subclasses ``Paragraph`` with its word lists (``NAMES``, ``CATEGORIES``) and its sentence templates:
methods named in ``TEMPLATES`` with their weights, each returning one sentence. Every draw goes through the one
``Random`` in the order written here and in the templates, so the same seed gives the same text; reordering draws
changes the bundled corpus (``python -m jobs.data.build_assets --check`` tells).
"""

from __future__ import annotations

from random import Random
from typing import Any, ClassVar


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


class Paragraph:
    NAMES: ClassVar[list[tuple[str, str]]]  # (first name, the pronoun that stands for it)
    CATEGORIES: ClassVar[dict[str, dict[str, Any]]]  # topic -> its objects, adjectives and verbs
    TEMPLATES: ClassVar[list[tuple[str, int]]]  # (sentence method, weight)
    SENTENCES: ClassVar[tuple[int, int]] = (3, 7)  # sentences per paragraph, both ends included
    JOINER: ClassVar[str] = " "

    def __init__(self, rng: Random):
        self.rng = rng
        self.name, self.pronoun = rng.choice(self.NAMES)
        self.category = rng.choice(list(self.CATEGORIES))
        self.mentioned = False

    def pick(self, seq):
        return self.rng.choice(seq)

    def category_data(self) -> dict[str, Any]:
        # Paragraphs mostly stay on one topic so that they read as one text.
        cat = self.category if self.rng.random() < 0.7 else self.pick(list(self.CATEGORIES))
        return self.CATEGORIES[cat]

    @classmethod
    def generate(cls, rng: Random) -> str:
        """One paragraph: its person and topic, then a weighted draw of templates."""
        paragraph = cls(rng)
        names = [name for name, _ in cls.TEMPLATES]
        weights = [weight for _, weight in cls.TEMPLATES]
        count = rng.randint(*cls.SENTENCES)
        return cls.JOINER.join(getattr(paragraph, rng.choices(names, weights)[0])() for _ in range(count))
