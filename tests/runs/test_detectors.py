"""Streaming detectors: one alert per episode, state that survives requests and processes, O(points) work."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from runs.metrics.detectors import QUIET, WATCHED_KEYS, WINDOW, Thresholds, detect
from runs.metrics.store import metrics_record
from runs.models import Alert, AuditEvent, MetricSeries
from runs.realtime.broadcast import run_group
from runs.services.alerts import alert_raise, alert_resolve
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)

RNG = np.random.default_rng(7)


def run_detect(key, values, chunks=1, thresholds=None, start=0):
    """Feed `values` in `chunks` batches, carrying the state through JSON as the database does."""
    thresholds = thresholds or Thresholds()
    state, findings, resolved = {}, [], []
    steps = np.arange(start, start + len(values))
    for part_steps, part_values in zip(
        np.array_split(steps, chunks), np.array_split(np.asarray(values, float), chunks), strict=True
    ):
        verdict = detect(key=key, steps=part_steps, values=part_values, state=state, thresholds=thresholds)
        state = json.loads(json.dumps(verdict.state, allow_nan=False))
        findings += verdict.findings
        resolved += verdict.resolved
    return findings, resolved, state


def noisy_loss(n, level=2.0, noise=0.01):
    return level + noise * RNG.standard_normal(n)


@pytest.mark.parametrize("chunks", [1, 7, 300])
def test_loss_spike_is_found_once_whatever_the_batching(chunks):
    values = noisy_loss(300)
    values[150:153] = [4.0, 4.5, 3.9]  # one episode of three points
    findings, resolved, _ = run_detect("loss", values, chunks)
    assert [(f.kind, f.step) for f in findings] == [("loss_spike", 150)]
    assert resolved == ["loss_spike"]
    assert findings[0].evidence["z"] >= 6 and abs(findings[0].evidence["median"] - 2.0) < 0.05


def test_a_second_spike_after_quiet_is_a_new_episode():
    values = noisy_loss(300)
    values[100] = 5.0
    values[100 + QUIET + 20] = 5.0
    findings, _, _ = run_detect("loss", values, 5)
    assert [f.step for f in findings] == [100, 100 + QUIET + 20]


def test_threshold_comes_from_the_config():
    values = noisy_loss(200)
    values[120] = 2.05  # about 5 sigma
    assert not run_detect("loss", values, thresholds=Thresholds(loss_spike_z=8.0))[0]
    assert run_detect("loss", values, thresholds=Thresholds(loss_spike_z=3.0))[0][0].step == 120
    assert Thresholds.from_config({"alerts": {"loss_spike_z": 3, "grad_norm_max": "x"}}) == Thresholds(3.0, 100.0, 50.0)


def test_no_verdict_before_enough_history_and_a_smooth_decline_is_no_spike():
    assert not run_detect("loss", [2.0, 9.0, 2.0, 2.0])[0]
    assert not run_detect("loss", np.linspace(5, 1, 2000) + 0.001 * RNG.standard_normal(2000), 20)[0]


def test_nan_loss_is_one_episode_until_quiet():
    values = noisy_loss(100)
    values[40:60] = np.nan
    values[80] = np.inf
    findings, resolved, state = run_detect("loss", values, 9)
    assert [(f.kind, f.step) for f in findings] == [("nan", 40), ("nan", 80)]
    assert resolved == ["nan", "nan"]
    assert len(state["w"]) == WINDOW and all(np.isfinite(state["w"]))


def test_grad_norm_blow_up_by_ceiling_by_ratio_and_by_nan():
    values = 0.9 + 0.05 * RNG.standard_normal(400)
    values[100] = 150.0  # above alerts.grad_norm_max
    values[200] = 40.0  # 40 x the median
    values[300] = np.nan
    findings, _, _ = run_detect("grad_norm", values, 3)
    assert [f.step for f in findings] == [100, 200, 300]
    assert "grad_norm_max" in findings[0].message and "median" in findings[1].message


def test_throughput_drop_needs_several_low_steps():
    values = 18000 + 50 * RNG.standard_normal(300)
    values[100:103] = 5000  # three low steps: a blip
    values[200:230] = 7000  # a sustained drop
    findings, _, _ = run_detect("tokens_per_s", values, 11, thresholds=Thresholds(throughput_drop_pct=50))
    assert [(f.kind, f.step) for f in findings] == [("throughput", 204)]


def test_other_keys_are_not_watched():
    verdict = detect(key="lr", steps=np.arange(3), values=np.array([1, np.nan, 1e9]), state={}, thresholds=Thresholds())
    assert not verdict.findings and verdict.state["w"] == []


def _messy_stream(key: str, n: int = 400) -> np.ndarray:
    """A series with everything the detectors react to: NaN, infinities, spikes, a drop, huge values."""
    rng = np.random.default_rng(11)
    level = {"loss": 2.0, "grad_norm": 0.9, "tokens_per_s": 18000.0}[key]
    values = level * (1 + 0.01 * rng.standard_normal(n))
    values[[5, 90, 91, 250]] = np.nan
    values[[120, 300]] = [np.inf, -np.inf]
    values[[150, 151, 152, 200]] = level * np.array([5.0, 6.0, 4.0, 300.0])
    values[320:340] = level * 0.2
    values[360] = 1e308
    values[361] = -1e308
    values[370:375] = 0.0
    return values


@pytest.mark.parametrize("chunks", [3, 40])  # 40: short batches, some quiet while an episode is open
@pytest.mark.parametrize("key", sorted(WATCHED_KEYS))
def test_a_point_at_a_time_and_a_batch_give_the_same_verdicts_and_state(key, chunks):
    values = _messy_stream(key)
    batched = run_detect(key, values, chunks=chunks)
    stepwise = run_detect(key, values, chunks=len(values))

    # A batch reports detector by detector, so only the order across detectors may differ.
    def by_step(findings):
        return sorted((vars(f) for f in findings), key=lambda f: (f["step"], f["kind"]))

    assert batched[0] and by_step(stepwise[0]) == by_step(batched[0])
    assert sorted(stepwise[1]) == sorted(batched[1]) and stepwise[2] == batched[2]


@pytest.mark.parametrize(
    ("key", "edge"),
    [
        ("grad_norm", [[10.0], [10.000001], [100.0], [100.1]]),  # 10x the median, then grad_norm_max
        ("tokens_per_s", [[0.5] * 5, [0.4999999] * 4, [0.4999999] * 5]),  # the 50 % floor; a drop of 5 points
    ],
)
def test_batches_at_the_detectors_bounds_judge_as_points_do(key, edge):
    # A batch whose values stay within bounds of its history skips the medians; values at and just past those
    # bounds must give the verdicts that the exact per-point arithmetic gives.
    level = {"grad_norm": 1.0, "tokens_per_s": 18000.0}[key]
    values = np.full(WINDOW, level)
    for run in edge:
        values = np.concatenate([values, np.array(run) * level, np.full(20, level)])
    batched = run_detect(key, values, chunks=len(values) // 16)
    stepwise = run_detect(key, values, chunks=len(values))
    assert batched[0] and [vars(f) for f in batched[0]] == [vars(f) for f in stepwise[0]]
    assert batched[1:] == stepwise[1:]


def test_a_batch_is_one_vectorised_pass():
    import time

    values = noisy_loss(WINDOW + 5000)
    _, _, state = run_detect("loss", values[:WINDOW])
    started = time.perf_counter()
    detect(
        key="loss", steps=np.arange(WINDOW, WINDOW + 5000), values=values[WINDOW:], state=state, thresholds=Thresholds()
    )
    assert time.perf_counter() - started < 0.5


# Through ingest: alerts in the database, pushed, audited, with state shared by every process


@pytest.fixture
def run(seeded, operator):
    return tiny_run(owner=operator, alerts__loss_spike_z=6.0, alerts__webhook_url="http://127.0.0.1:9/hook")


def receive_matching(layer, channel, wanted, count: int, limit: int = 100) -> list[dict]:
    """Up to `count` messages that satisfy `wanted`, read in one event loop (the layer's receive buffer is
    bound to its loop)."""

    async def collect():
        found = []
        for _ in range(limit):
            try:
                message = await asyncio.wait_for(layer.receive(channel), 5)
            except TimeoutError:
                break
            if wanted(message):
                found.append(message)
                if len(found) == count:
                    break
        return found

    return async_to_sync(collect)()


def ingest_loss(run, values, start=0, batch=25):
    for offset in range(0, len(values), batch):
        records = [
            {"kind": "metrics", "step": start + offset + i, "values": {"loss": float(v)}}
            for i, v in enumerate(values[offset : offset + batch])
        ]
        metrics_record(run=run, records=records)


def test_ingest_raises_each_episode_once_and_resolves_it(run):
    values = noisy_loss(200)
    values[100:104] = 6.0
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(run_group(run.pk), channel)
    try:
        ingest_loss(run, values)
        ingest_loss(run, values)  # a replay: no new points, so no new verdicts
        messages = receive_matching(layer, channel, lambda m: m["type"] == "run.alert" and m["run_id"] == run.pk, 2)
    finally:
        async_to_sync(layer.group_discard)(run_group(run.pk), channel)
    alert = Alert.objects.get(run=run)
    assert (alert.kind, alert.step, alert.severity) == ("loss_spike", 100, "warning")
    assert alert.resolved_at is not None
    assert json.loads(alert.evidence)["threshold"] == 6.0
    assert [m["alert"]["resolved_at"] is None for m in messages] == [True, False]
    assert AuditEvent.objects.filter(action="alert.raised", run_id=run.pk).count() == 1


def test_detector_state_lives_in_the_database(run):
    values = noisy_loss(120)
    ingest_loss(run, values[:100])
    series = MetricSeries.objects.get(run=run, key="loss")
    window = np.frombuffer(bytes(series.detector_window), dtype="<f8")
    assert window.size == WINDOW and np.array_equal(window, values[100 - WINDOW : 100])
    assert "w" not in series.detector_state
    # A fresh run object (another process) continues from the stored window: the spike is judged at once.
    from runs.models import Run

    metrics_record(run=Run.objects.get(pk=run.pk), records=[{"kind": "metrics", "step": 100, "values": {"loss": 9.0}}])
    assert Alert.objects.get(run=run).step == 100


def test_alert_enqueues_the_webhook_task(run):
    from controlplane.celery import app

    found = None
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.CELERY_TASK_DEFAULT_QUEUE)
        # Earlier tests queue tasks that no worker takes here; without this, the webhook could lie past them.
        queue.clear()
        alert = alert_raise(
            run=run, kind="hang", severity="critical", step=5, message="no heartbeat", evidence={"s": 1}
        )
        assert alert is not None
        try:
            for _ in range(50):
                message = queue.get(timeout=5)
                message.ack()
                if message.headers.get("task") == "workers.deliver_webhook":
                    args, kwargs, _ = message.decode() if not isinstance(message.payload, list) else message.payload
                    if kwargs.get("alert_id") == alert.pk:
                        found = kwargs
                        break
        finally:
            queue.close()
    assert found == {"alert_id": alert.pk, "url": "http://127.0.0.1:9/hook"}


def test_alert_raise_dedupes_an_open_episode_and_a_new_attempt_starts_fresh(run):
    first = alert_raise(run=run, kind="oom", severity="critical", step=1, message="OOM", evidence="trace")
    assert alert_raise(run=run, kind="oom", severity="critical", step=2, message="OOM again", evidence={}) is None
    assert alert_raise(run=run, kind="nccl", severity="critical", step=2, message="NCCL", evidence={}) is not None
    type(run).objects.filter(pk=run.pk).update(attempt=2)
    second = alert_raise(run=run, kind="oom", severity="critical", step=3, message="OOM", evidence={})
    assert second is not None and second.attempt == 2 and first.attempt == 1
    assert alert_resolve(run=run, kind="oom") == 2
    assert alert_raise(run=run, kind="oom", severity="critical", step=4, message="OOM", evidence={}) is not None
