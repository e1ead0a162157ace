"""The database itself refuses UPDATE and DELETE on the audit trail.

PostgreSQL: a row trigger raises on UPDATE or DELETE. TRUNCATE stays possible for the table's owner (Django's
test flush uses it); the hash chain's head then no longer matches and `verify_audit` reports the loss.
SQLite: triggers raise on UPDATE always and on DELETE while runs_audit_guard.locked = 1. The guard exists only so
the test suite's flush can empty the table on SQLite; nothing in the application unlocks it.
"""

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION runs_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit trail is append-only: % on runs_auditevent refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER runs_auditevent_append_only BEFORE UPDATE OR DELETE ON runs_auditevent
  FOR EACH ROW EXECUTE FUNCTION runs_audit_append_only();
"""
PG_REVERSE = """
DROP TRIGGER IF EXISTS runs_auditevent_append_only ON runs_auditevent;
DROP FUNCTION IF EXISTS runs_audit_append_only();
"""

SQLITE_FORWARD = [
    "CREATE TABLE runs_audit_guard (locked INTEGER NOT NULL)",
    "INSERT INTO runs_audit_guard (locked) VALUES (1)",
    """CREATE TRIGGER runs_auditevent_no_update BEFORE UPDATE ON runs_auditevent
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on runs_auditevent refused'); END""",
    """CREATE TRIGGER runs_auditevent_no_delete BEFORE DELETE ON runs_auditevent
       WHEN (SELECT locked FROM runs_audit_guard LIMIT 1) = 1
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on runs_auditevent refused'); END""",
]
SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS runs_auditevent_no_delete",
    "DROP TRIGGER IF EXISTS runs_auditevent_no_update",
    "DROP TABLE IF EXISTS runs_audit_guard",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)
    else:
        raise RuntimeError(f"no append-only guard for the {vendor} database; use PostgreSQL or SQLite")


def reverse(apps, schema_editor):
    statements = [PG_REVERSE] if schema_editor.connection.vendor == "postgresql" else SQLITE_REVERSE
    for statement in statements:
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("runs", "0001_initial")]
    operations = [migrations.RunPython(forward, reverse)]
