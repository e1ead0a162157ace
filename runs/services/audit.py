"""Append to and verify the keyed, hash-chained audit trail.

Each event's link is an HMAC-SHA256 of its fields and the previous link, keyed with settings.AUDIT_KEY, which is
not in the database (var/audit_key, or CP_AUDIT_KEY): whoever can write the database can still edit rows, but
cannot compute links that verify. The newest link is also anchored outside the database: after each commit its
(id, hash) is appended to settings.AUDIT_ANCHOR, so a truncated tail, a removed chain head or an emptied table is
reported as a break, not as a shorter intact chain.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail import mail_admins
from django.db import transaction
from django.utils import timezone

from jobs.common.atomic import write_atomic
from runs.models import AuditChainHead, AuditEvent

log = logging.getLogger(__name__)
GENESIS = "0" * 64
SYSTEM = "system"


def _canonical(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _link_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "prev_hash": event.prev_hash,
        "created_at": event.created_at.astimezone(datetime.UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "run_id": event.run_id,
        "message": event.message,
        "diff": event.diff,
    }


def event_hash(event: AuditEvent) -> str:
    return hmac.new(settings.AUDIT_KEY.encode(), _canonical(_link_fields(event)).encode(), hashlib.sha256).hexdigest()


ANCHOR_TAIL_BYTES = 8192  # the newest lines of the anchor file are read; commits may append slightly out of order


def anchor_append(event_id: int, event_hash_: str) -> None:
    """Append one link to the anchor file (0600, O_APPEND: each line lands whole)."""
    path = Path(settings.AUDIT_ANCHOR)
    line = json.dumps({"id": event_id, "hash": event_hash_}, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def anchor_latest() -> tuple[int, str] | None:
    """The newest anchored (id, hash), or None when the anchor file is missing or empty."""
    try:
        with open(settings.AUDIT_ANCHOR, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - ANCHOR_TAIL_BYTES))
            tail = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    links = []
    for line in tail:
        try:
            link = json.loads(line)
            links.append((int(link["id"]), str(link["hash"])))
        except (ValueError, KeyError, TypeError):
            continue  # the first line of the tail may be cut
    return max(links) if links else None


def audit_record(
    *,
    actor: Any,
    action: str,
    obj: Any = None,
    run_id: int | None = None,
    message: str = "",
    diff: dict | None = None,
    target: tuple[str, str, str] | None = None,
) -> AuditEvent:
    """Append one event. `actor` is a user, None or the string 'system' (automatic actions). `target`: (type, id,
    repr) of an object that is not a model instance at hand (a deleted row, a login name)."""
    if actor is None or isinstance(actor, str):
        actor_id, actor_name = None, actor or SYSTEM
    else:
        actor_id, actor_name = actor.pk, actor.get_username()
    object_type = object_id = object_repr = ""
    if obj is not None:
        object_type = obj._meta.model_name
        object_id = str(obj.pk)
        object_repr = str(obj)[:200]
        if run_id is None and object_type == "run":
            run_id = obj.pk
    elif target is not None:
        object_type, object_id, object_repr = target[0][:64], target[1][:64], target[2][:200]
    # Round-trip through JSON now so the hashed form equals what the database hands back later.
    clean_diff = json.loads(_canonical(diff or {}))
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1, defaults={"last_hash": GENESIS})
        event = AuditEvent(
            created_at=timezone.now(),
            actor_id=actor_id,
            actor=actor_name[:150],
            action=action,
            object_type=object_type,
            object_id=object_id,
            object_repr=object_repr,
            run_id=run_id,
            message=message[:500],
            diff=clean_diff,
            prev_hash=head.last_hash,
        )
        event.hash = event_hash(event)
        event.save(force_insert=True)
        AuditChainHead.objects.filter(pk=1).update(last_hash=event.hash, last_event_id=event.pk)
        transaction.on_commit(lambda: anchor_append(event.pk, event.hash))
    return event


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str = ""


def audit_verify(*, batch: int = 2000) -> ChainReport:
    """Walk the chain in id order; name the first event whose stored hash or link does not hold, then check the
    chain head and the anchor outside the database."""
    prev = GENESIS
    checked = 0
    last_id = 0
    hashes_at: dict[int, str] = {}
    anchored = anchor_latest()
    while True:
        events = list(AuditEvent.objects.filter(pk__gt=last_id).order_by("pk")[:batch])
        if not events:
            break
        for event in events:
            if event.prev_hash != prev:
                return ChainReport(
                    False, checked, event.pk, "its prev_hash does not match the hash of the event before it"
                )
            if not hmac.compare_digest(event_hash(event), event.hash):
                return ChainReport(
                    False, checked, event.pk, "its content no longer matches its keyed hash (the row was edited)"
                )
            if anchored is not None and event.pk == anchored[0]:
                hashes_at[event.pk] = event.hash
            prev = event.hash
            checked += 1
            last_id = event.pk
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is None and checked:
        return ChainReport(False, checked, None, "the chain head is missing")
    if head is not None and head.last_hash != prev:
        return ChainReport(
            False, checked, head.last_event_id, "the newest events are missing (the chain head points past them)"
        )
    if anchored is None:
        if checked:
            return ChainReport(
                False, checked, None, f"the anchor outside the database ({settings.AUDIT_ANCHOR}) is missing"
            )
        return ChainReport(True, checked)
    if hashes_at.get(anchored[0]) != anchored[1]:
        return ChainReport(
            False,
            checked,
            anchored[0],
            f"event #{anchored[0]}, anchored outside the database, is missing or differs (truncated or rewritten)",
        )
    return ChainReport(True, checked)


def audit_status_path() -> Path:
    return Path(settings.VAR_DIR) / "audit_verify.json"


def audit_check_and_alert() -> ChainReport:
    """The scheduled check: verify, keep the outcome for the audit page, and on a break alert the admins (mail to
    settings.ADMINS and a critical log line)."""
    report = audit_verify()
    status = {
        "ok": report.ok,
        "checked": report.checked,
        "first_broken_id": report.first_broken_id,
        "reason": report.reason,
        "at": timezone.now().isoformat(timespec="seconds"),
    }
    write_atomic(audit_status_path(), json.dumps(status), mode=0o600)
    if not report.ok:
        where = f"event #{report.first_broken_id}" if report.first_broken_id else "the chain"
        text = f"The audit chain is broken at {where}: {report.reason} ({report.checked} events verified before it)."
        log.critical("%s", text)
        mail_admins("Audit chain broken", text + "\nRun `manage.py verify_audit` on the control plane.")
    return report


def audit_last_check() -> dict | None:
    """The scheduled check's last outcome, or None before the first."""
    try:
        return json.loads(audit_status_path().read_text())
    except (OSError, ValueError):
        return None
