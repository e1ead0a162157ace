"""A recipe's preparation settings: defaults, and the one validator the control plane and the job both use.

Imports nothing but the standard library, so `runs/` validates a recipe form with the same rules the job applies
(docs/run-config.md, "Data preparation").
"""

from __future__ import annotations

import copy
from typing import Any

LANGUAGE_TAGS = ("zh", "en", "fr", "de", "es", "it", "ru")
# A source tagged "other" must be in neither Chinese nor English; "mul" (or an unknown tag) is not checked.
UNCHECKED_TAGS = ("mul", "")
NEAR_METHODS = ("simhash", "minhash", "none")
QUALITY_FAMILIES = ("gopher", "c4", "fineweb")
TOKENIZER_MODES = ("train", "reuse")
MIX_MODES = ("trim", "keep_all")

DEFAULTS: dict[str, Any] = {
    "language": {"check": True, "min_confidence": 0.5},
    "dedup": {
        "exact": True,
        "near": "simhash",
        "simhash": {"bits": 128, "shingle": 3, "max_distance": 19},
        # 30 bands of 8 hashes: the LSH S-curve 1 - (1 - s**8)**30 finds half the pairs at Jaccard 0.62 and 98 % at
        # 0.77 (datatrove's 14 x 8: 0.69 and 84 %). On bench/data_prep.py's corpus (copies with 1-5 words edited)
        # 10 % of the near copies are below Jaccard 0.76 in 5-word shingles; shorter shingles raise that, but
        # unrelated documents share more of them: 3-word ones cut precision to ~0.7 at any banding.
        "minhash": {"ngrams": 5, "buckets": 30, "hashes_per_bucket": 8},
    },
    "quality": {"rules": list(QUALITY_FAMILIES), "min_level": 3, "model": None},
    "toxicity": {"word_lists": True, "max_score": 0.8, "model": None},
    "tokenizer": {
        "mode": "train",
        "vocab_size": 128_000,
        "character_coverage": 0.9999,
        "input_sentence_size": 10_000_000,
        "path": None,
    },
    "mix": {"mode": "trim"},
}

# Five quality levels: 1 fails a rule; 2-5 pass every rule, by the classifier's score (below 0.25, 0.5, 0.75).
QUALITY_LEVELS = {
    1: "fails a Gopher/C4/FineWeb rule",
    2: "passes the rules, classifier score below 0.25",
    3: "classifier score 0.25 to 0.5",
    4: "classifier score 0.5 to 0.75",
    5: "classifier score 0.75 or more",
}


class SettingsInvalid(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def quality_level(rule_failed: bool, score: float) -> int:
    if rule_failed:
        return 1
    return 2 + min(3, int(score * 4))


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(raw: dict | None) -> dict:
    """The complete settings: `raw` over the defaults, checked. Raises SettingsInvalid naming each bad field
    ("dedup.simhash.max_distance", ...) with what to enter instead."""
    raw = raw or {}
    errors: dict[str, str] = {}
    if not isinstance(raw, dict):
        raise SettingsInvalid({"settings": "must be an object of sections (language, dedup, quality, ...)"})
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        errors[unknown[0]] = f"unknown section; use {', '.join(DEFAULTS)}"
    s = _merge(DEFAULTS, {k: v for k, v in raw.items() if k in DEFAULTS and isinstance(v, dict)})

    def number(path: str, lo: float, hi: float, *, integer: bool = False) -> None:
        section, *rest = path.split(".")
        value: Any = s[section]
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if integer:
            ok = ok and float(value).is_integer()
        if not ok or not lo <= value <= hi:
            kind = "a whole number" if integer else "a number"
            errors[path] = f"must be {kind} from {lo:g} to {hi:g}, not {value!r}"

    def choice(path: str, options: tuple[str, ...]) -> None:
        section, *rest = path.split(".")
        value: Any = s[section]
        for part in rest:
            value = value.get(part) if isinstance(value, dict) else None
        if value not in options:
            errors[path] = f"must be one of {', '.join(options)}, not {value!r}"

    def flag(path: str) -> None:
        section, key = path.split(".")
        if not isinstance(s[section].get(key), bool):
            errors[path] = f"must be true or false, not {s[section].get(key)!r}"

    def optional_path(path: str) -> None:
        section, key = path.split(".")
        value = s[section].get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            errors[path] = "must be a file path, or empty to use the shipped model"

    flag("language.check")
    number("language.min_confidence", 0.0, 1.0)
    flag("dedup.exact")
    choice("dedup.near", NEAR_METHODS)
    number("dedup.simhash.bits", 64, 256, integer=True)
    if "dedup.simhash.bits" not in errors and s["dedup"]["simhash"]["bits"] % 64:
        errors["dedup.simhash.bits"] = "must be 64, 128, 192 or 256"
    number("dedup.simhash.shingle", 1, 8, integer=True)
    if "dedup.simhash.bits" not in errors:
        number("dedup.simhash.max_distance", 0, s["dedup"]["simhash"]["bits"] // 3, integer=True)
    number("dedup.minhash.ngrams", 1, 10, integer=True)
    number("dedup.minhash.buckets", 1, 64, integer=True)
    number("dedup.minhash.hashes_per_bucket", 1, 32, integer=True)
    rules = s["quality"].get("rules")
    if not isinstance(rules, list) or any(r not in QUALITY_FAMILIES for r in rules):
        errors["quality.rules"] = f"must be a list drawn from {', '.join(QUALITY_FAMILIES)}, not {rules!r}"
    number("quality.min_level", 1, 5, integer=True)
    optional_path("quality.model")
    flag("toxicity.word_lists")
    number("toxicity.max_score", 0.0, 1.0)
    optional_path("toxicity.model")
    choice("tokenizer.mode", TOKENIZER_MODES)
    number("tokenizer.vocab_size", 512, 1_000_000, integer=True)
    number("tokenizer.character_coverage", 0.9, 1.0)
    number("tokenizer.input_sentence_size", 1000, 1_000_000_000, integer=True)
    if s["tokenizer"]["mode"] == "reuse":
        path = s["tokenizer"].get("path")
        if not isinstance(path, str) or not path.strip():
            errors["tokenizer.path"] = "reusing a tokenizer needs the path of its SentencePiece .model file"
    choice("mix.mode", MIX_MODES)
    if errors:
        raise SettingsInvalid(errors)
    for key in ("bits", "shingle", "max_distance"):
        s["dedup"]["simhash"][key] = int(s["dedup"]["simhash"][key])
    return s
