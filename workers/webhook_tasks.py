"""Alert webhooks: a thin task; the service posts and audits, Celery retries with exponential back-off."""

from __future__ import annotations

from celery import shared_task

from runs.services.webhooks import WebhookFailed, webhook_deliver

MAX_RETRIES = 8  # back-off 2, 4, 8 ... 256 s (jittered, capped at 10 min): about 8 minutes of trying in all


@shared_task(
    name="workers.deliver_webhook",
    bind=True,
    autoretry_for=(WebhookFailed,),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
    acks_late=True,
)
def deliver_webhook(self, alert_id: int, url: str) -> bool:
    return webhook_deliver(
        alert_id=alert_id, url=url, attempt=self.request.retries + 1, final=self.request.retries >= MAX_RETRIES
    )
