"""Celery tasks: thin wrappers that call the launching and watching code."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from workers import (
    launching,
    watching,
    webhook_tasks,  # noqa: F401  (registers workers.deliver_webhook with this app)
)

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0


@shared_task(name="workers.launch_run", acks_late=True)
def launch_run(run_id: int) -> str:
    outcome = launching.launch_run(run_id)
    log.info("launch run %s: %s", run_id, outcome)
    if outcome.startswith(("submitted", "re-attached", "already")):
        watch_run.apply_async(args=[run_id], countdown=WATCH_INTERVAL_S)
    return outcome


@shared_task(name="workers.watch_run", acks_late=True, ignore_result=True)
def watch_run(run_id: int) -> None:
    if watching.watch_once(run_id):
        watch_run.apply_async(args=[run_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.stop_run", acks_late=True)
def stop_run(run_id: int) -> str:
    return launching.stop_run(run_id)


@worker_ready.connect
def reattach(sender=None, **kwargs) -> None:
    """A (re)started worker picks up every job in flight instead of losing or duplicating it."""
    watch, queued = launching.runs_to_reattach()
    for run_id in watch:
        watch_run.delay(run_id)
    for run_id in queued:
        launch_run.delay(run_id)
    if watch or queued:
        log.info("re-attached to runs %s, re-queued launches %s", watch, queued)
