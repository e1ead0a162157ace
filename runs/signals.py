"""What happens outside the services still reaches the audit trail through audit_record: logins, logouts and
failed logins, every change made in Django admin (its LogEntry), and role changes (a user's groups) however made.
Roles are refreshed after every migrate."""

from __future__ import annotations

from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models import Sum
from django.db.models.signals import m2m_changed, post_migrate, post_save
from django.dispatch import receiver

from runs.services.audit import audit_record
from runs.services.roles import ensure_roles

ADMIN_ACTIONS = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs):
    audit_record(actor=user, action="auth.login", message=_client(request))


@receiver(user_logged_out)
def audit_logout(sender, request, user, **kwargs):
    if user is not None:
        audit_record(actor=user, action="auth.logout", message=_client(request))


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs):
    """Failed logins are aggregated: an event at the 1st, 2nd, 4th, 8th, ... failure of a username, counted by
    django-axes (its handler runs first: axes comes before runs in INSTALLED_APPS)."""
    username = str(credentials.get("username", ""))[:150]
    count = AccessAttempt.objects.filter(username=username).aggregate(n=Sum("failures_since_start"))["n"] or 1
    if count & (count - 1):
        return
    audit_record(
        actor="anonymous",
        action="auth.login_failed",
        message=f"username={username!r} {_client(request)} ({count} failed since the last success or reset)",
        diff={"failures": count},
        target=("login", username[:64], username),
    )


@receiver(user_locked_out)
def audit_locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    name = str(username or "")[:150]
    audit_record(
        actor="anonymous",
        action="auth.locked_out",
        message=f"username={name!r} from {ip_address or '?'} locked out after {settings.AXES_FAILURE_LIMIT} failures",
        target=("login", name[:64], name),
    )


@receiver(post_save, sender=LogEntry)
def audit_admin_change(sender, instance: LogEntry, created: bool, **kwargs):
    """Every add, change and delete made through Django admin, by whom and what it changed."""
    if not created:
        return
    model = instance.content_type.model if instance.content_type is not None else ""
    audit_record(
        actor=instance.user,
        action=ADMIN_ACTIONS.get(instance.action_flag, "admin.other"),
        message=f"{model} {instance.object_repr}: {instance.get_change_message() or 'no fields changed'}"[:500],
        diff={"admin": instance.get_change_message()},
        target=(model, str(instance.object_id or "")[:64], instance.object_repr),
    )


@receiver(m2m_changed, sender=get_user_model().groups.through)
def audit_role_change(sender, instance, action, reverse, pk_set, **kwargs):
    """A user's roles (groups) changed: through admin, a form, a command or the shell alike."""
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    names = sorted(Group.objects.filter(pk__in=pk_set or []).values_list("name", flat=True))
    if reverse:  # group.user_set.add(...): instance is the group, pk_set the users
        users = get_user_model().objects.filter(pk__in=pk_set or [])
        targets = [(u, [instance.name]) for u in users]
    else:
        targets = [(instance, names)]
    verb = {"post_add": "added", "post_remove": "removed", "post_clear": "cleared"}[action]
    for user, groups in targets:
        audit_record(
            actor="system",
            action="auth.roles",
            message=f"{user.get_username()}: roles {verb} {', '.join(groups) or '(all)'}",
            diff={"roles": {verb: groups}},
            target=("user", str(user.pk), user.get_username()),
        )


def _client(request) -> str:
    if request is None:
        return ""
    return f"from {request.META.get('REMOTE_ADDR', '?')}"


@receiver(post_migrate)
def refresh_roles(sender, **kwargs):
    if sender.name == "runs":
        ensure_roles()
