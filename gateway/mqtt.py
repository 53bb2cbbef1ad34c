"""The MQTT session: the only module that imports aiomqtt.

It connects with a will, subscribes, republishes the gateway's announcements
after every connect, feeds inbound messages to a handler and drains the outbox,
and reconnects with jittered backoff, making a new client per attempt (a reused
aiomqtt client can report itself connected before the broker's CONNACK).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY, MQTT_ERR_SUCCESS, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.acks import AckWindow, Delivery, Redeliveries, message_key
from gateway.backoff import Backoff
from gateway.messages import Inbound, Outbound, Outbox

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from paho.mqtt.reasoncodes import ReasonCode

    from gateway.config import MqttSettings
    from gateway.topics import Topics

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0  # seconds at most to wait for a CONNACK or SUBACK
RECEIVE_MAXIMUM = 65535  # MQTT 5 §3.1.2.11.3: the most unacknowledged QoS 1 messages
# Beyond the payload limit, room for the longest topic and Response Topic (64 KiB
# each) and other properties, so every command just over the limit still reaches
# the dispatcher and gets its `payload_too_large` answer.
PACKET_HEADROOM = 256 * 1024


class SessionHandler(Protocol):
    """What the session calls back into."""

    def announcements(self) -> list[Outbound]:
        """Messages to publish first after every connect (status, devices, ...)."""

    def on_message(self, message: Inbound) -> None:
        """One inbound message; must not block."""

    def on_connection(self, *, connected: bool) -> None:
        """The broker connection came up (subscribed, announced) or went down."""


class MqttSession:
    """Keeps one logical, persistent MQTT session alive across connections."""

    def __init__(  # noqa: PLR0913 - the session's collaborators and two options
        self,
        settings: MqttSettings,
        topics: Topics,
        outbox: Outbox,
        handler: SessionHandler,
        *,
        watch: Sequence[str] = (),
        max_payload_bytes: int | None = None,
    ) -> None:
        """Nothing connects until ``run``.

        ``watch`` are further topic filters to read, retained messages included
        (Home Assistant's status and discovery configs). With
        ``max_payload_bytes``, an MQTT 5 broker is asked not to send packets
        much larger: it drops them instead of the gateway holding them in memory.
        """
        self._watch = tuple(watch)
        self._max_packet_size = (
            None if max_payload_bytes is None else max_payload_bytes + PACKET_HEADROOM
        )
        self._settings = settings
        self._topics = topics
        self._outbox = outbox
        self._handler = handler
        self._v5 = settings.protocol == "5"
        self._backoff = Backoff(settings.reconnect.min_delay, settings.reconnect.max_delay)
        # Published but not yet acknowledged, in publish order (identity-keyed).
        self._in_flight: dict[Outbound, None] = {}
        self._redeliveries = Redeliveries()
        self._reconnects = 0
        self._ever_connected = False
        self._hinted = False  # the "is the broker running?" hint is logged once

    @property
    def reconnects(self) -> int:
        """How many times a connection was lost and re-established.

        A first connect after failed attempts at start-up is not a reconnect.
        """
        return self._reconnects

    async def run(self) -> None:
        """Connect, serve, reconnect; returns once the outbox is closed and drained."""
        while (reason := await self._connection()) is not None:
            self._handler.on_connection(connected=False)
            self._outbox.requeue(self._in_flight)
            self._in_flight.clear()
            where = f"{self._settings.host}:{self._settings.port}"
            if self._outbox.closed:  # stopping: nobody to deliver the rest to
                log.warning(
                    "MQTT: %s; not reconnecting to %s: the gateway is stopping, "
                    "%d messages not delivered",
                    reason,
                    where,
                    len(self._outbox),
                )
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
        log.warning(
            "MQTT: nothing accepts connections at %s:%d. Is the broker running? "
            "Start it (`sudo systemctl start mosquitto`, or `mosquitto -v` in another "
            "terminal), or point mqtt.host and mqtt.port at yours. Still retrying.",
            self._settings.host,
            self._settings.port,
        )

    async def _connection(self) -> str | None:
        """Serve one connection; return why it failed, or None after a clean finish."""
        try:
            await self._serve_connection()
        except aiomqtt.MqttError as exc:
            return str(exc) or type(exc).__name__
        except ExceptionGroup as group:
            mqtt_errors, others = group.split(aiomqtt.MqttError)
            if others is not None or mqtt_errors is None:
                raise
            return "; ".join(str(exc) or type(exc).__name__ for exc in _leaves(mqtt_errors))
        return None

    async def _serve_connection(self) -> None:
        client = self._make_client()
        hooks = _PahoHooks(client)
        acks = AckWindow(hooks.ack)
        hooks.deliver = functools.partial(self._receive, acks)
        publisher = _Publisher(client, self._settings.max_inflight, self._sent)
        try:
            async with client, asyncio.TaskGroup() as tasks:
                _WritesInLoop(client)
                self._outbox.drop_retained()  # the announcements carry the current ones
                # Watch from the start: it notices a dead connection even while the
                # subscription and the announcements wait for their acks.
                watcher = tasks.create_task(_until_disconnected(client))
                await self._subscribe(client)
                # First in the outbox, in order, then published through the window
                # like the rest: 10,000 devices are 20,000 retained messages.
                self._outbox.requeue(self._handler.announcements())
                self._connected()
                await self._drain_outbox(publisher)
                hooks.stop_delivering()  # shutting down: what comes now stays unacknowledged
                watcher.cancel()
            self._handler.on_connection(connected=False)
        finally:
            # aiomqtt may leave the socket of a failed connect open and reading (a
            # CONNACK after the timeout): its messages must not run, since the broker
            # redelivers them, unacknowledged, to the next connection.
            hooks.stop_delivering()
            self._redeliveries.expect(*acks.close())

    def _connected(self) -> None:
        self._backoff.reset()
        again = self._ever_connected
        self._ever_connected = True
        self._reconnects += again
        log.info(
            "MQTT: connected to %s:%d%s",
            self._settings.host,
            self._settings.port,
            " again" if again else "",
        )
        self._handler.on_connection(connected=True)

    def _make_client(self) -> aiomqtt.Client:
        client = self._new_client()
        # Our own window bounds publishes in flight; don't warn below it.
        client.pending_calls_threshold = self._settings.max_inflight + 1
        return client

    def _new_client(self) -> aiomqtt.Client:
        s = self._settings
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry
            # Commands are acknowledged only once answered, in order (see acks.py): the
            # largest window lets the broker keep delivering behind a slow one.
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            if self._max_packet_size is not None:  # MQTT 5 §3.1.2.11.4
                properties.MaximumPacketSize = self._max_packet_size
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self._topics.status, b"offline", qos=1, retain=True),
            clean_session=None if self._v5 else False,
            # paho refuses clean_start for 3.1.1, where clean_session=False does the job.
            clean_start=False if self._v5 else MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=s.keepalive,
            # Give up on a silent broker (no CONNACK, no SUBACK) within the keepalive.
            timeout=min(CALL_TIMEOUT, 1.5 * s.keepalive),
            properties=properties,
            tls_context=_tls_context(s),
            # Unlimited in paho: its own limit rescans every unacknowledged message
            # on each PUBACK. The _Publisher's window (max_inflight) bounds them.
            max_inflight_messages=0,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=logging.getLogger("gateway.mqtt.client"),
        )

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        command_filter = self._topics.command_filter
        if self._v5:
            # MQTT 5 §3.8.3.1: Retain Handling 2 sends no retained messages on subscribe,
            # and Retain As Published keeps the flag on a command published retained
            # while we are connected, so it is refused like a stale one, not run.
            options = SubscribeOptions(
                qos=1,
                retainAsPublished=True,
                retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND,
            )
            granted = await client.subscribe(command_filter, options=options)
        else:
            granted = await client.subscribe(command_filter, qos=1)
        _check_granted(command_filter, granted)
        for topic_filter in self._watch:
            _check_granted(topic_filter, await client.subscribe(topic_filter, qos=1))

    def _receive(self, acks: AckWindow, message: MQTTMessage) -> None:
        """Each message as paho reads it, in order; a bug here must not end the session."""
        delivery: Delivery | None = None
        try:
            inbound = _inbound(message.topic, message.payload, message.retain, message.properties)
            if message.qos == 0:
                self._handler.on_message(inbound)
                return
            key = message_key(
                inbound.topic,
                inbound.payload,
                retain=inbound.retain,
                response_topic=inbound.response_topic,
            )
            if message.dup:  # MQTT 5 §3.3.1.1: a redelivery of an unacknowledged message
                earlier = self._redeliveries.match(key)
                if earlier is not None:
                    acks.add(earlier, message.mid)  # answered (or to be) once, acked here
                    return
            delivery = Delivery(key)
            acks.add(delivery, message.mid)
            self._handler.on_message(inbound.settled_by(delivery.settle))
        except Exception:
            topic = message._topic.decode(errors="replace")  # noqa: SLF001 - even if not UTF-8
            log.exception("MQTT: failed to handle a message on %r; dropped it", topic)
            # Acknowledge it anyway (in order): redelivered, it would fail again, forever.
            if message.qos > 0:
                if delivery is None:
                    delivery = Delivery(None)
                    acks.add(delivery, message.mid)
                delivery.settle()

    async def _drain_outbox(self, publisher: _Publisher) -> None:
        """Publish until the outbox is closed and empty, and everything is acknowledged."""
        while (message := await self._outbox.get()) is not None:
            await publisher.room()
            self._in_flight[message] = None
            publisher.publish(message, self._v5)
        await publisher.all_acknowledged()

    def _sent(self, message: Outbound) -> None:
        self._in_flight.pop(message, None)
        message.on_sent()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a group, nested groups flattened."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _check_granted(topic_filter: str, granted: Sequence[int | ReasonCode]) -> None:
    codes = [code if isinstance(code, int) else code.value for code in granted]
    if any(code >= 0x80 for code in codes):  # noqa: PLR2004 - MQTT 5 §3.9.3 failure codes
        log.error(
            "MQTT: the broker refused the subscription to %s (reason %s); check the ACL",
            topic_filter,
            codes,
        )


class _PahoHooks:
    """Manual PUBACKs, and messages straight from paho, with their DUP flag.

    aiomqtt 2.5 exposes neither manual PUBACKs nor the DUP flag, and its message
    iterator costs a task and an ``asyncio.wait`` per message (about a tenth of
    the gateway's CPU under load). Paho calls ``deliver`` for each message as it
    reads it, in order, on the event loop's thread. Both reach the paho client
    that aiomqtt wraps; aiomqtt 3 will need another way.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        """Turn off automatic PUBACKs and take the messages from aiomqtt's queue."""
        self._paho = client._client  # noqa: SLF001 - see the docstring
        self._paho.manual_ack_set(on=True)
        self._paho.on_message = self._on_message
        self.deliver: Callable[[MQTTMessage], None] = lambda _: None

    def _on_message(self, _paho: Any, _userdata: Any, message: MQTTMessage) -> None:  # noqa: ANN401
        self.deliver(message)

    def stop_delivering(self) -> None:
        """Drop every later message unacknowledged (the broker keeps it for the next)."""
        self.deliver = lambda _: None

    def ack(self, mid: int) -> None:
        """Send the PUBACK for packet ``mid``."""
        self._paho.ack(mid, 1)


class _WritesInLoop:
    """Paho's queued packets written once per event-loop pass, from the loop's thread.

    For each burst paho has to send, aiomqtt asks the loop, thread-safely, to
    watch the socket for writability: a self-pipe wake-up, two epoll changes and
    an extra loop pass. Writing at the end of the current pass sends the same
    bytes without them; only a full socket buffer falls back to aiomqtt's
    watcher (which also meets and reports a broken connection). Installed once
    connected, because paho sends the CONNECT from another thread.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        """Take over paho's "have something to write" callback."""
        self._paho = client._client  # noqa: SLF001 - the paho client aiomqtt wraps
        self._loop = asyncio.get_running_loop()
        self._watch_socket = self._paho.on_socket_register_write  # aiomqtt's
        self._paho.on_socket_register_write = self._register

    def _register(self, _paho: Any, _userdata: Any, sock: Any) -> None:  # noqa: ANN401
        self._loop.call_soon(self._write, sock)

    def _write(self, sock: Any) -> None:  # noqa: ANN401
        current = self._paho.socket()
        if current is None or current is not sock:  # that connection is gone
            return
        try:
            self._paho.loop_write()
            full = self._paho.want_write()
        except Exception:  # noqa: BLE001 - aiomqtt's watcher meets it again and reports it
            full = True
        # A failed send closes the socket (paho reports the disconnect): nothing to watch.
        if full and self._watch_socket is not None and self._paho.socket() is current:
            self._watch_socket(self._paho, None, current)


class _Publisher:
    """QoS 1 publishes straight through paho, each completed by its PUBACK.

    aiomqtt 2.5's ``publish`` costs a coroutine, an Event and two scans of every
    pending call per message, a sixth of the gateway's time under load. Here a
    publish is one paho call, and paho's ``on_publish`` (wrapped, so aiomqtt's
    own publishes still complete) reports the acknowledgement with its reason.
    """

    def __init__(
        self, client: aiomqtt.Client, window: int, sent: Callable[[Outbound], None]
    ) -> None:
        """Keep at most ``window`` messages unacknowledged; call ``sent`` for each ack."""
        self._paho = client._client  # noqa: SLF001 - see the docstring
        self._window = window
        self._sent = sent
        self._pending: dict[int, Outbound] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._refused_topics: set[str] = set()
        aiomqtt_on_publish = self._paho.on_publish

        def on_publish(paho: Any, userdata: Any, mid: int, *reason: Any) -> None:  # noqa: ANN401
            message = self._pending.pop(mid, None)
            if message is None:
                if aiomqtt_on_publish is not None:
                    aiomqtt_on_publish(paho, userdata, mid, *reason)
                return
            self._acknowledged(message, reason[0] if reason else None)

        self._paho.on_publish = on_publish

    async def room(self) -> None:
        """Wait until the window has room for one more."""
        await self._room.wait()

    async def all_acknowledged(self) -> None:
        """Wait until nothing published is unacknowledged."""
        await self._empty.wait()

    def publish(self, message: Outbound, v5: bool) -> None:  # noqa: FBT001
        """Hand ``message`` to paho; ``sent`` is called once the broker has it.

        Raises:
            aiomqtt.MqttCodeError: the connection is gone.
        """
        properties = None
        if v5 and message.correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = message.correlation_data
        try:
            info = self._paho.publish(
                message.topic, message.payload, qos=1, retain=message.retain, properties=properties
            )
        except (ValueError, TypeError) as exc:  # paho refuses what MQTT cannot carry
            log.error(  # noqa: TRY400 - the reason is enough; no traceback
                "MQTT: cannot publish to %r: %s; dropped", message.topic, exc
            )
            self._sent(message)
            return
        if info.rc != MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        self._pending[info.mid] = message
        self._empty.clear()
        if len(self._pending) >= self._window:
            self._room.clear()

    def _acknowledged(self, message: Outbound, reason: ReasonCode | None) -> None:
        if reason is not None and reason.is_failure and message.topic not in self._refused_topics:
            self._refused_topics.add(message.topic)  # once per topic: a refusal repeats
            log.error(
                "MQTT: the broker refused our message on %r (%s); check the ACL",
                message.topic,
                reason,
            )
        if len(self._pending) < self._window:
            self._room.set()
        if not self._pending:
            self._empty.set()
        self._sent(message)


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Raise MqttError once the connection is lost."""
    # The messages go to _PahoHooks.deliver instead of aiomqtt's queue, so its
    # iterator yields none: it only reports the disconnect, as it does at the end.
    async for _ in client.messages:
        pass


def _inbound(topic: str, payload: object, retain: bool, props: Properties | None) -> Inbound:  # noqa: FBT001 - a message's fields
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes | bytearray):
        payload = b"" if payload is None else str(payload).encode()
    response_topic = getattr(props, "ResponseTopic", None) if props else None
    correlation = getattr(props, "CorrelationData", None) if props else None
    return Inbound(
        topic=topic,
        payload=bytes(payload),
        retain=retain,
        response_topic=response_topic or None,
        correlation_data=correlation,
    )


def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class PublishRefusedError(Exception):
    """The broker acknowledged a publish with a failure reason (MQTT 5 PUBACK >= 0x80)."""

    def __init__(self, topic: str, reason: str) -> None:
        """Keep the topic and the broker's reason (``Not authorized``)."""
        super().__init__(f"the broker refused the publish to {topic}: {reason}")
        self.topic = topic
        self.reason = reason


class SubscribeRefusedError(Exception):
    """The broker refused a subscription (SUBACK reason >= 0x80), e.g. by its ACL."""

    def __init__(self, topic_filter: str, codes: list[int]) -> None:
        """Keep the filter and the broker's reason codes."""
        super().__init__(f"the broker refused the subscription to {topic_filter} (reason {codes})")
        self.topic_filter = topic_filter


class ToolClient:
    """A short-lived MQTT client for the command-line tools (``send``, ``watch``)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        """Wrap a connected client; its publishes report the broker's PUBACK reason."""
        self._client = client
        # aiomqtt 2.5's publish ignores the PUBACK's reason code, so a refusal (an
        # ACL denial) would look like success; paho's callback still has it.
        self._paho = client._client  # noqa: SLF001 - see above
        self._acks: dict[int, asyncio.Future[ReasonCode | None]] = {}
        aiomqtt_on_publish = self._paho.on_publish

        def on_publish(paho: Any, userdata: Any, mid: int, *reason: Any) -> None:  # noqa: ANN401
            waiting = self._acks.pop(mid, None)
            if waiting is None:
                if aiomqtt_on_publish is not None:
                    aiomqtt_on_publish(paho, userdata, mid, *reason)
            elif not waiting.done():
                waiting.set_result(reason[0] if reason else None)

        self._paho.on_publish = on_publish

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1.

        Raises:
            SubscribeRefusedError: the broker refused it.
        """
        granted = await self._client.subscribe(topic_filter, qos=1)
        codes = [code if isinstance(code, int) else code.value for code in granted]
        if any(code >= 0x80 for code in codes):  # noqa: PLR2004 - MQTT 5 §3.9.3 failure codes
            raise SubscribeRefusedError(topic_filter, codes)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement.

        Raises:
            PublishRefusedError: the broker refused it (MQTT 5 only: a 3.1.1 broker
                acknowledges and drops what its ACL denies).
            ConnectionError: the connection is gone, or no acknowledgement came.
        """
        waiting: asyncio.Future[ReasonCode | None] = asyncio.get_running_loop().create_future()
        info = self._paho.publish(topic, payload, qos=1)
        if info.rc != MQTT_ERR_SUCCESS:
            raise ConnectionError(f"could not publish to {topic!r}: connection lost")
        # The PUBACK is read on this loop, so it cannot arrive before this line.
        self._acks[info.mid] = waiting
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reason = await waiting
        except TimeoutError:
            raise ConnectionError(
                f"the broker did not acknowledge the publish to {topic!r}"
            ) from None
        finally:
            self._acks.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise PublishRefusedError(topic, str(reason))

    async def messages(self) -> AsyncIterator[Inbound]:
        """Every message on the subscriptions.

        Raises:
            ConnectionError: the connection was lost.
        """
        try:
            async for message in self._client.messages:
                yield _inbound(
                    message.topic.value, message.payload, message.retain, message.properties
                )
        except aiomqtt.MqttError as exc:
            raise ConnectionError(f"lost the connection to the broker: {exc}") from exc


@contextlib.asynccontextmanager
async def tool_client(settings: MqttSettings) -> AsyncIterator[ToolClient]:
    """Connect as the gateway's config says, with a clean session and a fresh id.

    Raises:
        ConnectionError: the broker cannot be reached or refused the login.
    """
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        identifier=f"{settings.client_id}-tool-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5
        if settings.protocol == "5"
        else aiomqtt.ProtocolVersion.V311,
        tls_context=_tls_context(settings),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        logger=logging.getLogger("gateway.mqtt.client"),
    )
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise ConnectionError(f"cannot connect to {settings.host}:{settings.port}: {exc}") from exc
    try:
        yield ToolClient(client)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
