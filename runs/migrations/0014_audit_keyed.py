"""The audit chain becomes keyed (HMAC, key outside the database) and TRUNCATE is refused on PostgreSQL.

Existing events were linked with plain SHA-256: their unkeyed chain is checked, then every link is recomputed with
the key in id order and the newest is anchored outside the database (settings.AUDIT_ANCHOR). The append-only
triggers are lifted for that one rewrite, inside this migration's transaction, and put back.
"""

import hashlib

from django.db import migrations

PG_TRUNCATE = """
CREATE TRIGGER runs_auditevent_no_truncate BEFORE TRUNCATE ON runs_auditevent
  FOR EACH STATEMENT EXECUTE FUNCTION runs_audit_append_only();
"""
SQLITE_NO_UPDATE = """CREATE TRIGGER runs_auditevent_no_update BEFORE UPDATE ON runs_auditevent
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on runs_auditevent refused'); END"""


def _rekey(apps, schema_editor):
    from runs.services.audit import GENESIS, _canonical, _link_fields, anchor_append, event_hash

    AuditEvent = apps.get_model("runs", "AuditEvent")
    AuditChainHead = apps.get_model("runs", "AuditChainHead")
    events = list(AuditEvent.objects.order_by("pk"))
    if not events:
        return
    prev, broken = GENESIS, None
    for event in events:  # the unkeyed chain as it was
        unkeyed = hashlib.sha256(_canonical(_link_fields(event)).encode()).hexdigest()
        if broken is None and (event.prev_hash != prev or unkeyed != event.hash):
            broken = event.pk
        prev = event.hash
    if broken is not None:
        print(f"\n  audit: the unkeyed chain was already broken at event #{broken}; keyed from here on as it stands")
    vendor = schema_editor.connection.vendor
    with schema_editor.connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute("ALTER TABLE runs_auditevent DISABLE TRIGGER runs_auditevent_append_only")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS runs_auditevent_no_update")
        prev = GENESIS
        for event in events:
            event.prev_hash = prev
            event.hash = event_hash(event)
            cursor.execute(
                "UPDATE runs_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
                [event.prev_hash, f"rekeying-{event.pk}", event.pk],  # unique, never a hash
            )
            prev = event.hash
        for event in events:  # a second pass: no transient clash with a not-yet-rewritten unique hash
            cursor.execute("UPDATE runs_auditevent SET hash = %s WHERE id = %s", [event.hash, event.pk])
        if vendor == "postgresql":
            cursor.execute("ALTER TABLE runs_auditevent ENABLE TRIGGER runs_auditevent_append_only")
        else:
            cursor.execute(SQLITE_NO_UPDATE)
    AuditChainHead.objects.update_or_create(pk=1, defaults={"last_hash": prev, "last_event_id": events[-1].pk})
    anchor_append(events[-1].pk, prev)


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRUNCATE)
    _rekey(apps, schema_editor)


def reverse(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS runs_auditevent_no_truncate ON runs_auditevent")


class Migration(migrations.Migration):
    dependencies = [("runs", "0013_mlflow_metric_history")]
    operations = [migrations.RunPython(forward, reverse)]
