"""Three roles as Django groups: viewer reads, operator creates/launches/cancels, admin does everything + audit."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"

_VIEW = [
    "view_run",
    "view_cluster",
    "view_datasource",
    "view_datamixrecipe",
    "view_checkpoint",
    "view_alert",
    "view_artifact",
    "view_deployment",
    "view_preprun",
]
_OPERATE = [
    "add_run",
    "change_run",
    "launch_run",
    "cancel_run",
    "add_datamixrecipe",
    "add_datasource",
    "add_preprun",
    "change_preprun",
    "add_artifact",
    "add_deployment",
    "change_deployment",
    "use_playground",
]
_ADMIN = ["view_audit", "view_auditevent", "add_cluster", "change_cluster", "change_datasource", "delete_run"]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    VIEWER: _VIEW,
    OPERATOR: _VIEW + _OPERATE,
    ADMIN: _VIEW + _OPERATE + _ADMIN,
}


def ensure_roles() -> None:
    """Create or refresh the three groups; idempotent (runs after every migrate)."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = list(Permission.objects.filter(content_type__app_label="runs", codename__in=codenames))
        group.permissions.set(perms)


def role_of(user) -> str | None:
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return ADMIN
    names = set(user.groups.values_list("name", flat=True))
    for role in (ADMIN, OPERATOR, VIEWER):
        if role in names:
            return role
    return None


def can_operate(user) -> bool:
    return user.is_authenticated and user.has_perm("runs.add_run")


def role_context(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "user_role": role_of(user) or "no role",
        "can_operate": can_operate(user),
        "can_audit": user.has_perm("runs.view_audit"),
    }
