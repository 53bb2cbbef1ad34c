"""MQTT messages as the rest of the gateway sees them, and the outbox that holds ours."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def _nothing() -> None:
    """A callback with nothing to do."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message the broker delivered to us."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    settle: Callable[[], None] = _nothing
    """Call once the message is dealt with (its result published): acknowledges it."""
    reply: Callable[[bytes], None] | None = None
    """Also given the result payload, for a command that came from inside (the dashboard)."""

    def settled_by(self, settle: Callable[[], None]) -> Inbound:
        """This message with ``settle`` (cheaper than ``dataclasses.replace``, per message)."""
        return Inbound(
            self.topic,
            self.payload,
            self.retain,
            self.response_topic,
            self.correlation_data,
            settle,
            self.reply,
        )


@dataclass(frozen=True, slots=True, eq=False)  # identity: two equal messages are two
class Outbound:
    """A message to publish at QoS 1."""

    topic: str
    payload: bytes
    retain: bool = False
    correlation_data: bytes | None = None
    on_sent: Callable[[], None] = _nothing
    """Called once the broker has acknowledged it."""


def answering(message: Inbound, topic: str, payload: bytes) -> Outbound:
    """The result of ``message``: once the broker has it, ``message`` gets its PUBACK.

    This is the link "result published, then command acknowledged" that makes a
    gateway killed before it leave the command in its session (see acks.py).
    """
    return Outbound(topic, payload, on_sent=message.settle)


class Outbox:
    """Messages waiting for the broker, in order; they survive a lost connection.

    Retained messages (state, availability) are dropped on reconnect, because the
    gateway then republishes the current ones; results are kept until sent.
    """

    def __init__(self) -> None:
        """Start empty and open."""
        self._queue: collections.deque[Outbound] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        """How many messages wait."""
        return len(self._queue)

    def put(self, message: Outbound) -> None:
        """Queue ``message`` behind the others."""
        self._queue.append(message)
        self._ready.set()

    def requeue(self, messages: Iterable[Outbound]) -> None:
        """Put messages that were not acknowledged back in front, in their order."""
        self._queue.extendleft(reversed(list(messages)))
        self._ready.set()

    def drop_retained(self) -> None:
        """Forget queued retained messages; the caller republishes the current ones."""
        self._queue = collections.deque(m for m in self._queue if not m.retain)

    @property
    def closed(self) -> bool:
        """``close`` was called: the gateway is stopping."""
        return self._closed

    def close(self) -> None:
        """No more messages will come: ``get`` returns None once empty."""
        self._closed = True
        self._ready.set()

    async def get(self) -> Outbound | None:
        """The next message, waiting for one; None when closed and empty."""
        while not self._queue:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()
