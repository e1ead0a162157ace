"""Raise an alert once per episode, resolve it when the episode ends; push it to the browser and to webhooks."""

from __future__ import annotations

import json
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from runs.models import Alert, Run
from runs.realtime.broadcast import broadcast_on_commit, run_group
from runs.services.audit import SYSTEM, audit_record
from runs.services.enqueue import enqueue_on_commit

WEBHOOK_TASK = "workers.deliver_webhook"
# Alerts of a running job that the run's remediation policy may act on (runs.services.remediation).
REMEDIED_ON_ALERT = frozenset({"loss_spike", "nan", "hang"})


def alert_json(alert: Alert) -> dict:
    try:
        evidence = json.loads(alert.evidence) if alert.evidence else {}
    except ValueError:
        evidence = {"text": alert.evidence}
    return {
        "id": alert.pk,
        "run_id": alert.run_id,
        "kind": alert.kind,
        "kind_label": alert.get_kind_display(),
        "severity": alert.severity,
        "step": alert.step,
        "message": alert.message,
        "evidence": evidence,
        "attempt": alert.attempt,
        "created_at": alert.created_at.isoformat() if alert.created_at else None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def webhook_urls(run: Run) -> list[str]:
    """The run config's alerts.webhook_url and its cluster's webhook_url (each once)."""
    urls: list[str] = []
    configured = ((run.config or {}).get("alerts") or {}).get("webhook_url")
    if isinstance(configured, str) and configured.strip():
        urls.append(configured.strip())
    cluster_url = run.cluster.webhook_url if run.cluster_id else ""
    if cluster_url and cluster_url not in urls:
        urls.append(cluster_url)
    return urls


def alert_raise(
    *,
    run: Run,
    kind: str,
    severity: str,
    step: int | None,
    message: str,
    evidence: Any = None,
) -> Alert | None:
    """Record an alert unless one of the same kind is already open for this run attempt (then None).

    The database's partial unique constraint decides, so detectors in several processes raise it once. On commit
    the alert goes to the run's websocket group and, where a webhook is configured, to the webhook task.
    """
    if isinstance(evidence, str):
        evidence_text = evidence
    else:
        evidence_text = json.dumps(evidence or {}, default=str, allow_nan=False, sort_keys=True)
    attempt = Run.objects.filter(pk=run.pk).values_list("attempt", flat=True).first() or run.attempt
    with transaction.atomic():
        if Alert.objects.filter(run_id=run.pk, kind=kind, attempt=attempt, resolved_at__isnull=True).exists():
            return None
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    run_id=run.pk,
                    kind=kind,
                    severity=severity,
                    step=step,
                    message=message[:300],
                    evidence=evidence_text,
                    attempt=attempt,
                )
        except IntegrityError:  # another process opened the same episode first
            return None
        audit_record(actor=SYSTEM, action="alert.raised", obj=alert, run_id=run.pk, message=message)
        broadcast_on_commit(run_group(run.pk), {"type": "run.alert", "run_id": run.pk, "alert": alert_json(alert)})
        for url in webhook_urls(run):
            enqueue_on_commit(WEBHOOK_TASK, alert_id=alert.pk, url=url)
        if kind in REMEDIED_ON_ALERT:
            from runs.services.remediation import remediation_consider_alert

            remediation_consider_alert(run=run, kind=kind, step=step, message=message)
    return alert


def alert_resolve(*, run: Run, kind: str) -> int:
    """End the open episode of `kind` (all attempts); the update is pushed as a run.alert with resolved_at set."""
    with transaction.atomic():
        open_alerts = list(Alert.objects.select_for_update().filter(run_id=run.pk, kind=kind, resolved_at__isnull=True))
        if not open_alerts:
            return 0
        now = timezone.now()
        Alert.objects.filter(pk__in=[a.pk for a in open_alerts]).update(resolved_at=now)
        for alert in open_alerts:
            alert.resolved_at = now
            broadcast_on_commit(run_group(run.pk), {"type": "run.alert", "run_id": run.pk, "alert": alert_json(alert)})
    return len(open_alerts)
