"""The MQTT session's rules against an in-memory transport: no broker, no client library."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.broker.session import MqttSession
from gateway.broker.transport import TransportError
from gateway.config import MqttSettings
from gateway.core.messages import Inbound, Outbound, Outbox
from gateway.core.topics import Topics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import pytest

    from gateway.broker.transport import LinkHandler

SETTINGS = MqttSettings(reconnect={"min_delay": 0.01, "max_delay": 0.02}, max_inflight=3)


@dataclass
class FakeLink:
    """One connection: records what the session does, and can be cut."""

    handler: LinkHandler
    published: list[tuple[int, Outbound]] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    subscribed: list[tuple[str, bool]] = field(default_factory=list)
    lost: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    delivering: bool = True
    next_token: int = 1
    protocol: str = "5"
    session_present: bool = True

    async def subscribe(self, topic_filter: str, *, skip_retained: bool = False) -> list[int]:
        self.subscribed.append((topic_filter, skip_retained))
        return [1]

    def publish(self, message: Outbound) -> int:
        if self.lost.done():
            raise TransportError("connection lost")
        token, self.next_token = self.next_token, self.next_token + 1
        self.published.append((token, message))
        return token

    def ack(self, mid: int) -> None:
        self.acked.append(mid)

    def stop_delivering(self) -> None:
        self.delivering = False

    async def until_lost(self) -> None:
        await self.lost
        raise TransportError("connection lost")

    # -- what the test does as the broker --------------------------------------------

    def deliver(self, topic: str, payload: bytes, mid: int, *, dup: bool = False) -> None:
        assert self.delivering
        self.handler.received(Inbound(topic, payload), mid, 1, dup)

    def puback(self, token: int, refusal: str | None = None) -> None:
        self.handler.published(token, refusal)

    def cut(self) -> None:
        self.lost.set_result(None)


@dataclass
class FakeTransport:
    """Hands out FakeLinks; refuses the first ``refusals`` connects."""

    refusals: int = 0
    links: list[FakeLink] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return "fake:1883"

    @contextlib.asynccontextmanager
    async def connect(self, handler: LinkHandler) -> AsyncIterator[FakeLink]:
        if self.refusals > 0:
            self.refusals -= 1
            raise TransportError("Connection refused")
        link = FakeLink(handler)
        handler.attached(link)
        self.links.append(link)
        self.connected.set()
        try:
            yield link
        finally:
            link.stop_delivering()


@dataclass
class Handler:
    """The gateway's side: announces, and answers each command by settling it."""

    messages: list[Inbound] = field(default_factory=list)
    connections: list[bool] = field(default_factory=list)
    settle_at_once: bool = True

    def announcements(self) -> list[Outbound]:
        return [Outbound("iot/gateway/status", b"online", retain=True)]

    def on_message(self, message: Inbound) -> None:
        self.messages.append(message)
        if self.settle_at_once:
            message.settle()

    def on_connection(self, *, connected: bool) -> None:
        self.connections.append(connected)


@contextlib.asynccontextmanager
async def running(transport: FakeTransport, handler: Handler) -> AsyncIterator[Any]:
    outbox = Outbox()
    session = MqttSession(SETTINGS, Topics("iot"), outbox, handler, transport, watch=["w/#"])
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(session.run())
        try:
            yield session, outbox
        finally:
            outbox.close()
            for link in transport.links:
                for token, _ in list(link.published):
                    link.puback(token)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 1)
            task.cancel()


async def until(condition: Callable[[], object], timeout: float = 2) -> None:
    """Let the session run until ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        # In memory there is nothing to wait on but the session's next step.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_after_connecting_it_subscribes_then_announces() -> None:
    transport, handler = FakeTransport(), Handler()
    async with running(transport, handler):
        await until(lambda: transport.links and transport.links[0].published)
        link = transport.links[0]
        assert link.subscribed == [("iot/+/command", True), ("w/#", False)]
        assert [m.topic for _, m in link.published] == ["iot/gateway/status"]
        assert handler.connections == [True]


async def test_acks_follow_arrival_order_whatever_the_answer_order() -> None:
    transport, handler = FakeTransport(), Handler(settle_at_once=False)
    async with running(transport, handler):
        await until(lambda: transport.links)
        link = transport.links[0]
        for mid in (11, 12, 13):
            link.deliver("iot/a/command", b"x%d" % mid, mid)
        handler.messages[2].settle()
        handler.messages[1].settle()
        assert link.acked == []
        handler.messages[0].settle()
        assert link.acked == [11, 12, 13]


async def test_a_dup_redelivery_of_a_command_in_hand_is_not_handed_on_again() -> None:
    transport, handler = FakeTransport(), Handler(settle_at_once=False)
    async with running(transport, handler):
        await until(lambda: transport.links)
        first = transport.links[0]
        first.deliver("iot/a/command", b"slow", 5)
        first.cut()
        await until(lambda: len(transport.links) == 2)
        second = transport.links[1]
        second.deliver("iot/a/command", b"slow", 9, dup=True)
        assert len(handler.messages) == 1  # matched to the one in hand
        handler.messages[0].settle()
        assert second.acked == [9]  # acknowledged on the new connection
        assert first.acked == []


async def test_a_dup_of_something_never_seen_is_a_new_message() -> None:
    transport, handler = FakeTransport(), Handler()
    async with running(transport, handler):
        await until(lambda: transport.links)
        transport.links[0].deliver("iot/a/command", b"new", 3, dup=True)
        assert len(handler.messages) == 1
        assert transport.links[0].acked == [3]


async def test_the_window_bounds_publishes_awaiting_their_ack() -> None:
    transport, handler = FakeTransport(), Handler()
    async with running(transport, handler) as (_, outbox):
        await until(lambda: transport.links and transport.links[0].published)
        link = transport.links[0]
        for index in range(5):
            outbox.put(Outbound(f"iot/d{index}/result", b"r"))
        await until(lambda: len(link.published) == 3)
        await asyncio.sleep(0.01)  # give it the chance to overrun the window
        assert len(link.published) == 3  # status + 2 results: max_inflight is 3
        link.puback(link.published[0][0])
        await until(lambda: len(link.published) == 4)


async def test_unacknowledged_publishes_go_again_after_a_lost_connection() -> None:
    transport, handler = FakeTransport(), Handler()
    sent: list[str] = []
    async with running(transport, handler) as (_, outbox):
        await until(lambda: transport.links)
        outbox.put(Outbound("iot/a/result", b"1", on_sent=lambda: sent.append("1")))
        outbox.put(Outbound("iot/a/state", b"old", retain=True))
        await until(lambda: len(transport.links[0].published) == 3)
        transport.links[0].cut()
        await until(lambda: len(transport.links) == 2 and transport.links[1].published)
        await until(lambda: len(transport.links[1].published) == 2)
        again = [m.topic for _, m in transport.links[1].published]
        # The announcements first; the result again; the stale retained state dropped
        # (the announcements carry the current ones).
        assert again == ["iot/gateway/status", "iot/a/result"]
        transport.links[1].puback(transport.links[1].published[1][0])
        assert sent == ["1"]
        assert handler.connections == [True, False, True]


async def test_refused_connects_back_off_and_the_first_success_is_no_reconnect() -> None:
    transport, handler = FakeTransport(refusals=3), Handler()
    async with running(transport, handler) as (session, _):
        await transport.connected.wait()
        assert session.reconnects == 0
        transport.links[0].cut()
        await until(lambda: len(transport.links) == 2)
        await until(lambda: session.reconnects == 1)


async def test_a_refused_publish_is_logged_once_per_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, handler = FakeTransport(), Handler()
    async with running(transport, handler) as (_, outbox):
        await until(lambda: transport.links)
        for _ in range(3):
            outbox.put(Outbound("denied/x", b"r"))
        link = transport.links[0]
        await until(lambda: len(link.published) == 3)
        for token, _ in link.published[1:]:
            link.puback(token, "Not authorized")
        await until(lambda: len(link.published) == 4)
    refused = [r for r in caplog.records if "refused our message" in r.getMessage()]
    assert len(refused) == 1
