"""Run ingest tokens: a random secret handed to the job, of which the database keeps only the SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Any

from django.db import transaction

from runs.models import Run
from runs.services.audit import audit_record

# How long one process trusts a token it has checked. Re-issuing a token (a relaunch) takes effect everywhere
# within this many seconds; in between, the hot ingest path asks the database nothing about the token.
TOKEN_CACHE_TTL_S = 15.0
_TOKEN_CACHE_MAX = 10_000


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def run_token_issue(*, run: Run, actor: Any = None) -> str:
    """A new token for the run (the previous one stops working). Only its digest is stored and audited."""
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(ingest_token_hash=token_digest(token))
        audit_record(actor=actor, action="run.token_issued", obj=run, message="ingest token issued")
    run.ingest_token_hash = token_digest(token)
    _cache.clear_run(run.pk)
    return token


def run_token_check(*, run_id: int, token: str) -> Run | None:
    """The run, if `token` is its current ingest token; None for a wrong token and for a missing run alike."""
    digest = token_digest(token or "")
    run = Run.objects.filter(pk=run_id).select_related("cluster").first()
    stored = run.ingest_token_hash if run is not None else ""
    # Compare even when there is no run or no token, so the answer takes the same time either way.
    ok = hmac.compare_digest(digest, stored or "0" * 64) and bool(stored) and bool(token)
    return run if ok else None


class _TokenCache:
    """(run id, token digest) -> the run as checked, for TOKEN_CACHE_TTL_S; only positive answers are kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, str], tuple[float, Run]] = {}

    def get(self, run_id: int, digest: str) -> Run | None:
        entry = self._entries.get((run_id, digest))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, run_id: int, digest: str, run: Run) -> None:
        with self._lock:
            if len(self._entries) >= _TOKEN_CACHE_MAX:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
                if len(self._entries) >= _TOKEN_CACHE_MAX:
                    self._entries.clear()
            self._entries[(run_id, digest)] = (time.monotonic() + TOKEN_CACHE_TTL_S, run)

    def clear_run(self, run_id: int) -> None:
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if k[0] != run_id}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _TokenCache()


def run_token_check_cached(*, run_id: int, token: str) -> Run | None:
    """run_token_check behind a per-process cache: the ingest hot path's authentication.

    The cached Run is a snapshot (config, cluster); ingest reads the live status and step from the database.
    """
    digest = token_digest(token or "")
    run = _cache.get(run_id, digest)
    if run is not None:
        return run
    run = run_token_check(run_id=run_id, token=token)
    if run is not None:
        _cache.put(run_id, digest, run)
    return run


def run_token_cached(*, run_id: int, token: str) -> Run | None:
    """The run, if this process checked `token` as its token within TOKEN_CACHE_TTL_S; None otherwise (a wrong
    token, or one not checked lately). Asks the database nothing, so an event loop may call it."""
    return _cache.get(run_id, token_digest(token or ""))


def token_cache_clear() -> None:
    _cache.clear()
