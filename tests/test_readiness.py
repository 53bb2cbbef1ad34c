"""Readiness when a dependency never comes: ready anyway, and garbage collection back on."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import aiohttp

from tests.conftest import config_data, gateway_process
from tests.test_http import sample
from tests.test_systemd import NotifySocket

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from tests.broker import Broker
    from tests.probe import Probe

# The hub never connects; the light waits on it, the lamp on the light.
HUB_DOWN = [
    {"id": "hub", "type": "simulated.switch", "open_failures": 1_000_000},
    {"id": "light", "type": "simulated.light", "depends_on": ["hub"]},
    {"id": "lamp", "type": "simulated.switch", "depends_on": ["light"]},
    {"id": "fine", "type": "simulated.switch"},
]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the gateway: status and body text (0 while it is not listening)."""
    try:
        async with http.get(
            f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            return response.status, await response.text()
    except aiohttp.ClientConnectionError:
        return 0, ""


async def until(
    http: aiohttp.ClientSession, port: int, path: str, check: Callable[[int, str], bool]
) -> str:
    """GET ``path`` until ``check`` holds (the endpoint is what is under test)."""
    answer = (0, "")
    try:
        async with asyncio.timeout(20):
            while not check(*answer):
                await asyncio.sleep(0.05)  # between requests, not to synchronise
                answer = await get(http, port, path)
    except TimeoutError:
        raise AssertionError(f"{path} never passed the check; last answer {answer}") from None
    return answer[1]


async def test_a_device_waiting_on_a_dependency_that_gave_up_counts_as_started(
    broker: Broker,
    probe: Probe,
    write_config: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
) -> None:
    port = free_port()
    data = config_data(broker, devices=HUB_DOWN, http={"host": "127.0.0.1", "port": port})
    notify = str(tmp_path / "notify")
    async with NotifySocket(notify) as systemd, aiohttp.ClientSession() as http:
        with gateway_process(write_config(data), NOTIFY_SOCKET=notify) as gateway:
            await until(http, port, "/readyz", lambda status, _: status == 200)
            await systemd.wait_for(lambda n: n.has("READY", "1"), timeout=20)
            result = await probe.command("lamp", {"action": "turn_on"})
            assert result["error"]["code"] == "dependency_unavailable"

            # Start-up ran without garbage collection; it must be back on by now.
            # Enough commands allocate far past generation 0's threshold.
            _, scrape = await get(http, port, "/metrics")
            before = collections(scrape)
            for _ in range(200):
                await probe.command("fine", {"action": "toggle"})
            _, scrape = await get(http, port, "/metrics")
            assert collections(scrape) > before, gateway.log()


def collections(scrape: str) -> float:
    """Automatic collections of generation 0 so far, from a metrics scrape."""
    return sample(scrape, "python_gc_collections_total", generation="0") or 0
