"""SentencePiece tokenizer: location of the bundled model, loading, and deterministic training."""

import hashlib
import io
import os
from collections.abc import Iterable

import sentencepiece as spm

from .locations import default_tokenizer_path

# The guide's spm_train flags (BPE, character_coverage 0.9999) at a vocabulary the tiny models can use.
# byte_fallback makes any text encodable; identity normalisation keeps decode(encode(text)) == text for
# Chinese punctuation that NFKC would fold into ASCII; one thread and no sampling keep training reproducible.
TRAINER_OPTIONS = {
    "model_type": "bpe",
    "vocab_size": 4096,
    "character_coverage": 0.9999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "identity",
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "num_threads": 1,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
}


def load_tokenizer(path: str | None = None) -> spm.SentencePieceProcessor:
    path = path or default_tokenizer_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer model not found: {path}")
    return spm.SentencePieceProcessor(model_file=path)


def train_tokenizer(lines: Iterable[str], **overrides) -> bytes:
    """Train on `lines` (one sentence each) and return the serialized model."""
    options = {**TRAINER_OPTIONS, **overrides}
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer, **options)
    return buffer.getvalue()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
