"""Streaming text never shows U+FFFD for a character split over byte-fallback pieces."""

from pathlib import Path

from jobs.engine.text import Detokenizer, SentencePieceTokenizer

TOKENIZER = Path(__file__).resolve().parents[3] / "jobs" / "assets" / "tokenizer.model"


def _stream(tok, ids):
    detok = Detokenizer(tokenizer=tok, prompt_ids=[])
    deltas = [detok.add(i)[0] for i in ids]
    return deltas, "".join(deltas) + detok.flush()


def test_a_character_split_over_byte_pieces_is_sent_whole_once_complete():
    tok = SentencePieceTokenizer(path=TOKENIZER)
    text = "训练 emoji 🎉 和汉字鑫龘"
    ids = tok.encode(text)
    assert any(tok.sp.id_to_piece(i).startswith("<0x") for i in ids)
    deltas, out = _stream(tok, ids)
    assert out == text
    assert not any("\ufffd" in d for d in deltas)


def test_bytes_that_never_complete_a_character_are_dropped_not_shown_as_replacement_characters():
    tok = SentencePieceTokenizer(path=TOKENIZER)
    lead = [tok.sp.piece_to_id("<0xE5>"), tok.sp.piece_to_id("<0x92>")]  # two of a three-byte character
    ids = tok.encode("ab") + lead + tok.encode("cd")
    deltas, out = _stream(tok, ids)
    assert "\ufffd" not in out
    assert out.replace(" ", "") == "abcd"
