"""Acknowledging commands only once they are answered, in the order they came.

The gateway turns off the client library's automatic PUBACK. A QoS 1 command
is acknowledged once its result has reached the broker, so a gateway killed
before that leaves the command in its session, to be delivered again after a
restart. MQTT 5 §4.6 requires PUBACKs in the order the PUBLISHes arrived, so
an answered command waits for the ones before it; the broker's receive window
(Receive Maximum, 65,535 by default) is what keeps that from stalling others.

When a connection drops, the unacknowledged messages are redelivered on the
next one, marked DUP (MQTT 5 §4.4). A redelivery of a message still being
worked on is matched to it by content and not dispatched again: its
acknowledgement moves to the new connection. So is one whose PUBACK was sent
but lost with the connection: it was answered, so it is only acknowledged.
"""

from __future__ import annotations

import collections
import hashlib
from typing import TYPE_CHECKING

# PUBACKs lost with a connection can only be the last few sent; remember that many.
RECENT_ACKS = 1000

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable


def message_key(topic: str, payload: bytes, *, retain: bool, response_topic: str | None) -> bytes:
    """What identifies a redelivery of the same message: a digest of its content.

    A digest, not the content: the last ``RECENT_ACKS`` acknowledged messages
    and every unacknowledged one are remembered, and payloads and Response
    Topics may be megabytes each (400 refused 4 MB payloads once held 1.5 GB).
    """
    digest = hashlib.blake2b(payload, digest_size=16)
    topic_bytes = topic.encode(errors="surrogateescape")
    reply_bytes = (response_topic or "").encode(errors="surrogateescape")
    # The topic's length keeps the fields apart: no two messages hash the same input.
    digest.update(b"%d %d %s%s" % (retain, len(topic_bytes), topic_bytes, reply_bytes))
    return digest.digest()


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
        self._recent: collections.deque[Hashable] = collections.deque(maxlen=RECENT_ACKS)

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
            self._recent.append(delivery.key)

    def close(self) -> tuple[list[Delivery], list[Hashable]]:
        """The connection is gone: detach what was never acknowledged.

        Returns:
            The unacknowledged deliveries, and the keys of the last acknowledged.
        """
        left = list(self._pending)
        for delivery in left:
            delivery._window = None  # noqa: SLF001
        self._pending.clear()
        return left, list(self._recent)


class Redeliveries:
    """What a redelivered (DUP) message may repeat: one in hand, or one just answered."""

    def __init__(self) -> None:
        """Nothing awaited yet."""
        self._in_hand: dict[Hashable, collections.deque[Delivery]] = {}
        self._answered: collections.Counter[Hashable] = collections.Counter()

    def expect(self, in_hand: list[Delivery], answered: list[Hashable]) -> None:
        """A connection dropped with these unacknowledged and these just acknowledged."""
        for delivery in in_hand:
            self._in_hand.setdefault(delivery.key, collections.deque()).append(delivery)
        # Keep earlier ones too: a connection that failed before its CONNACK acked
        # nothing, and the broker still owes the redeliveries of the one before.
        if self._answered.total() + len(answered) > 2 * RECENT_ACKS:
            self._answered.clear()
        self._answered.update(answered)

    def match(self, key: Hashable) -> Delivery | None:
        """The delivery a redelivered message repeats, if any; call only for DUP ones."""
        queue = self._in_hand.get(key)
        if queue:
            delivery = queue.popleft()
            if not queue:
                del self._in_hand[key]
            return delivery
        if self._answered[key] > 0:
            self._answered[key] -= 1
            answered = Delivery(key)
            answered.settled = True  # its result is out; only the PUBACK was lost
            return answered
        return None
