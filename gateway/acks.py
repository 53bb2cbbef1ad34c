"""Acknowledging commands only once they are answered, in the order they came.

The gateway turns off the client library's automatic PUBACK. A QoS 1 command
is acknowledged once its result has reached the broker, so a gateway killed
before that leaves the command in its session, to be delivered again after a
restart. MQTT 5 §4.6 requires PUBACKs in the order the PUBLISHes arrived, so
an answered command waits for the ones before it; the broker's receive window
(Receive Maximum, 65,535 by default) is what keeps that from stalling others.

When a connection drops, the unacknowledged messages are redelivered on the
next one (MQTT 5 §4.4). A redelivery of a message still being worked on is
matched to it by content and not dispatched again: its acknowledgement moves to
the new connection.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable


class Delivery:
    """One inbound QoS 1 message, acknowledged once ``settle`` is called."""

    __slots__ = ("_mid", "_window", "key", "settled")

    def __init__(self, key: Hashable) -> None:
        """``key`` identifies a redelivery of the same message."""
        self.key = key
        self.settled = False
        self._window: AckWindow | None = None
        self._mid = 0

    def settle(self) -> None:
        """The message is dealt with (its result is published): acknowledge it."""
        self.settled = True
        if self._window is not None:
            self._window.flush()


class AckWindow:
    """The unacknowledged messages of one connection, in arrival order."""

    def __init__(self, send_ack: Callable[[int], None]) -> None:
        """``send_ack(mid)`` sends a PUBACK on this connection."""
        self._send_ack = send_ack
        self._pending: collections.deque[Delivery] = collections.deque()

    def __len__(self) -> int:
        """How many messages wait for their acknowledgement."""
        return len(self._pending)

    def add(self, delivery: Delivery, mid: int) -> None:
        """Track ``delivery``, received on this connection as packet ``mid``."""
        delivery._window, delivery._mid = self, mid  # noqa: SLF001 - the window owns them
        self._pending.append(delivery)
        self.flush()

    def flush(self) -> None:
        """Acknowledge every settled message at the front, in order."""
        while self._pending and self._pending[0].settled:
            delivery = self._pending.popleft()
            delivery._window = None  # noqa: SLF001
            self._send_ack(delivery._mid)  # noqa: SLF001

    def close(self) -> list[Delivery]:
        """The connection is gone: detach and return what was never acknowledged."""
        left = list(self._pending)
        for delivery in left:
            delivery._window = None  # noqa: SLF001
        self._pending.clear()
        return left


class Redeliveries:
    """Messages unacknowledged when a connection dropped, awaiting their redelivery."""

    def __init__(self) -> None:
        """Nothing awaited yet."""
        self._awaited: dict[Hashable, collections.deque[Delivery]] = {}

    def expect(self, deliveries: list[Delivery]) -> None:
        """The broker will send these again on the next connection."""
        for delivery in deliveries:
            self._awaited.setdefault(delivery.key, collections.deque()).append(delivery)

    def match(self, key: Hashable) -> Delivery | None:
        """The earlier delivery this message repeats, if it is a redelivery.

        The broker resends unacknowledged messages before anything new, so the
        first message that matches nothing ends the matching.
        """
        queue = self._awaited.get(key)
        if not queue:
            self._awaited.clear()
            return None
        delivery = queue.popleft()
        if not queue:
            del self._awaited[key]
        return delivery
