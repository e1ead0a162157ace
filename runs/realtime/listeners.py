"""Which websocket groups have a member, as a web process knows it without asking Redis on every push.

Before a push, broadcast asks Redis which of its groups have members (channels_redis spends two commands on a send
to an empty group, and most runs have no chart open). On the ingest path that is a Redis round trip per
transaction, hundreds a second. GroupListeners keeps the answers in the web process instead:
- a group found empty stays known empty until a consumer that joins it announces so (group_join: group_add, then a
  message on a pub/sub channel that every web process follows);
- a group found with members is asked again after POSITIVE_TTL_S, to notice when they have left.
An empty answer is kept only if it was asked while the subscription was up and no announcement arrived during the
ask (one could be for that group); a lost subscription forgets every answer. Until it is up, every push asks Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels_redis.core import RedisChannelLayer

log = logging.getLogger(__name__)

POSITIVE_TTL_S = 2.0
MAX_KNOWN = 100_000
RESUBSCRIBE_AFTER_S = 1.0

# Which of the given keys exist, in one command.
_EXISTING = "local found = {} for i, key in ipairs(KEYS) do found[i] = redis.call('EXISTS', key) end return found"


def _announce_channel(layer: RedisChannelLayer) -> str:
    return f"{layer.prefix}:group-joined"


async def group_join(layer, group: str, channel: str) -> None:
    """Add a channel to a group and tell every web process that the group has a member now."""
    await layer.group_add(group, channel)
    if isinstance(layer, RedisChannelLayer):
        await layer.connection(layer.consistent_hash(group)).publish(_announce_channel(layer), group)


async def groups_with_members(layer, groups: list[str]) -> list[bool]:
    """For each group, whether it has a member now: one script per Redis server."""
    by_server: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        by_server.setdefault(layer.consistent_hash(group), []).append(i)
    found = [False] * len(groups)
    for server, indexes in by_server.items():
        keys = [layer._group_key(groups[i]) for i in indexes]
        answers = await layer.connection(server).eval(_EXISTING, len(keys), *keys)
        for i, exists in zip(indexes, answers, strict=True):
            found[i] = bool(exists)
    return found


class GroupListeners:
    """The membership answers of one process, for the channel layer it was made with, on one event loop."""

    def __init__(self, layer: RedisChannelLayer):
        self.layer = layer
        self.known: dict[str, tuple[bool, float, int]] = {}  # group -> (has members, when asked, subscription)
        self.subscription = 0  # the current subscription's number; 0 while there is none
        self.announcements = 0  # announcements received so far
        self._numbers = 0
        self._task: asyncio.Task | None = None
        self._failed_at = -RESUBSCRIBE_AFTER_S
        self._loop: asyncio.AbstractEventLoop | None = None

    async def with_members(self, groups: list[str]) -> list[bool]:
        """For each group, whether it has a member (as of the last announcement or ask)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A subscription lives on the loop that made it: on another one, start over.
            self._loop, self._task, self.subscription = loop, None, 0
            self.known.clear()
        self._follow()
        now = time.monotonic()
        subscription = self.subscription
        found: list[bool | None] = [None] * len(groups)
        for i, group in enumerate(groups):
            entry = self.known.get(group)
            if entry is not None and subscription and entry[2] == subscription:
                members, when, _ = entry
                if not members or now - when < POSITIVE_TTL_S:
                    found[i] = members
        ask = [i for i, answer in enumerate(found) if answer is None]
        if ask:
            heard = self.announcements
            answers = await groups_with_members(self.layer, [groups[i] for i in ask])
            keep = subscription and subscription == self.subscription
            if len(self.known) > MAX_KNOWN:
                self.known.clear()
            for i, members in zip(ask, answers, strict=True):
                found[i] = members
                if keep and (members or heard == self.announcements):
                    self.known[groups[i]] = (members, now, subscription)
        return [bool(answer) for answer in found]

    def _follow(self) -> None:
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() - self._failed_at < RESUBSCRIBE_AFTER_S:
            return
        self._task = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        pubsubs = [self.layer.connection(i).pubsub() for i in range(self.layer.ring_size)]
        try:
            for pubsub in pubsubs:
                await pubsub.subscribe(_announce_channel(self.layer))
                # Redis answers a connection's commands in order: once the confirmation is read, every later
                # announcement reaches this process.
                confirmed = await pubsub.get_message(timeout=5.0)
                if confirmed is None or confirmed.get("type") != "subscribe":
                    raise RuntimeError(f"no confirmation of the subscription: {confirmed!r}")
            self._numbers += 1
            self.subscription = self._numbers
            await asyncio.gather(*(self._receive(pubsub) for pubsub in pubsubs))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("following websocket group announcements failed; asking Redis on every push", exc_info=True)
        finally:
            if self._task is asyncio.current_task():  # not a task of a loop this process has left
                self.subscription = 0
                self.known.clear()
                self._failed_at = time.monotonic()
            for pubsub in pubsubs:
                try:
                    await pubsub.aclose()
                except Exception:  # the connection is gone already
                    pass

    async def _receive(self, pubsub) -> None:
        while True:
            # Waits well under the connection's socket timeout, which would end a quiet subscription.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10.0)
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            group = data.decode() if isinstance(data, bytes) else str(data)
            self.announcements += 1
            self.known[group] = (True, time.monotonic(), self.subscription)
