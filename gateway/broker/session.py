"""The gateway's one persistent MQTT session, kept alive across connections.

It connects through a ``Transport`` (``gateway/broker/transport.py``), subscribes,
republishes the gateway's announcements after every connect, feeds inbound
messages to its handler, publishes the outbox through a bounded window, and
reconnects with jittered backoff. It holds the rules the delivery guarantees
rest on: commands acknowledged in arrival order once answered (``acks.py``),
redeliveries of commands in hand matched rather than run again, unacknowledged
publishes requeued when a connection is lost. It imports no client library, so
it is tested against an in-memory transport (``tests/test_session.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from gateway.broker.acks import AckWindow, Delivery, Redeliveries, message_key
from gateway.broker.transport import TransportError
from gateway.core.backoff import Backoff

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.broker.transport import Link, Transport
    from gateway.config import MqttSettings
    from gateway.core.messages import Inbound, Outbound, Outbox
    from gateway.core.topics import Topics

log = logging.getLogger(__name__)


class SessionHandler(Protocol):
    """What the session calls back into."""

    def announcements(self) -> list[Outbound]:
        """Messages to publish first after every connect (status, devices, ...)."""

    def on_message(self, message: Inbound) -> None:
        """One inbound message; must not block."""

    def on_connection(self, *, connected: bool) -> None:
        """The broker connection came up (subscribed, announced) or went down."""


class PublishWindow:
    """At most ``size`` publishes awaiting the broker's acknowledgement."""

    def __init__(self, size: int) -> None:
        """An empty window of ``size``."""
        self._size = size
        self._pending: dict[int, Outbound] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()

    async def room(self) -> None:
        """Wait until one more fits."""
        await self._room.wait()

    async def all_acknowledged(self) -> None:
        """Wait until nothing is awaiting its acknowledgement."""
        await self._empty.wait()

    def add(self, token: int, message: Outbound) -> None:
        """``message`` went out as ``token``."""
        self._pending[token] = message
        self._empty.clear()
        if len(self._pending) >= self._size:
            self._room.clear()

    def done(self, token: int) -> Outbound | None:
        """The acknowledged message for ``token``; None if it is not ours."""
        message = self._pending.pop(token, None)
        if len(self._pending) < self._size:
            self._room.set()
        if not self._pending:
            self._empty.set()
        return message


class MqttSession:
    """Keeps one logical, persistent MQTT session alive across connections."""

    def __init__(  # noqa: PLR0913 - the session's collaborators and its watch list
        self,
        settings: MqttSettings,
        topics: Topics,
        outbox: Outbox,
        handler: SessionHandler,
        transport: Transport,
        *,
        watch: Sequence[str] = (),
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """Nothing connects until ``run``.

        ``watch`` are further topic filters to read, retained messages included
        (the gateway's own device list, Home Assistant's status and configs).
        With ``on_lost``, a failed or lost connection is not retried: ``run``
        tells it why and returns (an active instance of a standby group steps
        down instead of taking the client id back).
        """
        self._on_lost = on_lost
        self._settings = settings
        self._topics = topics
        self._outbox = outbox
        self._handler = handler
        self._transport = transport
        self._watch = tuple(watch)
        self._backoff = Backoff(settings.reconnect.min_delay, settings.reconnect.max_delay)
        # Published but not yet acknowledged, in publish order (identity-keyed).
        self._in_flight: dict[Outbound, None] = {}
        self._window = PublishWindow(settings.max_inflight)
        self._acks: AckWindow | None = None  # the current connection's
        self._taking = True  # False once stopping in a standby group: see stop_taking
        self._redeliveries = Redeliveries()
        self._refused_topics: set[str] = set()
        self._reconnects = 0
        self._ever_connected = False
        self._hinted = False  # the "is the broker running?" hint is logged once
        self.protocol: str | None = None
        """The MQTT version of the last connection (``5`` or ``3.1.1``); None before one."""
        self.session_present: bool | None = None
        """The last CONNACK's Session Present flag; None before the first."""
        self.session_lost = 0
        """Reconnects whose CONNACK said the broker no longer had our session."""

    @property
    def reconnects(self) -> int:
        """How many times a connection was lost and re-established.

        A first connect after failed attempts at start-up is not a reconnect.
        """
        return self._reconnects

    @property
    def broker(self) -> str:
        """``host:port`` of the broker in use (or tried next)."""
        return self._transport.address

    async def run(self) -> None:
        """Connect, serve, reconnect; returns once the outbox is closed and drained."""
        while (reason := await self._connection()) is not None:
            self._handler.on_connection(connected=False)
            self._outbox.requeue(self._in_flight)
            self._in_flight.clear()
            self._window = PublishWindow(self._settings.max_inflight)
            where = self._transport.address
            if self._outbox.closed:  # stopping: nobody to deliver the rest to
                log.warning(
                    "MQTT: %s; not reconnecting to %s: the gateway is stopping, "
                    "%d messages not delivered",
                    reason,
                    where,
                    len(self._outbox),
                )
                return
            if self._on_lost is not None:
                self._on_lost(reason)
                return
            delay = self._backoff.next_delay()
            log.warning("MQTT: %s; reconnecting to %s in %.1f s", reason, where, delay)
            self._hint_once(reason)
            await asyncio.sleep(delay)

    def _hint_once(self, reason: str) -> None:
        """Say once what to check when the broker is not there at all."""
        if self._hinted or self._ever_connected or "refused" not in reason.lower():
            return
        self._hinted = True
        several = len(self._settings.nodes) > 1
        log.warning(
            "MQTT: nothing accepts connections at %s. Is the broker running? "
            "Start it (`sudo systemctl start mosquitto`, or `mosquitto -v` in another "
            "terminal), or point mqtt.host and mqtt.port (or mqtt.hosts) at yours. "
            "Still retrying.",
            "the address above" if several else self._transport.address,
        )

    async def _connection(self) -> str | None:
        """Serve one connection; return why it failed, or None after a clean finish."""
        try:
            await self._serve_connection()
        except TransportError as exc:
            return str(exc) or type(exc).__name__
        except ExceptionGroup as group:
            lost, others = group.split(TransportError)
            if others is not None or lost is None:
                raise
            return "; ".join(str(exc) or type(exc).__name__ for exc in _leaves(lost))
        return None

    async def _serve_connection(self) -> None:
        try:
            async with self._transport.connect(self) as link, asyncio.TaskGroup() as tasks:
                self._check_session(link)  # before the announcements, which report it
                self._outbox.drop_retained()  # the announcements carry the current ones
                # Watch from the start: it notices a dead connection even while the
                # subscription and the announcements wait for their acks.
                watcher = tasks.create_task(link.until_lost())
                await self._subscribe(link)
                # First in the outbox, in order, then published through the window
                # like the rest: 10,000 devices are 20,000 retained messages.
                self._outbox.requeue(self._handler.announcements())
                self._connected()
                await self._drain_outbox(link)
                link.stop_delivering()  # shutting down: what comes now stays unacknowledged
                watcher.cancel()
            self._handler.on_connection(connected=False)
        finally:
            if self._acks is not None:
                self._redeliveries.expect(*self._acks.close())
            self._acks = None

    def stop_taking(self) -> None:
        """Take no more messages: what arrives from now on stays in the session, unanswered.

        A standby group's active calls it as it stops, so commands sent during
        its drain go to the next active instead of being answered ``cancelled``.
        """
        self._taking = False

    def _check_session(self, link: Link) -> None:
        """Count the reconnect; say loudly when the broker lost our session."""
        again = self._ever_connected
        self._ever_connected = True
        self._reconnects += again
        self.protocol = link.protocol
        self.session_present = link.session_present
        # MQTT 5 §3.2.2.1.1 (3.1.1 §3.2.2.2): with clean start off, Session Present
        # 0 means the broker had no session for us: what it queued is gone.
        if again and not link.session_present:
            self.session_lost += 1
            log.warning(
                "MQTT: the broker at %s no longer had the gateway's session (CONNACK "
                "session present 0): commands sent while the gateway was away may be "
                "lost, so clients should resend any command id they got no result for "
                "(ids make that safe). Check that the broker persists sessions (mosquitto: "
                "`persistence true`; a cluster: replicated session queues) and keeps them "
                "for mqtt.session_expiry (%d s).",
                self._transport.address,
                self._settings.session_expiry,
            )

    def _connected(self) -> None:
        self._backoff.reset()
        again = self._reconnects > 0
        log.info(
            "MQTT: connected to %s%s (MQTT %s)",
            self._transport.address,
            " again" if again else "",
            self.protocol,
        )
        self._handler.on_connection(connected=True)

    async def _subscribe(self, link: Link) -> None:
        command_filter = self._topics.command_filter
        codes = await link.subscribe(command_filter, skip_retained=link.protocol == "5")
        _check_granted(command_filter, codes)
        for topic_filter in self._watch:
            _check_granted(topic_filter, await link.subscribe(topic_filter))

    # -- what the connection calls -------------------------------------------------

    def attached(self, link: Link) -> None:
        """A connection is being made: acknowledge what it delivers on it."""
        self._acks = AckWindow(link.ack)

    def received(self, message: Inbound, mid: int, qos: int, dup: bool) -> None:  # noqa: FBT001 - see LinkHandler
        """Each message as it is read, in order; a bug here must not end the session."""
        acks = self._acks
        delivery: Delivery | None = None
        if not self._taking:  # unacknowledged: the broker keeps it for the next active
            return
        try:
            if qos == 0:
                self._handler.on_message(message)
                return
            if acks is None:  # no connection to acknowledge it on: it comes again
                return
            key = message_key(
                message.topic,
                message.payload,
                retain=message.retain,
                response_topic=message.response_topic,
            )
            if dup:  # MQTT 5 §3.3.1.1: a redelivery of an unacknowledged message
                earlier = self._redeliveries.match(key)
                if earlier is not None:
                    acks.add(earlier, mid)  # answered (or to be) once, acked here
                    return
            delivery = Delivery(key)
            acks.add(delivery, mid)
            self._handler.on_message(message.settled_by(delivery.settle))
        except Exception:
            log.exception("MQTT: failed to handle a message on %r; dropped it", message.topic)
            # Acknowledge it anyway (in order): redelivered, it would fail again, forever.
            if qos > 0 and acks is not None:
                if delivery is None:
                    delivery = Delivery(None)
                    acks.add(delivery, mid)
                delivery.settle()

    def published(self, token: int, refusal: str | None) -> None:
        """The broker acknowledged one of our publishes."""
        message = self._window.done(token)
        if message is None:
            return
        if refusal is not None and message.topic not in self._refused_topics:
            self._refused_topics.add(message.topic)  # once per topic: a refusal repeats
            log.error(
                "MQTT: the broker refused our message on %r (%s); check the ACL",
                message.topic,
                refusal,
            )
        self._sent(message)

    # -- publishing -------------------------------------------------------------------

    async def _drain_outbox(self, link: Link) -> None:
        """Publish until the outbox is closed and empty, and everything is acknowledged."""
        window = self._window
        while (message := await self._outbox.get()) is not None:
            await window.room()
            self._in_flight[message] = None
            try:
                window.add(link.publish(message), message)
            except ValueError as exc:  # what MQTT cannot carry
                log.error("MQTT: cannot publish to %r: %s; dropped", message.topic, exc)  # noqa: TRY400 - the reason is enough
                self._sent(message)
        await window.all_acknowledged()

    def _sent(self, message: Outbound) -> None:
        self._in_flight.pop(message, None)
        message.on_sent()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a group, nested groups flattened."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _check_granted(topic_filter: str, codes: Sequence[int]) -> None:
    if any(code >= 0x80 for code in codes):  # noqa: PLR2004 - MQTT 5 §3.9.3 failure codes
        log.error(
            "MQTT: the broker refused the subscription to %s (reason %s); check the ACL",
            topic_filter,
            list(codes),
        )
