"""The prep job's parts on their own: normalisation, quality rules per language, SimHash, word lists, the shipped
classifiers (reproducible from their sample) and the settings validator."""

from __future__ import annotations

import subprocess
import sys
from random import Random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.data.prep import rules, samples
from jobs.data.prep import settings as prep_settings
from jobs.data.prep.classify import MODELS_DIR, Classifiers, LinearModel
from jobs.data.prep.simhash import SimHashConfig, clusters, fingerprint, near_pairs
from jobs.data.prep.text import codepoints, normalise, tokenize
from jobs.data.prep.tokens import mix_budgets, scaled_vocab
from jobs.data.prep.toxicity import WordLists
from tests.jobs.conftest import REPO


def toks(text: str):
    return tokenize(codepoints(text.lower()))


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_normalise_is_idempotent_and_leaves_no_control_or_doubled_space(text):
    once = normalise(text)
    assert normalise(once) == once
    assert "  " not in once and "\n\n\n" not in once and "\t" not in once
    assert once == once.strip()


def test_normalise_folds_full_width_forms_and_whitespace():
    assert normalise("ＡＢＣ，１２３\u3000 x\t\ty \n\n\n\nz\u200b") == "ABC,123 x y\n\nz"


def test_tokens_are_words_and_single_han_characters():
    t = toks("Hello, world 42 你好!")
    assert t.lengths.tolist() == [5, 5, 2, 1, 1]
    assert t.numeric.tolist() == [False, False, True, False, False]
    assert t.cjk == 2
    assert np.array_equal(toks("HELLO").hashes, toks("hello").hashes)


@pytest.mark.parametrize("language", samples.LANGUAGES)
def test_clean_generated_text_passes_the_rules_in_every_language(language):
    rng = Random(language)
    failed = [rules.check(d, language, toks(d)) for d in (normalise(samples.clean_document(language, rng))
                                                          for _ in range(60))]  # fmt: skip
    assert sum(f is not None for f in failed) <= 1, failed


@pytest.mark.parametrize(
    ("kind", "family", "expected"),
    [
        ("lorem", ("c4",), "c4:lorem_ipsum"),
        ("code", ("c4",), "c4:curly_bracket"),
        ("repeated", ("gopher",), "gopher:top_ngram"),
        ("short", ("gopher",), "gopher:too_few_words"),
        ("boilerplate", ("gopher",), "gopher:dup_lines"),
        ("garbage", ("gopher",), "gopher:stop_words"),
        ("boilerplate", ("fineweb",), "fineweb:line_punctuation"),
    ],
)
def test_junk_fails_the_rule_made_for_it(kind, family, expected):
    rng = Random(kind)
    for language in ("en", "zh"):
        doc = normalise(samples.junk_document(kind, language, rng))
        if kind == "garbage" and language == "zh":
            continue  # garbage is ASCII whatever the source
        assert rules.check(doc, language, toks(doc), family) == expected, (language, doc[:80])


def test_chinese_uses_characters_as_words():
    doc = normalise(samples.clean_document("zh", Random(1), 300, 400))
    assert rules.check(doc, "zh", toks(doc)) is None
    # Under English settings the same text has no English stop words.
    assert rules.check(doc, "en", toks(doc), ("gopher",)) in ("gopher:stop_words", "gopher:word_length")


def test_simhash_finds_edited_copies_and_not_unrelated_documents():
    rng = Random(2)
    config = SimHashConfig()
    originals = [normalise(samples.clean_document(("zh", "en", "fr")[i % 3], rng)) for i in range(300)]
    copies = [samples.near_duplicate(d, ("zh", "en", "fr")[i % 3], rng.randint(1, 4), rng)
              for i, d in enumerate(originals[:60])]  # fmt: skip
    prints = np.stack([fingerprint(toks(d).hashes, config) for d in originals + copies])
    assert prints.shape == (360, 2)
    left, right, dist = near_pairs(prints, config)
    assert (dist <= config.max_distance).all()
    rep = clusters(360, left, right)
    found = {i for i in range(300, 360) if rep[i] == i - 300}
    assert len(found) >= 57, f"{len(found)} of 60 copies found"
    assert (rep[:300] == np.arange(300)).all(), "an unrelated original was taken for a duplicate"


def test_word_lists_match_whole_words_and_chinese_terms():
    lists = WordLists()
    assert lists.find("You are an idiot.", toks("You are an idiot.")) == ("idiot", "insult")
    assert lists.find("Idiotic weather.", toks("Idiotic weather.")) is None
    assert lists.find("我要弄死你", toks("我要弄死你")) == ("弄死你", "threat")
    assert lists.find("Я тебя убью.", toks("Я тебя убью.")) == ("я тебя убью", "threat")


def test_shipped_classifiers_score_held_out_generated_text():
    models = Classifiers(*(LinearModel.load(MODELS_DIR / f"{n}.npz") for n in ("language", "quality", "toxicity")))
    rng = Random(99)

    def score(text):
        cps = codepoints(normalise(text).lower())
        return models.score(cps, np.isin(cps, [ord(c) for c in ".!?。！？\n"]))

    for language in samples.LANGUAGES:
        for _ in range(10):
            s = score(samples.clean_document(language, rng))
            assert models.language.labels[int(np.argmax(s.language))] == language
            assert s.quality > 0.75 and s.toxicity < 0.8
    for kind in ("spam", "seo", "garbage", "boilerplate"):
        assert score(samples.junk_document(kind, "en", rng)).quality < 0.25, kind
    for language in samples.LANGUAGES:
        doc = samples.with_line(samples.clean_document(language, rng), samples.toxic_line(language, rng, listed=False),
                                language, rng)  # fmt: skip
        assert score(doc).toxicity > 0.8, language


def test_classifiers_are_reproducible_from_their_shipped_sample():
    proc = subprocess.run([sys.executable, "-m", "jobs.data.prep", "classifiers", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "classifiers are up to date" in proc.stdout


def test_a_model_file_of_another_format_is_refused(tmp_path):
    bad = tmp_path / "model.npz"
    np.savez(bad, weights=np.zeros(3))
    with pytest.raises(ValueError, match="model.npz"):
        LinearModel.load(bad)


def test_settings_fill_defaults_and_name_each_bad_field():
    clean = prep_settings.validate({"dedup": {"simhash": {"max_distance": 10}}})
    assert clean["dedup"]["simhash"] == {"bits": 128, "shingle": 3, "max_distance": 10}
    assert clean["tokenizer"]["vocab_size"] == 128_000 and clean["tokenizer"]["character_coverage"] == 0.9999
    with pytest.raises(prep_settings.SettingsInvalid) as err:
        prep_settings.validate({"quality": {"min_level": 7}, "dedup": {"near": "lsh"},
                                "tokenizer": {"mode": "reuse"}, "colour": {}})  # fmt: skip
    assert set(err.value.errors) == {"quality.min_level", "dedup.near", "tokenizer.path", "colour"}
    assert "from 1 to 5" in err.value.errors["quality.min_level"]


def test_vocabulary_scales_to_the_data_and_mix_budgets_follow_the_weights():
    assert scaled_vocab(128_000, 10_000_000_000) == 128_000
    assert scaled_vocab(128_000, 700_000) == 4096
    assert scaled_vocab(128_000, 1000) == 512
    budgets = mix_budgets({"zh": 1000, "en": 400, "other": 1000}, {"zh": 45, "en": 35, "other": 20}, "trim")
    assert budgets["en"] == 400 and budgets["zh"] == int(400 / 0.35 * 0.45) and budgets["other"] <= 1000
    assert mix_budgets({"a": 5, "b": 9}, {"a": 1, "b": 1}, "keep_all") == {"a": 5, "b": 9}


def _read(source):
    from jobs.data.prep.readers import SourceReader

    return [(d.text, d.id, d.metadata["order"]) for d in SourceReader(source).run(rank=0, world_size=1)]


def test_sources_are_read_from_jsonl_text_parquet_and_fsspec_urls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.data.prep.spec import SourceSpec

    (tmp_path / "a.jsonl").write_text('{"body": "one"}\n\n{"body": "two", "extra": 1}\n')
    (tmp_path / "b.txt").write_text("first line\n\nsecond line\n")
    pq.write_table(pa.table({"content": ["x", None, "y"]}), tmp_path / "c.parquet")
    jsonl = SourceSpec(name="j", language="en", format="jsonl", path=str(tmp_path / "*.jsonl"), text_field="body")
    assert _read(jsonl) == [("one", "a.jsonl:1", [0, 0, 1]), ("two", "a.jsonl:3", [0, 0, 3])]
    text = SourceSpec(name="t", language="en", format="text", path=str(tmp_path / "b.txt"))
    assert [t for t, _, _ in _read(text)] == ["first line", "second line"]
    parquet = SourceSpec(name="p", language="en", format="parquet", path=str(tmp_path / "c.parquet"),
                         text_field="content")  # fmt: skip
    assert [(t, i) for t, i, _ in _read(parquet)] == [("x", "c.parquet:1"), ("y", "c.parquet:3")]
    url = SourceSpec(name="u", language="en", format="jsonl", path=f"file://{tmp_path}/*.jsonl", text_field="body")
    assert [t for t, _, _ in _read(url)] == ["one", "two"]


def test_a_source_shared_by_more_tasks_than_files_is_split_by_line(tmp_path):
    from jobs.data.prep.readers import SourceReader
    from jobs.data.prep.spec import SourceSpec

    (tmp_path / "one.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    spec = SourceSpec(name="s", language="en", format="text", path=str(tmp_path / "one.txt"))
    parts = [[d.text for d in SourceReader(spec).run(rank=r, world_size=3)] for r in range(3)]
    assert parts[0] == ["line 0", "line 3", "line 6", "line 9"] and parts[1] == ["line 1", "line 4", "line 7"]
    assert sorted(sum(parts, [])) == sorted(f"line {i}" for i in range(10))


@pytest.mark.parametrize(
    ("content", "fmt", "says"),
    [
        (b'{"text": "ok"}\n[1, 2]\n', "jsonl", "line 2: not a JSON object"),
        (b'{"text": "ok"}\n{"txt": "x"}\n', "jsonl", "line 2: the text field 'text' is missing, not a string"),
        (b"fine\n\xff\xfe broken\n", "text", "line 2: not UTF-8"),
        (b"not parquet at all", "parquet", "not a readable Parquet file"),
    ],
)
def test_a_malformed_file_is_named_with_its_line(tmp_path, content, fmt, says):
    from jobs.data.prep.readers import MalformedSource
    from jobs.data.prep.spec import SourceSpec

    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(content)
    with pytest.raises(MalformedSource, match=says) as err:
        _read(SourceSpec(name="bad", language="en", format=fmt, path=str(path)))
    assert err.value.path == str(path)
