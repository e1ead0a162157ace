"""The job's `report.json`: per source and stage counts, removals with examples, quality levels, tokenizer,
final mix against the requested one, timings (docs/run-config.md, "Data preparation")."""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

from jobs.data.prep import ledger as ledger_mod
from jobs.data.prep import pipeline
from jobs.data.prep.spec import PrepSpec
from jobs.data.tokenizer import file_sha256

# The order the UI shows a source's stages in.
STAGE_ORDER = ("read", "normalise", "language", "quality", "toxicity", "exact_dedup", "near_dedup", "tokenize", "mix")
_STAGE_FOLDERS = ("filter", "dedup", "tokenizer", "shard", "mix")


def merged(spec: PrepSpec) -> dict:
    parts = []
    for folder in _STAGE_FOLDERS:
        parts += ledger_mod.read_parts(spec.work / "stats" / folder)
    return ledger_mod.merge(parts)


def counts_so_far(spec: PrepSpec) -> dict:
    return merged(spec)["stages"]


def _minhash_removals(spec: PrepSpec, stages: dict) -> dict | None:
    removed = spec.work / "minhash" / "removed"
    if not removed.is_dir():
        return None
    by_source = {src: rows["near_dedup"]["docs_in"] - rows["near_dedup"]["docs_out"]
                 for src, rows in stages.items() if "near_dedup" in rows}  # fmt: skip
    examples = []
    for path in sorted(removed.glob("*.jsonl")):
        with path.open() as fh:
            for line in fh:
                doc = json.loads(line)
                examples.append({"source": doc.get("metadata", {}).get("source", ""), "id": doc.get("id", ""),
                                 "text": doc.get("text", "")[: ledger_mod.EXAMPLE_CHARS]})  # fmt: skip
                if len(examples) >= ledger_mod.EXAMPLES_PER_RULE:
                    break
        if len(examples) >= ledger_mod.EXAMPLES_PER_RULE:
            break
    return {"stage": "near_dedup", "count": sum(by_source.values()), "by_source": by_source, "examples": examples}


def _tokenizer(spec: PrepSpec, languages: dict) -> dict:
    path = pipeline.tokenizer_path(spec)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    info_path = spec.work / "tokenizer" / "info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"trained": False}
    if not info.get("trained"):
        info["reused_from"] = spec.settings["tokenizer"]["path"]
    per_language = {
        lang: {"documents": c["docs"], "characters": c["chars"], "tokens": c["tokens"],
               "tokens_per_char": round(c["tokens"] / c["chars"], 4) if c["chars"] else None}
        for lang, c in sorted(languages.items())
    }  # fmt: skip
    return {**info, "path": str(path), "sha256": file_sha256(path), "vocab_size": sp.vocab_size(),
            "per_language": per_language}  # fmt: skip


def build(spec: PrepSpec, stages: list[str], seconds: dict[str, float], wall: float) -> dict:
    m = merged(spec)
    counts = m["stages"]
    removed = m["removed"]
    minhash = _minhash_removals(spec, counts)
    if minhash is not None:
        removed["dedup:minhash"] = minhash
    mix = json.loads((spec.work / "tokens" / "mix.json").read_text())
    weights = spec.weights()
    total_weight = sum(weights.values())
    written_total = sum(mix["written"].values()) or 1
    sources = {}
    for source in spec.sources:
        rows = counts.get(source.name, {})
        tok = rows.get("tokenize", {})
        per_char = tok["tokens_out"] / tok["chars_out"] if tok.get("chars_out") else None
        ordered = {}
        for stage in STAGE_ORDER:
            if stage not in rows:
                continue
            row = dict(rows[stage])
            if stage not in ("tokenize", "mix") and per_char is not None:
                row["tokens_in_est"] = round(row["chars_in"] * per_char)
                row["tokens_out_est"] = round(row["chars_out"] * per_char)
            ordered[stage] = row
        sources[source.name] = {
            "language": source.language,
            "format": source.format,
            "path": source.path,
            "stages": ordered,
            "levels": m["levels"].get(source.name, [0] * 6)[1:],
        }
    return {
        "format": "cp-prep-report",
        "version": 1,
        "job_id": spec.job_id,
        "recipe": spec.recipe,
        "settings": spec.settings,
        "stage_order": [s for s in STAGE_ORDER],
        "sources": sources,
        "removed": dict(sorted(removed.items(), key=lambda kv: -kv[1]["count"])),
        "tokenizer": _tokenizer(spec, m["languages"]),
        "mix": {
            "mode": mix["mode"],
            "requested": {s: round(w / total_weight * 100, 2) for s, w in weights.items()},
            "final": {s: round(n / written_total * 100, 2) for s, n in mix["written"].items()},
            "tokens": mix["written"],
            "available_tokens": mix["available"],
        },
        "output": {"shards_dir": str(spec.job_dir / "shards"), "tokenizer": str(pipeline.tokenizer_path(spec))},
        "timings": {
            "wall_seconds": round(wall, 2),
            "stage_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "step_seconds": {k: round(v, 3) for k, v in m["seconds"].items()},
        },  # fmt: skip
        "stages_run": stages,
    }


def load(job_dir: Path) -> dict | None:
    path = job_dir / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None
