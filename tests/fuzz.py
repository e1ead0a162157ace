"""Bounds and counts for the property-based (hypothesis) suites that look for inputs giving a server error.

CP_FUZZ_SCALE multiplies every suite's example count (default 1: the counts below, which keep the suite's time);
each test counts the cases it ran, and the session's summary prints the totals per test.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("CP_FUZZ_SCALE", "1"))
CASES: Counter[str] = Counter()


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,  # the same cases on every run of the suite: a failure in CI reproduces here
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def count(name: str) -> None:
    CASES[name] += 1
