"""Stand-ins for real devices, on loopback: an HTTP smart plug, a projector, a Modbus PLC.

Tests start them with ``async with``; from a checkout, ``python -m tests.fakes``
runs all three for ``examples/adapters.yaml``, so the example works without
hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from pathlib import Path

OPENSSL = "/usr/bin/openssl"


def listening_socket(port: int = 0) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (``port`` 0: any free port)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [OPENSSL, "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    return cert, key


@dataclass(frozen=True)
class Request:
    """A request the plug received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    raw_path: str
    """The path as sent, still percent-encoded."""


class FakePlug:
    """A Shelly Gen2-style smart plug: ``/rpc/Switch.Set``, ``/rpc/Switch.GetStatus``."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        """Serve on ``port`` (any free one by default), over TLS if given a context."""
        self.output = False
        self.brightness = 50
        self.requests: list[Request] = []
        self._tls = tls
        self._sock = listening_socket(port)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        app = web.Application()
        app.router.add_get("/rpc/Switch.GetStatus", self._status)
        app.router.add_post("/rpc/Switch.Set", self._set)
        app.router.add_post("/rpc/Light.Set", self._light)
        app.router.add_get("/rpc/Sys.Echo/{word}", self._echo)
        app.router.add_route("*", "/api/{anything:.*}", self._anything)
        self._runner = web.AppRunner(app)

    def status(self) -> dict[str, Any]:
        """What ``Switch.GetStatus`` answers."""
        return {"id": 0, "output": self.output, "brightness": self.brightness, "apower": 0.0}

    async def _record(self, request: web.Request) -> None:
        body = await request.json() if request.can_read_body else None
        self.requests.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                body,
                dict(request.headers),
                request.raw_path,
            )
        )

    async def _status(self, request: web.Request) -> web.Response:
        await self._record(request)
        if request.query.get("id") != "0":
            return web.json_response({"code": -105, "message": "no such id"}, status=400)
        return web.json_response(self.status())

    async def _set(self, request: web.Request) -> web.Response:
        await self._record(request)
        was_on, self.output = self.output, bool((await request.json())["on"])
        return web.json_response({"was_on": was_on})

    async def _light(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.brightness = int((await request.json())["brightness"])
        return web.json_response({"result": {"brightness": self.brightness}})

    async def _echo(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"word": request.match_info["word"]})

    async def _anything(self, request: web.Request) -> web.Response:
        """Any path under ``/api/`` is answered, so a request sent astray there is recorded."""
        await self._record(request)
        return web.json_response({"path": request.raw_path})

    async def __aenter__(self) -> Self:
        """Start serving."""
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, ssl_context=self._tls).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop serving."""
        await self._runner.cleanup()
        self._sock.close()


@dataclass(eq=False)
class FakeProjector:
    """A projector speaking lines ending in CR: ``PWR ON``, ``PWR?``, ``VOL 20``, ``VOL?``.

    It answers ``PWR=ON``, ``VOL=20``, and ``ERR`` to anything else.
    """

    port: int = 0
    power: str = "OFF"
    volume: int = 10
    received: list[str] = field(default_factory=list)
    connections: int = 0
    mute: bool = False
    """Stop answering (the connection stays open)."""
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, sock=listening_socket(self.port))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop listening and hang up on everyone."""
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()

    def drop(self) -> None:
        """Hang up on every client, as a projector does when it reboots."""
        for writer in list(self._writers):
            writer.close()

    def push(self, line: str) -> None:
        """Send a line nobody asked for (the remote control was used)."""
        for writer in self._writers:
            writer.write(line.encode() + b"\r")

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        """Wait until ``condition()`` holds (checked on every connection and line)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def answer(self, line: str) -> str:
        """The reply to ``line``."""
        command, _, argument = line.partition(" ")
        if command == "PWR" and argument in {"ON", "OFF"}:
            self.power = argument
        elif command == "VOL" and argument.isdigit():
            self.volume = int(argument)
        elif command not in {"PWR?", "VOL?"}:
            return "ERR"
        return f"PWR={self.power}" if command.startswith("PWR") else f"VOL={self.volume}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        self._changed.set()
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    line = (await reader.readuntil(b"\r")).decode().strip()
                    self.received.append(line)
                    self._changed.set()
                    if not self.mute:
                        writer.write(self.answer(line).encode() + b"\r")
        finally:
            self._writers.discard(writer)
            writer.close()


class FakePlc:
    """A Modbus TCP device (unit 1): coils 0-15, holding and input registers 0-15.

    Holding register 15 is read-only: writing it gets an exception response.
    """

    def __init__(self, port: int = 0) -> None:
        """Serve on ``port`` (a free one by default) once entered."""
        self.port = port or _free_port()
        coils = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        discrete = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        holding = [
            SimData(0, count=15, values=0, datatype=DataType.REGISTERS),
            SimData(15, values=7, datatype=DataType.REGISTERS, readonly=True),
        ]
        inputs = [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(id=1, simdata=(coils, discrete, holding, inputs))
        self._device = device
        self.server: ModbusTcpServer | None = None

    async def __aenter__(self) -> Self:
        """Start serving."""
        self.server = ModbusTcpServer(self._device, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop serving."""
        assert self.server is not None
        await self.server.shutdown()  # type: ignore[no-untyped-call]

    async def read(self, function: int, address: int) -> int | bool:
        """The value at ``address`` for a read function code (1 coils, 3 holding, 4 input)."""
        assert self.server is not None
        return (await self.server.async_getValues(1, function, address, 1))[0]

    async def write(self, function: int, address: int, value: int) -> None:
        """Change a value as the device itself would (5 coils, 6 holding; 4 input registers)."""
        assert self.server is not None
        await self.server.async_setValues(1, function, address, [value])


def _free_port() -> int:
    with listening_socket() as sock:
        return int(sock.getsockname()[1])


async def main() -> None:
    """Run the three stand-ins on the ports ``examples/adapters.yaml`` uses."""
    async with FakePlug(port=8080), FakeProjector(port=4352), FakePlc(port=5020):
        print("plug http://127.0.0.1:8080, projector 127.0.0.1:4352, PLC 127.0.0.1:5020")  # noqa: T201
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
