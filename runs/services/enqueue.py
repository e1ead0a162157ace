"""The one place runs/ reaches the task queue: by task name, after commit, so runs never imports workers."""

from __future__ import annotations

from django.db import transaction


def enqueue_on_commit(task_name: str, **kwargs) -> None:
    def send() -> None:
        from controlplane.celery import app

        app.send_task(task_name, kwargs=kwargs)

    transaction.on_commit(send)
