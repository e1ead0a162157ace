"""The reporter records the machine's figures beside a run's metrics: CPU, host memory, network (psutil or /proc),
and GPUs through NVML where it is installed; and the wall time of every step, for the charts' time axis."""

import json
import time

from jobs.common import system_metrics
from jobs.common.system_metrics import SystemSampler
from jobs.reporter import Reporter


def test_a_sample_has_cpu_memory_and_network_figures():
    sampler = SystemSampler(interval_s=0.0)
    time.sleep(0.05)
    sample = sampler.sample()
    assert 0.0 <= sample["sys/cpu_pct"] <= 100.0
    assert sample["sys/mem_gb"] > 0 and 0 < sample["sys/mem_pct"] <= 100
    assert sample["sys/net_rx_mb_s"] >= 0 and sample["sys/net_tx_mb_s"] >= 0


def test_without_psutil_the_figures_come_from_proc(monkeypatch):
    monkeypatch.setattr(system_metrics, "psutil", None)
    sampler = SystemSampler(interval_s=0.0)
    sum(i * i for i in range(200_000))  # some CPU time between the two readings
    sample = sampler.sample()
    assert 0.0 <= sample["sys/cpu_pct"] <= 100.0 and sample["sys/mem_gb"] > 0


def test_samples_are_taken_at_most_once_per_interval():
    sampler = SystemSampler(interval_s=60.0)
    assert sampler.sample(force=True)
    assert sampler.sample() == {}


def test_a_run_directorys_reporter_adds_system_figures_and_wall_time(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({"reporter": {"ingest_url": None, "system_metrics_s": 0.001, "wall_time": True}})
    )
    rep = Reporter.from_run_dir(str(tmp_path))
    before = time.time()
    rep.log(1, {"loss": 2.0})
    rep.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["values"]["loss"] == 2.0
    assert before - 1 <= record["values"]["wall_time"] <= time.time() + 1
    assert "sys/cpu_pct" in record["values"] and "sys/mem_gb" in record["values"]
