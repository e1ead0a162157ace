"""What a web process knows of websocket group members: asked of Redis once, kept until a joining consumer says
otherwise, forgotten with the subscription."""

import asyncio
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from runs.realtime import listeners as listeners_module
from runs.realtime.listeners import GroupListeners, group_join
from tests.runs.factories import tiny_run
from tests.runs.realtime.test_consumers import _communicator

pytestmark = pytest.mark.asyncio


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def asks(monkeypatch):
    """Counts the questions to Redis (and still asks them)."""
    groups_asked: list[list[str]] = []
    real = listeners_module.groups_with_members

    async def counting(layer, groups):
        groups_asked.append(list(groups))
        return await real(layer, groups)

    monkeypatch.setattr(listeners_module, "groups_with_members", counting)
    return groups_asked


async def _subscribed() -> GroupListeners:
    listeners = GroupListeners(get_channel_layer())
    await listeners.with_members([])
    await _until(lambda: listeners.subscription)
    return listeners


def _group() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"  # the suite's Redis may be shared


async def test_an_empty_group_is_asked_once_and_a_member_that_joins_is_heard_of(asks):
    layer = get_channel_layer()
    listeners = await _subscribed()
    group, channel = _group(), await layer.new_channel()
    assert await listeners.with_members([group]) == [False]
    assert await listeners.with_members([group]) == [False]
    assert asks == [[group]]

    await group_join(layer, group, channel)
    await _until(lambda: listeners.announcements)
    assert await listeners.with_members([group]) == [True]
    assert asks == [[group]]
    await layer.group_discard(group, channel)


async def test_a_group_with_members_is_asked_again_after_a_while_and_found_empty_when_they_left(asks, monkeypatch):
    monkeypatch.setattr(listeners_module, "POSITIVE_TTL_S", 0.0)
    layer = get_channel_layer()
    listeners = await _subscribed()
    group, channel = _group(), await layer.new_channel()
    await group_join(layer, group, channel)
    await _until(lambda: listeners.announcements)
    assert await listeners.with_members([group]) == [True]
    await layer.group_discard(group, channel)
    assert await listeners.with_members([group]) == [False]
    assert asks == [[group], [group]]


async def test_an_empty_answer_is_not_kept_when_a_member_joined_while_it_was_asked(asks, monkeypatch):
    layer = get_channel_layer()
    listeners = await _subscribed()
    group, channel = _group(), await layer.new_channel()
    real = listeners_module.groups_with_members

    async def joined_meanwhile(layer_, groups):
        answer = await real(layer_, groups)  # empty: nobody has joined yet
        await group_join(layer, group, channel)
        await _until(lambda: listeners.announcements)
        return answer

    monkeypatch.setattr(listeners_module, "groups_with_members", joined_meanwhile)
    assert await listeners.with_members([group]) == [False]  # true when it was asked
    assert listeners.known[group][0] is True  # the announcement stands
    assert await listeners.with_members([group]) == [True]
    await layer.group_discard(group, channel)


async def test_without_a_subscription_every_push_asks_and_nothing_is_kept(asks):
    listeners = await _subscribed()
    group = _group()
    assert await listeners.with_members([group]) == [False]
    listeners._task.cancel()  # the subscription is lost
    await _until(lambda: not listeners.subscription)
    assert listeners.known == {}
    assert await listeners.with_members([group]) == [False]
    assert await listeners.with_members([group]) == [False]
    assert asks == [[group], [group], [group]]
    assert listeners.known == {}


@pytest.mark.django_db(transaction=True)
async def test_a_run_page_socket_announces_its_group(seeded, viewer, operator, asks):
    run = await database_sync_to_async(tiny_run)(owner=operator)
    group = f"run-{run.pk}"
    listeners = await _subscribed()
    comm = _communicator(viewer, f"/ws/runs/{run.pk}/")
    connected, _ = await comm.connect(timeout=3)
    assert connected
    await _until(lambda: group in listeners.known)
    assert await listeners.with_members([group]) == [True]
    assert asks == []
    await comm.disconnect()
