"""The machine's own figures for the reporter to record beside a run's metrics: GPU utilisation, memory,
temperature and power through NVML where the NVIDIA driver and nvidia-ml-py (`pynvml`) are installed; CPU, host
memory and network through psutil, or /proc where psutil is missing. Nothing here is required: whatever cannot be
read is left out."""

from __future__ import annotations

import os
import time

try:  # optional: GPU nodes
    import pynvml
except ImportError:  # pragma: no cover - depends on the node
    pynvml = None

try:  # optional: most Python installs have it (DeepSpeed depends on it)
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

GIB = 1024**3
MB = 1e6


def _proc_cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as f:
            parts = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)
    return sum(parts), idle


def _proc_mem_used_gib() -> tuple[float, float] | None:
    fields = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, value = line.split(":", 1)
                fields[name] = float(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if not total or available is None:
        return None
    return (total - available) / GIB, 100.0 * (total - available) / total


def _proc_net_bytes() -> tuple[float, float] | None:
    rx = tx = 0.0
    try:
        with open("/proc/net/dev") as f:
            for line in f.readlines()[2:]:
                name, data = line.split(":", 1)
                if name.strip() == "lo":
                    continue
                values = data.split()
                rx += float(values[0])
                tx += float(values[8])
    except (OSError, ValueError, IndexError):
        return None
    return rx, tx


class SystemSampler:
    """Samples at most once per `interval_s`; `sample()` returns {} between samples."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._last = 0.0
        self._cpu = _proc_cpu_times() if psutil is None else None
        self._net = self._net_bytes()
        self._net_at = time.monotonic()
        self._gpus: list = []
        if psutil is not None:
            psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        if pynvml is not None:
            try:
                pynvml.nvmlInit()
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                indexes: list[int] = list(range(pynvml.nvmlDeviceGetCount()))
                if visible:
                    indexes = [int(i) for i in visible.split(",") if i.strip().isdigit()]
                self._gpus = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in indexes]
            except Exception:  # no driver, no device: CPU figures only
                self._gpus = []

    def _net_bytes(self) -> tuple[float, float] | None:
        if psutil is not None:
            counters = psutil.net_io_counters()
            return (float(counters.bytes_recv), float(counters.bytes_sent)) if counters else None
        return _proc_net_bytes()

    def sample(self, *, force: bool = False) -> dict[str, float]:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return {}
        self._last = now
        out: dict[str, float] = {}
        if psutil is not None:
            out["sys/cpu_pct"] = float(psutil.cpu_percent(interval=None))
            memory = psutil.virtual_memory()
            out["sys/mem_gb"] = (memory.total - memory.available) / GIB
            out["sys/mem_pct"] = float(memory.percent)
        else:
            cpu = _proc_cpu_times()
            if cpu and self._cpu and cpu[0] > self._cpu[0]:
                busy = (cpu[0] - self._cpu[0]) - (cpu[1] - self._cpu[1])
                out["sys/cpu_pct"] = 100.0 * busy / (cpu[0] - self._cpu[0])
            self._cpu = cpu
            memory = _proc_mem_used_gib()
            if memory:
                out["sys/mem_gb"], out["sys/mem_pct"] = memory
        net, elapsed = self._net_bytes(), now - self._net_at
        if net and self._net and elapsed > 0:
            out["sys/net_rx_mb_s"] = max(0.0, net[0] - self._net[0]) / MB / elapsed
            out["sys/net_tx_mb_s"] = max(0.0, net[1] - self._net[1]) / MB / elapsed
        self._net, self._net_at = net, now
        for index, handle in self._gpus:
            prefix = f"sys/gpu{index}"
            try:
                out[f"{prefix}/util_pct"] = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                out[f"{prefix}/mem_gb"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used / GIB
                out[f"{prefix}/temp_c"] = float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
                out[f"{prefix}/power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception:  # a device that stopped answering: skip it this time
                continue
        return out
