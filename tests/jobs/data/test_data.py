import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from jobs.data import (
    MixedBatcher,
    ShardWriter,
    SourceShards,
    build_assets,
    corpus,
    curriculum_seq_len,
    default_shards_dir,
    default_tokenizer_path,
    dtype_for_vocab,
    load_tokenizer,
    read_manifest,
)
from jobs.data.locations import default_corpus_dir
from jobs.data.tokenizer import file_sha256

BASE_CFG = {
    "schema_version": 1,
    "model": {"vocab_size": 4096},
    "batch": {"global_batch_tokens": 2048, "micro_batch": 8, "grad_accum": 2, "seq_len": 64},
    "curriculum": [{"start_step": 0, "seq_len": 32}, {"start_step": 100, "seq_len": 64}],
    "data": {
        "recipe": {
            "name": "bilingual-demo",
            "version": 1,
            "sources": [{"name": "zh", "weight": 45.0}, {"name": "en", "weight": 35.0}, {"name": "other", "weight": 20.0}],
        },
        "shards_dir": None,
        "tokenizer": None,
    },
}  # fmt: skip


def bundled_cfg():
    return copy.deepcopy(BASE_CFG)


@pytest.fixture
def synthetic(tmp_path):
    """Three sources whose token ids are all distinct, so a window's first token identifies it."""
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"stand-in tokenizer: only its hash is compared")
    digest = file_sha256(tok)
    streams = {"a": np.arange(10, 20010), "b": np.arange(20010, 40010), "c": np.arange(40010, 60010)}
    for name, ids in streams.items():
        with ShardWriter(tmp_path / "shards" / name, name, 65536, digest, eos_id=1, shard_tokens=3000) as w:
            w.add_document(ids)
    cfg = bundled_cfg()
    cfg["model"]["vocab_size"] = 65536
    cfg["data"]["shards_dir"] = str(tmp_path / "shards")
    cfg["data"]["tokenizer"] = str(tok)
    cfg["data"]["recipe"]["sources"] = [
        {"name": "a", "weight": 5.0},
        {"name": "b", "weight": 3.0},
        {"name": "c", "weight": 2.0},
    ]
    return cfg


# Shard format


def test_shard_round_trip_across_shards(tmp_path):
    docs = [[5, 6, 7], [], [8] * 10, list(range(100, 140))]
    with ShardWriter(tmp_path / "src", "src", 4096, "abc123", eos_id=2, shard_tokens=7) as w:
        for d in docs:
            w.add_document(d)
    expected = np.concatenate([np.array(d + [2]) for d in docs])
    manifest = read_manifest(tmp_path / "src")
    assert manifest["dtype"] == "uint16" and manifest["byte_order"] == "little"
    assert manifest["documents"] == 4 and manifest["total_tokens"] == expected.size
    assert [s["tokens"] for s in manifest["shards"]] == [7] * 8 + [1]
    assert (tmp_path / "src" / "shard_00000.bin").read_bytes() == np.array(expected[:7], dtype="<u2").tobytes()

    shards = SourceShards(tmp_path / "src")
    shards.verify()
    assert shards.total_tokens == expected.size
    assert np.array_equal(shards.read(0, expected.size), expected)
    assert np.array_equal(shards.read(5, 20), expected[5:25])
    with pytest.raises(IndexError):
        shards.read(expected.size - 3, 4)


def test_large_vocab_uses_uint32(tmp_path):
    assert dtype_for_vocab(65536) == "uint16" and dtype_for_vocab(65537) == "uint32"
    with ShardWriter(tmp_path / "big", "big", 200_000, "h", eos_id=0) as w:
        w.add_document([70_000, 199_999])
    shards = SourceShards(tmp_path / "big")
    assert shards.manifest["dtype"] == "uint32"
    assert shards.read(0, 3).tolist() == [70_000, 199_999, 0]
    with pytest.raises(ValueError, match="token ids"):
        ShardWriter(tmp_path / "bad", "bad", 100, "h", eos_id=0).add_document([100])


def test_truncated_shard_is_refused(tmp_path):
    with ShardWriter(tmp_path / "s", "s", 4096, "h", eos_id=2, shard_tokens=4) as w:
        w.add_document(range(3, 12))
    path = tmp_path / "s" / "shard_00001.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="shard_00001.bin"):
        SourceShards(tmp_path / "s")


# Bundled assets


def test_bundled_tokenizer_and_shards_agree_with_corpus():
    sp = load_tokenizer()
    assert sp.vocab_size() == 4096
    assert load_tokenizer(default_tokenizer_path()).vocab_size() == 4096
    for text in ["模型训练需要很多数据。", "The engineer repaired the old pump.", "Grüße aus Köln 😀"]:
        assert sp.decode(sp.encode(text)) == text
    digest = file_sha256(default_tokenizer_path())
    for source in corpus.SOURCES:
        shards = SourceShards(Path(default_shards_dir()) / source)
        assert shards.tokenizer_sha256 == digest and shards.vocab_size == 4096
        first_line = (Path(default_corpus_dir()) / f"{source}.txt").read_text(encoding="utf-8").split("\n", 1)[0]
        ids = sp.encode(first_line)
        assert shards.read(0, len(ids) + 1).tolist() == ids + [sp.eos_id()]
    assert sum(f.stat().st_size for f in Path(default_shards_dir()).parent.rglob("*") if f.is_file()) < 5_000_000


def test_shipped_corpus_is_the_generators_output():
    for source in corpus.SOURCES:
        lines = corpus.generate(source, 20_000)
        assert lines == corpus.generate(source, 20_000)
        shipped = (Path(default_corpus_dir()) / f"{source}.txt").read_text(encoding="utf-8").split("\n")
        assert shipped[: len(lines)] == lines
    zh = "".join(corpus.generate("zh", 5_000))
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in zh) > 0.7 * len(zh)


def test_build_assets_regenerates_shipped_assets_byte_for_byte(tmp_path):
    build_assets.build(tmp_path)
    assert build_assets._differences(tmp_path, Path(default_tokenizer_path()).parent) == []


# MixedBatcher


def test_weighted_sampling_proportions_and_consumed_counts():
    b = MixedBatcher(bundled_cfg(), rank=0, world=1, seed=7)
    assert b.source_names == ["zh", "en", "other"]
    counts = np.zeros(3, dtype=np.int64)
    for step in range(100):
        tokens, source_ids = b.next_batch(step, 64, 16)
        assert tokens.shape == (64, 17) and tokens.dtype.is_floating_point is False
        assert int(tokens.max()) < 4096 and int(tokens.min()) >= 0
        counts += np.bincount(source_ids.numpy(), minlength=3)
    share = counts / counts.sum()
    assert np.allclose(share, [0.45, 0.35, 0.20], atol=0.03), share
    assert b.consumed_tokens() == {n: int(c) * 16 for n, c in zip(b.source_names, counts, strict=True)}


def test_windows_are_consecutive_slices_of_the_source_stream(synthetic):
    b = MixedBatcher(synthetic, rank=0, world=1, seed=3)
    last_end = {}
    for step in range(20):
        tokens, source_ids = b.next_batch(step, 8, 16)
        for row, src in zip(tokens.numpy(), source_ids.numpy(), strict=True):
            assert (row[0] - 10) // 20000 == src
            if src in last_end:
                assert row[0] == last_end[src]  # last target of one window is the next window's first input
            last_end[src] = row[-1]


def test_same_seed_same_batches_other_seed_other_batches():
    a = MixedBatcher(bundled_cfg(), rank=0, world=2, seed=11)
    b = MixedBatcher(bundled_cfg(), rank=0, world=2, seed=11)
    c = MixedBatcher(bundled_cfg(), rank=0, world=2, seed=12)
    for step in range(5):
        ta, sa = a.next_batch(step, 8, 32)
        tb, sb = b.next_batch(step, 8, 32)
        tc, _ = c.next_batch(step, 8, 32)
        assert ta.equal(tb) and sa.equal(sb)
    assert not ta.equal(tc)


def test_exact_resume_from_state_dict_of_any_rank(synthetic):
    ranks = [MixedBatcher(synthetic, rank=r, world=2, seed=5) for r in range(2)]
    for step in range(7):
        for _ in range(2):  # two draws per step, as with gradient accumulation
            for b in ranks:
                b.next_batch(step, 4, 16)
    state = json.loads(json.dumps(ranks[0].state_dict()))
    assert state == ranks[1].state_dict()
    ranks[1].next_batch(7, 4, 16)  # a draw inside step 7 before the checkpoint ...
    ranks[0].next_batch(7, 4, 16)
    state = ranks[0].state_dict()

    expected = {r: [ranks[r].next_batch(s, 4, n) for s, n in [(7, 16), (8, 32), (8, 32), (9, 32)]] for r in range(2)}
    for r in range(2):
        resumed = MixedBatcher(synthetic, rank=r, world=2, seed=5)
        resumed.load_state_dict(copy.deepcopy(state))
        got = [resumed.next_batch(s, 4, n) for s, n in [(7, 16), (8, 32), (8, 32), (9, 32)]]
        for (t1, s1), (t2, s2) in zip(expected[r], got, strict=True):
            assert t1.equal(t2) and s1.equal(s2)
        assert resumed.consumed_tokens() == ranks[r].consumed_tokens()

    with pytest.raises(ValueError, match="world"):
        MixedBatcher(synthetic, rank=0, world=3, seed=5).load_state_dict(state)


def test_ranks_draw_disjoint_windows_and_count_their_own_tokens(synthetic):
    ranks = [MixedBatcher(synthetic, rank=r, world=2, seed=9) for r in range(2)]
    firsts = [set(), set()]
    own = [np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)]
    for step in range(30):
        batches = [b.next_batch(step, 8, 16) for b in ranks]
        assert not batches[0][0].equal(batches[1][0])
        for r, (tokens, source_ids) in enumerate(batches):
            firsts[r].update(tokens[:, 0].tolist())
            own[r] += np.bincount(source_ids.numpy(), minlength=3)
    assert len(firsts[0]) == len(firsts[1]) == 240
    assert not firsts[0] & firsts[1]
    for r in range(2):
        assert ranks[r].consumed_tokens() == {n: int(c) * 16 for n, c in zip("abc", own[r], strict=True)}
    total = ranks[0].global_consumed_tokens()
    assert total == ranks[1].global_consumed_tokens()
    assert total == {n: int(own[0][i] + own[1][i]) * 16 for i, n in enumerate("abc")}


def test_epochs_restart_the_stream_instead_of_wrapping_a_window(synthetic):
    synthetic["data"]["recipe"]["sources"] = [{"name": "a", "weight": 1.0}]
    b = MixedBatcher(synthetic, rank=0, world=1, seed=1)
    rows = []
    for step in range(60):
        tokens, _ = b.next_batch(step, 16, 48)
        rows.extend(tokens.numpy())
    # 20,001 tokens (with the final eos) hold (20001 - 49) // 48 + 1 = 416 windows; the chain of windows
    # (each starting on its predecessor's last token) breaks exactly where a new epoch starts.
    breaks = [i for i in range(1, len(rows)) if rows[i][0] != rows[i - 1][-1]]
    assert breaks == [416, 832]
    assert len({r[0] for r in rows[:416]}) == 416
    assert not np.array_equal(np.stack(rows[:416]), np.stack(rows[416:832]))
    assert b.epochs()["a"] == pytest.approx(2 + (960 - 832) * 48 / 20001)
    assert b.consumed_tokens() == {"a": 960 * 48}


def test_recipe_source_without_shards_fails_clearly(synthetic):
    synthetic["data"]["recipe"]["sources"].append({"name": "code", "weight": 1.0})
    with pytest.raises(FileNotFoundError) as err:
        MixedBatcher(synthetic, rank=0, world=1, seed=0)
    message = str(err.value)
    assert "code" in message and synthetic["data"]["shards_dir"] in message
    assert "a, b, c" in message


def test_shards_from_another_tokenizer_are_refused(synthetic, tmp_path):
    other = tmp_path / "other.model"
    other.write_bytes(b"a different tokenizer")
    synthetic["data"]["tokenizer"] = str(other)
    with pytest.raises(ValueError, match="tokenizer sha256"):
        MixedBatcher(synthetic, rank=0, world=1, seed=0)
    synthetic["data"]["tokenizer"] = None  # the bundled one does not match either
    with pytest.raises(ValueError, match="tokenizer sha256"):
        MixedBatcher(synthetic, rank=0, world=1, seed=0)
    synthetic["data"]["tokenizer"] = str(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        MixedBatcher(synthetic, rank=0, world=1, seed=0)


def test_bad_recipe_weights_and_ranks_are_refused():
    cfg = bundled_cfg()
    cfg["data"]["recipe"]["sources"][0]["weight"] = -1
    with pytest.raises(ValueError, match="weights"):
        MixedBatcher(cfg, rank=0, world=1, seed=0)
    with pytest.raises(ValueError, match="rank"):
        MixedBatcher(bundled_cfg(), rank=2, world=2, seed=0)


# Curriculum


def test_curriculum_stages_and_fallback():
    cfg = bundled_cfg()
    assert [curriculum_seq_len(cfg, s) for s in (0, 1, 99, 100, 5000)] == [32, 32, 32, 64, 64]
    cfg["curriculum"] = [
        {"start_step": 0, "seq_len": 16},
        {"start_step": 10, "seq_len": 32},
        {"start_step": 20, "seq_len": 64},
    ]
    assert [curriculum_seq_len(cfg, s) for s in (9, 10, 19, 20)] == [16, 32, 32, 64]
    cfg["curriculum"] = []
    assert curriculum_seq_len(cfg, 3) == 64
    del cfg["curriculum"]
    assert curriculum_seq_len(cfg, 3) == 64


@pytest.mark.parametrize(
    "stages",
    [
        [{"start_step": 5, "seq_len": 32}],
        [{"start_step": 0, "seq_len": 64}, {"start_step": 10, "seq_len": 32}],
        [{"start_step": 0, "seq_len": 32}, {"start_step": 0, "seq_len": 64}],
        [{"start_step": 0, "seq_len": 0}],
    ],
)
def test_curriculum_that_breaks_the_contract_is_refused(stages):
    cfg = bundled_cfg()
    cfg["curriculum"] = stages
    with pytest.raises(ValueError, match="curriculum"):
        curriculum_seq_len(cfg, 0)


def test_tokenizer_hash_helper_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
