"""Push to websocket groups after the transaction commits; a down channel layer never fails a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction

from runs.realtime.listeners import GroupListeners, groups_with_members

log = logging.getLogger(__name__)

RUN_LIST_GROUP = "runs"
Message = dict | Callable[[], dict]  # a callable is built only for a group someone listens to


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


def send_now(group: str, message: dict) -> None:
    send_many([(group, message)])


def send_many(messages: list[tuple[str, Message]]) -> None:
    """Send to each group; one trip through the event loop for all of them (a thread blocks on each trip)."""
    if messages:
        try:
            async_to_sync(send_many_async)(messages)
        except Exception:  # the database holds the truth; a missed push is back-filled on reconnect
            log.warning("broadcast to %s failed", ", ".join(g for g, _ in messages), exc_info=True)


async def send_many_async(messages: list[tuple[str, Message]], *, listeners: GroupListeners | None = None) -> None:
    """Send each message whose group has a member. `listeners` answers that from what this process knows (the
    ingest path); without it, Redis is asked."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return
    if isinstance(layer, RedisChannelLayer):
        # channels_redis spends two Redis commands on a send to a group nobody joined (most runs, most of the
        # time: no chart open). A group is a sorted set that exists while it has members, so skipping the others
        # changes nothing delivered.
        groups = [group for group, _ in messages]
        members = await (listeners.with_members(groups) if listeners else groups_with_members(layer, groups))
        messages = [m for m, joined in zip(messages, members, strict=True) if joined]
    messages = [(group, message() if callable(message) else message) for group, message in messages]
    outcomes = await asyncio.gather(*(layer.group_send(g, m) for g, m in messages), return_exceptions=True)
    for (group, _), outcome in zip(messages, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("broadcast to %s failed", group, exc_info=outcome)


def broadcast_on_commit(group: str, message: dict) -> None:
    transaction.on_commit(lambda: send_now(group, message))


def broadcast_many_on_commit(messages: list[tuple[str, Message]]) -> None:
    transaction.on_commit(lambda: send_many(messages))
