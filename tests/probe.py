"""A test-side MQTT client that publishes commands and waits for what comes back.

It is the only test module that imports aiomqtt, as ``gateway/broker/aiomqtt_transport.py`` is for
the daemon. It reconnects by itself, so it can watch a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType


@dataclass(frozen=True, slots=True)
class Received:
    """A message the probe saw."""

    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        """The payload as text."""
        return self.payload.decode()

    @property
    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class FirstResults:
    """A ``wait_for`` match: the first result on ``topic`` for each of ``ids``.

    A result that comes again (QoS 1 is at least once) or a ``duplicate`` answer
    to a redelivery does not count twice; ``answered`` holds the ids seen.
    """

    def __init__(self, topic: str, ids: list[str]) -> None:
        """Match results on ``topic`` for ``ids``."""
        self.topic = topic
        self.wanted = set(ids)
        self.answered: set[str] = set()

    def __call__(self, message: Received) -> bool:
        """True for the first result of a wanted id."""
        command_id = message.json.get("id") if message.topic == self.topic else None
        if command_id not in self.wanted or command_id in self.answered:
            return False
        self.answered.add(command_id)
        return True


class Probe:
    """Subscribes to ``topics``, records every message, publishes on demand."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        *,
        client_id: str | None = None,
        persistent: bool = False,
        protocol: str = "5",
        host: str = "127.0.0.1",
    ) -> None:
        """Connect to the broker on ``host``:``port`` once entered."""
        self.host = host
        self.port = port
        self.topics = topics
        self.client_id = client_id or f"probe-{uuid.uuid4().hex[:8]}"
        self.persistent = persistent
        self.protocol = protocol
        self.messages: list[Received] = []
        self._arrived = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Start the connection loop and wait for the first connection."""
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        first = True
        while True:
            try:
                async with self._make_client(clean=first and not self.persistent) as client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self._connected.set()
                    first = False
                    async for message in client.messages:
                        self._record(message)
            except aiomqtt.MqttError:
                self._connected.clear()
                self._client = None
                await asyncio.sleep(0.1)

    def _make_client(self, *, clean: bool) -> aiomqtt.Client:
        v5 = self.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600 if self.persistent else 0
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else clean,
            clean_start=clean if v5 else 3,  # paho's MQTT_CLEAN_START_FIRST_ONLY
            properties=properties,
            keepalive=5,
            # Without it, Nagle and delayed ACKs add ~40 ms to every round trip.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    def _record(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        props = message.properties
        self.messages.append(
            Received(
                topic=message.topic.value,
                payload=bytes(payload) if isinstance(payload, bytes | bytearray) else b"",
                retain=message.retain,
                correlation_data=getattr(props, "CorrelationData", None) if props else None,
            )
        )
        self._arrived.set()

    async def publish(
        self,
        topic: str,
        payload: str | bytes | dict[str, Any],
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        timeout: float = 10,
    ) -> None:
        """Publish at QoS 1, waiting through a reconnect if need be."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        properties = None
        if response_topic is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        async with asyncio.timeout(timeout):
            while True:
                await self._connected.wait()
                client = self._client
                if client is None:
                    continue
                try:
                    await client.publish(
                        topic, payload, qos=1, retain=retain, properties=properties
                    )
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.05)
                else:
                    return

    async def wait_for(
        self,
        match: Callable[[Received], bool],
        *,
        count: int = 1,
        timeout: float = 10,
        since: int = 0,
    ) -> list[Received]:
        """Wait until ``count`` messages recorded from index ``since`` on match."""
        found: list[Received] = []
        seen = since  # each message is matched once, so long waits stay linear
        async with asyncio.timeout(timeout):
            while True:
                found += [m for m in self.messages[seen:] if match(m)]
                seen = len(self.messages)
                if len(found) >= count:
                    return found
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_topic(
        self, topic: str, *, count: int = 1, timeout: float = 10
    ) -> list[Received]:
        """Wait for ``count`` messages on ``topic``."""
        return await self.wait_for(lambda m: m.topic == topic, count=count, timeout=timeout)

    async def result(
        self,
        device: str,
        command_id: str,
        *,
        base: str = "iot",
        timeout: float = 10,
        since: int = 0,
    ) -> Any:
        """Wait for the result of the command ``command_id`` and return it parsed."""
        topic = f"{base}/{device}/result"
        found = await self.wait_for(
            lambda m: m.topic == topic and m.json.get("id") == command_id,
            timeout=timeout,
            since=since,
        )
        return found[0].json

    def on(self, topic: str) -> list[Received]:
        """Every message seen so far on ``topic``."""
        return [m for m in self.messages if m.topic == topic]

    async def command(
        self, device: str, payload: dict[str, Any], *, base: str = "iot", timeout: float = 10
    ) -> Any:
        """Send a command (an id is added) and return its result."""
        command_id = payload.setdefault("id", uuid.uuid4().hex)
        # Its result can only come after this point, so a long-lived probe does
        # not rescan (and reparse) everything it recorded before.
        since = len(self.messages)
        await self.publish(f"{base}/{device}/command", payload)
        return await self.result(device, command_id, base=base, timeout=timeout, since=since)
