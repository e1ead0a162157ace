"""Reading a job's output: failure signatures, the trainer's final status line, and loss lines of any script."""

from __future__ import annotations

import ast
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
# torch.distributed prefixes every line a rank writes after init with "[rankN]: " (TORCH_SHOW_CPP_STACKTRACES aside);
# the prefix is taken off before any pattern is matched and kept as the line's rank.
RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:\s?")
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):")
EXCEPTION_LINE = re.compile(r"^(?:[\w.]+(?:Error|Exception|Interrupt)|[\w.]+Error)\b.*")
JOB_STATUS = re.compile(r"JOB_STATUS (\{.*\})\s*$")
# "step 12 ... loss 2.31" / "step=12 loss=2.31" / "[step 12] loss: 2.31": what scripts that never call us print.
LOSS_LINE = re.compile(
    r"\bstep\b[\s:=\[]*(?P<step>\d+)\b.*?\bloss\b[\s:=]*(?P<loss>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))",
    re.IGNORECASE,
)


# DeepSpeed compiling one of its C++/CUDA ops on first use (torch.utils.cpp_extension's verbose lines and the op
# builder's own): minutes on a cold cache, with nothing else printed meanwhile.
OP_BUILD_START = re.compile(
    r"^(?:Building extension module|Emitting ninja build file .*?/(?P<dir>[\w.-]+)/build\.ninja)"
)
OP_BUILD_NAME = re.compile(r"^Building extension module (?P<op>[\w.-]+?)\.*$")
OP_BUILD_DONE = re.compile(
    r"^(?:Time to load (?P<op>[\w.-]+) op: (?P<seconds>[\d.]+) seconds"
    r"|DeepSpeed deepspeed\.ops\.\w+\.(?P<built>\w+?)(?:_op)? built successfully)"
)
# DeepSpeed's own progress lines (engine.print_step every steps_per_print; its ThroughputTimer).
DS_STEP = re.compile(r"\bstep=(?P<step>\d+), skipped=\d+, lr=\[(?P<lr>[^\],]+)")
DS_THROUGHPUT = re.compile(
    r"\bglobal_step=(?P<step>\d+), RunningAvgSamplesPerSec=(?P<avg>[\d.eE+-]+), CurrSamplesPerSec=(?P<cur>[\d.eE+-]+)"
    r"(?:, MemAllocated=(?P<mem>[\d.]+)GB, MaxMemAllocated=(?P<maxmem>[\d.]+)GB)?"
)
# The Hugging Face Trainer's printed logs: a dict literal per logging step, values formatted as strings or numbers.
HF_LOG = re.compile(r"^\{'[A-Za-z_][\w/.-]*': .*\}\s*$")
HF_KEYS = {"learning_rate": "lr", "train_samples_per_second": "samples_per_s", "train_steps_per_second": "steps_per_s"}
METRIC_KEY = re.compile(r"[A-Za-z0-9_./-]{1,100}\Z")


@dataclass(frozen=True)
class Finding:
    kind: str  # "oom" | "nccl" | "traceback" | "status" | "compile"
    line: str
    data: dict | None = None


def strip_rank(line: str) -> tuple[str, int | None]:
    """The line without torch.distributed's "[rankN]: " prefix, and N (None when there is none)."""
    match = RANK_PREFIX.match(line)
    if not match:
        return line, None
    return line[match.end() :], int(match.group(1))


def scan_lines(lines: list[str]) -> list[Finding]:
    findings: list[Finding] = []
    # A traceback is followed per rank: ranks' lines interleave in one log.
    in_traceback: set[int | None] = set()
    for raw in lines:
        line, rank = strip_rank(raw.rstrip("\n"))
        compiled = _compile_finding(line)
        if compiled is not None:
            findings.append(compiled)
            continue
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
            in_traceback.add(rank)
        elif rank in in_traceback and EXCEPTION_LINE.match(line.strip()) and not line.startswith(" "):
            findings.append(Finding("traceback", line.strip()[:500], {"rank": rank}))
            in_traceback.discard(rank)
    return findings


def _compile_finding(line: str) -> Finding | None:
    done = OP_BUILD_DONE.match(line)
    if done:
        op = done.group("op") or done.group("built") or ""
        seconds = float(done.group("seconds")) if done.group("seconds") else 0.0
        return Finding("compile", line.strip()[:500], {"op": op, "seconds": seconds})
    if OP_BUILD_START.match(line):
        named = OP_BUILD_NAME.match(line)
        op = named.group("op") if named else (OP_BUILD_START.match(line).group("dir") or "")  # type: ignore[union-attr]
        return Finding("compile", line.strip()[:500], {"op": op, "seconds": None})
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def hf_log_values(line: str) -> dict[str, float] | None:
    """The numbers of one printed Hugging Face Trainer log dict ({'loss': '2.31', 'learning_rate': 5e-05, ...}),
    under the chart's key names (learning_rate -> lr); None when the line is not one."""
    line, _ = strip_rank(line.strip())
    if not HF_LOG.match(line):
        return None
    try:
        logs = ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(logs, dict):
        return None
    values = {}
    for key, raw in logs.items():
        number = _number(raw)
        name = HF_KEYS.get(str(key), str(key))
        if number is not None and METRIC_KEY.match(name):
            values[name] = number
    return values or None


def step_line_records(lines: list[str], *, time_s: float, hf_logs_seen: int = 0) -> tuple[list[dict], int]:
    """Metric records from what scripts print without calling us: "step N ... loss X" lines, the Hugging Face
    Trainer's log dicts and DeepSpeed's step and throughput lines; and the count of HF log dicts seen so far.

    An HF log dict carries no step: the n-th one seen in the run is put at step n (its `epoch` is kept beside it).
    A script logging through MLflow gets its real steps that way instead (the watcher skips these lines then)."""
    records = loss_records(lines, time_s=time_s)
    for raw in lines:
        hf = hf_log_values(raw)
        if hf is not None:
            # The end-of-training summary (train_runtime, train_samples_per_second, ...) belongs to the last step.
            if "train_runtime" not in hf or not hf_logs_seen:
                hf_logs_seen += 1
            records.append({"kind": "metrics", "step": hf_logs_seen, "time": time_s, "values": hf})
            continue
        line, _ = strip_rank(raw)
        step = DS_STEP.search(line)
        if step:
            lr = _number(step.group("lr").strip())
            if lr is not None:
                records.append(
                    {"kind": "metrics", "step": int(step.group("step")), "time": time_s, "values": {"lr": lr}}
                )
            continue
        speed = DS_THROUGHPUT.search(line)
        if speed:
            values = {"samples_per_s": float(speed.group("cur"))}
            if speed.group("maxmem"):
                values["mem_gb"] = float(speed.group("maxmem"))
            records.append({"kind": "metrics", "step": int(speed.group("step")), "time": time_s, "values": values})
    return records, hf_logs_seen


def loss_records(lines: list[str], *, time_s: float) -> list[dict]:
    """Metric records for loss lines printed by scripts that never call the ingest API."""
    records = []
    for line in lines:
        if "JOB_STATUS" in line or HF_LOG.match(strip_rank(line.strip())[0]):
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
