"""The prep job's own datatrove steps: normalise, language check, quality, toxicity, signatures, stage end.

Every step counts what enters and leaves it per source in the task's Ledger, and the time it spends on its own
work (the `seconds` a stage reports). Documents carry in `metadata`: source (the recipe's source name), tag
(the source's language tag), language (detected), level (quality level), task and idx (the document's position
in the task's output, which the dedup stages key on).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from jobs.common.atomic import write_atomic, write_json
from jobs.data.prep import rules
from jobs.data.prep.classify import MODELS_DIR, Classifiers, LinearModel, Scores
from jobs.data.prep.ledger import Ledger, Progress
from jobs.data.prep.readers import MalformedSource
from jobs.data.prep.settings import quality_level
from jobs.data.prep.simhash import SimHashConfig, fingerprint
from jobs.data.prep.text import Tokens, codepoints, normalise, tokenize
from jobs.data.prep.toxicity import WordLists

_SENTENCE_END = np.zeros(0x10000, dtype=bool)
_SENTENCE_END[[ord(c) for c in ".!?。！？\n"]] = True
_CHECKED_AGAINST = {"other": ("zh", "en")}


class _Step(PipelineStep):
    type = "prep"

    def __init__(self, ledger: Ledger, stage: str):
        super().__init__()
        self.ledger = ledger
        self.stage = stage

    def _time(self, started: float) -> None:
        self.ledger.seconds[self.stage] += time.perf_counter() - started


class Normalise(_Step):
    """NFKC, whitespace; counts what was read (stage "read") and writes the task's live progress."""

    name = "normalise"

    def __init__(self, ledger: Ledger, progress_dir: str):
        super().__init__(ledger, "normalise")
        self.progress_dir = progress_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        progress = Progress(Path(self.progress_dir) / f"{rank:05d}.json")
        progress.flush(done=False)
        for doc in data or ():
            t0 = time.perf_counter()
            source = doc.metadata["source"]
            chars = len(doc.text)
            self.ledger.entered("read", source, chars)
            self.ledger.kept("read", source, chars)
            self.ledger.entered("normalise", source, chars)
            progress.tick(source)
            doc.text = normalise(doc.text)
            if not doc.text:
                self.ledger.dropped("normalise", source, "normalise:empty", doc.id, "")
                self._time(t0)
                continue
            self.ledger.kept("normalise", source, len(doc.text))
            self._time(t0)
            yield doc
        progress.flush(done=True)


class Analysis:
    __slots__ = ("doc", "lower_cps", "tokens", "scores")

    def __init__(self, doc, lower_cps: np.ndarray, tokens: Tokens, scores: Scores):
        self.doc, self.lower_cps, self.tokens, self.scores = doc, lower_cps, tokens, scores


class Analyser:
    """Scores a document once for the three filters that read it (language, quality, toxicity): the steps of a
    task see one document at a time, so the last analysis is kept and reused while it is the same document."""

    def __init__(self, quality_model: str | None, toxicity_model: str | None):
        self.paths = (
            str(MODELS_DIR / "language.npz"),
            quality_model or str(MODELS_DIR / "quality.npz"),
            toxicity_model or str(MODELS_DIR / "toxicity.npz"),
        )
        self._models: Classifiers | None = None
        self._last: Analysis | None = None

    @property
    def models(self) -> Classifiers:
        if self._models is None:
            self._models = Classifiers(*(LinearModel.load(p) for p in self.paths))
        return self._models

    def of(self, doc) -> Analysis:
        if self._last is not None and self._last.doc is doc:
            return self._last
        cps = codepoints(doc.text.lower())
        ends = _SENTENCE_END[np.minimum(cps, 0xFFFF)]
        self._last = Analysis(doc, cps, tokenize(cps), self.models.score(cps, ends))
        return self._last

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "_models": None, "_last": None}


class LanguageCheck(_Step):
    """Keeps a document whose detected language matches its source's tag (see settings.UNCHECKED_TAGS)."""

    name = "language check"

    def __init__(self, ledger: Ledger, analyser: Analyser, settings: dict):
        super().__init__(ledger, "language")
        self.analyser = analyser
        self.check = settings["language"]["check"]
        self.min_confidence = settings["language"]["min_confidence"]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        labels = self.analyser.models.language.labels
        for doc in data or ():
            t0 = time.perf_counter()
            source, tag = doc.metadata["source"], doc.metadata.get("tag", "")
            self.ledger.entered("language", source, len(doc.text))
            probs = self.analyser.of(doc).scores.language
            best = int(np.argmax(probs))
            doc.metadata["language"] = labels[best]
            problem = self._problem(tag, probs, labels) if self.check else None
            if problem:
                self.ledger.dropped("language", source, "language:mismatch", doc.id, doc.text, problem)
                self._time(t0)
                continue
            self.ledger.kept("language", source, len(doc.text))
            self._time(t0)
            yield doc

    def _problem(self, tag: str, probs: np.ndarray, labels: tuple[str, ...]) -> str | None:
        found = labels[int(np.argmax(probs))]
        if tag in labels:
            p = float(probs[labels.index(tag)])
            return None if p >= self.min_confidence else f"expected {tag}, found {found} ({p:.2f} for {tag})"
        if tag in _CHECKED_AGAINST:
            excluded = _CHECKED_AGAINST[tag]
            p = float(sum(probs[labels.index(lang)] for lang in excluded))
            return None if p < self.min_confidence else f"expected neither {' nor '.join(excluded)}, found {found}"
        return None


class QualityFilter(_Step):
    """Rules, then the classifier's score: a quality level 1-5; keeps levels at or above the recipe's minimum."""

    name = "quality"

    def __init__(self, ledger: Ledger, analyser: Analyser, settings: dict):
        super().__init__(ledger, "quality")
        self.analyser = analyser
        self.families = tuple(settings["quality"]["rules"])
        self.min_level = settings["quality"]["min_level"]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data or ():
            t0 = time.perf_counter()
            source = doc.metadata["source"]
            self.ledger.entered("quality", source, len(doc.text))
            analysis = self.analyser.of(doc)
            language = doc.metadata.get("language") or doc.metadata.get("tag", "")
            failed = rules.check(doc.text, language, analysis.tokens, self.families)
            score = analysis.scores.quality
            level = quality_level(failed is not None, score)
            doc.metadata["level"] = level
            self.ledger.levels[source][level] += 1
            if level < self.min_level:
                rule = failed or "quality:classifier"
                detail = f"level {level}" + ("" if failed else f", score {score:.2f}")
                self.ledger.dropped("quality", source, rule, doc.id, doc.text, detail)
                self._time(t0)
                continue
            self.ledger.kept("quality", source, len(doc.text))
            self._time(t0)
            yield doc


class ToxicityFilter(_Step):
    """Drops a document that holds a listed word (per language) or whose worst sentence scores above the limit."""

    name = "toxicity"

    def __init__(self, ledger: Ledger, analyser: Analyser, settings: dict):
        super().__init__(ledger, "toxicity")
        self.analyser = analyser
        self.words = WordLists() if settings["toxicity"]["word_lists"] else None
        self.max_score = settings["toxicity"]["max_score"]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data or ():
            t0 = time.perf_counter()
            source = doc.metadata["source"]
            self.ledger.entered("toxicity", source, len(doc.text))
            analysis = self.analyser.of(doc)
            hit = self.words.find(doc.text, analysis.tokens) if self.words else None
            if hit:
                term, dimension = hit
                self.ledger.dropped("toxicity", source, f"toxicity:words:{dimension}", doc.id, doc.text, term)
                self._time(t0)
                continue
            score = analysis.scores.toxicity
            if score > self.max_score:
                self.ledger.dropped("toxicity", source, "toxicity:classifier", doc.id, doc.text, f"score {score:.2f}")
                self._time(t0)
                continue
            self.ledger.kept("toxicity", source, len(doc.text))
            self._time(t0)
            yield doc


class Sequence(PipelineStep):
    """Numbers the documents a task keeps (metadata task, idx): the key the dedup stages use."""

    name = "sequence"
    type = "prep"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for idx, doc in enumerate(data or ()):
            doc.metadata["task"] = rank
            doc.metadata["idx"] = idx
            yield doc


class WriteDocs(PipelineStep):
    """Writes the documents a task keeps to `<out_dir>/<rank>.jsonl` (text, id, metadata; what the later stages
    read with datatrove's JsonlReader), under a temporary name renamed when the task's last document is written.

    Why not datatrove's JsonlWriter: per document it formats its output file name twice from a template and
    updates its statistics, about as much work as the language check's hashing; this folder is always local to
    the job and one file per task, which needs none of that."""

    name = "write documents"
    type = "prep"

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = Path(self.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{rank:05d}.jsonl"
        partial = folder / f".{rank:05d}.jsonl.tmp"
        with partial.open("wb") as fh:
            for doc in data or ():
                fh.write(orjson.dumps({"text": doc.text, "id": doc.id, "metadata": doc.metadata},
                                      option=orjson.OPT_APPEND_NEWLINE))  # fmt: skip
                yield doc
        os.replace(partial, final)


def content_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class Signatures(_Step):
    """Exact-content hash, order key and (with SimHash) fingerprint of every kept document: `sigs/<rank>.npz`."""

    name = "signatures"

    def __init__(self, ledger: Ledger, analyser: Analyser, out_dir: str, simhash: SimHashConfig | None):
        super().__init__(ledger, "signatures")
        self.analyser = analyser
        self.out_dir = out_dir
        self.simhash = simhash

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        exact: list[int] = []
        order: list[list[int]] = []
        prints: list[np.ndarray] = []
        for doc in data or ():
            t0 = time.perf_counter()
            exact.append(content_hash(doc.text))
            order.append(doc.metadata.get("order") or [0, 0, 0])
            if self.simhash is not None:
                prints.append(fingerprint(self.analyser.of(doc).tokens.hashes, self.simhash))
            self._time(t0)
            yield doc
        words = self.simhash.words if self.simhash else 0
        arrays: dict[str, Any] = {  # np.savez's keywords are arrays (its stubs read **kwargs as allow_pickle too)
            "exact": np.array(exact, dtype=np.uint64),
            "order": np.array(order, dtype=np.int64).reshape(-1, 3),
            "simhash": np.stack(prints) if prints else np.zeros((0, words), dtype=np.uint64),
        }
        path = Path(self.out_dir) / f"{rank:05d}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(path, buffer.getvalue())


class StageEnd(PipelineStep):
    """Last step of every stage: drains the pipeline, writes the task's ledger, and on a malformed source writes
    `errors/<stage>-<rank>.json` (what the driver reports, also when the task ran on another node)."""

    name = "stage end"
    type = "prep"

    def __init__(self, ledger: Ledger, stage: str, work_dir: str, ensure_files: tuple[str, ...] = ()):
        super().__init__()
        self.ledger = ledger
        self.stage = stage
        self.work_dir = work_dir
        # Files every task must leave, empty when it kept nothing, so that task i of the next stage reads file i.
        self.ensure_files = ensure_files

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = Path(self.work_dir)
        try:
            for _ in data or ():
                pass
        except MalformedSource as exc:
            write_json(work / "errors" / f"{self.stage}-{rank:05d}.json", exc.to_json())
            raise
        for template in self.ensure_files:
            path = work / template.format(rank=rank)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        self.ledger.write(
            work / "stats" / self.stage / f"{rank:05d}.json", work / "removed" / self.stage / f"{rank:05d}.jsonl"
        )
        return
        yield  # a generator, as datatrove expects of a step
