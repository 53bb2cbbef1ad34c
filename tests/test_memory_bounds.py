"""Memory per message is bounded by what the gateway keeps, not by what clients send.

Each test runs the gateway as a real process and reads its resident memory
while a client sends large payloads that it must answer but not keep.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.conftest import config_data, gateway_process
from tests.probe import Probe
from tests.test_flood import rss_mb

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.broker import Broker
    from tests.conftest import GatewayProcess

# RSS the gateway may gain while answering the tests' 200-300 MB of payloads;
# keeping them (as it once did, for redelivery matching) costs that much.
GROWTH_LIMIT_MB = 40


def write(write_config: Callable[[dict[str, Any]], Path], broker: Broker, **sections: Any) -> Path:
    return write_config(config_data(broker, **sections))


async def online(probe: Probe, process: GatewayProcess, device: str) -> float:
    """Wait for ``device`` online; the gateway's RSS (MB) then."""
    await probe.wait_for(
        lambda m: m.topic == f"iot/{device}/availability" and m.payload == b"online"
    )
    return rss_mb(process.popen.pid)


async def test_refused_large_payloads_are_not_kept(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    # MQTT 3.1.1 asks the broker for no Maximum Packet Size: every payload arrives.
    path = write(write_config, broker, mqtt={"protocol": "3.1.1"})
    payload = b"x" * 1_000_000
    async with Probe(broker.port, ["iot/#"]) as probe:
        with gateway_process(path) as process:
            before = await online(probe, process, "light")
            for _ in range(300):
                await probe.publish("iot/light/command", payload)
            results = await probe.wait_for(lambda m: m.topic == "iot/light/result", count=300)
            assert {m.json["error"]["code"] for m in results} == {"payload_too_large"}
            growth = rss_mb(process.popen.pid) - before
    assert growth < GROWTH_LIMIT_MB, f"RSS grew {growth:.0f} MB for 300 refused 1 MB payloads"


async def test_payloads_waiting_behind_a_slow_command_are_not_kept(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    devices = [{"id": "slow", "type": "simulated.switch", "latency": 60}]
    path = write(write_config, broker, devices=devices, gateway={"command_timeout": 120})
    padded = json.dumps({"action": "toggle", "params": {"pad": "x" * 60_000}}).encode()
    async with Probe(broker.port, ["iot/#"]) as probe:
        with gateway_process(path) as process:
            before = await online(probe, process, "slow")
            await probe.publish("iot/slow/command", {"action": "toggle", "id": "slow-1"})
            # Each is answered at once (invalid_params), but acknowledged only after
            # the slow command ahead of it: MQTT acknowledges in arrival order.
            for _ in range(3000):
                await probe.publish("iot/slow/command", padded)
            results = await probe.wait_for(lambda m: m.topic == "iot/slow/result", count=3000)
            assert {m.json["error"]["code"] for m in results} == {"invalid_params"}
            growth = rss_mb(process.popen.pid) - before
            assert not probe.on("iot/slow/state")[1:], "the slow command is still running"
    assert growth < GROWTH_LIMIT_MB, f"RSS grew {growth:.0f} MB for 3,000 waiting 60 KB payloads"
