"""Reading a job's output: failure signatures, the trainer's final status line, and loss lines of any script."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

OOM_PATTERNS = [
    re.compile(r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError"),
    re.compile(r"DefaultCPUAllocator: can't allocate memory"),
    re.compile(r"^\s*MemoryError\b"),
    re.compile(r"exits with return code = -9"),
    re.compile(r"oom-kill|Out of memory: Killed process|OUT_OF_MEMORY"),
]
COLLECTIVE_PATTERNS = [
    re.compile(r"NCCL (?:error|WARN)|nccl(?:Internal|System|Unhandled(?:Cuda)?|Invalid)Error"),
    re.compile(r"Watchdog caught collective operation timeout|collective operation timeout"),
    re.compile(r"ProcessGroupNCCL.*(?:timeout|abort)", re.IGNORECASE),
    re.compile(r"Gloo.*(?:Connection closed by peer|Connection reset|Timed out)", re.IGNORECASE),
    re.compile(r"torch\.distributed\.DistBackendError"),
]
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):")
EXCEPTION_LINE = re.compile(r"^(?:[\w.]+(?:Error|Exception|Interrupt)|[\w.]+Error)\b.*")
JOB_STATUS = re.compile(r"JOB_STATUS (\{.*\})\s*$")
# "step 12 ... loss 2.31" / "step=12 loss=2.31" / "[step 12] loss: 2.31": what scripts that never call us print.
LOSS_LINE = re.compile(
    r"\bstep\b[\s:=\[]*(?P<step>\d+)\b.*?\bloss\b[\s:=]*(?P<loss>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Finding:
    kind: str  # "oom" | "nccl" | "traceback" | "status"
    line: str
    data: dict | None = None


def scan_lines(lines: list[str]) -> list[Finding]:
    findings: list[Finding] = []
    in_traceback = False
    for raw in lines:
        line = raw.rstrip("\n")
        status = JOB_STATUS.search(line)
        if status:
            try:
                findings.append(Finding("status", line, json.loads(status.group(1))))
            except json.JSONDecodeError:
                pass
            continue
        if any(p.search(line) for p in OOM_PATTERNS):
            findings.append(Finding("oom", line.strip()[:500]))
        elif any(p.search(line) for p in COLLECTIVE_PATTERNS):
            findings.append(Finding("nccl", line.strip()[:500]))
        if TRACEBACK.match(line):
            in_traceback = True
        elif in_traceback and EXCEPTION_LINE.match(line.strip()) and not line.startswith(" "):
            findings.append(Finding("traceback", line.strip()[:500]))
            in_traceback = False
    return findings


def loss_records(lines: list[str], *, time_s: float) -> list[dict]:
    """Metric records for loss lines printed by scripts that never call the ingest API."""
    records = []
    for line in lines:
        if "JOB_STATUS" in line:
            continue
        match = LOSS_LINE.search(line)
        if not match:
            continue
        value = float(match.group("loss"))
        records.append({"kind": "metrics", "step": int(match.group("step")), "time": time_s, "values": {"loss": value}})
    return records


def csv_monitor_records(key: str, lines: list[str], *, time_s: float) -> list[dict]:
    """DeepSpeed's csv_monitor rows ("step,value"; step counts samples) as metric records."""
    records = []
    for line in lines:
        parts = line.strip().split(",")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        try:
            value = float(parts[1])
        except ValueError:
            continue
        records.append({"kind": "metrics", "step": int(parts[0]), "time": time_s, "values": {key: value}})
    return records
