"""What the reference trainer can run, as it declares in `jobs/train/capabilities.json`.

The trainer owns that file (`python -m jobs.train --capabilities` prints the same thing); the control plane only
reads it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from jobs.common.run_config import CAPABILITIES_PATH

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
