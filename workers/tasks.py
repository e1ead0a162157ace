"""Celery tasks: thin wrappers that call the launching and watching code."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from workers import (
    launching,
    serving,
    watching,
    webhook_tasks,  # noqa: F401  (registers workers.deliver_webhook with this app)
)

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0
HEALTH_INTERVAL_S = 5.0


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


@shared_task(name="workers.quantize_artifact", acks_late=True)
def quantize_artifact(artifact_id: int) -> str:
    outcome = serving.quantize_start(artifact_id)
    if outcome.startswith("submitted"):
        watch_artifact.apply_async(args=[artifact_id], countdown=WATCH_INTERVAL_S)
    return outcome


@shared_task(name="workers.watch_artifact", acks_late=True, ignore_result=True)
def watch_artifact(artifact_id: int) -> None:
    if serving.quantize_watch(artifact_id):
        watch_artifact.apply_async(args=[artifact_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.benchmark_artifact", acks_late=True)
def benchmark_artifact(artifact_id: int) -> str:
    outcome = serving.benchmark_start(artifact_id)
    if outcome.startswith("submitted"):
        watch_benchmark.apply_async(args=[artifact_id], countdown=WATCH_INTERVAL_S)
    return outcome


@shared_task(name="workers.watch_benchmark", acks_late=True, ignore_result=True)
def watch_benchmark(artifact_id: int) -> None:
    if serving.benchmark_watch(artifact_id):
        watch_benchmark.apply_async(args=[artifact_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.deploy", acks_late=True)
def deploy(deployment_id: int) -> str:
    outcome = serving.deploy_start(deployment_id)
    if outcome.startswith("submitted"):
        watch_deployment.apply_async(args=[deployment_id], countdown=WATCH_INTERVAL_S)
    return outcome


@shared_task(name="workers.watch_deployment", acks_late=True, ignore_result=True)
def watch_deployment(deployment_id: int) -> None:
    from runs.models import Deployment, DeploymentStatus

    if serving.deploy_watch(deployment_id):
        starting = Deployment.objects.filter(pk=deployment_id, status=DeploymentStatus.STARTING).exists()
        countdown = WATCH_INTERVAL_S if starting else HEALTH_INTERVAL_S
        watch_deployment.apply_async(args=[deployment_id], countdown=countdown)


@shared_task(name="workers.stop_deployment", acks_late=True)
def stop_deployment(deployment_id: int) -> str:
    return serving.deploy_stop(deployment_id)


def _reattach_serving() -> None:
    pending = serving.in_flight()
    for pk in pending["quantize_queued"]:
        quantize_artifact.delay(pk)
    for pk in pending["quantize_running"]:
        watch_artifact.delay(pk)
    for pk in pending["latency_queued"]:
        benchmark_artifact.delay(pk)
    for pk in pending["latency_running"]:
        watch_benchmark.delay(pk)
    for pk in pending["deploy_queued"]:
        deploy.delay(pk)
    for pk in pending["deploy_live"]:
        watch_deployment.delay(pk)
    for pk in pending["deploy_stopping"]:
        stop_deployment.delay(pk)


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
    _reattach_serving()
