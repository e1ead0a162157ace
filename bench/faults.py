"""The fault suite as a benchmark: every scenario on a private PostgreSQL and Redis, and its table (fault,
detection time, recovery time, points lost, final state) beside the issue's goals.

    .venv/bin/python bench/faults.py [--only oom nan ...] [--out faults.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.harness import main

GOALS = (
    "goals: 0 points lost or duplicated; 0 runs in a wrong state 30 s after a dependency returns; "
    "fault detected <= 5 s (hang: heartbeat timeout + 5 s); an OOM run on the tiny preset remediated to success"
)

if __name__ == "__main__":
    code = main(sys.argv[1:])
    print(GOALS)
    sys.exit(code)
