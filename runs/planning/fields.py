"""The run config's fields as the control plane checks them: choices, numeric ranges, the issue type that names a
field and its fix, and the reader that records one issue per missing or malformed field.

Field names are dotted paths into the config ("parallel.tp", "curriculum.1.seq_len", "data.recipe.sources.0.weight"),
the names the form and the API use for their fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.common.run_config import (  # noqa: F401  (re-exported for the checks beside this module)
    CHOICES,
    MAX_GRAD_ACCUM,
    OOM_REMEDIES,
    RANGES,
    Range,
    range_key,
)

TRAINERS = ("reference", "plan_only", "own_script")
# The choices and ranges are the run.json schema's (jobs.common.run_config), which the job's loader enforces too.
ARCHS = CHOICES["model.arch"]
ATTENTIONS = CHOICES["model.attention"]
PRECISIONS = CHOICES["precision"]
OPTIMIZERS = CHOICES["optimizer.name"]
SCHEDULES = CHOICES["optimizer.schedule"]
NAN_POLICIES = CHOICES["training.nan_policy"]
BACKENDS = CHOICES["cluster.backend"]
ACCELERATORS = CHOICES["cluster.accelerator"]
SPIKE_ACTIONS = CHOICES["remediation.on_spike"]


@dataclass(frozen=True)
class FieldIssue:
    field: str
    message: str
    suggestion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, "suggestion": self.suggestion}


MISSING = object()


def listing(values: Sequence[int], *, limit: int = 8) -> str:
    shown = ", ".join(f"{v:,}" for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def nearest(values: Iterable[int], target: int) -> int | None:
    return min(values, key=lambda v: (abs(v - target), v), default=None)


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


class ConfigReader:
    """Reads typed fields out of the config, recording an issue for each missing or malformed one."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.issues: list[FieldIssue] = []
        self._reported_parents: set[str] = set()

    def add(self, field: str, message: str, suggestion: dict[str, Any] | None = None) -> None:
        issue = FieldIssue(field, message, suggestion)
        if issue not in self.issues:
            self.issues.append(issue)

    def raw(self, path: str) -> Any:
        node = self.cfg
        parts = path.split(".")
        for depth, part in enumerate(parts):
            here = ".".join(parts[: depth + 1])
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                parent = ".".join(parts[:depth]) or "config"
                if depth > 0 and not isinstance(node, (dict, list)):
                    if parent not in self._reported_parents:
                        self._reported_parents.add(parent)
                        self.add(
                            parent,
                            f"{parent} must be a JSON object with its fields, not {node!r}; restore it from a preset.",
                        )
                    return MISSING
                if depth < len(parts) - 1:
                    if here not in self._reported_parents:
                        self._reported_parents.add(here)
                        self.add(
                            here,
                            f"The {here} section is missing; every run config has one "
                            "(docs/run-config.md); start from a preset and edit it.",
                        )
                    return MISSING
                self.add(path, f"{path} is missing; every run config sets it (docs/run-config.md); enter a value.")
                return MISSING
        return node

    def integer(self, path: str) -> int | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        rng = RANGES[range_key(path)]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"{path} must be a whole number {rng.describe()}, not {value!r}; enter one.")
            return None
        if not rng.contains(value):
            self.add(path, f"{path} is {value:,} but must be {rng.describe()}; enter a value in that range.")
            return None
        return value

    def number(self, path: str) -> float | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        rng = RANGES[range_key(path)]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(path, f"{path} must be a number {rng.describe()}, not {value!r}; enter one.")
            return None
        if not rng.contains(float(value)):
            self.add(path, f"{path} is {value:g} but must be {rng.describe()}; enter a value in that range.")
            return None
        return float(value)

    def flag(self, path: str) -> bool | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        if not isinstance(value, bool):
            self.add(path, f"{path} must be true or false, not {value!r}; tick or untick it.")
            return None
        return value

    def choice(self, path: str, options: Sequence[str]) -> str | None:
        value = self.raw(path)
        if value is MISSING:
            return None
        if value not in options:
            self.add(path, f"{path} is {value!r}; choose one of {', '.join(options)}.")
            return None
        return value

    def optional_text(self, path: str) -> None:
        value = self.raw(path)
        if value is not MISSING and value is not None and (not isinstance(value, str) or not value.strip()):
            self.add(
                path, f"{path} must be a path or null (the bundled default), not {value!r}; clear it or enter a path."
            )
