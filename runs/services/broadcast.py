"""Push to websocket groups after the transaction commits; a down channel layer never fails a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction

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


async def send_many_async(messages: list[tuple[str, Message]]) -> None:
    layer = get_channel_layer()
    if layer is None or not messages:
        return
    joined = await _to_joined_groups(layer, messages)
    messages = [(group, message() if callable(message) else message) for group, message in joined]
    outcomes = await asyncio.gather(*(layer.group_send(g, m) for g, m in messages), return_exceptions=True)
    for (group, _), outcome in zip(messages, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("broadcast to %s failed", group, exc_info=outcome)


# Which of the given keys exist, in one command.
_EXISTING = "local found = {} for i, key in ipairs(KEYS) do found[i] = redis.call('EXISTS', key) end return found"


async def _to_joined_groups(layer, messages: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
    """The messages whose group has a member. channels_redis spends two Redis commands on a send to a group nobody
    joined (most runs, most of the time: no chart open); one script asks a server about all the groups at once.
    A group is a sorted set that exists while it has members, so skipping the others changes nothing delivered."""
    if not isinstance(layer, RedisChannelLayer):
        return messages
    by_server: dict[int, list[int]] = {}
    for i, (group, _) in enumerate(messages):
        by_server.setdefault(layer.consistent_hash(group), []).append(i)
    joined: list[tuple[str, Message]] = []
    for server, indexes in by_server.items():
        keys = [layer._group_key(messages[i][0]) for i in indexes]
        found = await layer.connection(server).eval(_EXISTING, len(keys), *keys)
        joined += [messages[i] for i, exists in zip(indexes, found, strict=True) if exists]
    return joined


def broadcast_on_commit(group: str, message: dict) -> None:
    transaction.on_commit(lambda: send_now(group, message))


def broadcast_many_on_commit(messages: list[tuple[str, Message]]) -> None:
    transaction.on_commit(lambda: send_many(messages))
