"""Celery tasks: thin wrappers that call the launching and watching code."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from runs.services.audit import audit_check_and_alert
from workers import (
    data_prep,
    launching,
    remediating,
    serving,
    supervision,
    watching,
    webhook_tasks,  # noqa: F401  (registers workers.deliver_webhook with this app)
)
from workers.backends import warm

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 1.0


@shared_task(name="workers.launch_run", acks_late=True)
def launch_run(run_id: int) -> str:
    outcome = launching.launch_run(run_id)
    log.info("launch run %s: %s", run_id, outcome)
    if outcome.startswith(("submitted", "re-attached")):
        token = supervision.new_token()
        supervision.watcher_beat(run_id, token)
        watch_run.apply_async(args=[run_id], kwargs={"token": token}, countdown=WATCH_INTERVAL_S)
    return outcome


@shared_task(name="workers.watch_run", acks_late=True, ignore_result=True)
def watch_run(run_id: int, token: str = "", failures: int = 0) -> None:
    """One watcher pass, then the next: re-queued whatever the pass did (a transient database, Redis or backend
    error backs off up to 5 s), until the run ends or another chain took the run over."""
    token = token or supervision.new_token()
    if not supervision.watcher_beat(run_id, token):
        return  # another chain watches this run
    try:
        again = watching.watch_once(run_id)
        failures = 0
    except Exception:  # a watcher never dies: the database or Redis may be away for a while
        failures += 1
        log.warning("watch of run %s failed (%d in a row); retrying", run_id, failures, exc_info=True)
        again = True
    if not again:
        return
    try:
        watch_run.apply_async(
            args=[run_id],
            kwargs={"token": token, "failures": failures},
            countdown=supervision.backoff_s(failures, WATCH_INTERVAL_S),
        )
    except Exception:  # the broker is away: the reconciler re-attaches a watcher within seconds
        log.warning("could not re-queue the watcher of run %s", run_id, exc_info=True)


@shared_task(name="workers.remediate_running", acks_late=True)
def remediate_running(run_id: int, attempt: int, kind: str, step: int | None = None, reason: str = "") -> str:
    outcome = remediating.remediate_running(run_id, attempt, kind, step, reason)
    log.info("remediate running run %s attempt %s (%s): %s", run_id, attempt, kind, outcome)
    return outcome


@shared_task(name="workers.remediate_run", acks_late=True, bind=True, max_retries=20)
def remediate_run(self, run_id: int, attempt: int, remedy: dict) -> str:
    outcome = remediating.remediate_run(run_id, attempt, remedy)
    log.info("remediate run %s attempt %s: %s", run_id, attempt, outcome)
    if outcome.endswith("retrying"):
        raise self.retry(countdown=5)
    return outcome


@shared_task(name="workers.stop_run", acks_late=True)
def stop_run(run_id: int) -> str:
    return launching.stop_run(run_id)


def _then_watch(outcome: str, watch, pk: int) -> str:
    if outcome.startswith("submitted"):
        watch.apply_async(args=[pk], countdown=WATCH_INTERVAL_S)
    return outcome


@shared_task(name="workers.quantize_artifact", acks_late=True)
def quantize_artifact(artifact_id: int) -> str:
    return _then_watch(serving.quantize_start(artifact_id), watch_artifact, artifact_id)


@shared_task(name="workers.watch_artifact", acks_late=True, ignore_result=True)
def watch_artifact(artifact_id: int) -> None:
    if serving.quantize_watch(artifact_id):
        watch_artifact.apply_async(args=[artifact_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.benchmark_artifact", acks_late=True)
def benchmark_artifact(artifact_id: int) -> str:
    return _then_watch(serving.benchmark_start(artifact_id), watch_benchmark, artifact_id)


@shared_task(name="workers.watch_benchmark", acks_late=True, ignore_result=True)
def watch_benchmark(artifact_id: int) -> None:
    if serving.benchmark_watch(artifact_id):
        watch_benchmark.apply_async(args=[artifact_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.deploy", acks_late=True)
def deploy(deployment_id: int) -> str:
    return _then_watch(serving.deploy_start(deployment_id), watch_deployment, deployment_id)


@shared_task(name="workers.watch_deployment", acks_late=True, ignore_result=True)
def watch_deployment(deployment_id: int) -> None:
    next_look = serving.deploy_watch(deployment_id)
    if next_look is not None:
        watch_deployment.apply_async(args=[deployment_id], countdown=next_look)


@shared_task(name="workers.stop_deployment", acks_late=True)
def stop_deployment(deployment_id: int) -> str:
    return serving.deploy_stop(deployment_id)


@shared_task(name="workers.count_source", acks_late=True)
def count_source(source_id: int) -> str:
    return _then_watch(data_prep.count_start(source_id), watch_count, source_id)


@shared_task(name="workers.watch_count", acks_late=True, ignore_result=True)
def watch_count(source_id: int) -> None:
    if data_prep.count_watch(source_id):
        watch_count.apply_async(args=[source_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.prep_data", acks_late=True)
def prep_data(prep_id: int) -> str:
    return _then_watch(data_prep.prep_start(prep_id), watch_prep, prep_id)


@shared_task(name="workers.watch_prep", acks_late=True, ignore_result=True)
def watch_prep(prep_id: int) -> None:
    if data_prep.prep_watch(prep_id):
        watch_prep.apply_async(args=[prep_id], countdown=WATCH_INTERVAL_S)


@shared_task(name="workers.stop_prep", acks_late=True)
def stop_prep(prep_id: int) -> str:
    return data_prep.prep_stop(prep_id)


# What serving.in_flight() and data_prep.in_flight() name -> the task that picks it up again.
_REATTACH = {
    "quantize_queued": quantize_artifact,
    "quantize_running": watch_artifact,
    "latency_queued": benchmark_artifact,
    "latency_running": watch_benchmark,
    "deploy_queued": deploy,
    "deploy_live": watch_deployment,
    "deploy_stopping": stop_deployment,
    "count_queued": count_source,
    "count_running": watch_count,
    "prep_queued": prep_data,
    "prep_running": watch_prep,
}


def _reattach_serving() -> None:
    for kind, pks in [*serving.in_flight().items(), *data_prep.in_flight().items()]:
        for pk in pks:
            _REATTACH[kind].delay(pk)


def _send_watch(run_id: int, token: str) -> None:
    watch_run.apply_async(args=[run_id], kwargs={"token": token})


def _send_launch(run_id: int) -> None:
    launch_run.delay(run_id)


_reconciler: supervision.Reconciler | None = None


def start_reconciler() -> supervision.Reconciler:
    """The reconciler's timer in this process (the worker's main process), once."""
    global _reconciler
    if _reconciler is None or not _reconciler.is_alive():
        _reconciler = supervision.Reconciler(
            send_watch=_send_watch, send_launch=_send_launch, watch_inline=watching.watch_once
        )
        _reconciler.start()
    return _reconciler


@shared_task(name="workers.verify_audit", acks_late=True)
def verify_audit() -> str:
    """The audit chain checked every settings.AUDIT_VERIFY_EVERY_S by one worker (a Redis lock picks it; a second
    chain of this task, from another worker's start, ends at once)."""
    every = settings.AUDIT_VERIFY_EVERY_S
    if not watching._redis().set("audit:verify:scheduled", 1, nx=True, ex=max(1, every - 1)):
        return "another worker keeps the schedule"
    report = audit_check_and_alert()
    verify_audit.apply_async(countdown=every)
    return "intact" if report.ok else f"BROKEN at #{report.first_broken_id}: {report.reason}"


@worker_ready.connect
def reattach(sender=None, **kwargs) -> None:
    """A (re)started worker picks up every job in flight instead of losing or duplicating it, and starts the
    reconciler, which keeps doing so while the worker lives."""
    watch, queued = launching.runs_to_reattach()
    for run_id in watch:
        token = supervision.new_token()
        supervision.watcher_beat(run_id, token)
        watch_run.delay(run_id, token=token)
    for run_id in queued:
        launch_run.delay(run_id)
    if watch or queued:
        log.info("re-attached to runs %s, re-queued launches %s", watch, queued)
    for run_id, attempt, remedy in remediating.pending_remedies():
        remediate_run.delay(run_id, attempt, remedy)
    _reattach_serving()
    start_reconciler()

    verify_audit.delay()
    if launching.has_local_cpu_cluster():
        warm.ensure_started(launching.job_python())  # the first launch need not wait for DeepSpeed's import
