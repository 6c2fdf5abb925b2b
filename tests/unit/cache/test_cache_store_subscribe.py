"""The Redis event subscription ends when its task is cancelled, even when the client swallows the cancellation.

A full test run once hung in the cache's close: it waits for the event follower, whose
``pubsub.get_message(timeout=1.0)`` loop went on polling after being cancelled (a cancellation landing
as the read's own timeout fired came back as that timeout, ``None``)."""

from __future__ import annotations

import asyncio

import pytest

from cache_svc.core.store import RedisStore

pytestmark = pytest.mark.unit


class SwallowingPubSub:
    """A pubsub whose get_message returns None instead of raising when cancelled (the race, made certain)."""

    def __init__(self) -> None:
        self.polls = 0

    async def subscribe(self, channel: str) -> None:
        pass

    async def get_message(self, timeout: float) -> None:
        self.polls += 1
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            return None  # swallowed
        return None

    async def aclose(self) -> None:
        pass


class Client:
    def __init__(self) -> None:
        self.pubsub_obj = SwallowingPubSub()

    def pubsub(self, ignore_subscribe_messages: bool = True) -> SwallowingPubSub:
        return self.pubsub_obj


async def test_a_cancelled_follower_ends_even_if_the_client_swallowed_the_cancellation() -> None:
    client = Client()
    store = RedisStore(client)

    async def follow() -> None:
        async with store.subscribe() as events:
            async for _ in events:
                pass

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)  # polling
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3.0)
    assert done, "the subscription kept polling after its task was cancelled"
    assert task.cancelled()
    assert client.pubsub_obj.polls == 1
