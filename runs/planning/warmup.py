"""Import what the first plan needs (DeepSpeed's estimators pull in torch: seconds) before anyone asks."""

from __future__ import annotations

import threading


def warm_up_in_background() -> threading.Thread:
    def work() -> None:
        from runs.planning.memory import deepspeed_estimators

        deepspeed_estimators()

    thread = threading.Thread(target=work, name="plan-warm-up", daemon=True)
    thread.start()
    return thread
