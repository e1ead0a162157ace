"""The data-prep job end to end, as real processes on a small planted corpus: real datatrove executors, the
project's steps, SentencePiece training and the trainer reading the shards it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jobs.data import SourceShards, load_tokenizer
from jobs.data.prep import planted
from jobs.data.prep.text import normalise
from jobs.data.tokenizer import file_sha256
from tests.jobs.conftest import REPO, describe, read_records, run_trainer, tiny_run, write_run

FORMATS = {"en": "text"}  # one plain-text source beside the JSONL ones


def prep_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CP_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def write_job(folder: Path, docs: list[planted.Planted], settings: dict | None = None, tasks: int = 2) -> Path:
    paths = planted.write(docs, folder / "data", FORMATS)
    job = folder / "job"
    job.mkdir(parents=True)
    sources = [
        {"name": name, "language": name, "format": FORMATS.get(name, "jsonl"), "path": str(paths[name]),
         "weight": weight, "documents": sum(1 for d in docs if d.source == name)}
        for name, weight in planted.MIX
    ]  # fmt: skip
    spec = {"job_id": 1, "recipe": {"name": "test", "version": 1}, "sources": sources, "settings": settings or {},
            "executor": {"kind": "local", "tasks": tasks, "workers": tasks}, "shard_tokens": 4096}  # fmt: skip
    (job / "prep.json").write_text(json.dumps(spec, indent=1))
    return job


def run_prep(job: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.data.prep", "run", "--job-dir", str(job)], cwd=REPO,
                          env=prep_env(), capture_output=True, text=True, timeout=timeout)  # fmt: skip


def removals(job: Path) -> dict[str, tuple[str, str]]:
    """Document id -> (rule, detail) for every document the job removed."""
    out = {}
    for path in (job / "work" / "removed").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[row["id"]] = (row["rule"], row["detail"])
    return out


def doc_ids(docs: list[planted.Planted], job: Path) -> list[str]:
    """The id the reader gives each planted document: its file (relative to the source folder) and line."""
    line: Counter[str] = Counter()
    ids = []
    for doc in docs:
        line[doc.source] += 1
        name = f"{doc.source}.{'txt' if FORMATS.get(doc.source) == 'text' else 'jsonl'}"
        ids.append(f"{name}:{line[doc.source]}")
    return ids


def kept_texts(job: Path) -> dict[str, list[str]]:
    sp = load_tokenizer(str(job / "tokenizer.model"))
    kept = {}
    for name, _ in planted.MIX:
        shards = SourceShards(job / "shards" / name)
        ids = shards.read(0, shards.total_tokens)
        ends = np.flatnonzero(ids == shards.eos_id)
        starts = np.concatenate([[0], ends[:-1] + 1])
        kept[name] = [sp.decode(ids[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]
    return kept


def as_written(doc: planted.Planted) -> str:
    return normalise(doc.text.replace("\n", " ") if FORMATS.get(doc.source) == "text" else doc.text)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """One job over 360 planted documents in two tasks, every kept document in the shards (mix keep_all)."""
    folder = tmp_path_factory.mktemp("prep")
    docs = planted.corpus(360, seed=7)
    job = write_job(folder, docs, {"mix": {"mode": "keep_all"}})
    proc = run_prep(job)
    assert proc.returncode == 0, describe(proc)
    return docs, job, json.loads((job / "report.json").read_text())


def test_planted_documents_are_removed_by_their_rule_and_clean_text_is_kept(prepared):
    docs, job, report = prepared
    removed = removals(job)
    ids = doc_ids(docs, job)
    kinds = Counter(d.kind.split(":")[0] for d in docs)
    assert all(kinds[k] >= 3 for k in ("exact", "near", "junk", "toxic")), kinds  # the corpus plants each kind
    expected = {
        "exact": ("dedup:exact",),
        "near": ("dedup:simhash",),
        "toxic:words": ("toxicity:words:",),
        "toxic:threat": ("toxicity:classifier",),
        "wrong_language": ("language:mismatch",),
    }
    near_found = 0
    for doc, doc_id in zip(docs, ids, strict=True):
        rule = removed.get(doc_id, ("", ""))[0]
        if doc.kind == "clean":
            assert not rule, f"clean document {doc_id} removed by {rule}: {doc.text[:120]}"
        elif doc.kind == "near":
            near_found += rule == "dedup:simhash"
            assert rule in ("", "dedup:simhash"), f"near duplicate {doc_id} removed by {rule}"
        elif doc.kind.startswith("junk:"):
            # Junk is rarely clearly in its source's language (symbols, code, fragments): the language check may
            # remove it before a quality rule does.
            assert rule.startswith(("gopher:", "c4:", "fineweb:", "quality:", "language:")), (doc_id, doc.kind, rule)
        else:
            assert rule.startswith(expected[doc.kind]), f"{doc.kind} {doc_id} removed by {rule!r}"
    assert near_found >= 0.9 * kinds["near"], f"SimHash found {near_found} of {kinds['near']} near duplicates"
    # The report counts the same removals.
    assert report["removed"]["dedup:exact"]["count"] == kinds["exact"]
    assert report["removed"]["dedup:simhash"]["count"] == near_found
    assert report["removed"]["dedup:exact"]["examples"], "a rule's report shows examples of what it removed"


def test_kept_text_is_in_the_shards_and_counts_add_up(prepared):
    docs, job, report = prepared
    kept = kept_texts(job)
    removed = removals(job)
    ids = doc_ids(docs, job)
    for doc, doc_id in zip(docs, ids, strict=True):
        if doc.kind == "clean":
            assert as_written(doc) in kept[doc.source], f"clean document {doc_id} is missing from the shards"
        elif doc_id in removed and doc.kind != "exact":
            assert as_written(doc) not in kept[doc.source]
    for name, _ in planted.MIX:
        stages = report["sources"][name]["stages"]
        assert stages["read"]["docs_in"] == sum(1 for d in docs if d.source == name)
        for before, after in zip(list(stages)[:-1], list(stages)[1:], strict=True):
            assert stages[after]["docs_in"] == stages[before]["docs_out"], (name, before, after)
        assert stages["mix"]["docs_out"] == len(kept[name])
        manifest = json.loads((job / "shards" / name / "manifest.json").read_text())
        assert manifest["tokenizer_sha256"] == file_sha256(job / "tokenizer.model")
        assert stages["mix"]["tokens_out"] == manifest["total_tokens"]
        assert sum(report["sources"][name]["levels"]) == stages["quality"]["docs_in"]


def test_tokenizer_round_trips_chinese_and_english(prepared):
    docs, job, report = prepared
    sp = load_tokenizer(str(job / "tokenizer.model"))
    texts = [as_written(d) for d in docs if d.kind == "clean" and d.language in ("zh", "en")][:40]
    texts += ["训练数据的质量决定了模型的上限。", "Tokenizers must round-trip text exactly: 3.14, (x+y)!"]
    for text in texts:
        assert sp.decode(sp.encode(text)) == text
    info = report["tokenizer"]
    assert info["trained"] and info["character_coverage"] == 0.9999
    assert info["vocab_size"] == sp.vocab_size() <= info["requested_vocab_size"] == 128_000
    assert {"zh", "en"} <= set(info["per_language"])
    # Chinese packs more text per piece than English does per character.
    assert info["per_language"]["zh"]["tokens_per_char"] > info["per_language"]["en"]["tokens_per_char"]


def test_shards_feed_a_real_training_run_whose_consumed_mix_matches_the_recipe(prepared, tmp_path):
    _, job, report = prepared
    cfg = tiny_run(
        data={**tiny_run()["data"], "shards_dir": str(job / "shards"), "tokenizer": str(job / "tokenizer.model")},
        model={**tiny_run()["model"], "vocab_size": max(4096, report["tokenizer"]["vocab_size"])},
        training={**tiny_run()["training"], "total_steps": 20, "token_budget": 20 * 256, "checkpoint_interval": 100},
        curriculum=[{"start_step": 0, "seq_len": 32}],
    )
    run_dir = write_run(tmp_path / "train", cfg)
    proc = run_trainer(run_dir, launcher="none")
    assert proc.returncode == 0, describe(proc)
    last = [r for r in read_records(run_dir) if r["kind"] == "metrics"][-1]["values"]
    consumed = {name: last[f"tokens/{name}"] for name, _ in planted.MIX}
    total = sum(consumed.values())
    for name, weight in planted.MIX:
        # 160 sequences drawn by weight: within four standard deviations of the recipe's share.
        share, expected = consumed[name] / total, weight / 100
        assert abs(share - expected) < 4 * (expected * (1 - expected) / 160) ** 0.5, (name, share, expected)


def test_a_malformed_source_fails_the_job_naming_file_and_line_without_shards(tmp_path):
    docs = planted.corpus(60, seed=3)
    job = write_job(tmp_path, docs)
    zh = tmp_path / "data" / "zh.jsonl"
    lines = zh.read_text().splitlines()
    lines[4] = '{"text": 12}'
    zh.write_text("\n".join(lines) + "\n")
    proc = run_prep(job)
    assert proc.returncode == 1, describe(proc)
    message = f"source zh: {zh} line 5: the text field 'text' is a int, not a string"
    assert proc.stderr.strip().splitlines()[-1] == f"prep: error: {message}"
    progress = json.loads((job / "progress.json").read_text())
    assert progress["status"] == "failed" and progress["message"] == message
    assert not (job / "shards").exists() and not (job / "shards.tmp").exists()
    assert not (job / "tokenizer.model").exists() and not (job / "report.json").exists()
    assert not list(job.rglob("manifest.json"))


def test_a_killed_job_resumes_where_it_stopped(tmp_path):
    docs = planted.corpus(200, seed=5)
    job = write_job(tmp_path, docs)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.data.prep", "run", "--job-dir", str(job)], cwd=REPO,
                            env=prep_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    dedup_done = job / "work" / "logs" / "dedup" / "completions" / "00000"
    deadline = time.monotonic() + 300
    while not dedup_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dedup_done.exists(), "the job did not get past deduplication"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, its worker processes too
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in (job / "work" / "logs" / "filter" / "completions").iterdir()}
    assert len(finished) == 2
    again = run_prep(job)
    assert again.returncode == 0, describe(again)
    # The filter stage's tasks were not run again: their completion marks are the first run's.
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    report = json.loads((job / "report.json").read_text())
    assert report["sources"]["zh"]["stages"]["read"]["docs_in"] == sum(1 for d in docs if d.source == "zh")
    # The default mix cuts sources to the recipe's weights.
    for name, weight in planted.MIX:
        assert abs(report["mix"]["final"][name] - weight) < 1.0, report["mix"]


def test_minhash_and_a_reused_tokenizer(tmp_path):
    from jobs.data.locations import default_tokenizer_path

    docs = planted.corpus(150, seed=11, rates={"near": 0.12, "exact": 0.0, "junk": 0.0, "toxic": 0.0})
    job = write_job(tmp_path, docs, {"dedup": {"near": "minhash"}, "mix": {"mode": "keep_all"},
                                     "tokenizer": {"mode": "reuse", "path": default_tokenizer_path()}})  # fmt: skip
    proc = run_prep(job)
    assert proc.returncode == 0, describe(proc)
    report = json.loads((job / "report.json").read_text())
    assert report["tokenizer"]["sha256"] == file_sha256(default_tokenizer_path())
    assert not report["tokenizer"]["trained"]
    near = sum(1 for d in docs if d.kind == "near")
    found = report["removed"]["dedup:minhash"]["count"]
    assert 0.5 * near <= found <= near, (found, near)
    assert report["removed"]["dedup:minhash"]["examples"]
