"""The event stream: fan-out in order, failing subscribers isolated, slow consumers bounded."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.core.events import (
    AvailabilityChanged,
    ConnectionChanged,
    Event,
    EventStream,
    StateChanged,
)

if TYPE_CHECKING:
    import pytest


def test_every_subscriber_gets_every_event_in_order() -> None:
    stream = EventStream()
    assert not stream.wanted
    first: list[Event] = []
    second: list[Event] = []
    stream.subscribe(first.append)
    unsubscribe = stream.subscribe(second.append)
    assert stream.wanted
    events = [ConnectionChanged(connected=True), StateChanged("a", {"power": "on"})]
    for event in events:
        stream.emit(event)
    unsubscribe()
    stream.emit(ConnectionChanged(connected=False))
    assert first == [*events, ConnectionChanged(connected=False)]
    assert second == events


def test_a_failing_subscriber_is_logged_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError(f"bug on {event}")

    stream.subscribe(broken)
    stream.subscribe(seen.append)
    stream.emit(AvailabilityChanged("a", online=True))
    assert seen == [AvailabilityChanged("a", online=True)]
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


async def test_a_slow_feed_keeps_the_newest_and_counts_what_it_dropped() -> None:
    stream = EventStream()
    feed = stream.feed(size=10)
    for index in range(25):  # the emitter never waits, whatever the consumer does
        stream.emit(StateChanged("a", {"n": index}))
    events = await feed.get()
    assert [e.state["n"] for e in events if isinstance(e, StateChanged)] == list(range(15, 25))
    assert feed.dropped == 15
    feed.close()
    stream.emit(StateChanged("a", {"n": 99}))
    assert not stream.wanted


async def test_a_feed_waits_for_the_next_event() -> None:
    stream = EventStream()
    feed = stream.feed()
    waiting = asyncio.ensure_future(feed.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    stream.emit(ConnectionChanged(connected=True))
    assert await asyncio.wait_for(waiting, 1) == [ConnectionChanged(connected=True)]
