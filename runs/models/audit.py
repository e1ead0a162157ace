"""The audit trail: append-only and hash-chained (runs.services.audit).

Append-only twice over: the database refuses UPDATE, DELETE and (PostgreSQL) TRUNCATE with triggers, and the
application refuses them before they reach it (SQLite's DELETE trigger has a guard the test flush lifts).
"""

from django.db import models


class AppendOnly(RuntimeError):
    """An edit or deletion of an audit event: the trail is append-only."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnly("audit trail is append-only: UPDATE refused")

    def delete(self):
        raise AppendOnly("audit trail is append-only: DELETE refused")

    def _raw_delete(self, using):
        raise AppendOnly("audit trail is append-only: DELETE refused")


class AuditEvent(models.Model):
    created_at = models.DateTimeField()
    # Plain columns, not a foreign key: deleting a user must never need to rewrite the trail.
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, help_text="Username, or 'system' for automatic actions.")
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    message = models.CharField(max_length=500, blank=True)
    diff = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.actor} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args, **kwargs):
        if not kwargs.get("force_insert"):
            raise AppendOnly("audit trail is append-only: events are only inserted (save(force_insert=True))")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly("audit trail is append-only: DELETE refused")


class AuditChainHead(models.Model):
    """One row holding the newest link; appending locks it so the chain never forks."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_event_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"head at #{self.last_event_id}"
