"""Alert webhooks against a real local HTTP server: payload, retries with back-off, every attempt audited."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runs.models import AuditEvent
from runs.services.alerts import alert_raise
from runs.services.webhooks import webhook_payload
from tests.runs.factories import tiny_run
from workers.webhook_tasks import deliver_webhook

pytestmark = pytest.mark.django_db(transaction=True)


class Hook:
    """A webhook receiver that answers with the queued status codes, then 200."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alert(seeded, operator):
    run = tiny_run(owner=operator)
    return alert_raise(
        run=run, kind="loss_spike", severity="warning", step=120, message="Loss spiked", evidence={"z": 9.1}
    )


def attempts(alert):
    return list(
        AuditEvent.objects.filter(object_type="alert", object_id=str(alert.pk), action__startswith="alert.webhook")
        .order_by("id")
        .values_list("action", "message")
    )


def test_delivery_posts_the_alert_and_a_link_to_the_run(alert, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with Hook([]) as hook:
        deliver_webhook.apply(kwargs={"alert_id": alert.pk, "url": hook.url}).get()
    (body,) = hook.bodies
    assert body["alert"]["kind"] == "loss_spike" and body["alert"]["evidence"] == {"z": 9.1}
    assert body["run"]["url"].endswith(f"/runs/{alert.run_id}/") and "Loss spiked" in body["text"]
    assert body == json.loads(json.dumps(webhook_payload(alert)))
    assert [a for a, _ in attempts(alert)] == ["alert.webhook_delivered"]


def test_server_errors_are_retried_and_each_attempt_is_audited(alert, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with Hook([503, 500]) as hook:
        result = deliver_webhook.apply(kwargs={"alert_id": alert.pk, "url": hook.url})
        assert result.get() is True
    assert len(hook.bodies) == 3
    log = attempts(alert)
    assert [a for a, _ in log] == ["alert.webhook_failed", "alert.webhook_failed", "alert.webhook_delivered"]
    assert "attempt 1" in log[0][1] and "HTTP 503; will retry" in log[0][1] and "attempt 3" in log[2][1]


def test_a_client_error_is_not_retried(alert, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    with Hook([404]) as hook:
        assert deliver_webhook.apply(kwargs={"alert_id": alert.pk, "url": hook.url}).get() is False
    assert len(hook.bodies) == 1
    assert attempts(alert) == [("alert.webhook_failed", f"attempt 1 to {hook.url}: HTTP 404; not retried")]


def test_an_unreachable_hook_gives_up_after_the_retries(alert, settings):
    from workers.webhook_tasks import MAX_RETRIES

    settings.CELERY_TASK_ALWAYS_EAGER = True
    with Hook([]) as hook:
        dead = hook.url
    result = deliver_webhook.apply(kwargs={"alert_id": alert.pk, "url": dead})
    assert result.failed()
    log = attempts(alert)
    assert len(log) == MAX_RETRIES + 1 and all(a == "alert.webhook_failed" for a, _ in log)
    assert "giving up" in log[-1][1] and "will retry" in log[0][1]
