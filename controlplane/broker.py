"""The Redis broker transport, with one fix: a worker survives losing Redis while it holds unacknowledged messages.

kombu 5.7.0 with celery 5.7.0 (the newest releases; no fix upstream): when the broker connection drops, the worker
collects the connection (which detaches the transport from its client) and then closes it; closing the channel
restores the unacknowledged messages, which builds a new Redis pool from the detached transport and raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``; a task that ends after the drop acks its message
through the same detached channel (``... has no attribute 'client'``). Celery takes either for an unrecoverable
error and the worker exits. Every countdown task in flight (each run's watcher) is such a message, so a Redis outage
stopped the worker every time.

Nothing is lost by skipping that restore: Redis itself is unreachable at that moment, and the messages are still
in its ``unacked`` hash, which kombu returns to their queues after the visibility timeout
(``restore_visible``); the control plane's reconciler (workers.reconcile) re-attaches any run whose watcher was
among them long before that. The transport is otherwise kombu's own, registered for redis:// URLs in
controlplane.celery.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client=None):
        transport = self.channel.connection
        if client is None and (transport is None or transport.client is None):
            log.warning(
                "broker connection lost: unacknowledged messages stay in Redis and return after the visibility timeout"
            )
            return None
        return super().restore_unacked(client)


class Channel(kombu_redis.Channel):
    QoS = QoS

    @contextmanager
    def conn_or_acquire(self, client=None):
        """kombu's, except that a channel whose connection is gone says so with a connection error (which kombu
        and Celery recover from: an ack after the outage is logged and the message comes back later) instead of
        the AttributeError that stopped the worker."""
        if client is None and (self.connection is None or self.connection.client is None):
            raise redis.exceptions.ConnectionError("the broker connection of this channel was closed")
        with super().conn_or_acquire(client) as acquired:
            yield acquired


class Transport(kombu_redis.Transport):
    Channel = Channel
