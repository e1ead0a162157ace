"""Personal API tokens for scripts and the command-line client: made by operators and admins for themselves,
kept as a SHA-256 digest, revocable, every issue and revocation audited."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any, NamedTuple

from django.db import transaction
from django.utils import timezone

from runs.models import ApiToken
from runs.services.audit import audit_record

PREFIX = "cpat_"  # tells a personal token apart from a run's ingest token at a glance (and in secret scanners)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}\Z")
MAX_ACTIVE_PER_USER = 20
# last_used_at is a hint for the person, not an audit record: written at most this often per token.
TOUCH_EVERY = timedelta(minutes=1)


class TokenRefused(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class IssuedToken(NamedTuple):
    token: ApiToken
    secret: str  # shown once; never stored


def api_token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def api_token_create(*, user: Any, name: str, actor: Any = None) -> IssuedToken:
    """A new token acting as `user`; only people who may change things (operators, admins) get one."""
    name = (name or "").strip()
    if not NAME.match(name):
        raise TokenRefused("name", "Name the token with letters, digits, spaces, '.', '_' or '-' (at most 64).")
    if not user.is_active or not user.has_perm("runs.add_run"):
        raise TokenRefused("user", f"{user.get_username()} is not an operator or admin; only they get API tokens.")
    secret = PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        active = ApiToken.objects.select_for_update().filter(user=user, revoked_at__isnull=True)
        if active.count() >= MAX_ACTIVE_PER_USER:
            raise TokenRefused("name", f"You have {MAX_ACTIVE_PER_USER} active tokens; revoke one first.")
        token = ApiToken.objects.create(user=user, name=name, digest=api_token_digest(secret), prefix=secret[:12])
        audit_record(actor=actor or user, action="api_token.create", obj=token, message=f"{name} ({token.prefix}...)")
    return IssuedToken(token, secret)


def api_token_revoke(*, token: ApiToken, actor: Any) -> ApiToken:
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if not updated:
            raise TokenRefused("token", f"Token {token.name!r} is already revoked.")
        token.refresh_from_db()
        audit_record(actor=actor, action="api_token.revoke", obj=token, message=f"{token.name} ({token.prefix}...)")
    return token


def api_token_user(secret: str) -> Any | None:
    """The active user a token acts as, or None (unknown, revoked, or the user deactivated)."""
    if not secret or not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user").filter(digest=api_token_digest(secret), revoked_at__isnull=True).first()
    )
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
