"""One hardware table: the plan's peak and the trainer's MFU peak are the same figure for every device and precision."""

from __future__ import annotations

import pytest

from jobs.common import hardware
from jobs.train.trainer import peak_tflops
from runs.planning.compute import peak_tflops_for
from runs.planning.presets import preset_config

# Names as torch.cuda.get_device_name reports them (the trainer) beside the cluster's gpu_type (the form).
DEVICES = [
    ("NVIDIA H200", "H200"),
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A10", "A10"),
    ("CPU", "CPU"),
]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize(("device_name", "gpu_type"), DEVICES)
def test_planner_and_trainer_read_the_same_peak(monkeypatch, device_name, gpu_type, precision):
    monkeypatch.delenv("CP_PEAK_TFLOPS", raising=False)
    table = hardware.PEAK_TFLOPS[gpu_type][precision]
    trained, source = peak_tflops(device_name, precision)
    assert trained == table
    assert peak_tflops_for(gpu_type=gpu_type, precision=precision) == table
    assert peak_tflops_for(gpu_type=gpu_type.lower(), precision=precision) == table
    assert ("nominal" in source) == (gpu_type == "CPU")


def test_the_datasheet_figures():
    assert hardware.PEAK_TFLOPS["H100"] == hardware.PEAK_TFLOPS["H200"] == {"bf16": 989.0, "fp32": 494.5}
    assert hardware.PEAK_TFLOPS["A100"] == {"bf16": 312.0, "fp32": 156.0}
    # A10 is a substring of A100: the longer name must win.
    assert hardware.accelerator("NVIDIA A100-SXM4-40GB").name == "A100"
    assert hardware.accelerator("TPU v5") is None and peak_tflops_for(gpu_type="TPU v5", precision="bf16") is None


def test_the_trainer_falls_back_to_the_env_then_to_h100_for_an_unknown_gpu(monkeypatch):
    monkeypatch.delenv("CP_PEAK_TFLOPS", raising=False)
    assert peak_tflops("NVIDIA B200", "bf16") == (989.0, "unknown GPU 'NVIDIA B200': H100 bf16 figure")
    monkeypatch.setenv("CP_PEAK_TFLOPS", "123.5")
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == (123.5, "env CP_PEAK_TFLOPS")


def test_presets_take_device_memory_from_the_table():
    assert preset_config("single_h200")["cluster"]["gpu_memory_gb"] == hardware.memory_gib("H200") == 139.0
    assert preset_config("r1_guide")["cluster"]["gpu_memory_gb"] == hardware.memory_gib("H100") == 80.0
    assert hardware.memory_gib("CPU") is None
