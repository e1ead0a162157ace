"""Run tokens: which bearer secret may write into which run, and until when.

A token is a random secret handed to a job (kind job, one per attempt) or to an operator for a script run outside
the product (kind operator). The database keeps its SHA-256 only (runs.models.RunToken); the secret is shown once,
written once to the run directory (mode 0600), and never audited or logged.

The rules, all in `token_state`:
- a token is valid for its own run only;
- a job token is valid while its attempt is the run's current attempt and the run is active; when the run ends it
  stays valid for JOB_TOKEN_GRACE_S more, so that the reporter's final flush lands; issuing the next attempt's job
  token revokes the previous one (rotation);
- an operator token is valid until it expires (OPERATOR_TOKEN_TTL_S after issue unless given) or is revoked, and
  while the run has not ended (the same grace);
- any token can be revoked; a revoked or expired token is refused at once by the process that revoked it and
  within TOKEN_CACHE_TTL_S by every other process (the ingest hot path's per-process cache, which asks the database
  nothing about a token it checked lately).
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import threading
import time
from typing import Any, NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from runs.models import Run, RunToken, TokenKind
from runs.models.run import TERMINAL_STATUSES
from runs.services.audit import audit_record

TOKEN_PREFIX = "cpt_"
_TOKEN_CACHE_MAX = 10_000


class TokenRefused(ValueError):
    """A token cannot be issued (the run ended, a wrong kind); the message says why."""


class IssuedToken(NamedTuple):
    secret: str  # shown once; never stored
    token: RunToken


class TokenState(NamedTuple):
    live: bool
    reason: str  # why it is not live ("revoked", "expired", ...), or "" when live
    until: datetime.datetime | None  # when it stops being live at the latest; None: not bounded in time


def token_cache_ttl_s() -> float:
    return float(settings.TOKEN_CACHE_TTL_S)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_state(token: RunToken, run: Run, *, now: datetime.datetime | None = None) -> TokenState:
    """Whether `token` lets a client write into `run` now (the one place the rules live)."""
    now = now or timezone.now()
    if token.run_id != run.pk:
        return TokenState(False, "issued for another run", None)
    if token.revoked_at is not None:
        return TokenState(False, "revoked", None)
    until = token.expires_at
    if until is not None and until <= now:
        return TokenState(False, "expired", None)
    if token.kind == TokenKind.JOB and token.attempt != run.attempt:
        return TokenState(False, f"attempt {token.attempt} is over (the run is on attempt {run.attempt})", None)
    if token.kind == TokenKind.JOB and run.status == "draft":
        return TokenState(False, "the run has not been launched", None)
    if run.status in TERMINAL_STATUSES:
        ended = run.finished_at or run.updated_at or now
        grace_end = ended + datetime.timedelta(seconds=settings.TOKEN_GRACE_S)
        if grace_end <= now:
            return TokenState(False, "the run has ended", None)
        until = grace_end if until is None else min(until, grace_end)
    return TokenState(True, "", until)


def run_token_issue(
    *,
    run: Run,
    kind: str,
    actor: Any = None,
    attempt: int | None = None,
    label: str = "",
    ttl_s: float | None = None,
    job_attempt: Any = None,
) -> IssuedToken:
    """A new token for `run`. A job token (for `attempt`, the run's current one by default) revokes the run's
    earlier job tokens; an operator token expires after `ttl_s` (OPERATOR_TOKEN_TTL_S by default). A job token is tied
    to `job_attempt` (runs.models.Attempt; the run's live attempt by default)."""
    if kind not in TokenKind.values:
        raise TokenRefused(f"kind must be one of {', '.join(TokenKind.values)}, not {kind!r}")
    run.refresh_from_db(fields=["status", "attempt", "finished_at", "updated_at"])
    if kind == TokenKind.OPERATOR and run.status in TERMINAL_STATUSES:
        raise TokenRefused(f"Run #{run.pk} has ended ({run.status}); a token for it would never be accepted.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    expires_at = None
    if kind == TokenKind.OPERATOR:
        ttl = settings.OPERATOR_TOKEN_TTL_S if ttl_s is None else ttl_s
        expires_at = now + datetime.timedelta(seconds=ttl)
        attempt = None
    else:
        if job_attempt is None:
            from runs.services.attempts import attempt_live

            job_attempt = attempt_live(run=run)
        if attempt is None:
            attempt = job_attempt.number if job_attempt is not None else run.attempt
    user = None if actor is None or isinstance(actor, str) else actor
    with transaction.atomic():
        rotated = []
        if kind == TokenKind.JOB:
            earlier = RunToken.objects.select_for_update().filter(run=run, kind=TokenKind.JOB, revoked_at__isnull=True)
            rotated = list(earlier.values_list("pk", flat=True))
            earlier.update(revoked_at=now)
        token = RunToken.objects.create(
            run=run,
            kind=kind,
            attempt=attempt,
            job_attempt=job_attempt if kind == TokenKind.JOB else None,
            digest=token_digest(secret),
            hint=secret[-4:],
            label=label[:100],
            issued_by=user,
            expires_at=expires_at,
        )
        audit_record(
            actor=actor,
            action="run.token_issued",
            obj=run,
            message=f"{kind} token …{token.hint} issued",
            diff={
                "token": token.pk,
                "kind": kind,
                "attempt": attempt,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "revoked": rotated,
            },
        )
    _cache.clear_run(run.pk)
    return IssuedToken(secret, token)


def run_token_revoke(*, token: RunToken, actor: Any, reason: str = "") -> bool:
    """Revoke one token; False when it was already revoked."""
    user = None if actor is None or isinstance(actor, str) else actor
    with transaction.atomic():
        changed = RunToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=user
        )
        if changed:
            audit_record(
                actor=actor,
                action="run.token_revoked",
                obj=token.run,
                message=(f"{token.kind} token …{token.hint} revoked" + (f": {reason}" if reason else ""))[:500],
                diff={"token": token.pk, "kind": token.kind, "attempt": token.attempt},
            )
    token.refresh_from_db()
    _cache.clear_run(token.run_id)
    return bool(changed)


def run_tokens_revoke(*, run: Run, actor: Any, kind: str | None = None, reason: str = "") -> int:
    """Revoke every live token of the run (of one kind when given); how many were revoked."""
    tokens = RunToken.objects.filter(run=run, revoked_at__isnull=True).select_related("run")
    if kind is not None:
        tokens = tokens.filter(kind=kind)
    return sum(run_token_revoke(token=token, actor=actor, reason=reason) for token in tokens)


def run_tokens(*, run: Run) -> list[tuple[RunToken, TokenState]]:
    """The run's tokens, newest first, each with its state now (for the run page)."""
    run.refresh_from_db(fields=["status", "attempt", "finished_at", "updated_at"])
    now = timezone.now()
    return [(token, token_state(token, run, now=now)) for token in RunToken.objects.filter(run=run)]


def _check(run_id: int, token: str) -> tuple[Run, TokenState] | None:
    if not token or len(token) > 200:
        return None
    row = RunToken.objects.filter(digest=token_digest(token)).select_related("run", "run__cluster").first()
    if row is None or row.run_id != run_id:
        return None
    state = token_state(row, row.run)
    return (row.run, state) if state.live else None


def run_token_check(*, run_id: int, token: str) -> Run | None:
    """The run, if `token` is valid for it now; None for a wrong, revoked or expired token and a missing run alike."""
    checked = _check(run_id, token)
    return checked[0] if checked else None


class _TokenCache:
    """(run id, token digest) -> the run as checked, until a monotonic deadline; only positive answers are kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, str], tuple[float, Run]] = {}

    def get(self, run_id: int, digest: str) -> Run | None:
        entry = self._entries.get((run_id, digest))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, run_id: int, digest: str, run: Run, deadline: float) -> None:
        with self._lock:
            if len(self._entries) >= _TOKEN_CACHE_MAX:
                now = time.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] >= now}
                if len(self._entries) >= _TOKEN_CACHE_MAX:
                    self._entries.clear()
            self._entries[(run_id, digest)] = (deadline, run)

    def clear_run(self, run_id: int) -> None:
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if k[0] != run_id}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _TokenCache()


def run_token_check_cached(*, run_id: int, token: str) -> Run | None:
    """run_token_check behind a per-process cache: the ingest hot path's authentication.

    An answer is kept for TOKEN_CACHE_TTL_S, or until the token's own end when that comes sooner. The cached Run is
    a snapshot (config, cluster); ingest reads the live status and step from the database.
    """
    digest = token_digest(token or "")
    run = _cache.get(run_id, digest)
    if run is not None:
        return run
    checked = _check(run_id, token)
    if checked is None:
        return None
    run, state = checked
    deadline = time.monotonic() + token_cache_ttl_s()
    if state.until is not None:
        deadline = min(deadline, time.monotonic() + (state.until - timezone.now()).total_seconds())
    _cache.put(run_id, digest, run, deadline)
    return run


def run_token_cached(*, run_id: int, token: str) -> Run | None:
    """The run, if this process checked `token` as valid for it within TOKEN_CACHE_TTL_S; None otherwise (a wrong
    token, or one not checked lately). Asks the database nothing, so an event loop may call it."""
    return _cache.get(run_id, token_digest(token or ""))


def token_cache_clear() -> None:
    _cache.clear()
