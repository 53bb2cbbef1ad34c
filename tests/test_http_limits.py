"""The HTTP server under abuse: slow headers, idle and too many connections, bad requests.

Real sockets against the real ``HttpServer``; no broker is needed for these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.config import HttpSettings
from gateway.surfaces.http import HttpServer
from gateway.surfaces.http_guard import FD_RESERVE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import pytest

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]

# Slack for a loaded two-core machine: the server's timers are exact, the
# scheduling of this test's own coroutines is not.
MARGIN = 1.5


class NoMetrics:
    """A ``/metrics`` source with nothing in it."""

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        del accept
        return b"", "text/plain"


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[HttpServer]:
    """An ``HttpServer`` on a free local port for the block's duration."""
    server = HttpServer(
        HttpSettings(host="127.0.0.1", port=0, **settings), lambda: None, NoMetrics()
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(server.run())
        await server.started.wait()
        try:
            yield server
        finally:
            server.stop()


@contextlib.asynccontextmanager
async def connection(server: HttpServer) -> AsyncIterator[Stream]:
    """A raw TCP connection to the server, closed at the end of the block."""
    assert server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the server closes the connection within ``timeout``, having sent nothing more."""
    try:
        async with asyncio.timeout(timeout):
            rest = await reader.read()
    except TimeoutError:
        return False
    except ConnectionResetError:  # closed with our unread bytes still in its buffer
        return True
    assert rest == b"", f"the server answered {rest[:80]!r}"
    return True


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET on a raw connection: the response's status, body read."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1])


async def healthz(server: HttpServer, timeout: float = 5) -> int:
    """The status of ``GET /healthz`` on a fresh connection."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.get(f"http://127.0.0.1:{server.port}/healthz") as response,
    ):
        return response.status


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(list(Path("/proc/self/fd").iterdir()))


@contextlib.contextmanager
def no_more_descriptors() -> Iterator[None]:
    """Within the block, this process can open no new file descriptor (EMFILE)."""
    lowest_free = os.open(os.devnull, os.O_RDONLY)  # a new descriptor takes the lowest number
    os.close(lowest_free)
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


class Flag(logging.Handler):
    """Sets an event when a record at ``level`` or above is logged."""

    def __init__(self, event: asyncio.Event, level: int) -> None:
        super().__init__(level)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        del record
        self.event.set()


async def test_a_client_trickling_headers_is_cut_off_at_the_header_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serving(header_timeout=1.5, idle_timeout=30) as server,
        connection(server) as (reader, writer),
    ):
        start = loop.time()
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for line in range(30):  # one header line a second, never the blank line
            if closed := await closed_within(reader, 1.0):
                break
            writer.write(f"X-Slow-{line}: 1\r\n".encode())
        elapsed = loop.time() - start
    assert closed, "still open after 30 s of trickled headers"
    assert 1.5 - 0.05 <= elapsed <= 1.5 + MARGIN, elapsed


async def test_a_silent_connection_is_cut_off_at_the_header_timeout_not_the_idle_one() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serving(header_timeout=1.0, idle_timeout=30) as server,
        connection(server) as (reader, _),
    ):
        start = loop.time()
        assert await closed_within(reader, 1.0 + MARGIN)
        assert loop.time() - start >= 1.0 - 0.05


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serving(header_timeout=5.0, idle_timeout=1.0) as server,
        connection(server) as (reader, writer),
    ):
        assert await get(reader, writer, "/healthz") == 200
        assert await get(reader, writer, "/healthz") == 200  # kept alive
        start = loop.time()
        assert await closed_within(reader, 1.0 + MARGIN)
        assert loop.time() - start >= 1.0 - 0.05


async def test_the_next_request_on_a_kept_alive_connection_has_the_header_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serving(header_timeout=1.0, idle_timeout=30) as server,
        connection(server) as (reader, writer),
    ):
        assert await get(reader, writer, "/healthz") == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # and no more
        start = loop.time()
        assert await closed_within(reader, 1.0 + MARGIN)
        assert loop.time() - start >= 1.0 - 0.05


async def test_half_sent_connections_beyond_the_cap_wait_in_the_backlog() -> None:
    cap, clients = 5, 50
    async with (
        serving(header_timeout=30, idle_timeout=30, max_connections=cap) as server,
        connection(server) as (reader, writer),
        contextlib.AsyncExitStack() as stack,
    ):
        assert await get(reader, writer, "/healthz") == 200  # one of the cap, kept alive
        before = open_fds()
        held = [await stack.enter_async_context(connection(server)) for _ in range(clients)]
        for _, half_sent in held:
            half_sent.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # and no more
        # Every one of them is in the listener's backlog, and this round trip
        # takes the server's event loop round several times: whatever it would
        # accept, it has.
        assert await get(reader, writer, "/healthz") == 200
        servers_share = open_fds() - before - clients
        assert servers_share <= cap - 1, f"{servers_share} descriptors for {cap - 1} connections"
        await stack.aclose()
        assert await healthz(server) == 200


async def test_a_full_server_answers_once_the_header_timeout_frees_a_place() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serving(header_timeout=1.0, idle_timeout=30, max_connections=5) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        for _ in range(5):
            _, writer = await stack.enter_async_context(connection(server))
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # and no more
        start = loop.time()
        assert await healthz(server, timeout=1.0 + MARGIN) == 200
        assert loop.time() - start >= 1.0 - 0.05, "served beyond the cap"


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon in this header\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,  # a TLS hello
    b"GET /\x00 HTTP/1.1\r\n\r\n",
]


async def test_malformed_requests_cost_a_few_short_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving() as server:
        caplog.clear()
        for attempt in range(200):
            async with connection(server) as (reader, writer), asyncio.timeout(5):
                writer.write(MALFORMED[attempt % len(MALFORMED)])
                answer = await reader.read()
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer[:80]
        assert await healthz(server) == 200
    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "gateway", "asyncio"))]
    assert not [r for r in ours if r.exc_info], "a traceback was logged"
    assert "Traceback" not in caplog.text
    assert len(ours) <= 5, [r.getMessage()[:100] for r in ours]


async def test_running_out_of_descriptors_costs_one_line_and_the_server_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    warned = asyncio.Event()
    flag = Flag(warned, logging.WARNING)
    async with serving() as server:
        assert server.port
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(socket.socket()) for _ in range(20)]
            logging.getLogger().addHandler(flag)
            stack.callback(logging.getLogger().removeHandler, flag)
            caplog.clear()
            with no_more_descriptors():
                for client in clients:  # connecting needs no new descriptor here...
                    client.setblocking(False)  # noqa: FBT003 - the socket module's own flag
                    await loop.sock_connect(client, ("127.0.0.1", server.port))
                async with asyncio.timeout(5):  # ...accepting does, on the server's side
                    await warned.wait()
            assert await healthz(server) == 200
    alarms = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in alarms] == [
        "HTTP: cannot accept connections (Too many open files); retrying every 1 s"
    ]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_the_cap_keeps_descriptors_for_the_broker_and_devices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.surfaces.http")
    asked = 1 << 40  # more than Linux allows any process to open (fs.nr_open)
    async with serving(max_connections=5):
        pass
    async with serving(max_connections=asked):
        pass
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)  # as raised by the server
    kept = f"HTTP: open-file limit {limit}, {FD_RESERVE} kept for the broker and devices"
    cap = limit - FD_RESERVE
    chosen = [r.getMessage() for r in caplog.records if "at most" in r.getMessage()]
    assert chosen == [
        f"{kept}; at most 5 connections at once (5 asked for)",
        f"{kept}; at most {cap} connections at once ({asked} asked for)",
        f"HTTP: serving at most {cap} connections, not {asked}: the open-file limit is {limit}",
    ]
