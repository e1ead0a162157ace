"""Deliver one alert to one webhook URL: a JSON POST, every attempt audited; the task retries what can recover."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlparse

from django.conf import settings

from runs.models import Alert
from runs.services.alerts import alert_json
from runs.services.audit import SYSTEM, audit_record

TIMEOUT_S = 10.0
USER_AGENT = "llm-controlplane-webhook/1"


class WebhookFailed(Exception):
    """A failure that may pass (connection error, timeout, 408, 429, 5xx): the task retries with back-off."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be replayed as a GET without the body; report the 3xx instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def webhook_payload(alert: Alert) -> dict:
    run = alert.run
    link = f"{settings.CP_BASE_URL.rstrip('/')}/runs/{run.pk}/"
    text = f"[{alert.severity}] run #{run.pk} {run.name}: {alert.message} {link}"
    return {
        "text": text,  # what chat webhooks (Slack, Mattermost) display
        "alert": alert_json(alert),
        "run": {"id": run.pk, "name": run.name, "status": run.status, "attempt": run.attempt, "url": link},
    }


def webhook_deliver(*, alert_id: int, url: str, attempt: int = 1, final: bool = False) -> bool:
    """POST the alert to `url`. True when delivered; False when refused for good (a 4xx: retrying cannot help).

    Raises WebhookFailed for failures worth retrying. Each call leaves one audit event either way.
    """
    alert = Alert.objects.select_related("run").filter(pk=alert_id).first()
    if alert is None:
        return False
    if urlparse(url).scheme not in ("http", "https"):
        _audit(alert, "alert.webhook_failed", url, attempt, "not an http(s) URL; not retried")
        return False
    body = json.dumps(webhook_payload(alert), allow_nan=False, default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": USER_AGENT}
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:  # refused, reset, timed out, unresolvable
        reason = f"unreachable ({getattr(exc, 'reason', exc)})"
        _audit(alert, "alert.webhook_failed", url, attempt, reason + ("; giving up" if final else "; will retry"))
        raise WebhookFailed(reason) from None
    if 200 <= status < 300:
        _audit(alert, "alert.webhook_delivered", url, attempt, f"HTTP {status}")
        return True
    if status in (408, 429) or status >= 500:
        _audit(
            alert, "alert.webhook_failed", url, attempt, f"HTTP {status}" + ("; giving up" if final else "; will retry")
        )
        raise WebhookFailed(f"HTTP {status} from {url}")
    _audit(alert, "alert.webhook_failed", url, attempt, f"HTTP {status}; not retried")
    return False


def _audit(alert: Alert, action: str, url: str, attempt: int, outcome: str) -> None:
    audit_record(
        actor=SYSTEM,
        action=action,
        obj=alert,
        run_id=alert.run_id,
        message=f"attempt {attempt} to {url}: {outcome}",
        diff={"url": [None, url], "attempt": [None, attempt]},
    )
