"""Supervision that heals itself: watcher chains that survive transient errors, and the reconciler.

A run's watcher is a chain of `workers.watch_run` tasks, each re-queuing the next. Each chain carries a token and
beats `cp:watcher:<run>` in Redis (WATCHER_TTL_S); a chain that finds another chain's token there ends, so
re-attaching never multiplies watchers.

The reconciler runs on a timer in every worker's main process (not through the broker, so that it works while
Redis is down) every RECONCILE_INTERVAL_S:
- an active run whose watcher has not beaten lately gets a new chain (Redis up), or one watcher pass right here
  (Redis down: the pass settles a run whose job ended, through PostgreSQL and the backend only);
- a queued run whose launch was lost (attempt pending for LAUNCH_GRACE_S, or claimed past its lease) is launched
  again; the attempt claim keeps that from ever starting a second job.
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from runs.models import Attempt, AttemptState, Run, RunStatus

log = logging.getLogger(__name__)

WATCHER_TTL_S = 15.0
RECONCILE_INTERVAL_S = 5.0
LAUNCH_GRACE_S = 20.0
# Back-off of a watcher pass that failed (database or Redis away): 1, 2, 4, 5, 5, ... seconds.
WATCH_BACKOFF_MAX_S = 5.0


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_CLIENT_URL, socket_timeout=2, socket_connect_timeout=2)


def watcher_key(run_id: int) -> str:
    return f"cp:watcher:{run_id}"


def new_token() -> str:
    return uuid.uuid4().hex[:16]


def watcher_beat(run_id: int, token: str) -> bool:
    """Mark this chain as the run's watcher; False when another chain holds the run (this one should end).
    With Redis away the chain goes on: an extra pass is harmless (the watch lock), a missing one is not."""
    try:
        client = _redis()
        current = client.get(watcher_key(run_id))
        if current is not None and (current.decode() if isinstance(current, bytes) else current) != token:
            return False
        client.set(watcher_key(run_id), token, ex=int(WATCHER_TTL_S))
        return True
    except redis.RedisError:
        return True


def backoff_s(failures: int, base_s: float) -> float:
    return base_s if failures <= 0 else min(WATCH_BACKOFF_MAX_S, 2.0 ** (failures - 1))


@dataclass
class Reconciled:
    rewatched: list[int] = field(default_factory=list)
    settled_inline: list[int] = field(default_factory=list)
    relaunched: list[int] = field(default_factory=list)


def reconcile_once(
    *,
    send_watch: Callable[[int, str], None],
    send_launch: Callable[[int], None],
    watch_inline: Callable[[int], bool],
) -> Reconciled:
    """One comparison of every active run with its job; see the module docstring."""
    done = Reconciled()
    watched = list(Run.objects.filter(status__in=[RunStatus.LAUNCHING, RunStatus.RUNNING]).values_list("pk", flat=True))
    try:
        client = _redis()
        client.ping()
    except redis.RedisError:
        client = None
    for run_id in watched:
        if client is not None:
            token = new_token()
            try:
                # Only when no chain beat within the TTL: SET NX makes this chain the run's watcher.
                if not client.set(watcher_key(run_id), token, ex=int(WATCHER_TTL_S), nx=True):
                    continue
                send_watch(run_id, token)
                done.rewatched.append(run_id)
                continue
            except Exception:  # the broker may be away while Redis answers; settle inline below
                log.warning("could not re-attach a watcher to run %s; watching it here", run_id, exc_info=True)
        try:
            if not watch_inline(run_id):
                done.settled_inline.append(run_id)
        except Exception:  # the next round tries again
            log.warning("inline watch of run %s failed", run_id, exc_info=True)
    now = timezone.now()
    stale = Attempt.objects.filter(run__status__in=[RunStatus.QUEUED, RunStatus.LAUNCHING]).filter(
        Q(state=AttemptState.PENDING, created_at__lt=now - datetime.timedelta(seconds=LAUNCH_GRACE_S))
        | Q(state=AttemptState.CLAIMED, lease_until__lt=now)
    )
    for run_id in stale.values_list("run_id", flat=True):
        queued_at = Run.objects.filter(pk=run_id).values_list("queued_at", flat=True).first()
        if queued_at and queued_at > now - datetime.timedelta(seconds=LAUNCH_GRACE_S):
            continue  # just re-queued (a resume): its launch message is on its way
        try:
            send_launch(run_id)
            done.relaunched.append(run_id)
        except Exception:
            log.warning("could not re-queue the launch of run %s", run_id, exc_info=True)
    return done


class Reconciler(threading.Thread):
    """The worker's own timer; never dies: every error is logged and the next round runs."""

    def __init__(self, *, interval_s: float = RECONCILE_INTERVAL_S, **calls) -> None:
        super().__init__(name="cp-reconciler", daemon=True)
        self.interval_s = interval_s
        self.calls = calls
        self.stopped = threading.Event()
        self.rounds = 0

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                close_old_connections()
                done = reconcile_once(**self.calls)
                if done.rewatched or done.settled_inline or done.relaunched:
                    log.info("reconciler: %s", done)
            except Exception:  # the database may be away; try again next round
                log.warning("reconciler round failed", exc_info=True)
                try:
                    connection.close()
                except Exception:
                    pass
            self.rounds += 1

    def stop(self) -> None:
        self.stopped.set()
