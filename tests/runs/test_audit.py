import hashlib
from pathlib import Path

import pytest
from django.db import DatabaseError, connection, transaction

from runs.models import AuditEvent
from runs.models.audit import AppendOnly
from runs.services.audit import GENESIS, _canonical, _link_fields, audit_check_and_alert, audit_record, audit_verify

# Committed for real: the anchor outside the database is written once each event's transaction commits.
pytestmark = pytest.mark.django_db(transaction=True)


def _tamper(sql: str, params: list) -> None:
    """What an attacker with database access could do: bypass the append-only guard and edit a row."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")  # disables the trigger, superuser only
            cursor.execute(sql, params)
        else:
            cursor.execute("DROP TRIGGER runs_auditevent_no_update")
            cursor.execute(sql, params)


def test_the_chain_verifies_after_many_appends(db):
    for i in range(25):
        audit_record(actor="system", action="test.event", message=f"event {i}", diff={"n": [i, i + 1]})
    report = audit_verify(batch=7)
    assert report.ok and report.checked == 25


def test_each_event_links_to_the_previous_hash(db):
    a = audit_record(actor="system", action="a")
    b = audit_record(actor="system", action="b")
    assert b.prev_hash == a.hash and a.hash != b.hash


def test_the_application_refuses_update_and_delete(db):
    event = audit_record(actor="system", action="x")
    with pytest.raises(AppendOnly):
        AuditEvent.objects.filter(pk=event.pk).update(message="rewritten")
    with pytest.raises(AppendOnly):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(AppendOnly):
        event.delete()
    event.message = "rewritten"
    with pytest.raises(AppendOnly):
        event.save()
    assert AuditEvent.objects.get(pk=event.pk).message == ""


def test_the_database_refuses_update(db):
    event = audit_record(actor="system", action="x")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE runs_auditevent SET message = 'rewritten' WHERE id = %s", [event.pk])


def test_the_database_refuses_delete(db):
    event = audit_record(actor="system", action="x")
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("UPDATE runs_audit_guard SET locked = 1")
    try:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM runs_auditevent WHERE id = %s", [event.pk])
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("UPDATE runs_audit_guard SET locked = 0")


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_postgresql_refuses_truncate(db):
    audit_record(actor="system", action="x")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE runs_auditevent ENABLE TRIGGER runs_auditevent_no_truncate")
    try:
        with pytest.raises(DatabaseError, match="append-only: TRUNCATE"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE runs_auditevent")
    finally:
        with connection.cursor() as cursor:  # the suite's flush truncates (tests/conftest.py)
            cursor.execute("ALTER TABLE runs_auditevent DISABLE TRIGGER runs_auditevent_no_truncate")
    assert AuditEvent.objects.count() == 1


def test_links_are_keyed_so_a_recomputed_chain_does_not_verify(db):
    """A database administrator rewrites a row and recomputes every link with plain SHA-256 (the old scheme), or
    with HMAC under a guessed key: neither verifies without the key in var/."""
    events = [audit_record(actor="system", action="step", message=str(i)) for i in range(4)]
    prev = GENESIS
    for event in events:
        event.prev_hash = prev
        if event.pk == events[1].pk:
            event.message = "forged"
        forged = hashlib.sha256(_canonical(_link_fields(event)).encode()).hexdigest()
        _tamper("UPDATE runs_auditevent SET message = %s, prev_hash = %s, hash = %s WHERE id = %s",
                [event.message, prev, forged, event.pk])  # fmt: skip
        prev = forged
    with connection.cursor() as cursor:
        cursor.execute("UPDATE runs_auditchainhead SET last_hash = %s", [prev])
    report = audit_verify()
    assert not report.ok and report.first_broken_id == events[0].pk and "keyed hash" in report.reason


def test_a_truncated_tail_is_a_break_even_with_the_head_moved_back(db):
    events = [audit_record(actor="system", action="step", message=str(i)) for i in range(5)]
    _tamper("DELETE FROM runs_auditevent WHERE id >= %s", [events[3].pk])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE runs_auditchainhead SET last_hash = %s, last_event_id = %s", [events[2].hash, events[2].pk]
        )
    report = audit_verify()
    assert not report.ok and report.first_broken_id == events[4].pk and "anchored outside" in report.reason


def test_an_emptied_table_and_a_missing_head_are_breaks(db):
    audit_record(actor="system", action="a")
    audit_record(actor="system", action="b")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM runs_auditchainhead")
    report = audit_verify()
    assert not report.ok and report.reason == "the chain head is missing"
    _tamper("DELETE FROM runs_auditevent", [])
    report = audit_verify()
    assert not report.ok and report.checked == 0 and "anchored outside" in report.reason


def test_a_missing_anchor_is_a_break(db, settings):
    audit_record(actor="system", action="a")
    Path(settings.AUDIT_ANCHOR).unlink()
    report = audit_verify()
    assert not report.ok and "anchor outside the database" in report.reason


def test_the_scheduled_check_alerts_the_admins_on_a_break(db, settings, mailoutbox, client, admin_user):
    settings.ADMINS = [("Ops", "ops@example.com")]
    events = [audit_record(actor="system", action="step", message=str(i)) for i in range(3)]
    assert audit_check_and_alert().ok and not mailoutbox
    _tamper("UPDATE runs_auditevent SET message = %s WHERE id = %s", ["forged", events[1].pk])
    report = audit_check_and_alert()
    assert not report.ok
    assert len(mailoutbox) == 1 and f"#{events[1].pk}" in mailoutbox[0].body
    assert mailoutbox[0].to == ["ops@example.com"]
    client.force_login(admin_user)
    page = client.get("/audit/").content.decode()
    assert 'data-audit-check="broken"' in page and f"event #{events[1].pk}" in page


def test_admin_changes_logout_and_role_changes_are_audited(client, admin_user, viewer):
    from django.contrib.auth.models import Group

    client.force_login(admin_user)
    change = f"/admin/auth/user/{viewer.pk}/change/"
    form = client.get(change)
    assert form.status_code == 200
    operator_group = Group.objects.get(name="operator")
    answer = client.post(
        change,
        {
            "username": viewer.username,
            "is_active": "on",
            "groups": [operator_group.pk],
            "last_login_0": "",
            "last_login_1": "",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
            "initial-date_joined_0": "2026-01-01",
            "initial-date_joined_1": "00:00:00",
        },
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    admin_event = AuditEvent.objects.get(action="admin.change", object_type="user", object_id=str(viewer.pk))
    assert admin_event.actor == admin_user.username and "groups" in admin_event.message.lower()
    roles = AuditEvent.objects.filter(action="auth.roles", object_id=str(viewer.pk))
    assert roles.filter(message__contains="added operator").exists()
    client.post("/accounts/logout/")
    assert AuditEvent.objects.filter(action="auth.logout", actor=admin_user.username).exists()
    assert audit_verify().ok


def test_repeated_failed_logins_are_aggregated(client, db):
    for _ in range(5):
        client.post("/accounts/login/", {"username": "mallory", "password": "wrong"})
    rows = AuditEvent.objects.filter(action="auth.login_failed", object_id="mallory").order_by("pk")
    assert [row.diff["failures"] for row in rows] == [1, 2, 4]
    assert AuditEvent.objects.filter(action="auth.locked_out", object_id="mallory").count() == 1


def test_an_upgrade_keys_the_unkeyed_chain_and_anchors_it(db, settings):
    """Events written with plain SHA-256 links (before keying) verify after the migration re-links them."""
    import importlib

    from django.apps import apps

    events = [audit_record(actor="system", action="old", message=str(i)) for i in range(3)]
    prev = GENESIS
    for event in events:  # as the unkeyed scheme had linked them
        event.prev_hash = prev
        unkeyed = hashlib.sha256(_canonical(_link_fields(event)).encode()).hexdigest()
        _tamper("UPDATE runs_auditevent SET prev_hash = %s, hash = %s WHERE id = %s", [prev, unkeyed, event.pk])
        prev = unkeyed
    with connection.cursor() as cursor:
        cursor.execute("UPDATE runs_auditchainhead SET last_hash = %s", [prev])
    Path(settings.AUDIT_ANCHOR).unlink()
    assert not audit_verify().ok
    migration = importlib.import_module("runs.migrations.0014_audit_keyed")
    with transaction.atomic(), connection.schema_editor() as editor:
        migration._rekey(apps, editor)
    report = audit_verify()
    assert report.ok and report.checked == 3
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():  # the guard is back
        with connection.cursor() as cursor:
            cursor.execute("UPDATE runs_auditevent SET message = 'x' WHERE id = %s", [events[0].pk])
