"""A broker that speaks only MQTT 3.1.1, for tests: a loopback front for a real Mosquitto.

Mosquitto accepts every MQTT version, so it cannot show how the gateway meets
a broker that does not speak 5. This front reads each connection's CONNECT:
an MQTT 3.1.1 one (protocol level 4) is passed on to Mosquitto, and from then
on bytes flow both ways unchanged; an MQTT 5 one (level 5) is answered as the
3.1.1-only brokers on the market answer it (see issue 18):

- ``refuse``: a CONNACK with reason 132, Unsupported Protocol Version (MQTT 5
  §3.2.2.2), then the connection is closed;
- ``refuse_v3``: a 3.1.1 CONNACK with return code 1, unacceptable protocol
  version (MQTT 3.1.1 §3.2.2.3), then closed;
- ``silent``: no answer at all; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Literal, Self

if TYPE_CHECKING:
    from types import TracebackType

Answer = Literal["refuse", "refuse_v3", "silent"]
ANSWERS: dict[str, bytes] = {
    "refuse": bytes([0x20, 0x03, 0x00, 0x84, 0x00]),  # CONNACK, reason 132, no properties
    "refuse_v3": bytes([0x20, 0x02, 0x00, 0x01]),  # CONNACK, return code 1
}
CHUNK = 65536


class OldBroker:
    """Listens on a free loopback port once entered; ``levels`` lists each CONNECT's level."""

    def __init__(self, upstream_port: int, answer: Answer = "refuse") -> None:
        """Pass 3.1.1 connections to 127.0.0.1:``upstream_port``; answer MQTT 5 ones so."""
        self.upstream_port = upstream_port
        self.answer = answer
        self.host = "127.0.0.1"
        self.port = 0
        self.levels: list[int] = []
        """The protocol level of every CONNECT seen, in order (4: 3.1.1, 5: MQTT 5)."""
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._tasks = asyncio.TaskGroup()

    async def __aenter__(self) -> Self:
        """Start listening."""
        await self._tasks.__aenter__()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        self.drop()
        await self._tasks.__aexit__(None, None, None)

    def drop(self) -> None:
        """Close every connection, as a broker restart would."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self._tasks.create_task(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            connect = await _read_packet(reader)
            # CONNECT's variable header: the protocol name "MQTT" (2 + 4 bytes), then the level.
            body = connect[_header_length(connect) :]
            level = body[6]
            self.levels.append(level)
            if level == 4:
                await self._pass_on(connect, reader, writer)
                return
            if self.answer in ANSWERS:
                writer.write(ANSWERS[self.answer])
                await writer.drain()
                writer.close()
                return
            await reader.read()  # silent: until the client gives up and closes

    async def _pass_on(
        self, connect: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        self._writers.append(up_writer)
        up_writer.write(connect)
        async with asyncio.TaskGroup() as pumps:
            pumps.create_task(_pump(reader, up_writer))
            pumps.create_task(_pump(up_reader, writer))


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await source.read(CHUNK):
            sink.write(chunk)
            await sink.drain()
    sink.transport.abort()  # one side gone: so is the other, as with a real broker


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT packet: fixed header, remaining length, the rest."""
    packet = bytearray(await reader.readexactly(1))
    length, shift = 0, 0
    while True:  # MQTT §2.2.3: the remaining length, 7 bits a byte
        byte = (await reader.readexactly(1))[0]
        packet.append(byte)
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    packet += await reader.readexactly(length)
    return bytes(packet)


def _header_length(packet: bytes) -> int:
    """Bytes of the fixed header: the type byte and the remaining length's bytes."""
    index = 1
    while packet[index] & 0x80:
        index += 1
    return index + 1
