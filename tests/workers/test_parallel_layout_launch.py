"""Each parallel layout launched through the control plane: a run of the tiny preset on a local CPU cluster of the
layout's size, followed by the watcher to success; its loss curve is stored and the run page draws it."""

import os

import pytest
from django.test import override_settings

from runs.models import Cluster, MetricSeries, RunStatus
from runs.planning.presets import preset_config
from runs.services.runs import run_create, run_launch
from tests.workers.test_launch_and_watch import UNREACHABLE, _follow

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = 4
# name -> (parallel section, ranks)
LAYOUTS = {
    "tp2": ({"tp": 2}, 2),
    "sp2": ({"tp": 2, "sp": True}, 2),
    "pp2": ({"pp": 2, "zero_stage": 1}, 2),
    "ep2": ({"ep": 2, "zero_stage": 1}, 2),
    "tp2_pp2": ({"tp": 2, "pp": 2, "zero_stage": 1}, 4),
    "tp2_ep2": ({"tp": 2, "ep": 2, "zero_stage": 1}, 4),
    "pp2_dp2": ({"pp": 2, "zero_stage": 1}, 4),
    "tp2_pp2_dp2": ({"tp": 2, "pp": 2, "zero_stage": 1}, 8),
}
# Each launch is a run of DeepSpeed processes (half a minute to two minutes on a 2-core machine). By default the suite
# launches the 8-rank TP x PP x DP run, TP x EP and sequence parallelism, which together start every axis through the
# backend; tests/jobs/train/test_layouts.py proves each layout's numbers. CP_LAYOUTS=all launches every one.
CI_LAUNCHES = ("tp2_pp2_dp2", "tp2_ep2", "sp2")


def _chosen() -> list[str]:
    raw = os.environ.get("CP_LAYOUTS", "").split()
    return list(LAYOUTS) if raw == ["all"] else [name for name in LAYOUTS if name in (raw or CI_LAUNCHES)]


def _cluster(ranks: int) -> Cluster:
    base = Cluster.objects.get(name="local-cpu")
    cluster, _ = Cluster.objects.get_or_create(
        name=f"local-cpu-{ranks}",
        defaults={
            "backend": base.backend,
            "nodes": 1,
            "gpus_per_node": ranks,
            "accelerator": "cpu",
            "gpu_type": "CPU",
            "gpu_memory_gb": base.gpu_memory_gb,
        },
    )
    return cluster


@pytest.mark.parametrize("layout", _chosen())
def test_layout_run_launches_on_the_local_backend_and_its_curve_shows(seeded, operator, client, tmp_path, layout):
    from runs.models import DataMixRecipe

    parallel, ranks = LAYOUTS[layout]
    dp = ranks // (parallel.get("tp", 1) * parallel.get("pp", 1))
    cluster = _cluster(ranks)
    cfg = preset_config("tiny")
    cfg["parallel"].update(parallel)
    cfg["cluster"].update(name=cluster.name, gpus_per_node=ranks)
    cfg["batch"]["micro_batch"] = 16 // dp
    cfg["training"]["token_budget"] = cfg["batch"]["global_batch_tokens"] * STEPS
    cfg["training"]["checkpoint_interval"] = STEPS
    cfg["optimizer"]["warmup_steps"] = 1
    cfg["curriculum"] = [{"start_step": 0, "seq_len": 32}, {"start_step": STEPS // 2, "seq_len": 64}]
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        run = run_create(owner=operator, name=f"layout-{layout}", preset="tiny", trainer="reference",
                         script_path="", cluster=cluster, recipe=DataMixRecipe.objects.get(name="bilingual-demo"),
                         config=cfg)  # fmt: skip
        run = _follow(run_launch(actor=operator, run=run), timeout=600)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    loss = MetricSeries.objects.get(run=run, key="loss")
    assert loss.points == STEPS and loss.last_step == STEPS
    client.force_login(operator)
    page = client.get(f"/runs/{run.pk}/")
    assert page.status_code == 200 and 'id="charts"' in page.content.decode()
    # What the page's chart script reads: the run's keys and the loss series.
    keys = client.get(f"/api/v1/runs/{run.pk}/keys/", HTTP_ACCEPT="application/json")
    assert keys.status_code == 200 and "loss" in keys.content.decode()
    series = client.get(f"/api/v1/runs/{run.pk}/series/?keys=loss&max_points=4000", HTTP_ACCEPT="application/json")
    assert series.status_code == 200
    assert series.json()["keys"]["loss"]["steps"] == list(range(1, STEPS + 1))
