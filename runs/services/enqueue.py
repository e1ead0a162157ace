"""The one place runs/ reaches the task queue: by task name, after commit, so runs never imports workers (nor the
Celery app that wires them: Celery's current app is the one controlplane/__init__ creates with the settings)."""

from __future__ import annotations

from celery import current_app
from django.db import transaction


def enqueue_on_commit(task_name: str, *, countdown: float | None = None, **kwargs) -> None:
    """Send `task_name` with `kwargs` once the transaction commits; `countdown`: seconds before a worker runs it."""

    def send() -> None:
        current_app.send_task(task_name, kwargs=kwargs, countdown=countdown)

    transaction.on_commit(send)
