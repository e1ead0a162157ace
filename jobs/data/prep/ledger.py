"""Per-task counts of every stage, merged into the job's report.

Each task's steps share one Ledger (the steps of one pipeline hold the same object, and datatrove copies a
pipeline per task as a whole, so the sharing survives). The task's last step writes it to
`work/stats/<stage>/<rank>.json`; the driver sums those files. A ledger counts, per source and stage,
documents and characters in and out, and per removal rule the documents it removed with a few examples.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from jobs.common.atomic import write_atomic, write_json

EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 400


class Ledger:
    def __init__(self) -> None:
        self.stages: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(_counts))
        self.removed: dict[str, dict[str, Any]] = {}
        self.levels: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
        self.languages: dict[str, dict[str, int]] = defaultdict(lambda: {"docs": 0, "chars": 0, "tokens": 0})
        self.seconds: dict[str, float] = defaultdict(float)
        # Every removal as (document id, rule, detail): work/removed/<stage>/<rank>.jsonl, the full list behind
        # the examples.
        self.removals: list[tuple[str, str, str]] = []

    def entered(self, stage: str, source: str, chars: int) -> None:
        row = self.stages[source][stage]
        row["docs_in"] += 1
        row["chars_in"] += chars

    def kept(self, stage: str, source: str, chars: int, tokens: int = 0) -> None:
        row = self.stages[source][stage]
        row["docs_out"] += 1
        row["chars_out"] += chars
        row["tokens_out"] += tokens

    def dropped(self, stage: str, source: str, rule: str, doc_id: str, text: str, detail: str = "") -> None:
        record = self.removed.setdefault(
            rule, {"stage": stage, "count": 0, "by_source": defaultdict(int), "examples": []}
        )
        record["count"] += 1
        record["by_source"][source] += 1
        self.removals.append((doc_id, rule, detail))
        if len(record["examples"]) < EXAMPLES_PER_RULE:
            example = {"source": source, "id": doc_id, "text": text[:EXAMPLE_CHARS]}
            if detail:
                example["detail"] = detail
            record["examples"].append(example)

    def counted(self, stage: str, source: str, rule: str) -> None:
        """A removal without an example to show (documents cut from the mix by weight)."""
        record = self.removed.setdefault(
            rule, {"stage": stage, "count": 0, "by_source": defaultdict(int), "examples": []}
        )
        record["count"] += 1
        record["by_source"][source] += 1

    def to_json(self) -> dict:
        return {
            "stages": {src: {st: dict(c) for st, c in rows.items()} for src, rows in self.stages.items()},
            "removed": {rule: {**r, "by_source": dict(r["by_source"])} for rule, r in self.removed.items()},
            "levels": dict(self.levels),
            "languages": dict(self.languages),
            "seconds": dict(self.seconds),
        }

    def write(self, path: Path, removals: Path | None = None) -> None:
        if removals is not None:
            removals.parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"id": i, "rule": r, "detail": d}, ensure_ascii=False) for i, r, d in self.removals]
            write_atomic(removals, "".join(line + "\n" for line in lines))
        write_json(path, self.to_json())


def _counts() -> dict[str, int]:
    return {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0, "tokens_out": 0}


def merge(parts: list[dict]) -> dict:
    """Sum task ledgers (as written by Ledger.write); examples are kept up to EXAMPLES_PER_RULE per rule."""
    out: dict[str, Any] = {"stages": {}, "removed": {}, "levels": {}, "languages": {}, "seconds": {}}
    for part in parts:
        for src, rows in part.get("stages", {}).items():
            for stage, counts in rows.items():
                row = out["stages"].setdefault(src, {}).setdefault(stage, _counts())
                for key, value in counts.items():
                    row[key] = row.get(key, 0) + value
        for rule, record in part.get("removed", {}).items():
            into = out["removed"].setdefault(
                rule, {"stage": record["stage"], "count": 0, "by_source": {}, "examples": []}
            )
            into["count"] += record["count"]
            for src, n in record["by_source"].items():
                into["by_source"][src] = into["by_source"].get(src, 0) + n
            room = EXAMPLES_PER_RULE - len(into["examples"])
            into["examples"] += record["examples"][: max(0, room)]
        for src, levels in part.get("levels", {}).items():
            into_levels = out["levels"].setdefault(src, [0] * 6)
            for i, n in enumerate(levels):
                into_levels[i] += n
        for lang, counts in part.get("languages", {}).items():
            row = out["languages"].setdefault(lang, {"docs": 0, "chars": 0, "tokens": 0})
            for key, value in counts.items():
                row[key] += value
        for step, secs in part.get("seconds", {}).items():
            out["seconds"][step] = out["seconds"].get(step, 0.0) + secs
    return out


def read_parts(folder: Path) -> list[dict]:
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


class Progress:
    """A task's live count (`work/progress/<stage>/<rank>.json`), rewritten at most every `interval` seconds."""

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self.docs = 0
        self.by_source: dict[str, int] = defaultdict(int)
        self._last = 0.0

    def tick(self, source: str) -> None:
        self.docs += 1
        self.by_source[source] += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.flush(done=False)

    def flush(self, *, done: bool) -> None:
        write_json(self.path, {"docs": self.docs, "by_source": dict(self.by_source), "done": done, "time": time.time()})
