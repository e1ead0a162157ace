"""What the reference trainer can run, as it declares in `jobs/train/capabilities.json`, and the check of a run
config against it.

The trainer owns that file (`python -m jobs.train --capabilities` prints the same thing); the control plane only
reads it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.common.run_config import CAPABILITIES_PATH
from runs.planning.fields import ConfigReader, nearest

# Key -> the check its value must pass, so a malformed file is refused once here rather than surfacing as a
# confusing validation message later.
_SCHEMA: dict[str, tuple[str, type]] = {
    "tp": ("a list of integers", list),
    "pp": ("a list of integers", list),
    "sp": ("true or false", bool),
    "ep": ("true or false", bool),
    "zero_stages": ("a list of integers", list),
    "archs": ("a list of strings", list),
    "precisions": ("a list of strings", list),
}
_LIST_ITEM_TYPES: dict[str, type] = {"tp": int, "pp": int, "zero_stages": int, "archs": str, "precisions": str}


_REGENERATE = (
    "regenerate it with `python -m jobs.train --capabilities > jobs/train/capabilities.json`, or choose the plan_only or "
    "own_script trainer."
)


class CapabilitiesUnavailable(RuntimeError):
    """The capabilities file is missing or malformed; the message says which and how to produce it."""


_cache: dict[Path, tuple[int, dict[str, Any]]] = {}
_lock = threading.Lock()


def trainer_capabilities(*, path: Path | None = None) -> dict[str, Any]:
    """The reference trainer's capabilities, re-read only when the file changes (keyed on its mtime)."""
    target = Path(path) if path is not None else CAPABILITIES_PATH
    try:
        mtime = target.stat().st_mtime_ns
    except FileNotFoundError:
        raise CapabilitiesUnavailable(
            f"The reference trainer's capabilities file {target} does not exist. It ships with jobs/ "
            "(`python -m jobs.train --capabilities` prints the same content); until it is there, layouts "
            "cannot be checked against the reference trainer; choose the plan_only or own_script trainer."
        ) from None
    with _lock:
        cached = _cache.get(target)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    caps = parse_capabilities(text=target.read_text(encoding="utf-8"), source=str(target))
    with _lock:
        _cache[target] = (mtime, caps)
    return caps


def parse_capabilities(*, text: str, source: str = "capabilities") -> dict[str, Any]:
    """Parse and check the capabilities JSON; `reasons` defaults to an empty mapping."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CapabilitiesUnavailable(f"{source} is not valid JSON ({exc}); {_REGENERATE}") from None
    return check_capabilities(caps=data, source=source)


def check_capabilities(*, caps: Any, source: str = "capabilities") -> dict[str, Any]:
    if not isinstance(caps, dict):
        raise CapabilitiesUnavailable(f"{source} must hold a JSON object, not {type(caps).__name__}; {_REGENERATE}")
    problems = []
    for key, (wording, kind) in _SCHEMA.items():
        value = caps.get(key)
        item_kind = _LIST_ITEM_TYPES.get(key)
        items: list = value if isinstance(value, list) else []
        if not isinstance(value, kind) or (
            item_kind is not None and not all(isinstance(v, item_kind) and not isinstance(v, bool) for v in items)
        ):
            problems.append(f"'{key}' must be {wording}")
    reasons = caps.get("reasons", {})
    if not isinstance(reasons, dict) or not all(isinstance(v, str) for v in reasons.values()):
        problems.append("'reasons' must map keys to sentences")
    if problems:
        raise CapabilitiesUnavailable(f"{source} is malformed ({'; '.join(problems)}); {_REGENERATE}")
    return {**caps, "reasons": dict(reasons)}


# --- checking a config against them ---------------------------------------------------------------------------------


# Capability keys that list the values the trainer runs: (key, config path, reason keys). The last four are optional;
# a trainer that omits one runs every value of that field.
_CAPABILITY_LISTS = (
    ("tp", "parallel.tp", ("tp",)),
    ("pp", "parallel.pp", ("pp",)),
    ("zero_stages", "parallel.zero_stage", ("zero_stages", "zero_stage", "zero")),
    ("archs", "model.arch", ("archs", "arch")),
    ("precisions", "precision", ("precisions", "precision")),
    ("attentions", "model.attention", ("attentions", "attention")),
    ("nan_policies", "training.nan_policy", ("nan_policies", "nan_policy")),
    ("accelerators", "cluster.accelerator", ("accelerators", "accelerator")),
    ("schedules", "optimizer.schedule", ("schedules", "schedule")),
)
# Capability flags that say whether a feature runs at all; absent means it does.
_CAPABILITY_FLAGS = (
    ("sp", "parallel.sp"),
    ("offload_optimizer", "parallel.offload_optimizer"),
    ("offload_param", "parallel.offload_param"),
    ("activation_checkpointing", "parallel.activation_checkpointing"),
)


def _peek(cfg: dict[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_trainer_can_run(r: ConfigReader, *, capabilities: dict[str, Any] | None) -> None:
    try:
        caps = trainer_capabilities() if capabilities is None else check_capabilities(caps=capabilities)
    except CapabilitiesUnavailable as exc:
        reason = str(exc)
        r.add("run.trainer", f"run.trainer is reference, but {reason[:1].lower()}{reason[1:]}")
        return
    reasons = caps["reasons"]

    def refuse(path: str, value: Any, fix: str, reason_keys: Sequence[str], suggestion: Any = None) -> None:
        why = next((f" ({reasons[k].rstrip('.')})" for k in reason_keys if reasons.get(k)), "")
        r.add(
            path,
            f"The reference trainer cannot run {path} = {json.dumps(value)}{why}; {fix}, or plan it with the "
            "plan_only trainer, or run your own DeepSpeed script.",
            None if suggestion is None else {path: suggestion},
        )

    for key, path, reason_keys in _CAPABILITY_LISTS:
        allowed, value = caps.get(key), _peek(r.cfg, path)
        if isinstance(allowed, list) and value is not None and not isinstance(value, bool) and value not in allowed:
            # A number suggests the nearest allowed number; a list of names (precisions) has none to offer it.
            numbers = [a for a in allowed if isinstance(a, int) and not isinstance(a, bool)]
            closest = nearest(numbers, value) if isinstance(value, int) else None
            shown = ", ".join(str(v) for v in sorted(allowed, key=str)) or "nothing"
            refuse(path, value, f"set {path} to {shown}", reason_keys, closest)
    for key, path in _CAPABILITY_FLAGS:
        if _peek(r.cfg, path) is True and caps.get(key, True) is False:
            refuse(path, True, f"turn {path} off", (key,), False)
    ep, zero = _peek(r.cfg, "parallel.ep"), _peek(r.cfg, "parallel.zero_stage")
    if isinstance(ep, int) and ep > 1:
        max_zero = caps.get("ep_max_zero_stage", 3)
        if not caps["ep"]:
            refuse("parallel.ep", ep, "set parallel.ep to 1", ("ep",), 1)
        elif isinstance(zero, int) and isinstance(max_zero, int) and zero > max_zero:
            refuse(
                "parallel.zero_stage",
                zero,
                f"with expert parallelism set parallel.zero_stage to at most {max_zero} (or parallel.ep to 1)",
                ("ep_zero3", "ep_max_zero_stage", "ep"),
                max_zero,
            )
