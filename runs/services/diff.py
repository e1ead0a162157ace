"""Dotted-path diffs of nested configs, for the audit trail and the compare page."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: cfg}


def config_diff(before: dict, after: dict) -> dict[str, list]:
    """{path: [before, after]} for every leaf that differs; a missing side is None."""
    a, b = flatten(before), flatten(after)
    diff: dict[str, list] = {}
    for path in sorted(set(a) | set(b)):
        va, vb = a.get(path, _MISSING), b.get(path, _MISSING)
        if va != vb:
            diff[path] = [None if va is _MISSING else va, None if vb is _MISSING else vb]
    return diff


# Paths that differ between any two runs by construction, never by choice.
RUN_IDENTITY = ("run.id", "run.name", "run.attempt")


def configs_diff(configs: list[dict]) -> dict[str, list]:
    """{path: [value in each config]} for every leaf on which any two configs differ (None where missing)."""
    flat = [flatten(c) for c in configs]
    paths = sorted(set().union(*flat)) if flat else []
    out: dict[str, list] = {}
    for path in paths:
        if path in RUN_IDENTITY:
            continue
        values = [f.get(path, _MISSING) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[path] = [None if v is _MISSING else v for v in values]
    return out
