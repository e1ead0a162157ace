"""Append to and verify the hash-chained audit trail."""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.models import AuditChainHead, AuditEvent

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
    return hashlib.sha256(_canonical(_link_fields(event)).encode()).hexdigest()


def audit_record(
    *,
    actor: Any,
    action: str,
    obj: Any = None,
    run_id: int | None = None,
    message: str = "",
    diff: dict | None = None,
) -> AuditEvent:
    """Append one event. `actor` is a user, None or the string 'system' (automatic actions)."""
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
    return event


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str = ""


def audit_verify(*, batch: int = 2000) -> ChainReport:
    """Walk the chain in id order; name the first event whose stored hash or link does not hold."""
    prev = GENESIS
    checked = 0
    last_id = 0
    while True:
        events = list(AuditEvent.objects.filter(pk__gt=last_id).order_by("pk")[:batch])
        if not events:
            break
        for event in events:
            if event.prev_hash != prev:
                return ChainReport(
                    False, checked, event.pk, "its prev_hash does not match the hash of the event before it"
                )
            if event_hash(event) != event.hash:
                return ChainReport(
                    False, checked, event.pk, "its content no longer matches its hash (the row was edited)"
                )
            prev = event.hash
            checked += 1
            last_id = event.pk
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and head.last_hash != prev:
        return ChainReport(
            False, checked, head.last_event_id, "the newest events are missing (the chain head points past them)"
        )
    return ChainReport(True, checked)
