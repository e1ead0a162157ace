"""Data preparation beside stock datatrove, in one run, on a generated corpus with planted problems.

    python bench/data_prep.py                   # 200,000 documents: the figures (tens of minutes on 2 cores)
    python bench/data_prep.py --docs 20000      # a quick run
    options: --workers 2  --work DIR (keeps the corpus and outputs; default a temporary folder)
             --skip-stock  --skip-minhash  --json PATH (also write the figures as JSON)

The corpus (jobs.data.prep.planted): zh 45 % / en 35 % / other 20 % (fr, de, es, it, ru) documents of 80-400 words
or 200-1,200 Chinese characters, with 5 % exact copies, 5 % near copies (1-5 words or 2-10 characters edited), 5 %
junk, 3 % documents with a toxic line and 1 % in the wrong language; JSONL, 4 files per source.

1. Ours: `python -m jobs.data.prep run` on `--workers` tasks (datatrove's LocalPipelineExecutor): normalise,
   language check, quality rules and classifier, toxicity, exact and SimHash deduplication, tokenization and shard
   writing with the bundled tokenizer (no tokenizer training). Each stage's documents/s is the corpus's documents
   over the stage's wall time; the per-step figures are documents over the CPU seconds one task spent in the step.
2. Stock: datatrove 0.10.1's own steps for what ours replaces, chained as a datatrove pipeline would be: its Gopher
   repetition + Gopher quality + C4 + FineWeb filters (word tokenizers per language: spaCy, jieba for Chinese; the
   Gopher stop words are the ones ours uses), exact dedup (signature, find, filter), MinHash (signature, buckets,
   cluster, filter; 14 buckets x 8 hashes, 5-grams) and DocumentTokenizer with a byte-level BPE `tokenizers` model of
   4,096 pieces trained here (the stock writer takes Hugging Face tokenizers, not SentencePiece). Stock datatrove
   has no language check without fastText's downloaded model, and no toxicity or quality classifier without a
   model: those are ours only.
3. Near-duplicate recall and precision: planted near copies whose original reached deduplication, against what
   SimHash removed (ours, after our filters and exact dedup), what MinHash with the recipe's defaults removed from
   the same documents (datatrove's MinHash stages, as our job runs them with `dedup.near` "minhash"), and what the
   stock chain's MinHash removed (datatrove's defaults, after the stock filters and exact dedup). A pair is found
   when the copy or its original was removed (datatrove keeps the lowest task and document number of a cluster,
   which with several tasks is sometimes the copy); a removed document counts as correct when it belongs to a
   planted group that another member of reached the same stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.data.prep import planted  # noqa: E402

FILES_PER_SOURCE = 4
SEED = 2026
# datatrove names word tokenizers by ISO 639-3 code: its "zh" is a multilingual tokenizer that leaves Chinese
# unsplit, "cmn" is spaCy with jieba.
DATATROVE_LANGUAGE = {"zh": "cmn", "en": "eng", "fr": "fra", "de": "deu", "es": "spa", "it": "ita", "ru": "rus"}


def log(message: str) -> None:
    print(message, flush=True)


# -- corpus -----------------------------------------------------------------------------------------------------


def write_corpus(work: Path, n: int) -> tuple[list[planted.Planted], dict[str, int]]:
    """The planted corpus as JSONL, each source cut into FILES_PER_SOURCE files in generation order (so a copy
    never comes before its original), and each document's id as the reader gives it."""
    folder = work / "corpus"
    docs = planted.corpus(n, seed=SEED)
    meta = folder / "meta.json"
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(docs):
        by_source[doc.source].append(i)
    ids: dict[str, int] = {}
    expected = {"docs": n, "seed": SEED, "files": FILES_PER_SOURCE}
    fresh = not (meta.is_file() and json.loads(meta.read_text()) == expected)
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    for source, indexes in by_source.items():
        (folder / source).mkdir(parents=True, exist_ok=True)
        per_file = -(-len(indexes) // FILES_PER_SOURCE)
        for k in range(FILES_PER_SOURCE):
            name = f"{source}-{k:05d}.jsonl"
            chunk = indexes[k * per_file : (k + 1) * per_file]
            if fresh:
                with (folder / source / name).open("w", encoding="utf-8") as fh:
                    for i in chunk:
                        meta_fields = {"language": docs[i].language, "bench_index": i}
                        fh.write(json.dumps({"text": docs[i].text, "metadata": meta_fields}, ensure_ascii=False) + "\n")
            for line, i in enumerate(chunk, start=1):
                ids[f"{name}:{line}"] = i
    if fresh:
        meta.write_text(json.dumps(expected))
    return docs, ids


def groups(docs: list[planted.Planted]) -> list[int]:
    """Each document's planted group: the original's index for its copies (exact or near), else its own."""
    return [d.of if d.kind in ("exact", "near") and d.of is not None else i for i, d in enumerate(docs)]


def near_scores(docs, group, reached: set[int], removed: set[int]) -> dict:
    """Recall over planted near copies that reached deduplication with their original: found when the copy or
    its original was removed (datatrove's MinHash keeps the lowest task and document number of a cluster, which
    with several tasks can be the copy); precision over what the method removed (correct when another member of
    its group reached the stage too)."""
    members: dict[int, list[int]] = defaultdict(list)
    for i in reached:
        members[group[i]].append(i)
    planted_near = [i for i in reached if docs[i].kind == "near" and docs[i].of in reached]
    found = sum(1 for i in planted_near if i in removed or docs[i].of in removed)
    correct = sum(1 for i in removed if len(members[group[i]]) > 1)
    return {
        "planted": len(planted_near),
        "found": found,
        "removed": len(removed),
        "recall": found / len(planted_near) if planted_near else None,
        "precision": correct / len(removed) if removed else None,
    }


# -- ours -------------------------------------------------------------------------------------------------------


def run_ours(work: Path, docs, index_of: dict[str, int], workers: int) -> dict:
    from jobs.data.locations import default_tokenizer_path

    job = work / "ours"
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    sources = [
        {"name": name, "language": name, "format": "jsonl", "path": str(work / "corpus" / name / "*.jsonl"),
         "weight": weight, "documents": sum(1 for d in docs if d.source == name)}
        for name, weight in planted.MIX
    ]  # fmt: skip
    spec = {"job_id": 0, "recipe": {"name": "bench", "version": 1}, "sources": sources,
            "settings": {"tokenizer": {"mode": "reuse", "path": default_tokenizer_path()}, "mix": {"mode": "keep_all"}},
            "executor": {"kind": "local", "tasks": workers, "workers": workers}}  # fmt: skip
    (job / "prep.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.data.prep", "run", "--job-dir", str(job)], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"our prep job failed:\n{proc.stderr[-3000:]}")
    report = json.loads((job / "report.json").read_text())
    removed: dict[str, set[int]] = defaultdict(set)
    for path in (job / "work" / "removed").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            removed[row["rule"]].add(index_of[row["id"]])
    return {"report": report, "wall": wall, "removed": removed}


# -- stock datatrove ------------------------------------------------------------------------------------------------


def stock_filter_step():
    """datatrove's Gopher repetition, Gopher quality, C4 and FineWeb filters, one set per language (the language
    the document was generated in), applied through each filter's own `filter` method."""
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    from jobs.data.prep.rules import STOP_WORDS

    class StockFilters(PipelineStep):
        name = "stock Gopher + C4 + FineWeb"
        type = "bench"

        def __init__(self):
            super().__init__()
            self._by_language: dict = {}

        def _filters(self, tag: str) -> list:
            if tag not in self._by_language:
                language = DATATROVE_LANGUAGE[tag]
                self._by_language[tag] = [
                    GopherRepetitionFilter(language=language),
                    GopherQualityFilter(language=language, stop_words=STOP_WORDS[tag].split()),
                    C4QualityFilter(language=language),
                    FineWebQualityFilter(language=language),
                ]
            return self._by_language[tag]

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            for doc in data or ():
                kept = True
                for f in self._filters(doc.metadata.get("language") or "en"):
                    result = f.filter(doc)
                    if not (result[0] if isinstance(result, tuple) else result):
                        kept = False
                        break
                if kept:
                    yield doc

    return StockFilters()


def train_hf_tokenizer(work: Path, docs) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    path = work / "stock" / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator((d.text for d in docs[:5000]), trainer=trainer)
    tok.save(str(path))
    return path


def run_stock(work: Path, docs, workers: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    out = work / "stock"
    shutil.rmtree(out / "runs", ignore_errors=True)
    runs = out / "runs"
    tokenizer = train_hf_tokenizer(work, docs)
    minhash = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes: datatrove's defaults
    exact = ExactDedupConfig(content_getter=lambda doc: doc.text)
    stages: list[tuple[str, int, list]] = [
        ("filters: Gopher repetition + quality, C4, FineWeb", workers, [
            JsonlReader(str(work / "corpus"), glob_pattern="*/*.jsonl"),
            stock_filter_step(),
            JsonlWriter(str(runs / "filtered"), compression=None)]),
        ("exact dedup: signatures", workers, [
            JsonlReader(str(runs / "filtered"), compression=None),
            ExactDedupSignature(str(runs / "exact_sigs"), config=exact, finder_workers=1)]),
        ("exact dedup: find", 1, [ExactFindDedups(str(runs / "exact_sigs"), str(runs / "exact_dups"), config=exact)]),
        ("exact dedup: filter", workers, [
            JsonlReader(str(runs / "filtered"), compression=None),
            ExactDedupFilter(str(runs / "exact_dups"), config=exact),
            JsonlWriter(str(runs / "unique"), compression=None)]),
        ("MinHash: signatures", workers, [
            JsonlReader(str(runs / "unique"), compression=None),
            MinhashDedupSignature(str(runs / "mh_sigs"), config=minhash, language="cmn")]),
        ("MinHash: buckets", minhash.num_buckets, [
            MinhashDedupBuckets(str(runs / "mh_sigs"), str(runs / "mh_buckets"), config=minhash)]),
        ("MinHash: cluster", 1, [MinhashDedupCluster(str(runs / "mh_buckets"), str(runs / "mh_clusters"), config=minhash)]),
        ("MinHash: filter", workers, [
            JsonlReader(str(runs / "unique"), compression=None),
            MinhashDedupFilter(str(runs / "mh_clusters"),
                               exclusion_writer=JsonlWriter(str(runs / "mh_removed"), compression=None)),
            JsonlWriter(str(runs / "deduped"), compression=None)]),
        ("DocumentTokenizer (write token files)", workers, [
            JsonlReader(str(runs / "deduped"), compression=None),
            DocumentTokenizer(str(runs / "tokens"), tokenizer_name_or_path=str(tokenizer), eos_token="<|endoftext|>",
                              shuffle_documents=False)]),
    ]  # fmt: skip
    timings = []
    for name, tasks, pipeline in stages:
        executor = LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                                         logging_dir=str(runs / "logs" / name.split(":")[0].replace(" ", "_")
                                                         / str(len(timings))))  # fmt: skip
        t0 = time.perf_counter()
        executor.run()
        timings.append((name, time.perf_counter() - t0))
        log(f"  stock {name}: {timings[-1][1]:.1f} s")

    return {
        "timings": timings,
        "unique": ids_in(runs / "unique"),
        "removed_near": ids_in(runs / "mh_removed"),
    }


def ids_in(folder: Path) -> set[int]:
    found = set()
    for path in folder.glob("*.jsonl"):
        for line in path.open():
            found.add(int(json.loads(line)["metadata"]["bench_index"]))
    return found


def run_minhash(work: Path, index_of: dict[str, int], reached: set[int], workers: int) -> dict:
    """datatrove's MinHash stages with the recipe's default settings (what our job runs with `dedup.near`
    "minhash") over the documents that reached our SimHash (our job's kept documents less exact duplicates), so
    that both methods are scored on the same documents."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from jobs.data.prep.pipeline import minhash_config
    from jobs.data.prep.settings import validate

    runs = work / "minhash"
    shutil.rmtree(runs, ignore_errors=True)
    (runs / "input").mkdir(parents=True)
    for path in sorted((work / "ours" / "work" / "docs").glob("*.jsonl")):
        with path.open() as src, (runs / "input" / path.name).open("w") as out:
            for line in src:
                row = json.loads(line)
                index = index_of[row["id"]]
                if index in reached:
                    out.write(json.dumps({"text": row["text"], "id": row["id"],
                                          "metadata": {"bench_index": index}}, ensure_ascii=False) + "\n")  # fmt: skip
    config = minhash_config(validate({"dedup": {"near": "minhash"}}))
    stages = [
        (workers, [JsonlReader(str(runs / "input"), compression=None),
                   MinhashDedupSignature(str(runs / "sigs"), config=config, language="cmn")]),
        (config.num_buckets, [MinhashDedupBuckets(str(runs / "sigs"), str(runs / "buckets"), config=config)]),
        (1, [MinhashDedupCluster(str(runs / "buckets"), str(runs / "clusters"), config=config)]),
        (workers, [JsonlReader(str(runs / "input"), compression=None),
                   MinhashDedupFilter(str(runs / "clusters"),
                                      exclusion_writer=JsonlWriter(str(runs / "removed"), compression=None))]),
    ]  # fmt: skip
    t0 = time.perf_counter()
    for i, (tasks, pipeline) in enumerate(stages):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                              logging_dir=str(runs / "logs" / str(i))).run()  # fmt: skip
    seconds = time.perf_counter() - t0
    log(f"  MinHash with the recipe's defaults ({config.num_buckets} x {config.hashes_per_bucket}, "
        f"{config.n_grams}-grams): {seconds:.1f} s")  # fmt: skip
    return {"removed": ids_in(runs / "removed"), "seconds": seconds, "buckets": config.num_buckets,
            "hashes": config.hashes_per_bucket, "ngrams": config.n_grams}  # fmt: skip


# -- report -----------------------------------------------------------------------------------------------------


def fmt_rate(docs: float, seconds: float) -> str:
    return f"{docs / seconds:10,.0f}" if seconds > 0 else "         -"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--skip-minhash", action="store_true", help="no MinHash with the recipe's defaults")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-data-prep-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.docs

    t0 = time.perf_counter()
    docs, index_of = write_corpus(work, n)
    kinds = defaultdict(int)
    for d in docs:
        kinds[d.kind.split(":")[0]] += 1
    log(f"corpus: {n:,} documents ({', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))}) "
        f"in {time.perf_counter() - t0:.0f} s; {work}")  # fmt: skip
    group = groups(docs)

    log("ours: python -m jobs.data.prep run ...")
    ours = run_ours(work, docs, index_of, args.workers)
    report = ours["report"]
    stage_s = report["timings"]["stage_seconds"]
    dropped_before_dedup = set()
    for rule, ids in ours["removed"].items():
        if not rule.startswith(("dedup:", "mix:")):
            dropped_before_dedup |= ids
    reached_ours = set(range(n)) - dropped_before_dedup - ours["removed"].get("dedup:exact", set())
    simhash = near_scores(docs, group, reached_ours, ours["removed"].get("dedup:simhash", set()))

    mh = None
    ours_minhash = None
    if not args.skip_minhash:
        log("MinHash with the recipe's defaults over the documents that reached SimHash ...")
        mh = run_minhash(work, index_of, reached_ours, args.workers)
        ours_minhash = near_scores(docs, group, reached_ours, mh["removed"])
    stock = None
    minhash = None
    if not args.skip_stock:
        log("stock datatrove steps ...")
        stock = run_stock(work, docs, args.workers)
        minhash = near_scores(docs, group, stock["unique"], stock["removed_near"])

    # -- print
    s = report["settings"]["dedup"]["simhash"]
    print()
    print(f"Near-duplicate detection ({n:,} documents; planted near copies whose original reached dedup)")
    print(f"  {'method':60s} {'recall':>8s} {'precision':>10s} {'found':>8s} {'planted':>8s} {'removed':>8s}")
    rows = [(f"SimHash (ours: {s['bits']} bits, {s['shingle']}-token shingles, <= {s['max_distance']} bits)", simhash)]
    if mh and ours_minhash:
        rows.append((f"MinHash (recipe: {mh['buckets']} buckets x {mh['hashes']} hashes, {mh['ngrams']}-grams)",
                     ours_minhash))  # fmt: skip
    if minhash:
        rows.append(("MinHash (stock chain: 14 x 8, 5-grams; after stock filters)", minhash))
    for name, r in rows:
        recall = f"{r['recall']:.3f}" if r["recall"] is not None else "-"
        precision = f"{r['precision']:.3f}" if r["precision"] is not None else "-"
        print(f"  {name:60s} {recall:>8s} {precision:>10s} {r['found']:>8,} {r['planted']:>8,} {r['removed']:>8,}")
    print()
    print(f"Throughput on {args.workers} workers (documents of the corpus per second of wall time)")
    ours_stages = [(k, v) for k, v in stage_s.items() if k != "tokenizer"]
    ours_total = sum(v for _, v in ours_stages)
    for name, secs in ours_stages:
        print(f"  ours  {name:58s} {fmt_rate(n, secs)} docs/s {secs:8.1f} s")
    print(f"  ours  {'whole pipeline, no tokenizer training':58s} {fmt_rate(n, ours_total)} docs/s {ours_total:8.1f} s")
    if stock:
        stock_total = sum(v for _, v in stock["timings"])
        for name, secs in stock["timings"]:
            print(f"  stock {name:58s} {fmt_rate(n, secs)} docs/s {secs:8.1f} s")
        print(
            f"  stock {'the steps ours replaces, chained':58s} {fmt_rate(n, stock_total)} docs/s {stock_total:8.1f} s"
        )
        print(f"  ours is {stock_total / ours_total:.2f}x stock")
    print()
    print("Our steps: documents per CPU second of one task (all tasks' time summed)")
    counts = report["sources"]
    entering = defaultdict(int)
    for info in counts.values():
        for stage, c in info["stages"].items():
            entering[stage] += c["docs_in"]
    step_docs = {"normalise": entering["normalise"], "language": entering["language"], "quality": entering["quality"],
                 "toxicity": entering["toxicity"], "signatures": entering["exact_dedup"],
                 "dedup_find": entering["exact_dedup"], "dedup_drop": entering["exact_dedup"],
                 "tokenize": entering["tokenize"], "mix": entering["mix"]}  # fmt: skip
    for step, secs in report["timings"]["step_seconds"].items():
        if step in step_docs and secs > 0:
            print(f"  {step:14s} {step_docs[step] / secs:10,.0f} docs/s  ({secs:7.1f} s for {step_docs[step]:,})")
    if args.json:
        result = {"docs": n, "workers": args.workers, "simhash": simhash, "minhash": ours_minhash,
                  "minhash_datatrove_defaults": minhash,
                  "ours_stage_seconds": stage_s, "ours_step_seconds": report["timings"]["step_seconds"],
                  "stock_seconds": stock["timings"] if stock else None, "ours_total_seconds": ours_total}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
