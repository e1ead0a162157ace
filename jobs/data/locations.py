"""Where the bundled assets live and how run.json's `data` section picks shards and tokenizer."""

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def default_tokenizer_path() -> str:
    return str(ASSETS_DIR / "tokenizer.model")


def default_shards_dir() -> str:
    return str(ASSETS_DIR / "shards")


def default_corpus_dir() -> str:
    return str(ASSETS_DIR / "corpus")


def resolve_shards_dir(cfg: dict) -> str:
    """`data.shards_dir`, or the bundled shards when it is null or absent."""
    path = (cfg.get("data") or {}).get("shards_dir")
    return os.path.abspath(path) if path else default_shards_dir()


def resolve_tokenizer_path(cfg: dict) -> str:
    """`data.tokenizer`, or the bundled tokenizer when it is null or absent."""
    path = (cfg.get("data") or {}).get("tokenizer")
    return os.path.abspath(path) if path else default_tokenizer_path()
