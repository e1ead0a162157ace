"""Counting a data source on registration: documents, characters, bytes, files, and tokens estimated with the
bundled tokenizer on a sample; the language the classifier finds in the sample.

    python -m jobs.data.prep count --job-dir DIR     # reads DIR/count.json, writes DIR/progress.json, report.json

Reads the source the way the prep job does (jobs.data.prep.readers), streaming, so a malformed file fails the
count with its path and line, before any prep job is started on it.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from random import Random

import numpy as np

from jobs.common.atomic import write_json
from jobs.data.prep.classify import MODELS_DIR, LinearModel
from jobs.data.prep.readers import MalformedSource, SourceReader
from jobs.data.prep.spec import SourceSpec
from jobs.data.prep.text import normalise
from jobs.data.tokenizer import load_tokenizer

SAMPLE = 500


def count(source: SourceSpec, job_dir: Path) -> dict:
    t0 = time.time()
    reader = SourceReader(source)
    rng = Random(0)
    sample: list[str] = []
    docs = chars = size = 0
    files: set[str] = set()
    last = 0.0
    for doc in reader.run(rank=0, world_size=1):
        docs += 1
        chars += len(doc.text)
        size += len(doc.text.encode("utf-8"))
        files.add(doc.id.rsplit(":", 1)[0])
        if len(sample) < SAMPLE:
            sample.append(doc.text)
        elif (j := rng.randrange(docs)) < SAMPLE:
            sample[j] = doc.text
        if time.monotonic() - last > 1.0:
            last = time.monotonic()
            write_json(job_dir / "progress.json", {"status": "running", "documents": docs, "characters": chars,
                                                   "updated_at": time.time()})  # fmt: skip
    sp = load_tokenizer()
    sample_chars = sum(len(t) for t in sample)
    sample_tokens = sum(len(ids) for ids in sp.encode(sample)) if sample else 0
    per_char = sample_tokens / sample_chars if sample_chars else 0.0
    language = LinearModel.load(MODELS_DIR / "language.npz")
    found: Counter[str] = Counter()
    for text in sample:
        probs = language.probabilities(language.spec.indices(normalise(text).lower()))
        found[language.labels[int(np.argmax(probs))]] += 1
    return {
        "documents": docs,
        "characters": chars,
        "bytes": size,
        "files": len(files),
        "estimated_tokens": round(chars * per_char),
        "tokens_per_char": round(per_char, 4),
        "sample_documents": len(sample),
        "detected_languages": {k: round(v / len(sample), 3) for k, v in found.most_common()} if sample else {},
        "seconds": round(time.time() - t0, 2),
    }


def run(source: SourceSpec, job_dir: Path) -> int:
    (job_dir / "report.json").unlink(missing_ok=True)
    try:
        result = count(source, job_dir)
    except MalformedSource as exc:
        write_json(job_dir / "progress.json", {"status": "failed", "message": str(exc), **exc.to_json(),
                                               "updated_at": time.time()})  # fmt: skip
        print(f"count: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        write_json(job_dir / "progress.json", {"status": "failed", "message": message, "updated_at": time.time()})
        print(f"count: error: {message}", file=sys.stderr)
        return 1
    write_json(job_dir / "report.json", result)
    write_json(job_dir / "progress.json", {"status": "succeeded", "documents": result["documents"],
                                           "characters": result["characters"], "updated_at": time.time()})  # fmt: skip
    print(f"count: {result['documents']} documents, {result['characters']} characters", file=sys.stderr)
    return 0
