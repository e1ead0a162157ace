"""Logins (and failed attempts) go into the audit trail; roles are refreshed after every migrate."""

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from runs.services.audit import audit_record
from runs.services.roles import ensure_roles


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs):
    audit_record(actor=user, action="auth.login", message=_client(request))


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs):
    username = str(credentials.get("username", ""))[:150]
    audit_record(actor="anonymous", action="auth.login_failed", message=f"username={username!r} {_client(request)}")


def _client(request) -> str:
    if request is None:
        return ""
    return f"from {request.META.get('REMOTE_ADDR', '?')}"


@receiver(post_migrate)
def refresh_roles(sender, **kwargs):
    if sender.name == "runs":
        ensure_roles()
