"""The MQTT transport on aiomqtt 2.5: the only module that imports aiomqtt and paho.

``AiomqttTransport`` implements ``gateway/broker/transport.py``'s connection for the
session (``gateway/broker/session.py``): CONNECT with the will and session
properties, subscribe, QoS 1 publish completed by its PUBACK's reason, manual
PUBACKs, and each inbound message with its DUP flag. aiomqtt 2.5 offers none of
the last three, and its per-message paths cost a sixth of the gateway's CPU, so
the connection reaches the paho client aiomqtt wraps (``_Link``, ``WritesInLoop``,
``ToolClient``); ``tests/test_transport_pins.py`` pins each private detail used,
so an aiomqtt upgrade fails in CI, not at run time. The session above it knows
nothing of either library (``gateway/broker/transport.py``).

It also holds the short-lived client of the command-line tools (``ToolClient``).
A new client is made per connection: a reused aiomqtt client can report itself
connected before the broker's CONNACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import uuid
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY, MQTT_ERR_SUCCESS, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.broker.transport import SessionTakenOverError, TransportError
from gateway.core.messages import Inbound

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.broker.transport import LinkHandler
    from gateway.config import MqttSettings
    from gateway.core.messages import Outbound

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0  # seconds at most to wait for a CONNACK or SUBACK
RECEIVE_MAXIMUM = 65535  # MQTT 5 §3.1.2.11.3: the most unacknowledged QoS 1 messages
# Beyond the payload limit, room for the longest topic and Response Topic (64 KiB
# each) and other properties, so every command just over the limit still reaches
# the dispatcher and gets its `payload_too_large` answer.
PACKET_HEADROOM = 256 * 1024
UNSUPPORTED_PROTOCOL_VERSION = 132  # CONNACK reason (MQTT 5 §3.2.2.2)
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason (MQTT 5 §3.14.2.1)
# aiomqtt 2.5's text when a call (here: the CONNACK) did not come in time;
# tests/test_transport_pins.py pins it.
AIOMQTT_TIMEOUT = "Operation timed out"


class AiomqttTransport:
    """Connections to the brokers the ``mqtt`` settings name, through aiomqtt.

    ``mqtt.hosts`` are tried in order: a failed connect moves on to the next
    one (the session's backoff paces the attempts), a working one is kept.
    With ``mqtt.protocol: auto``, the broker is offered MQTT 5 first and 3.1.1
    when it refuses 5 or never answers; what worked is kept, for every node
    (the nodes of a cluster run one broker: a failover should not wait for
    another MQTT 5 attempt to time out).
    """

    def __init__(
        self, settings: MqttSettings, *, will_topic: str, max_payload_bytes: int | None = None
    ) -> None:
        """``will_topic`` gets a retained ``offline`` if a connection dies.

        With ``max_payload_bytes``, an MQTT 5 broker is asked not to send packets
        much larger: it drops them instead of the gateway holding them in memory.
        """
        self._settings = settings
        self._will_topic = will_topic
        self._max_packet_size = (
            None if max_payload_bytes is None else max_payload_bytes + PACKET_HEADROOM
        )
        self._nodes = settings.nodes
        self._node = 0  # index into _nodes: the broker in use, or to try next
        self._learned: str | None = None  # the version `auto` settled on

    @property
    def address(self) -> str:
        """``host:port`` of the broker in use (or tried next)."""
        return _address(*self._nodes[self._node])

    @contextlib.asynccontextmanager
    async def connect(self, handler: LinkHandler) -> AsyncIterator[_Link]:
        """One connection for the block (see ``gateway.transport.Transport``)."""
        try:
            client, link = await self._handshake(handler)
        except TransportError as exc:
            if len(self._nodes) == 1:
                raise
            failed = self.address
            self._node = (self._node + 1) % len(self._nodes)  # the next broker, next time
            raise TransportError(f"{failed}: {exc}") from exc
        try:
            try:
                WritesInLoop(client)  # only now: paho sent the CONNECT from another thread
                yield link
            finally:
                await client.__aexit__(None, None, None)
        except aiomqtt.MqttError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        finally:
            link.stop_delivering()

    async def _handshake(self, handler: LinkHandler) -> tuple[aiomqtt.Client, _Link]:
        """CONNECT and CONNACK with the current broker, falling back to 3.1.1 if allowed."""
        learned = self._learned
        candidates = (learned,) if learned else _protocols(self._settings.protocol)
        why_not_5 = None
        for protocol in candidates:
            client = self._new_client(protocol)
            link = _Link(client, handler, protocol=protocol)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                # aiomqtt may leave the socket of a failed connect open and reading (a
                # CONNACK after the timeout): its messages must not run, since the broker
                # redelivers them, unacknowledged, to the next connection.
                link.stop_delivering()
                why_not_5 = _refused_v5(exc) if protocol == "5" else None
                if why_not_5 is not None and protocol != candidates[-1]:
                    continue  # to 3.1.1, said once it works
                raise TransportError(self._explain(exc, protocol, why_not_5)) from exc
            if learned is None and self._settings.protocol == "auto":
                self._learned = protocol  # a broker's version does not change under us
                self._say_chosen(why_not_5)
            return client, link
        raise AssertionError  # pragma: no cover - the last candidate returns or raises

    def _say_chosen(self, why_not_5: str | None) -> None:
        """One line: the version ``auto`` chose, and why not 5 if not."""
        if why_not_5 is None:
            log.info("MQTT: %s speaks MQTT 5: using it (mqtt.protocol: auto)", self.address)
            return
        log.warning(
            "MQTT: %s %s: using MQTT 3.1.1 (mqtt.protocol: auto). Without MQTT 5 there "
            "are no Response Topics, and retained commands are refused on arrival "
            'instead of never sent. Set mqtt.protocol: "3.1.1" to skip the MQTT 5 attempt.',
            self.address,
            why_not_5,
        )

    def _explain(self, exc: aiomqtt.MqttError, protocol: str, why_not_5: str | None) -> str:
        """Why the connect failed, with what to change when the protocol is the cause."""
        text = str(exc) or type(exc).__name__
        if why_not_5 is None:
            return text
        if self._settings.protocol == "5":
            return (
                f"{text}: the broker {why_not_5}; if it speaks only MQTT 3.1.1, "
                'set mqtt.protocol to "3.1.1" or "auto"'
            )
        return f"{text} (MQTT {protocol})"

    def _new_client(self, protocol: str) -> aiomqtt.Client:
        s = self._settings
        host, port = self._nodes[self._node]
        v5 = protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry
            # Commands are acknowledged only once answered, in order (see acks.py): the
            # largest window lets the broker keep delivering behind a slow one.
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            if self._max_packet_size is not None:  # MQTT 5 §3.1.2.11.4
                properties.MaximumPacketSize = self._max_packet_size
        client = aiomqtt.Client(
            host,
            port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self._will_topic, b"offline", qos=1, retain=True),
            clean_session=None if v5 else False,
            # paho refuses clean_start for 3.1.1, where clean_session=False does the job.
            clean_start=False if v5 else MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=s.keepalive,
            # Give up on a silent broker (no CONNACK, no SUBACK) within the keepalive.
            timeout=min(CALL_TIMEOUT, 1.5 * s.keepalive),
            properties=properties,
            tls_context=_tls_context(s),
            # Unlimited in paho: its own limit rescans every unacknowledged message
            # on each PUBACK. The session's window (max_inflight) bounds them.
            max_inflight_messages=0,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=logging.getLogger("gateway.broker.aiomqtt_transport.client"),
        )
        # The session's own window bounds publishes in flight; don't warn below it.
        client.pending_calls_threshold = s.max_inflight + 1
        return client


def _protocols(setting: str) -> tuple[str, ...]:
    """The MQTT versions to offer, in order, for ``mqtt.protocol``."""
    return ("5", "3.1.1") if setting == "auto" else (setting,)


def _refused_v5(exc: aiomqtt.MqttError) -> str | None:
    """How a broker turned down an MQTT 5 CONNECT, or None if it was something else."""
    if isinstance(exc, aiomqtt.MqttCodeError):  # a CONNACK with a failure reason
        # MQTT 5 §3.2.2.2 reason 132; paho also reads a 3.1.1 CONNACK's
        # "unacceptable protocol version" (return code 1) as 132.
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        return "refused MQTT 5 (reason 132)" if code == UNSUPPORTED_PROTOCOL_VERSION else None
    if str(exc) == AIOMQTT_TIMEOUT:  # connected, but no CONNACK: some 3.1.1 brokers stay silent
        return "never answered an MQTT 5 CONNECT"
    return None


def _reason(exc: aiomqtt.MqttError) -> int | None:
    """The reason code a CONNACK or DISCONNECT gave, if the error carries one."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return None
    return exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Link:
    """One connection: subscribe, publish, acknowledge, and messages as paho reads them.

    Paho calls ``_on_message`` for each message as it reads it, in order, on the
    event loop's thread, with its DUP flag; aiomqtt's iterator would cost a task
    and an ``asyncio.wait`` per message (about a tenth of the gateway's CPU under
    load) and hide the flag. Publishes go straight into paho, completed by its
    ``on_publish`` (wrapped, so aiomqtt's own publishes still complete): no
    coroutine, Event or scan of pending calls per message. PUBACKs are manual.
    """

    def __init__(self, client: aiomqtt.Client, handler: LinkHandler, *, protocol: str) -> None:
        """Take over paho's message and publish callbacks; turn off automatic PUBACKs."""
        self._client = client
        self._paho = client._client  # noqa: SLF001 - see the class docstring
        self.protocol = protocol
        """The MQTT version spoken: ``5`` or ``3.1.1``."""
        self._v5 = protocol == "5"
        self.session_present = False
        """The CONNACK's Session Present flag (MQTT 5 §3.2.2.1.1)."""
        aiomqtt_on_connect = self._paho.on_connect

        def on_connect(paho: Any, userdata: Any, flags: Any, *rest: Any) -> None:  # noqa: ANN401
            self.session_present = bool(flags.session_present)
            if aiomqtt_on_connect is not None:
                aiomqtt_on_connect(paho, userdata, flags, *rest)

        self._paho.on_connect = on_connect
        aiomqtt_on_disconnect: Any = self._paho.on_disconnect
        # aiomqtt's error does not carry a server DISCONNECT's reason. (Mosquitto
        # 2.0.11 closes a taken-over connection before its 0x8E is read: there
        # the takeover looks like any lost connection.)
        self._disconnect_reason: int | None = None

        def on_disconnect(paho: Any, userdata: Any, flags: Any, reason: Any, *rest: Any) -> None:  # noqa: ANN401
            self._disconnect_reason = reason.value if isinstance(reason, ReasonCode) else reason
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(paho, userdata, flags, reason, *rest)

        self._paho.on_disconnect = on_disconnect
        self._handler: LinkHandler | None = handler
        self._paho.manual_ack_set(on=True)
        self._paho.on_message = self._on_message
        aiomqtt_on_publish = self._paho.on_publish

        def on_publish(paho: Any, userdata: Any, mid: int, *reason: Any) -> None:  # noqa: ANN401
            # Ours are the publishes made by ``publish``; the rest are aiomqtt's.
            if mid in self._ours:
                self._ours.discard(mid)
                if self._handler is not None:
                    failure = reason[0] if reason and reason[0].is_failure else None
                    self._handler.published(mid, None if failure is None else str(failure))
            elif aiomqtt_on_publish is not None:
                aiomqtt_on_publish(paho, userdata, mid, *reason)

        self._ours: set[int] = set()
        self._heard = 0  # messages received: a subscribe waits while this grows
        self._paho.on_publish = on_publish
        handler.attached(self)

    async def subscribe(self, topic_filter: str, *, skip_retained: bool = False) -> list[int]:
        """Subscribe at QoS 1; the reason codes.

        The SUBACK comes after whatever the broker had queued for the session, so
        behind a large backlog it may take longer than the client's timeout. Only
        silence gives up: while messages keep arriving, the broker is there.
        """
        options = None
        if skip_retained and self._v5:
            # MQTT 5 §3.8.3.1: Retain Handling 2 sends no retained messages on
            # subscribe, and Retain As Published keeps the flag on a command
            # published retained while we are connected, so it can be refused.
            options = SubscribeOptions(
                qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
            )
        # paho takes the QoS from the options when there are some, and refuses both.
        qos = 0 if options else 1
        granted = asyncio.ensure_future(
            self._client.subscribe(topic_filter, qos=qos, options=options, timeout=math.inf)
        )
        try:
            while not granted.done():
                heard = self._heard
                await asyncio.wait({granted}, timeout=self._client.timeout)
                if not granted.done() and self._heard == heard:
                    raise TransportError("Operation timed out (no SUBACK)")
            codes = granted.result()
        except aiomqtt.MqttError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        finally:
            granted.cancel()
        return [code if isinstance(code, int) else code.value for code in codes]

    def publish(self, message: Outbound) -> int:
        """Hand ``message`` to paho; its packet id is the token."""
        properties = None
        if self._v5 and message.correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = message.correlation_data
        try:
            info = self._paho.publish(
                message.topic, message.payload, qos=1, retain=message.retain, properties=properties
            )
        except (ValueError, TypeError) as exc:  # paho refuses what MQTT cannot carry
            raise ValueError(str(exc)) from exc
        if info.rc != MQTT_ERR_SUCCESS:
            raise TransportError(f"could not publish (paho error {info.rc})")
        self._ours.add(info.mid)
        return info.mid

    def ack(self, mid: int) -> None:
        """Send the PUBACK for packet ``mid``."""
        self._paho.ack(mid, 1)

    def stop_delivering(self) -> None:
        """Drop every later message unacknowledged (the broker keeps it for the next)."""
        self._handler = None

    async def until_lost(self) -> None:
        """Raise ``TransportError`` once the connection is lost."""
        # Messages go to _on_message instead of aiomqtt's queue, so its iterator
        # yields none: it only reports the disconnect, as it does at the end.
        try:
            async for _ in self._client.messages:
                pass
        except aiomqtt.MqttError as exc:
            if SESSION_TAKEN_OVER in {_reason(exc), self._disconnect_reason}:
                raise SessionTakenOverError(
                    "session taken over (MQTT 5 DISCONNECT reason 0x8E)"
                ) from exc
            raise TransportError(str(exc) or type(exc).__name__) from exc

    def _on_message(self, _paho: Any, _userdata: Any, message: MQTTMessage) -> None:  # noqa: ANN401
        self._heard += 1
        handler = self._handler
        if handler is None:
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers refuse such topics; never trust it
            topic = message._topic.decode(errors="replace")  # noqa: SLF001
        inbound = _inbound(topic, message.payload, message.retain, message.properties)
        handler.received(inbound, message.mid, message.qos, message.dup)


class WritesInLoop:
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

    def disconnect(self) -> None:
        """End the connection now: ``messages`` then raises ``ConnectionError``."""
        self._paho.disconnect()

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1.

        Raises:
            SubscribeRefusedError: the broker refused it.
        """
        granted = await self._client.subscribe(topic_filter, qos=1)
        codes = [code if isinstance(code, int) else code.value for code in granted]
        if any(code >= 0x80 for code in codes):  # noqa: PLR2004 - MQTT 5 §3.9.3 failure codes
            raise SubscribeRefusedError(topic_filter, codes)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 (retained if asked) and wait for the broker's acknowledgement.

        Raises:
            PublishRefusedError: the broker refused it (MQTT 5 only: a 3.1.1 broker
                acknowledges and drops what its ACL denies).
            ConnectionError: the connection is gone, or no acknowledgement came.
        """
        waiting: asyncio.Future[ReasonCode | None] = asyncio.get_running_loop().create_future()
        info = self._paho.publish(topic, payload, qos=1, retain=retain)
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

    The first of ``mqtt.hosts`` that answers, with ``mqtt.protocol``'s versions
    tried as the gateway tries them.

    Raises:
        ConnectionError: no broker can be reached, or one refused the login.
    """
    problems = []
    for host, port in settings.nodes:
        for protocol in _protocols(settings.protocol):
            client = _tool_client(settings, host, port, protocol)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                problems.append(f"{_address(host, port)} (MQTT {protocol}): {exc}")
                if protocol == "5" and _refused_v5(exc) is not None:
                    continue
                break
            async with _connected(client) as connected:
                yield connected
            return
    raise ConnectionError(f"cannot connect to {'; '.join(problems)}")


@contextlib.asynccontextmanager
async def watcher_client(
    settings: MqttSettings,
    *,
    client_id: str,
    login: tuple[str | None, str | None],
    will_topic: str,
) -> AsyncIterator[ToolClient]:
    """A standby's watcher: its own client id and persistent session, MQTT 5.

    ``login`` is its username and password; if the connection dies, the broker
    clears the retained ``will_topic`` (an empty will).

    Raises:
        ConnectionError: no broker can be reached, or one refused the login.
    """
    problems = []
    for host, port in settings.nodes:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = settings.session_expiry
        client = aiomqtt.Client(
            host,
            port,
            username=login[0],
            password=login[1],
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            will=aiomqtt.Will(will_topic, b"", qos=1, retain=True),
            keepalive=settings.keepalive,
            timeout=min(CALL_TIMEOUT, 1.5 * settings.keepalive),
            tls_context=_tls_context(settings),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=logging.getLogger("gateway.broker.aiomqtt_transport.client"),
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            problems.append(f"{_address(host, port)}: {exc}")
            continue
        async with _connected(client) as connected:
            yield connected
        return
    raise ConnectionError(f"cannot connect to {'; '.join(problems)}")


@contextlib.asynccontextmanager
async def _connected(client: aiomqtt.Client) -> AsyncIterator[ToolClient]:
    """A client already entered, as a ``ToolClient``; disconnected on exit."""
    try:
        yield ToolClient(client)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


def _tool_client(settings: MqttSettings, host: str, port: int, protocol: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        host,
        port,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        identifier=f"{settings.client_id}-tool-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311,
        tls_context=_tls_context(settings),
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        logger=logging.getLogger("gateway.broker.aiomqtt_transport.client"),
    )
