"""The seam between the MQTT session and a client library: one connection.

The session (``gateway/broker/session.py``) keeps the gateway's one logical MQTT
session alive: reconnects, announcements, the publish window, acknowledgements
in order and redelivery matching. It speaks to the broker only through the
interfaces here, which say nothing of any client library. ``gateway/broker/aiomqtt_transport.py``
implements them on aiomqtt (and the paho client beneath it); tests implement
them in memory. This module imports nothing but the gateway's messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from gateway.core.messages import Inbound, Outbound


class TransportError(Exception):
    """The connection could not be made, or it was lost; the text says why."""


class SessionTakenOverError(TransportError):
    """Another connection took the client id (MQTT 5 DISCONNECT reason 0x8E)."""


class LinkHandler(Protocol):
    """What a connection calls back into, on the event loop's thread."""

    def attached(self, link: Link) -> None:
        """``link`` is being made: messages may arrive before ``connect`` yields it."""

    def received(self, message: Inbound, mid: int, qos: int, dup: bool) -> None:  # noqa: FBT001 - a packet's fields, per message: no keywords
        """A PUBLISH arrived: packet id ``mid``, its QoS and DUP flag (MQTT 5 §3.3.1.1).

        A QoS 1 message stays unacknowledged until the handler calls ``Link.ack``.
        """

    def published(self, token: int, refusal: str | None) -> None:
        """The broker acknowledged the publish ``token``; ``refusal`` is its failure reason."""


class Link(Protocol):
    """One MQTT connection, made with the session's will, properties and client id."""

    @property
    def protocol(self) -> str:
        """The MQTT version this connection speaks: ``5`` or ``3.1.1``."""
        ...

    @property
    def session_present(self) -> bool:
        """The CONNACK's Session Present flag: the broker still had our session."""
        ...

    async def subscribe(self, topic_filter: str, *, skip_retained: bool = False) -> list[int]:
        """Subscribe at QoS 1; the broker's reason codes (>= 0x80 is a refusal).

        ``skip_retained`` asks for no retained messages on subscribe, and for
        the retain flag as published on live ones (MQTT 5 only).

        Raises:
            TransportError: the connection is gone or the broker did not answer.
        """
        ...

    def publish(self, message: Outbound) -> int:
        """Send ``message`` at QoS 1; the token ``LinkHandler.published`` will report.

        Raises:
            TransportError: the connection is gone.
            ValueError: MQTT cannot carry the message (a bad topic).
        """
        ...

    def ack(self, mid: int) -> None:
        """Send the PUBACK for the received packet ``mid``."""

    def stop_delivering(self) -> None:
        """Hand on no more messages: what arrives from now on stays unacknowledged."""

    async def until_lost(self) -> None:
        """Return never; raise ``TransportError`` once the connection is lost."""


class Transport(Protocol):
    """Makes connections to the broker (one of ``mqtt.hosts``, in turn)."""

    def connect(self, handler: LinkHandler) -> AbstractAsyncContextManager[Link]:
        """Connect (CONNACK received) for the block; disconnect at its end.

        Raises:
            TransportError: the connect failed, or the connection was lost.
        """
        ...

    @property
    def address(self) -> str:
        """``host:port`` of the broker in use (or tried next), for log lines and health."""
        ...
