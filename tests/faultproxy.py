"""A fault-injecting TCP proxy for tests: put it between a client and a server, then break it.

``drop()`` closes every current connection on both sides at once (FIN, or RST
with ``reset=True``), as a router reboot or a killed NAT entry would.

``blackhole()`` is a network partition: every connection stays open, but all
bytes in both directions are silently discarded, and so are closes. Neither
side hears anything, so only a keepalive can tell that the peer is gone. New
connections during the partition are either swallowed (the default: accepted,
black-holed and never passed on, so the client's connect seems to succeed and
then nothing ever answers, as behind a load balancer whose backend is cut off)
or, with ``refuse_new=True``, refused (the proxy stops listening, as when a
firewall rejects the port).

``delay(up=..., down=...)`` holds every chunk for that long before passing it
on, in that direction: a slow link, which keeps the connection in a given
phase long enough for a test to strike there.

``heal()`` ends the partition for new connections only. A connection that was
black-holed lost bytes in the middle of its stream, so it can never carry data
again; it stays a silent sink until each side gives up on it (each side's
close is then seen by the proxy only). Recovering means reconnecting.

Everything runs on the event loop in tasks owned by one TaskGroup inside the
proxy; leaving the ``async with`` block closes the listener and every
connection and waits for those tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

CHUNK = 65536


@dataclass(eq=False)
class Connection:
    """One accepted client connection and what happened to it."""

    number: int
    """1 for the first connection the proxy accepted, then 2, ..."""
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    blackholed: bool = False
    """Set once the connection is black-holed; it never carries data again."""
    dropped: bool = False
    """``drop()`` closed it."""
    accepted_at: float = field(default_factory=time.monotonic)
    client_closed_at: float | None = None
    """When the client side closed (or reset) its end, as the proxy saw it."""
    upstream_closed_at: float | None = None
    """When the server side closed (or reset) its end, as the proxy saw it."""
    bytes_up: int = 0
    """Bytes forwarded from the client to the server."""
    bytes_down: int = 0
    """Bytes forwarded from the server to the client."""
    discarded: int = 0
    """Bytes never passed on (black-holed, or held by a delay when dropped), both ways."""
    held_up: int = 0
    """Bytes from the client that a delay holds right now."""
    held_down: int = 0
    """Bytes from the server that a delay holds right now."""
    task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """The proxy holds no socket for it any more."""
        return self.task is not None and self.task.done()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_host``:``upstream_port``, with faults."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        client_receive_buffer: int | None = None,
    ) -> None:
        """Listen once entered; ``port`` is known then.

        ``client_receive_buffer`` caps the kernel's buffer for bytes from each
        client (``SO_RCVBUF``); with a ``delay(up=...)`` it makes the client's
        own socket fill up, which loopback's large default buffers never do.
        """
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.client_receive_buffer = client_receive_buffer
        self.host = "127.0.0.1"
        self.port = 0
        self.connections: list[Connection] = []
        """Every connection accepted so far, in order."""
        self.blackholed = False
        self.delay_up = 0.0
        """Seconds each chunk from the client waits before it is passed on."""
        self.delay_down = 0.0
        """Seconds each chunk from the server waits before it is passed on."""
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._old_servers: list[asyncio.Server] = []
        self._tasks = asyncio.TaskGroup()

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start listening on a free loopback port."""
        await self._tasks.__aenter__()
        try:
            self._server = await asyncio.start_server(self._accept, self.host, 0)
        except BaseException as exc:
            await self._tasks.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening, close every connection, wait for every task."""
        self._stop_listening()
        for conn in self.connections:
            _close(conn.client, reset=True)
            if conn.upstream is not None:
                _close(conn.upstream, reset=True)
            if conn.task is not None:
                conn.task.cancel()
        # Only a cancellation concerns the TaskGroup; any other error from the
        # block propagates as it is, not wrapped in an ExceptionGroup.
        cancelled = exc_type is not None and issubclass(exc_type, asyncio.CancelledError)
        try:
            if cancelled:
                await self._tasks.__aexit__(exc_type, exc, tb)
            else:
                await self._tasks.__aexit__(None, None, None)
        finally:
            for server in self._old_servers:
                await server.wait_closed()

    # -- faults -----------------------------------------------------------------

    def drop(self, *, reset: bool = False) -> int:
        """Close every current connection on both sides; return how many there were.

        ``reset=True`` aborts with an RST; otherwise each side gets a FIN.
        """
        live = [conn for conn in self.connections if not conn.closed and not conn.dropped]
        for conn in live:
            conn.dropped = True
            _close(conn.client, reset=reset)
            if conn.upstream is not None:
                _close(conn.upstream, reset=reset)
        self._notify()
        return len(live)

    def blackhole(self, *, refuse_new: bool = False) -> None:
        """Silently discard all bytes and closes, on every connection, until ``heal``.

        New connections are swallowed too, or refused with ``refuse_new=True``.
        """
        self.blackholed = True
        for conn in self.connections:
            if not conn.closed:
                conn.blackholed = True
        if refuse_new:
            self._stop_listening()
        self._notify()

    def delay(self, *, up: float = 0.0, down: float = 0.0) -> None:
        """Make every connection slow (``0`` for full speed again), current and new."""
        self.delay_up = up
        self.delay_down = down

    async def heal(self) -> None:
        """Forward new connections again (black-holed ones stay dead)."""
        self.blackholed = False
        if self._server is None:  # refused while partitioned: listen again, same port
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self._notify()

    # -- observing --------------------------------------------------------------

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        return len(self.connections)

    @property
    def active(self) -> list[Connection]:
        """The connections the proxy still holds open."""
        return [conn for conn in self.connections if not conn.closed]

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float = 10) -> None:
        """Wait until ``condition()`` is true; it is checked after every proxy event."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._old_servers.append(self._server)
            self._server = None

    # -- forwarding -------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or not self._server.is_serving():
            _close(writer, reset=True)  # a connection that raced the proxy's exit
            return
        if self.client_receive_buffer is not None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.client_receive_buffer)
        conn = Connection(number=len(self.connections) + 1, client=writer)
        conn.blackholed = self.blackholed
        self.connections.append(conn)
        conn.task = self._tasks.create_task(self._serve(conn, reader), name=f"proxy-{conn.number}")
        conn.task.add_done_callback(lambda _: self._notify())
        self._notify()

    async def _serve(self, conn: Connection, client_reader: asyncio.StreamReader) -> None:
        try:
            if conn.blackholed:
                # The partition swallows the handshake: the server never hears of it.
                await self._pump(conn, client_reader, None, upstream=True)
                return
            try:
                upstream_reader, conn.upstream = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                _close(conn.client, reset=True)  # the server refused: so do we
                return
            if conn.dropped:  # dropped while connecting upstream
                _close(conn.upstream, reset=True)
                return
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(conn, client_reader, conn.upstream, upstream=True))
                pumps.create_task(self._pump(conn, upstream_reader, conn.client, upstream=False))
        finally:  # normally both are closed already; on cancellation they are not
            for writer in (conn.client, conn.upstream):
                if writer is not None and not writer.transport.is_closing():
                    _close(writer, reset=True)

    async def _pump(
        self,
        conn: Connection,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter | None,
        *,
        upstream: bool,
    ) -> None:
        """Copy ``source`` to ``sink`` until ``source`` closes, then handle the close."""
        source_closed = await self._copy(conn, source, sink, upstream=upstream)
        own = conn.client if upstream else conn.upstream
        if source_closed and upstream:
            conn.client_closed_at = time.monotonic()
        elif source_closed:
            conn.upstream_closed_at = time.monotonic()
        self._notify()
        if own is not None:
            _close(own, reset=False)
        # Black-holed, the partition hides the close from the other side: it has
        # to give up on its own (or drop() or the proxy's exit closes it).
        if sink is not None and not conn.blackholed:
            _close(sink, reset=False)  # forward the close

    async def _copy(
        self,
        conn: Connection,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter | None,
        *,
        upstream: bool,
    ) -> bool:
        """Forward bytes until ``source`` closes (True) or ``sink`` fails (False).

        While the connection is black-holed, the bytes are swallowed instead.
        """
        while True:
            try:
                data = await source.read(CHUNK)
            except OSError:  # reset by the peer
                return True
            if not data:
                return True
            if not await self._hold(conn, data, sink, upstream=upstream):
                conn.discarded += len(data)
                return False  # dropped meanwhile
            if conn.blackholed or sink is None:
                conn.discarded += len(data)
                self._notify()
                continue
            sink.write(data)
            if upstream:
                conn.bytes_up += len(data)
            else:
                conn.bytes_down += len(data)
            self._notify()
            try:
                await sink.drain()
            except OSError:
                return False  # the other side is gone; its own pump notices

    async def _hold(
        self, conn: Connection, data: bytes, sink: asyncio.StreamWriter | None, *, upstream: bool
    ) -> bool:
        """Hold ``data`` for the direction's delay; False if ``sink`` closed meanwhile."""
        delay = self.delay_up if upstream else self.delay_down
        if delay <= 0 or conn.blackholed or sink is None:
            return True
        if upstream:
            conn.held_up = len(data)
        else:
            conn.held_down = len(data)
        self._notify()
        try:
            await asyncio.sleep(delay)  # the fault itself: a slow link
        finally:
            conn.held_up, conn.held_down = (0, conn.held_down) if upstream else (conn.held_up, 0)
        return not sink.transport.is_closing()


def _close(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close our socket to one side: a FIN after pending data, or an RST at once."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                # SO_LINGER with a zero timeout turns close() into an RST.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()
