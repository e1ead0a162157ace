"""After Redis restarts, the channel layer's pooled connections are dead: the first websocket join afterwards must
still succeed (it failed with a 500 before the layer retried on a dead connection)."""

import asyncio

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from controlplane import embedded_redis
from runs.realtime.listeners import group_join


def test_a_group_join_right_after_a_redis_restart_succeeds(tmp_path):
    socket_path = str(tmp_path / "r.sock")
    proc = embedded_redis.start(socket_path, workdir=str(tmp_path))

    async def scenario():
        layer = RedisChannelLayer(hosts=[{"address": f"unix://{socket_path}", **settings.CHANNELS_REDIS_CONNECTION}])
        channel = await layer.new_channel()
        await group_join(layer, "run-1", channel)  # the pool now holds a connection
        nonlocal proc
        embedded_redis.stop(proc, socket_path)
        proc = embedded_redis.start(socket_path, workdir=str(tmp_path))
        await group_join(layer, "run-1", channel)  # on the dead pooled connection first
        await layer.group_send("run-1", {"type": "run.status", "status": "running"})
        message = await asyncio.wait_for(layer.receive(channel), 5)
        await layer.close_pools()
        return message

    try:
        assert asyncio.run(scenario())["status"] == "running"
    finally:
        embedded_redis.stop(proc, socket_path)


def test_without_retries_the_first_join_after_a_restart_fails(tmp_path):
    """The failure the settings prevent, shown with redis-py's defaults."""
    import redis

    socket_path = str(tmp_path / "r.sock")
    proc = embedded_redis.start(socket_path, workdir=str(tmp_path))

    async def scenario():
        layer = RedisChannelLayer(hosts=[{"address": f"unix://{socket_path}"}])
        channel = await layer.new_channel()
        await group_join(layer, "run-1", channel)
        nonlocal proc
        embedded_redis.stop(proc, socket_path)
        proc = embedded_redis.start(socket_path, workdir=str(tmp_path))
        try:
            with pytest.raises(redis.ConnectionError):
                await group_join(layer, "run-1", channel)
        finally:
            await layer.close_pools()

    try:
        asyncio.run(scenario())
    finally:
        embedded_redis.stop(proc, socket_path)
