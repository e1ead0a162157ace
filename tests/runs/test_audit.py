import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from runs.models import AuditEvent
from runs.services.audit import audit_record, audit_verify

pytestmark = pytest.mark.django_db


def _tamper(sql: str, params: list) -> None:
    """What an attacker with database access could do: bypass the append-only guard and edit a row."""
    with connection.cursor() as cursor:
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


def test_the_database_refuses_update(db):
    event = audit_record(actor="system", action="x")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(message="rewritten")


def test_the_database_refuses_delete(db):
    event = audit_record(actor="system", action="x")
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("UPDATE runs_audit_guard SET locked = 1")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()


def test_verification_names_the_first_edited_row(db):
    events = [audit_record(actor="system", action="step", message=str(i)) for i in range(5)]
    _tamper("UPDATE runs_auditevent SET message = %s WHERE id = %s", ["forged", events[2].pk])
    report = audit_verify()
    assert not report.ok and report.first_broken_id == events[2].pk
    assert "edited" in report.reason and report.checked == 2


def test_management_command_reports_the_broken_link(db):
    events = [audit_record(actor="system", action="step", message=str(i)) for i in range(3)]
    call_command("verify_audit")
    _tamper("UPDATE runs_auditevent SET actor = %s WHERE id = %s", ["mallory", events[1].pk])
    with pytest.raises(CommandError, match=f"broken at event #{events[1].pk}"):
        call_command("verify_audit")


def test_login_is_audited(client, viewer):
    assert client.login(username="vera", password="pw-for-tests-1")
    response = client.post("/accounts/login/", {"username": "vera", "password": "pw-for-tests-1"})
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="auth.login", actor="vera").exists()


def test_failed_login_is_audited(client, db):
    client.post("/accounts/login/", {"username": "nobody", "password": "wrong"})
    assert AuditEvent.objects.filter(action="auth.login_failed", message__contains="nobody").exists()
