"""``mqtt.hosts``: several brokers tried in order; the gateway follows when the one in use dies."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from gateway import AdapterRegistry, load_config
from tests.broker import Broker
from tests.conftest import FAST, deep_merge, started
from tests.probe import Probe
from tests.test_config import HUB, assert_rejected, check_config, write
from tests.test_http import HTTP, fetch
from tests.test_session_lifecycle import logged

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from gateway import Config

SWITCH = [{"id": "sw", "type": "simulated.switch"}]
HEALTH = "iot/gateway/health"
STATUS = "iot/gateway/status"


@pytest.fixture
def second(tmp_path: Path) -> Iterator[Broker]:
    """Another running broker, on its own port."""
    workdir = tmp_path / "second"
    workdir.mkdir()
    server = Broker(workdir)
    server.start()
    yield server
    server.kill()


def config_for(write_config: Callable[[dict[str, Any]], Path], *brokers: Broker) -> Config:
    """A config whose ``mqtt.hosts`` lists ``brokers`` in order (no ``host``/``port``)."""
    hosts = [f"{b.host}:{b.port}" for b in brokers]
    data = deep_merge(FAST, {"mqtt": {"hosts": hosts}, "devices": SWITCH, "http": HTTP})
    return load_config(write_config(data), AdapterRegistry.from_entry_points())


async def test_the_gateway_continues_on_the_next_broker_when_its_own_dies(
    broker: Broker,
    second: Broker,
    write_config: Callable[[dict[str, Any]], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    config = config_for(write_config, broker, second)
    async with (
        Probe(broker.port, ["iot/#"]) as first_probe,
        Probe(second.port, ["iot/#"]) as second_probe,
        started(config, first_probe) as gateway,
        aiohttp.ClientSession() as http,
    ):
        report = (await first_probe.wait_topic(HEALTH))[-1].json
        assert report["broker"] == f"127.0.0.1:{broker.port}"
        assert (await first_probe.command("sw", {"action": "turn_on"}))["status"] == "ok"

        await asyncio.to_thread(broker.kill)
        await second_probe.wait_for(
            lambda m: m.topic == "iot/gateway/status" and m.text == "online"
        )
        await logged(caplog, f"MQTT: connected to 127.0.0.1:{second.port} again")
        report = (await second_probe.wait_topic(HEALTH))[-1].json
        assert report["broker"] == f"127.0.0.1:{second.port}"
        assert report["reconnects"] == 1
        # Its retained announcements are on the new broker, and commands there are answered.
        assert (await second_probe.wait_topic("iot/sw/state"))[-1].json == {"power": "on"}
        assert (await second_probe.command("sw", {"action": "turn_off"}))["status"] == "ok"
        status, body = await fetch(http, gateway, "/readyz")
        assert (status, body["broker"]) == (200, f"127.0.0.1:{second.port}")


async def test_a_first_broker_that_is_down_at_start_is_skipped(
    broker: Broker, second: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    broker.kill()
    config = config_for(write_config, broker, second)
    async with Probe(second.port, ["iot/#"]) as probe, started(config, probe) as gateway:
        assert (await probe.command("sw", {"action": "toggle"}))["status"] == "ok"
        assert gateway.session.broker == f"127.0.0.1:{second.port}"
        assert gateway.session.reconnects == 0  # a first connect, on the second try


@pytest.mark.parametrize(
    ("mqtt", "fragment"),
    [
        ({"hosts": ["a:1883", "b"]}, "mqtt.hosts[1]:"),
        ({"hosts": ["a:99999"]}, "mqtt.hosts[0]:"),
        ({"hosts": []}, "mqtt.hosts:"),
        ({"hosts": ["a:1883"], "host": "a"}, "mqtt: "),
    ],
)
def test_bad_hosts_are_config_errors_naming_the_entry(
    tmp_path: Path, mqtt: dict[str, Any], fragment: str
) -> None:
    path = write(tmp_path, deep_merge(FAST, {"mqtt": mqtt, "devices": [HUB]}))
    assert_rejected(check_config(path), fragment)


def test_hosts_may_come_from_one_variable(tmp_path: Path) -> None:
    path = write(tmp_path, deep_merge(FAST, {"devices": [HUB]}))
    assert check_config(path, GATEWAY_MQTT__HOSTS='["a:1883", "[::1]:1884"]').returncode == 0
    result = check_config(path, GATEWAY_MQTT__HOSTS='["a:1883", "nope"]')
    assert_rejected(result, "mqtt.hosts[1] (from GATEWAY_MQTT__HOSTS):")
