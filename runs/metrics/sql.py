"""Database helpers shared by the block store and compaction: a server-binding PostgreSQL cursor on Django's
connection, parameters in the compact forms the ingest statements take, and the planner settings of ingest
connections."""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import orjson
import psycopg
from django.db import connection


def pg_cursor() -> psycopg.Cursor:
    """A server-binding cursor on Django's connection, hence inside the current transaction. Django's own cursors
    bind on the client and never prepare; only statements executed here with prepare=True are prepared."""
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:  # Django's default: preparing off
        raw.prepare_threshold = 2**31 - 1
    return psycopg.Cursor(raw)


_INGEST_PLANNER = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off"
_planned: weakref.WeakSet = weakref.WeakSet()


def ingest_connection_setup() -> None:
    """Planner settings for this thread's connection, if it serves ingest only (the ingest endpoint's threads).

    The ingest statements find every row they touch by primary key, but for a table of a few pages (the runs and
    series of a small deployment) the planner prefers a sequential scan and a hash join, and a prepared statement
    keeps that plan for the connection's life. A hot table then grows with dead row versions whenever pruning is
    held back (while autovacuum analyzes the block table, say), and every ingest scans all of them. Outside a
    transaction only: a rollback would undo the SET.
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _planned:
        raw.execute(_INGEST_PLANNER)
        _planned.add(raw)


def bigint_array(ids: Iterable[int]) -> str:
    """PostgreSQL's text form of a bigint[] (for `%s::bigint[]`): psycopg's list adapter costs several times as
    much per statement as the text does."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def json_rows(names: tuple[str, ...], rows: Iterable[Iterable]) -> str:
    """Rows as a JSON array of objects, for json_to_recordset: one parameter whatever the number of rows."""
    return orjson.dumps([dict(zip(names, row, strict=True)) for row in rows]).decode()


def id_in(column: str, ids: list[int]) -> tuple[str, list]:
    """`column` is one of ids: one array parameter on PostgreSQL, so the statement's text (and psycopg's parse of
    it) is the same whatever the count; one `%s` per id elsewhere."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::bigint[])", [bigint_array(ids)]
    return f"{column} IN ({', '.join(['%s'] * len(ids))})", list(ids)
