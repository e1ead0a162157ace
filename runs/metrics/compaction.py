"""Compaction: small ingest blocks merged into larger ones, tier by tier, each merged block with the rollups that
zoomed-out reads use.

Ingest appends one block per key and batch (tier 0) and reports the series whose blocks are due (`merge_due`);
`metrics_compact_due` merges them later, in one transaction for all of them. The set of stored steps is the same
before and after each merge's commit, so compaction runs safely beside ingest and reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import psycopg
from django.db import connection, transaction

from runs.metrics import rollups as ru
from runs.metrics.sql import id_in, pg_cursor

# Ingest blocks (tier 0) are small: one step each from a stepwise reporter. TIER0_FANOUT of them make a tier-1
# block, which shares a merge's fixed cost (statements, commit) among many. Blocks of many steps each go sooner,
# from COMPACT_FANOUT blocks on, once they hold TIER0_POINTS: a zoomed-out chart reads merged blocks' rollups but
# unmerged blocks whole.
COMPACT_FANOUT = 16
TIER0_FANOUT = 256
TIER0_POINTS = 4096
# Merged blocks carry rollups, so a chart reads many of them cheaply, and every tier rewrites each point once
# more: TIER_FANOUT blocks of a tier make one of the next, so that batches of 50 steps go from tier 1 to final
# blocks in one more merge.
TIER_FANOUT = 64


def merge_due(tier: int, blocks: int, points: int) -> bool:
    """Whether a tier's blocks (how many, with how many points in all) are merged into one of the next tier."""
    if tier:
        return blocks >= TIER_FANOUT
    return blocks >= TIER0_FANOUT or (blocks >= COMPACT_FANOUT and points >= TIER0_POINTS)


MAX_BLOCK_POINTS = 262_144  # a merge larger than this is cut into final blocks of this size
FINAL_TIER = 99


class MergedBlock(NamedTuple):
    """A block a merge writes: the ingest block's columns and its three rollups."""

    series_id: int
    step_lo: int
    step_hi: int
    n: int
    vmin: float | None
    vmax: float | None
    steps: bytes
    values: bytes
    nonfinite: int
    tier: int
    rollup: bytes
    rollup_mid: bytes
    rollup_coarse: bytes


def metrics_compact_due(series_ids: Iterable[int]) -> int:
    """metrics_compact for several series (those an ingest found due): one transaction, one commit, and a few
    statements for all of them; returns blocks merged."""
    ids = sorted(set(series_ids))
    if not ids:
        return 0
    counts: dict[int, dict[int, tuple[int, int]]] = {}  # series -> tier -> (blocks, points)
    with connection.cursor() as cursor:
        where, params = id_in("series_id", ids)
        cursor.execute(
            f"SELECT series_id, tier, COUNT(*), SUM(n) FROM runs_metricblock WHERE {where} AND tier < %s "
            "GROUP BY series_id, tier",
            [*params, FINAL_TIER],
        )
        for series_id, tier, count, points in cursor.fetchall():
            counts.setdefault(series_id, {})[tier] = (count, int(points))
    due = [sid for sid in ids if any(merge_due(tier, *size) for tier, size in counts.get(sid, {}).items())]
    if not due:
        return 0
    # On PostgreSQL, a server-binding cursor with binary results: the blocks' arrays travel as bytes, where a
    # client-binding cursor would send each merged block as a hex literal in the statement's text and read each
    # block back as hex.
    with transaction.atomic(), pg_cursor() if connection.vendor == "postgresql" else connection.cursor() as cursor:
        merges = _Merges(cursor)
        for series_id in _compaction_locks(cursor, due):
            tiers = counts[series_id]
            for tier in sorted(tiers):
                if merge_due(tier, *tiers.get(tier, (0, 0))) and merges.merge(series_id, tier):
                    blocks, points = tiers.get(tier + 1, (0, 0))
                    tiers[tier + 1] = (blocks + 1, points)  # a later tier's rule counts blocks only
        merges.finish()
    return merges.merged


def metrics_compact(*, series_id: int) -> int:
    """Merge each tier of a series that is due (merge_due) into the next tier; returns blocks merged.

    Safe beside ingest (the set of stored steps is the same before and after each merge's commit) and beside
    another compaction of the same series (an advisory lock on PostgreSQL; the second one leaves).
    """
    return metrics_compact_due([series_id])


def _compaction_locks(cursor, series_ids: list[int]) -> list[int]:
    """The series this transaction may compact: on PostgreSQL, those whose advisory lock it got (one statement)."""
    if connection.vendor != "postgresql":
        return series_ids  # SQLite transactions here are IMMEDIATE: one writer at a time already
    cursor.execute(
        "SELECT " + ", ".join(["pg_try_advisory_xact_lock(%s, %s)"] * len(series_ids)),
        [v for sid in series_ids for v in (0x6D657472, sid % 2**31)],
    )
    return [sid for sid, got in zip(series_ids, cursor.fetchone(), strict=True) if got]


class _Merges:
    """The merges of one compaction transaction: blocks read a tier at a time, written and deleted together."""

    FLUSH_POINTS = 1_000_000  # merged points held in memory before they are written

    def __init__(self, cursor):
        self.cursor = cursor
        self.values_col = connection.ops.quote_name("values")
        self.pieces: list[MergedBlock] = []
        self.held = 0
        self.old_ids: list[int] = []
        self.pending: dict[int, int] = {}  # series -> tier-0 blocks merged
        self.merged = 0

    def merge(self, series_id: int, tier: int) -> bool:
        if any(block.series_id == series_id and block.tier == tier for block in self.pieces):
            self._write()  # this tier gained a block from the merge below it: read it too
        sql = (
            f"SELECT id, steps, {self.values_col} FROM runs_metricblock WHERE series_id = %s AND tier = %s "
            "ORDER BY step_lo, id"
        )
        if isinstance(self.cursor, psycopg.Cursor):
            self.cursor.execute(sql, [series_id, tier], binary=True)
        else:
            self.cursor.execute(sql, [series_id, tier])
        rows = self.cursor.fetchall()
        if not merge_due(tier, len(rows), sum(len(r[1]) for r in rows) // 8):
            return False
        steps = np.concatenate([ru.unpack_steps(bytes(r[1])) for r in rows])
        values = np.concatenate([ru.unpack_values(bytes(r[2])) for r in rows])
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        if steps.size > 1 and not bool(np.all(steps[1:] > steps[:-1])):
            steps, first = np.unique(steps, return_index=True)
            values = values[first]
        for start in range(0, steps.size, MAX_BLOCK_POINTS):
            piece_steps = steps[start : start + MAX_BLOCK_POINTS]
            final = piece_steps.size == MAX_BLOCK_POINTS
            self.pieces.append(
                _block_row(
                    series_id, piece_steps, values[start : start + MAX_BLOCK_POINTS], FINAL_TIER if final else tier + 1
                )
            )
        self.old_ids += [r[0] for r in rows]
        if tier == 0:
            self.pending[series_id] = self.pending.get(series_id, 0) + len(rows)
        self.merged += len(rows)
        self.held += steps.size
        if self.held >= self.FLUSH_POINTS:
            self._write()
        return True

    def _write(self) -> None:
        for start in range(0, len(self.pieces), 100):
            part = self.pieces[start : start + 100]
            self.cursor.execute(
                "INSERT INTO runs_metricblock (series_id, step_lo, step_hi, n, vmin, vmax, steps, "
                f"{self.values_col}, nonfinite, tier, rollup, rollup_mid, rollup_coarse) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(part)),
                [v for block in part for v in block],
            )
        for start in range(0, len(self.old_ids), 500):
            where, params = id_in("id", self.old_ids[start : start + 500])
            self.cursor.execute(f"DELETE FROM runs_metricblock WHERE {where}", params)
        self.pieces, self.held = [], 0
        self.old_ids = []

    def finish(self) -> None:
        self._write()
        if not self.pending:
            return
        # Last, and in id order (the order ingest locks series rows in): the series rows stay locked only for
        # the commit.
        self.cursor.executemany(
            "UPDATE runs_metricseries SET pending_blocks = CASE WHEN pending_blocks > %s THEN pending_blocks - %s "
            "ELSE 0 END WHERE id = %s",
            [[n, n, sid] for sid, n in sorted(self.pending.items())],
        )


def _block_row(series_id: int, steps: np.ndarray, values: np.ndarray, tier: int) -> MergedBlock:
    vmin, vmax, bad = ru.finite_min_max(values)
    return MergedBlock(
        series_id,
        int(steps[0]),
        int(steps[-1]),
        int(steps.size),
        vmin,
        vmax,
        ru.pack_steps(steps),
        ru.pack_values(values),
        bad,
        tier,
        ru.pack_rollup(ru.rollup(steps, values, ru.ROLLUP_FINE)),
        ru.pack_rollup(ru.rollup(steps, values, ru.ROLLUP_MID)),
        ru.pack_rollup(ru.rollup(steps, values, ru.ROLLUP_COARSE)),
    )
