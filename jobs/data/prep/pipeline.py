"""The prep job's stages as datatrove pipelines (what runs where is jobs.data.prep.driver's business).

    filter     N tasks  read sources -> normalise -> language -> quality -> toxicity -> docs/ + sigs/
    dedup      1 task   exact (content hash) and SimHash near duplicates over every task's signatures -> dedup/
    minhash_*           with MinHash instead: datatrove's signature (N), buckets (B) and cluster (1) stages
    tokenizer  1 task   SentencePiece BPE on the deduplicated text (skipped when the recipe reuses a tokenizer)
    shard      N tasks  docs/ minus duplicates -> token files per source (tokens/)
    mix        1 task   token files cut to the recipe's weights -> shards/ (the trainer's format)

Task i of the shard stage reads the documents task i of the filter stage kept, so both use N tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from jobs.data.prep.dedup import CountNear, DropDuplicates, FindDuplicates
from jobs.data.prep.ledger import Ledger
from jobs.data.prep.readers import SourceReader
from jobs.data.prep.simhash import SimHashConfig
from jobs.data.prep.spec import PrepSpec
from jobs.data.prep.steps import (
    Analyser,
    LanguageCheck,
    Normalise,
    QualityFilter,
    Sequence,
    Signatures,
    StageEnd,
    ToxicityFilter,
    WriteDocs,
)
from jobs.data.prep.tokens import Mix, Tokenize, TrainTokenizer

# Share of the whole job each stage's progress stands for (the filter stage reads and scores every document).
WEIGHTS = {"filter": 0.6, "dedup": 0.04, "minhash": 0.06, "tokenizer": 0.1, "shard": 0.16, "mix": 0.04}


@dataclass
class Stage:
    name: str
    tasks: int
    pipeline: list


def simhash_config(settings: dict) -> SimHashConfig | None:
    if settings["dedup"]["near"] != "simhash":
        return None
    s = settings["dedup"]["simhash"]
    return SimHashConfig(bits=s["bits"], shingle=s["shingle"], max_distance=s["max_distance"])


def minhash_config(settings: dict):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    m = settings["dedup"]["minhash"]
    return MinhashConfig(n_grams=m["ngrams"], num_buckets=m["buckets"], hashes_per_bucket=m["hashes_per_bucket"])


def minhash_language(spec: PrepSpec) -> str:
    """datatrove's MinHash signature takes one word tokenizer, named by an ISO 639-3 code (its "zh" gives a
    multilingual tokenizer that does not split Chinese words). jieba's (datatrove's choice for Mandarin, "cmn")
    also splits space-separated words, so a recipe with Chinese uses it for everything."""
    return "cmn" if any(s.language == "zh" for s in spec.sources) else "eng"


def tokenizer_path(spec: PrepSpec) -> Path:
    return spec.job_dir / "tokenizer.model"


def build(spec: PrepSpec) -> list[Stage]:
    work = spec.work
    s = spec.settings
    n = spec.executor.tasks
    near = s["dedup"]["near"]

    def docs_reader() -> JsonlReader:
        return JsonlReader(str(work / "docs"), glob_pattern="*.jsonl", compression=None, recursive=False)

    ledger = Ledger()
    analyser = Analyser(s["quality"]["model"], s["toxicity"]["model"])
    simhash = simhash_config(s)
    stages = [
        Stage(
            "filter",
            n,
            [
                *(SourceReader(source, index) for index, source in enumerate(spec.sources)),
                Normalise(ledger, str(work / "progress" / "filter")),
                LanguageCheck(ledger, analyser, s),
                QualityFilter(ledger, analyser, s),
                ToxicityFilter(ledger, analyser, s),
                Sequence(),
                WriteDocs(str(work / "docs")),
                Signatures(ledger, analyser, str(work / "sigs"), simhash),
                StageEnd(ledger, "filter", str(work), ensure_files=("docs/{rank:05d}.jsonl",)),
            ],
        ),
    ]
    ledger = Ledger()
    stages.append(
        Stage(
            "dedup",
            1,
            [
                FindDuplicates(ledger, str(work / "sigs"), str(work / "dedup"), n, s["dedup"]["exact"], simhash),
                StageEnd(ledger, "dedup", str(work)),
            ],
        )
    )
    if near == "minhash":
        from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature

        config = minhash_config(s)
        mh = work / "minhash"
        stages += [
            Stage(
                "minhash_signatures",
                n,
                [
                    docs_reader(),
                    DropDuplicates(Ledger(), str(work / "dedup"), count=False),
                    MinhashDedupSignature(str(mh / "sigs"), config=config, language=minhash_language(spec)),
                ],
            ),
            Stage(
                "minhash_buckets",
                config.num_buckets,
                [MinhashDedupBuckets(str(mh / "sigs"), str(mh / "buckets"), config=config)],
            ),
            Stage(
                "minhash_cluster", 1, [MinhashDedupCluster(str(mh / "buckets"), str(mh / "clusters"), config=config)]
            ),
        ]
    if s["tokenizer"]["mode"] == "train":
        ledger = Ledger()
        stages.append(
            Stage(
                "tokenizer",
                1,
                [
                    docs_reader(),
                    DropDuplicates(ledger, str(work / "dedup"), count=False),
                    TrainTokenizer(ledger, str(tokenizer_path(spec)), str(work), s["tokenizer"]),
                    StageEnd(ledger, "tokenizer", str(work)),
                ],
            )
        )
    ledger = Ledger()
    shard = [docs_reader(), DropDuplicates(ledger, str(work / "dedup"), count_near=near != "minhash")]
    if near == "minhash":
        from datatrove.pipeline.dedup import MinhashDedupFilter

        shard += [
            CountNear(ledger, "in"),
            MinhashDedupFilter(
                str(work / "minhash" / "clusters"),
                exclusion_writer=JsonlWriter(str(work / "minhash" / "removed"), compression=None),
            ),
            CountNear(ledger, "out"),
        ]
    shard += [Tokenize(ledger, str(tokenizer_path(spec)), str(work / "tokens")), StageEnd(ledger, "shard", str(work))]
    stages.append(Stage("shard", n, shard))
    ledger = Ledger()
    stages.append(
        Stage(
            "mix",
            1,
            [
                Mix(
                    ledger,
                    str(work / "tokens"),
                    str(spec.job_dir),
                    str(tokenizer_path(spec)),
                    spec.weights(),
                    s["mix"]["mode"],
                    spec.shard_tokens,
                ),  # fmt: skip
                StageEnd(ledger, "mix", str(work)),
            ],
        )
    )
    return stages


def stage_weight(name: str) -> float:
    return WEIGHTS["minhash"] / 3 if name.startswith("minhash") else WEIGHTS[name]
