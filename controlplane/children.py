"""The child processes of `manage.py up`, restarted when they crash, within a bound.

A crashed web server or worker is started again after a short back-off (1, 2, 4, ... up to 30 s); a child that
crashes more than MAX_RESTARTS times within RESTART_WINDOW_S is given up on, and `up` stops (something is wrong
that a restart does not fix). Every exit and restart is written to up's log.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: deque = field(default_factory=deque)  # monotonic times of recent restarts
    restart_at: float | None = None  # when a crashed child is due to start again

    def start(self) -> subprocess.Popen:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        self.restart_at = None
        return self.proc


class GaveUp(RuntimeError):
    """A child crashed more often than the bound allows."""


class Children:
    def __init__(self, log: Callable[[str], None], *, max_restarts: int = MAX_RESTARTS,
                 window_s: float = RESTART_WINDOW_S, max_backoff_s: float = MAX_BACKOFF_S) -> None:  # fmt: skip
        self.children: list[Child] = []
        self.log = log
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.max_backoff_s = max_backoff_s

    def add(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env)
        child.start()
        self.children.append(child)
        return child

    def check(self) -> None:
        """Restart the children that exited (after their back-off); raises GaveUp past the bound."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    proc = child.start()
                    self.log(f"{child.name} restarted (pid {proc.pid})")
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            while child.restarts and child.restarts[0] < now - self.window_s:
                child.restarts.popleft()
            if len(child.restarts) >= self.max_restarts:
                raise GaveUp(
                    f"{child.name} exited with {child.proc.returncode}, its {len(child.restarts) + 1}th crash within "
                    f"{self.window_s:.0f} s; giving up"
                )
            delay = min(self.max_backoff_s, 2.0 ** len(child.restarts))
            child.restarts.append(now)
            child.restart_at = now + delay
            self.log(f"{child.name} exited with {child.proc.returncode}; restarting it in {delay:.0f} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
