"""Deduplication across the whole recipe: find (one task over every task's signatures), then drop.

Exact duplicates share the content hash; near duplicates come from SimHash (jobs.data.prep.simhash), or from
datatrove's MinHash stages when the recipe asks for MinHash. Of each group the document that comes first in the
input (source, file, line: the order key the reader sets) is kept, so the result does not depend on how many
tasks the job ran. The find stage writes `dedup/<task>.npz` per task of the filter stage: the
positions to drop as exact and as near duplicates, and for near ones the distance to the kept document.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from jobs.common.atomic import write_atomic, write_json
from jobs.data.prep.ledger import Ledger
from jobs.data.prep.simhash import SimHashConfig, clusters, distances, near_pairs


class FindDuplicates(PipelineStep):
    name = "find duplicates"
    type = "prep"

    def __init__(self, ledger: Ledger, sigs_dir: str, out_dir: str, tasks: int, exact: bool,
                 simhash: SimHashConfig | None):  # fmt: skip
        super().__init__()
        self.ledger = ledger
        self.sigs_dir, self.out_dir = sigs_dir, out_dir
        self.tasks = tasks
        self.exact = exact
        self.simhash = simhash

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        t0 = time.perf_counter()
        exact_parts, order_parts, print_parts, task_of, idx_of = [], [], [], [], []
        for task in range(self.tasks):
            with np.load(Path(self.sigs_dir) / f"{task:05d}.npz") as sig:
                exact_parts.append(sig["exact"])
                order_parts.append(sig["order"])
                print_parts.append(sig["simhash"])
                n = sig["exact"].shape[0]
            task_of.append(np.full(n, task, dtype=np.int64))
            idx_of.append(np.arange(n, dtype=np.int64))
        order = np.concatenate(order_parts) if order_parts else np.empty((0, 3), np.int64)
        # Rows in input order (source, file, line): the first of each group is the one to keep.
        rows = np.lexsort((order[:, 2], order[:, 1], order[:, 0])) if order.shape[0] else np.empty(0, np.int64)
        exact = np.concatenate(exact_parts)[rows] if exact_parts else np.empty(0, np.uint64)
        tasks, idx = np.concatenate(task_of)[rows], np.concatenate(idx_of)[rows]
        n = exact.shape[0]
        drop_exact = np.zeros(n, dtype=bool)
        if self.exact and n:
            _, first = np.unique(exact, return_index=True)
            drop_exact[:] = True
            drop_exact[first] = False
        drop_near = np.zeros(n, dtype=bool)
        near_distance = np.zeros(n, dtype=np.int32)
        pairs = 0
        if self.simhash is not None and n:
            alive = np.flatnonzero(~drop_exact)
            prints = np.concatenate(print_parts)[rows][alive]
            left, right, _ = near_pairs(prints, self.simhash)
            pairs = int(left.shape[0])
            rep = clusters(alive.shape[0], left, right)
            moved = np.flatnonzero(rep != np.arange(alive.shape[0]))
            drop_near[alive[moved]] = True
            near_distance[alive[moved]] = distances(prints[moved], prints[rep[moved]])
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for task in range(self.tasks):
            mine = tasks == task
            buffer = io.BytesIO()
            np.savez(
                buffer,
                exact=idx[mine & drop_exact],
                near=idx[mine & drop_near],
                near_distance=near_distance[mine & drop_near],
            )
            write_atomic(out / f"{task:05d}.npz", buffer.getvalue())
        write_json(out / "summary.json", {"documents": n, "exact": int(drop_exact.sum()),
                                          "near": int(drop_near.sum()), "near_pairs": pairs})  # fmt: skip
        self.ledger.seconds["dedup_find"] += time.perf_counter() - t0
        return
        yield


class DropDuplicates(PipelineStep):
    """Drops what FindDuplicates marked, keyed on each document's (task, idx); counts stage exact_dedup when
    `count`, and near_dedup too when `count_near` (not when datatrove's MinHash filter follows)."""

    name = "drop duplicates"
    type = "prep"

    def __init__(self, ledger: Ledger, dedup_dir: str, count: bool = True, count_near: bool = True):
        super().__init__()
        self.ledger = ledger
        self.dedup_dir = dedup_dir
        self.count = count
        self.count_near = count and count_near
        self._marks: dict[int, tuple[set[int], dict[int, int]]] = {}

    def _for_task(self, task: int) -> tuple[set[int], dict[int, int]]:
        if task not in self._marks:
            with np.load(Path(self.dedup_dir) / f"{task:05d}.npz") as marks:
                near = dict(zip(marks["near"].tolist(), marks["near_distance"].tolist(), strict=True))
                self._marks[task] = (set(marks["exact"].tolist()), near)
        return self._marks[task]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data or ():
            t0 = time.perf_counter()
            exact, near = self._for_task(int(doc.metadata["task"]))
            idx = int(doc.metadata["idx"])
            source = doc.metadata["source"]
            chars = len(doc.text)
            if self.count:
                self.ledger.entered("exact_dedup", source, chars)
            if idx in exact:
                if self.count:
                    self.ledger.dropped("exact_dedup", source, "dedup:exact", doc.id, doc.text)
                continue
            if self.count:
                self.ledger.kept("exact_dedup", source, chars)
            if self.count_near:
                self.ledger.entered("near_dedup", source, chars)
            if idx in near:
                if self.count_near:
                    detail = f"{near[idx]} bits from a kept document"
                    self.ledger.dropped("near_dedup", source, "dedup:simhash", doc.id, doc.text, detail)
                continue
            if self.count_near:
                self.ledger.kept("near_dedup", source, chars)
            self.ledger.seconds["dedup_drop"] += time.perf_counter() - t0
            yield doc


class CountNear(PipelineStep):
    """After datatrove's MinhashDedupFilter: what reaches here was kept by it (stage near_dedup, out side)."""

    name = "count near dedup"
    type = "prep"

    def __init__(self, ledger: Ledger, side: str):
        super().__init__()
        self.ledger = ledger
        self.side = side

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data or ():
            source = doc.metadata["source"]
            if self.side == "in":
                self.ledger.entered("near_dedup", source, len(doc.text))
            else:
                self.ledger.kept("near_dedup", source, len(doc.text))
            yield doc
