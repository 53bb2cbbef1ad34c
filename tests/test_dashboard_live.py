"""The live hub on its own: coalescing, a bounded queue per page, resync when behind."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from gateway.core.events import EventStream, StateChanged
from gateway.surfaces.dashboard.live import ROWS_PER_UPDATE, LiveClient, LiveHub


class FakeModel:
    """Rows made of the latest state each device reported; no results."""

    seq = 0

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def since(self, _seq: int, _limit: int) -> tuple[list[dict[str, Any]], int]:
        return [], 0

    def gateway(self) -> dict[str, Any]:
        return {}

    def rows(self, devices: set[str]) -> list[dict[str, Any]]:
        return [{"id": d, "state": self.state.get(d)} for d in sorted(devices)]

    def runs(self, _runs: set[str]) -> list[dict[str, Any]]:
        return []


def decode(update: bytes) -> tuple[str, Any]:
    name, data = update.decode().strip().split("\n")
    return name.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def test_a_full_page_queue_is_cleared_and_asks_for_a_resync() -> None:
    client = LiveClient(3)
    for i in range(3):
        client.offer(f"u{i}".encode())
    assert not client.resync
    client.offer(b"u3")
    assert client.resync
    assert await client.next() == []  # nothing held for a page that does not read


async def test_a_thousand_devices_changing_reach_a_page_in_a_few_bounded_updates() -> None:
    events, model = EventStream(), FakeModel()
    hub = LiveHub(events, model, interval=0.01, busy_interval=0.01)  # type: ignore[arg-type] # the fake has what it uses
    client = hub.join()
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(hub.run())
        for change in range(3):  # each device three times: one row each all the same
            for i in range(1000):
                model.state[f"d{i}"] = {"n": change}
                events.emit(StateChanged(f"d{i}", {"n": change}))
        rows: list[dict[str, Any]] = []
        updates = 0
        async with asyncio.timeout(5):
            while len(rows) < 1000:
                for update in await client.next():
                    name, body = decode(update)
                    assert name == "update"
                    assert len(body["devices"]) <= ROWS_PER_UPDATE
                    rows += body["devices"]
                    updates += 1
        assert updates == 1000 // ROWS_PER_UPDATE
        assert sorted(row["id"] for row in rows) == sorted(f"d{i}" for i in range(1000))
        assert {row["state"]["n"] for row in rows} == {2}
        running.cancel()


async def test_after_a_busy_update_the_next_waits_longer() -> None:
    events, model = EventStream(), FakeModel()
    hub = LiveHub(events, model, interval=0.05, busy_interval=0.5)  # type: ignore[arg-type] # as above
    client = hub.join()
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(hub.run())
        for i in range(101):  # more rows than BUSY_ROWS
            events.emit(StateChanged(f"d{i}", {}))
        await asyncio.wait_for(client.next(), 5)
        first = time.monotonic()
        events.emit(StateChanged("d0", {}))
        await asyncio.wait_for(client.next(), 5)
        assert time.monotonic() - first >= 0.4
        events.emit(StateChanged("d0", {}))  # after a quiet one, quick again
        second = time.monotonic()
        await asyncio.wait_for(client.next(), 5)
        assert time.monotonic() - second < 0.4
        running.cancel()


async def test_a_hub_that_falls_behind_its_feed_resyncs_every_page() -> None:
    events, model = EventStream(), FakeModel()
    hub = LiveHub(events, model, feed_size=10)  # type: ignore[arg-type] # as above
    client = hub.join()
    for i in range(11):  # before the hub ran at all: the feed dropped one
        events.emit(StateChanged(f"d{i}", {}))
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(hub.run())
        assert await asyncio.wait_for(client.next(), 5) == []
        assert client.resync
        running.cancel()


async def test_with_no_page_left_the_hub_stops_following() -> None:
    events, model = EventStream(), FakeModel()
    hub = LiveHub(events, model, interval=0)  # type: ignore[arg-type] # as above
    client = hub.join()
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(hub.run())
        assert events.wanted
        hub.leave(client)
        events.emit(StateChanged("d", {}))  # seen, then the hub lets go
        async with asyncio.timeout(5):
            while events.wanted:  # noqa: ASYNC110 - no event says it; the hub's loop is the test
                await asyncio.sleep(0.01)
        running.cancel()
