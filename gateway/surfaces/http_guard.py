"""What keeps the HTTP server up under clients it did not ask for.

Issue 12 measured it: 1,100 half-sent requests took every file descriptor, the
broker could not reconnect and asyncio logged 54 MB. So connections are
accepted by a loop of ours that stops at a cap below the open-file limit
(``Acceptor``), each has a deadline for its request headers
(``GuardedConnection``, ``time_headers``), and repeated errors are logged in
short lines now and then (``ServerLog``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http import HttpProcessingError

from gateway.core.logs import Throttle, shorten

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp.typedefs import Handler

log = logging.getLogger("gateway.surfaces.http")  # one logger for the HTTP server's lines

# Connections beyond the cap wait in the kernel's accept queue, which costs us
# no descriptor; past this many the kernel drops SYNs and clients retry.
BACKLOG = 128
# Descriptors HTTP leaves to the rest of the gateway: the broker connection,
# a socket or serial port per device (tens in the fleets we run), log files,
# the event loop's own; with room to spare, since running out is what broke.
FD_RESERVE = 256
# How far the soft open-file limit is raised. Not to the hard limit itself:
# that is 524,288 under systemd and "unlimited" in some containers, and code
# that walks every possible descriptor (close_fds fallbacks) slows to a crawl.
FD_LIMIT_CEILING = 65536
# asyncio's own pause after "out of system resource" (base_events.ACCEPT_RETRY_DELAY).
ACCEPT_RETRY_DELAY = 1.0
# One line per this many seconds for each kind of repeated event: a flood of
# bad requests or accept errors costs a handful of lines, not 123,008.
LOG_INTERVAL = 60.0


class Acceptor:
    """Accepts connections while fewer than the cap are open; the rest wait in the backlog.

    asyncio's ``create_server`` accepts whatever arrives, and on EMFILE logs
    each failed attempt with a traceback (up to a backlog's worth per second);
    this loop is ours so it can stop at the cap and log accept errors sparingly.
    """

    def __init__(
        self, new_handler: Callable[[], web.RequestHandler], cap: int, header_timeout: float
    ) -> None:
        """Serve at most ``cap`` connections, each through a new aiohttp handler."""
        self._new_handler = new_handler
        self._cap = cap
        self.header_timeout = header_timeout
        self._open = 0  # connections made and not yet lost
        self._accepting = 0  # accept loops between finding room and handing a socket over
        self._room = asyncio.Event()
        self._accept_errors = _LogBudget()
        self.slow_headers = _LogBudget()

    async def serve(self, listener: socket.socket) -> None:
        """Accept on ``listener`` and hand each connection to aiohttp, forever."""
        while True:
            await self._wait_for_room()
            self._accepting += 1
            try:
                await self._accept_one(listener)
            finally:
                self._accepting -= 1
                self._room.set()

    def opened(self) -> None:
        """A connection was made (from its ``connection_made``)."""
        self._open += 1

    def closed(self) -> None:
        """A connection was lost: room for the next one in the backlog."""
        self._open -= 1
        self._room.set()

    async def _wait_for_room(self) -> None:
        while self._open + self._accepting >= self._cap:
            self._room.clear()
            await self._room.wait()

    async def _accept_one(self, listener: socket.socket) -> None:
        client = await self._next_client(listener)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._new_connection, client)
        except OSError as exc:  # gone between accept and set-up
            client.close()
            log.debug("HTTP: a client left before its connection was set up: %s", exc)
        except asyncio.CancelledError:
            client.close()
            raise

    async def _next_client(self, listener: socket.socket) -> socket.socket:
        """The next connection from the backlog; out of descriptors, wait and retry."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except ConnectionAbortedError:  # reset while in the backlog: take the next
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: the host is short
                self._accept_errors.log(
                    logging.WARNING,
                    "HTTP: cannot accept connections (%s); retrying every %g s",
                    exc.strerror or exc,
                    ACCEPT_RETRY_DELAY,
                )
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
            else:
                return client

    def _new_connection(self) -> GuardedConnection:
        return GuardedConnection(self._new_handler(), self)


class GuardedConnection(asyncio.Protocol):
    """One client connection: aiohttp's request handler inside, a header deadline around it.

    aiohttp's only timer, ``keepalive_timeout``, is not reset by incoming bytes,
    so it bounds a trickled request, but only at the idle timeout. This adds
    the header deadline of Go's ``ReadHeaderTimeout``: it starts at connect
    and, on a kept-alive connection, at the next request's first byte, and it
    stops when aiohttp hands the parsed request to the application
    (``time_headers``).
    """

    def __init__(self, handler: web.RequestHandler, acceptor: Acceptor) -> None:
        """Wrap aiohttp's ``handler``; ``acceptor`` counts the connection."""
        self._handler = handler
        self._acceptor = acceptor
        self._deadline: asyncio.TimerHandle | None = None
        self._between_requests = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count it, start the header clock, then let aiohttp take it."""
        self._acceptor.opened()
        self._start_header_clock()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """The first byte after a response starts the next request's header clock."""
        if self._between_requests and data:
            self._between_requests = False
            self._start_header_clock()
        self._handler.data_received(data)

    def eof_received(self) -> None:
        """Passed to aiohttp; returning None has asyncio close the connection."""
        self._handler.eof_received()

    def pause_writing(self) -> None:
        """Passed to aiohttp, which waits for the client to read."""
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        """Passed to aiohttp."""
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock, tell aiohttp, and free the connection's place."""
        self._stop_header_clock()
        try:
            self._handler.connection_lost(exc)
        finally:
            self._acceptor.closed()

    def headers_received(self) -> None:
        """A complete request arrived in time."""
        self._stop_header_clock()

    def request_handled(self) -> None:
        """Whatever arrives next starts a new request."""
        self._between_requests = True

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._acceptor.header_timeout, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        self._acceptor.slow_headers.log(
            logging.DEBUG,
            "HTTP: closed a connection that sent no complete request headers in %g s",
            self._acceptor.header_timeout,
        )
        self._handler.force_close()


@web.middleware
async def time_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the request's connection its headers are in, and when it is handled."""
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    if not isinstance(connection, GuardedConnection):  # pragma: no cover - every one is ours
        return await handler(request)
    connection.headers_received()
    try:
        return await handler(request)
    finally:
        connection.request_handled()


class _LogBudget:
    """At most one line per ``LOG_INTERVAL`` for one kind of event, counting the others."""

    def __init__(self) -> None:
        self._throttle = Throttle(interval=LOG_INTERVAL, burst=1)

    def log(self, level: int, msg: str, *args: object) -> None:
        """Log, unless a line of this kind was logged less than ``LOG_INTERVAL`` ago."""
        held_back = self._throttle.allow()
        if held_back is None:
            return
        if held_back:
            msg += " (%d more since the last such line)"
            args = (*args, held_back)
        log.log(level, msg, *args)


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, with malformed requests cut to one short line now and then.

    aiohttp logs each malformed request with its traceback, at ERROR (DEBUG for
    a bad first method, as from a TLS client); a port scanner makes that a
    flood. Other errors, such as a handler's bug, keep their traceback.
    """

    def __init__(self) -> None:
        """Wrap aiohttp's own server logger."""
        super().__init__(logging.getLogger("aiohttp.server"))
        self._malformed = _LogBudget()

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:  # noqa: ANN401 - Logger.log's keywords, passed on
        """Log as asked, or one short line for a malformed request."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self._malformed.log(
                logging.INFO,
                "HTTP: refused a malformed request: %s",
                shorten(" ".join(exc.message.split()), 120),
            )
            return
        super().log(level, msg, *args, **kwargs)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit toward the hard one; return the limit in force.

    systemd sets the soft limit to 1,024 for programs that still use
    ``select()``, and that is what ran out in issue 12. The gateway waits on
    epoll only (asyncio's default selector; aiomqtt never calls paho's
    ``select()`` loop), so more is safe.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    target = FD_LIMIT_CEILING if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT_CEILING)
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.debug("HTTP: could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


async def bind(host: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address ``host`` names, as asyncio would.

    With port 0, the port the first one gets is used for the others too.
    """
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(found):
            listener = socket.create_server(
                (address[0], port, *address[2:]), family=family, backlog=BACKLOG
            )
            listeners.append(listener)
            listener.setblocking(False)  # noqa: FBT003 - the socket module's own flag
            port = port or listener.getsockname()[1]
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners
