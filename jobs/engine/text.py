"""Text in and out of the decode engine: the tokenizer of a model dir, and incremental detokenization with stops.

Model dirs made by ``jobs.export.quantize`` carry a sentencepiece ``tokenizer.model`` and no tokenizer config, so the
sentencepiece model is read directly (a dir without one falls back to transformers' ``AutoTokenizer``). Prompts are
encoded without BOS: the trainer's data has none (documents are separated by EOS only).

Streaming text has two traps, both handled by ``Detokenizer``:
- sentencepiece drops the leading space of the first piece it decodes, and a character split over byte-fallback
  pieces decodes to U+FFFD until its last byte arrives. So each new token is decoded inside a small window that
  starts a few tokens back (vLLM's prefix/read offsets) and held back while it ends in U+FFFD; bytes that never
  complete a character (the next piece is not a continuation byte) are dropped rather than shown as U+FFFD.
- a stop string may arrive over several tokens, so text that could be the start of a stop string is held back
  until it is known not to be one; when a stop string completes, the text before it is the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class SentencePieceTokenizer:
    def __init__(self, *, path: str | Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.vocab_size()
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: list[int]) -> str:
        # A model may have a larger vocabulary than its tokenizer (random-weight benchmark models); ids the
        # tokenizer does not know have no text.
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])


class HFTokenizer:
    def __init__(self, *, model_dir: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.vocab_size = len(self.tok)
        self.eos_id = self.tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        text = self.tok.decode([i for i in ids if 0 <= i < self.vocab_size], skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        return text


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    path = Path(model_dir) / "tokenizer.model"
    if path.exists():
        return SentencePieceTokenizer(path=path)
    return HFTokenizer(model_dir=model_dir)


_WINDOW = 5


class Detokenizer:
    """Turns a request's generated tokens into text deltas that are safe to send, and finds stop strings."""

    def __init__(self, *, tokenizer: Tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_WINDOW:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = tuple(s for s in stop if s)
        self.text = ""
        self.sent = 0

    def _decode_new(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            if self.prefix_offset > 4 * _WINDOW:  # keep the window short; offsets are relative to self.ids
                drop = self.prefix_offset
                self.ids = self.ids[drop:]
                self.prefix_offset -= drop
                self.read_offset -= drop
            # Byte-fallback pieces that never completed a character (the model moved on mid-sequence) decode to
            # U+FFFD: they carry no text, so they are dropped instead of shown as replacement characters.
            return full[len(prefix) :].replace("\ufffd", "")
        return ""

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append one generated token; returns (text that may be sent now, whether a stop string completed)."""
        before = len(self.text)
        self.text += self._decode_new(token_id)
        for_hit = -1
        for s in self.stop:
            at = self.text.find(s, max(0, before - len(s) + 1))
            if at >= 0 and (for_hit < 0 or at < for_hit):
                for_hit = at
        if for_hit >= 0:
            self.text = self.text[:for_hit]
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        """The text held back so far (called when the request ends for another reason than a stop string)."""
        return self._take(len(self.text))

    def _held_back(self) -> int:
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _take(self, end: int) -> str:
        end = max(end, self.sent)
        out = self.text[self.sent : end]
        self.sent = end
        return out
