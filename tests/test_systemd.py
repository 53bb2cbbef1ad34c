"""The sd_notify protocol: READY, STATUS, WATCHDOG and STOPPING reach a real notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import statistics
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest

from gateway import AdapterRegistry, running_gateway
from gateway.cli import EXIT_CONFIG
from gateway.config import GatewaySettings
from gateway.supervisor import BACKGROUND_STOP_TIMEOUT, FLUSH_TIMEOUT
from gateway.surfaces.systemd import Notifier, notify_address, watchdog_interval
from tests.conftest import config_data, gateway_process

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import TracebackType
    from typing import Any

    from gateway import Config, Gateway
    from tests.broker import Broker

SWITCH = [{"id": "sw", "type": "simulated.switch"}]
ROOT = Path(__file__).resolve().parent.parent
UNIT_FILE = ROOT / "systemd" / "iot-gateway.service"


@dataclass(frozen=True, slots=True)
class Notification:
    """One datagram: its ``KEY=value`` lines, and when it was read."""

    fields: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    def has(self, key: str, value: str | None = None) -> bool:
        """Whether it sets ``key`` (to ``value``, when given)."""
        return key in self.fields and (value is None or self.fields[key] == value)


def parse(datagram: bytes) -> Notification:
    """``KEY=value`` lines, as sd_notify sends them."""
    lines = datagram.decode().split("\n")
    return Notification(dict(line.partition("=")[::2] for line in lines if line))


class NotifySocket:
    """A bound datagram socket standing in for systemd's; records what arrives."""

    def __init__(self, name: str) -> None:
        """Bind ``name``: a path, or ``@name`` for the abstract namespace."""
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name[1:] if name.startswith("@") else name)
        self.sock.settimeout(0)
        self.received: list[Notification] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Start reading."""
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop reading and close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.received.append(parse(await loop.sock_recv(self.sock, 4096)))
            self._arrived.set()

    def drain_now(self) -> list[Notification]:
        """What waits in the socket this instant, read without the event loop."""
        waiting = []
        with contextlib.suppress(BlockingIOError):
            while True:
                waiting.append(parse(self.sock.recv(4096)))
        return waiting

    async def wait_for(
        self, match: Callable[[Notification], bool], *, count: int = 1, timeout: float = 10
    ) -> list[Notification]:
        """Wait until ``count`` notifications received so far match; return them."""
        async with asyncio.timeout(timeout):
            while True:
                found = [n for n in self.received if match(n)]
                if len(found) >= count:
                    return found
                self._arrived.clear()
                await self._arrived.wait()

    def statuses(self) -> list[str]:
        """Every STATUS text so far."""
        return [n.fields["STATUS"] for n in self.received if n.has("STATUS")]


def status_has(text: str) -> Callable[[Notification], bool]:
    """Matches a STATUS containing ``text``."""
    return lambda n: text in n.fields.get("STATUS", "")


@pytest.fixture(autouse=True)
def _no_inherited_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """No notify variables inherited from whatever runs the tests."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@contextlib.asynccontextmanager
async def notifying_gateway(config: Config, **env: str) -> AsyncIterator[Gateway]:
    """Run a gateway in-process that alone sees ``env`` (read when it is built).

    Mosquitto speaks sd_notify too: a broker (re)started with NOTIFY_SOCKET set
    would send its own READY=1 to the test's socket.
    """
    async with contextlib.AsyncExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            running = running_gateway(config, AdapterRegistry.from_entry_points())
            gateway = await stack.enter_async_context(running)
        yield gateway


async def test_ready_after_the_broker_status_on_events_stopping_at_shutdown(
    make_config: Callable[..., Config], broker: Broker, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    broker.kill()
    config = make_config(devices=SWITCH)
    where = f"{broker.host}:{broker.port}"
    async with NotifySocket(path) as systemd:
        async with notifying_gateway(config, NOTIFY_SOCKET=path) as gateway:
            await systemd.wait_for(status_has(f"connecting to the broker at {where}"))
            await systemd.wait_for(status_has("not reachable yet"))
            assert not any(n.has("READY") for n in systemd.received)
            await asyncio.to_thread(broker.start)
            (ready,) = await systemd.wait_for(lambda n: n.has("READY", "1"))
            assert gateway.ready
            assert ready.fields["STATUS"] == f"ready: broker {where}; 1 of 1 devices online"
            await asyncio.to_thread(broker.kill)
            await systemd.wait_for(status_has(f"lost the broker at {where}; reconnecting"))
            await asyncio.to_thread(broker.start)
            await systemd.wait_for(status_has("connected to the broker"), count=2)
        (stopping,) = await systemd.wait_for(lambda n: n.has("STOPPING", "1"))
        assert stopping.fields["STATUS"].startswith("stopping")
    assert [n.has("READY") for n in systemd.received].count(True) == 1
    assert systemd.statuses()[-1].startswith("stopping")


async def test_watchdog_pings_at_half_the_interval_on_an_abstract_socket(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    name = f"@iot-gateway-test-{uuid.uuid4().hex}"
    env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "400000"}  # WATCHDOG_PID unset: ours
    async with NotifySocket(name) as systemd:
        with gateway_process(write_config(config_data(broker, devices=SWITCH)), **env) as process:
            (ready,) = await systemd.wait_for(lambda n: n.has("READY", "1"))
            start = len(systemd.received)
            pings = await systemd.wait_for(
                lambda n: n.has("WATCHDOG", "1") and n.at > ready.at, count=6, timeout=5
            )
            gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
            assert 0.1 < statistics.mean(gaps) < 0.35, gaps  # about 0.2 s, not 0.4 s
            assert not any(n.has("EXTEND_TIMEOUT_USEC") for n in systemd.received[start:])
            process.send_signal(signal.SIGTERM)
            assert await process.wait(10) == 0
        await systemd.wait_for(lambda n: n.has("STOPPING", "1"))


async def test_before_ready_pings_also_extend_the_start_timeout(
    make_config: Callable[..., Config], broker: Broker, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    broker.kill()
    config = make_config(devices=SWITCH)
    async with (
        NotifySocket(path) as systemd,
        notifying_gateway(config, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000"),
    ):
        early = await systemd.wait_for(lambda n: n.has("WATCHDOG", "1"), count=3)
        assert all(n.fields.get("EXTEND_TIMEOUT_USEC") == "200000" for n in early)
        await asyncio.to_thread(broker.start)
        (ready,) = await systemd.wait_for(lambda n: n.has("READY", "1"))
        (later, *_) = await systemd.wait_for(lambda n: n.has("WATCHDOG") and n.at > ready.at)
        assert "EXTEND_TIMEOUT_USEC" not in later.fields


async def test_a_blocked_event_loop_sends_no_pings(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    config = make_config(devices=SWITCH)
    async with (
        NotifySocket(path) as systemd,
        # A ping every 0.05 s.
        notifying_gateway(config, NOTIFY_SOCKET=path, WATCHDOG_USEC="100000"),
    ):
        await systemd.wait_for(lambda n: n.has("WATCHDOG", "1"), count=3)
        time.sleep(0.5)  # noqa: ASYNC251 - blocking the loop is the point
        # A pinger off the loop (a thread) would have queued about ten by now.
        blocked = [n for n in systemd.drain_now() if n.has("WATCHDOG")]
        assert len(blocked) <= 1, blocked
        count = len([n for n in systemd.received if n.has("WATCHDOG")])
        await systemd.wait_for(lambda n: n.has("WATCHDOG"), count=count + 2)


def test_notify_socket_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify") == (
        "\0/org/freedesktop/systemd1/notify"
    )
    assert notify_address("") is None
    assert notify_address(None) is None


def test_watchdog_only_for_this_process_and_a_positive_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=42) == 15
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42"}, pid=42) == 0.2
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=42) is None


async def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "400000"}, pid=42)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # no socket to ping
    notifier.notify("READY=1")
    notifier.ready("ready")
    notifier.stopping("stopping")
    notifier.close()
    await asyncio.wait_for(notifier.run(), 1)  # returns at once: nothing was queued


async def test_an_unreachable_socket_is_logged_once_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="gateway.surfaces.systemd"):
        notifier.ready("ready")
        notifier.status("still here")
        notifier.close()
        await asyncio.wait_for(notifier.run(), 5)
    levels = [r.levelno for r in caplog.records if r.name == "gateway.surfaces.systemd"]
    assert levels == [logging.WARNING, logging.DEBUG]


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with every value it is given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return sections


def test_the_unit_file_matches_the_gateway() -> None:
    service = unit_settings(UNIT_FILE)["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert float(one["WatchdogSec"]) > 0
    assert one["RestartPreventExitStatus"] == str(EXIT_CONFIG)
    assert one["Restart"] == "on-failure"
    # The drain, the flush and the last closes fit before systemd's SIGKILL.
    drain = GatewaySettings().shutdown_grace + FLUSH_TIMEOUT + BACKGROUND_STOP_TIMEOUT
    assert float(one["TimeoutStopSec"]) > drain
    program, *args = one["ExecStart"].split()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(program).name in scripts
    assert args[:2] == ["run", "-c"]
    assert one["EnvironmentFile"].startswith("-")  # optional: no secrets is no failure
    assert one["DynamicUser"] == "yes"
    assert one["MemoryDenyWriteExecute"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["SystemCallFilter"][0] == "@system-service"
