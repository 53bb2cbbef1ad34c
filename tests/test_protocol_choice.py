"""``mqtt.protocol``: ``auto`` falls back to 3.1.1 when 5 is turned down; 5 and 3.1.1 never do.

The 3.1.1-only broker is ``tests/old_broker.py``: a real Mosquitto behind a
front that answers MQTT 5 CONNECTs as such brokers do.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

from gateway import AdapterRegistry, Gateway
from tests.conftest import started
from tests.old_broker import OldBroker
from tests.probe import Probe
from tests.test_session_lifecycle import logged

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.broker import Broker

SWITCH = [{"id": "sw", "type": "simulated.switch"}]
HEALTH = "iot/gateway/health"
MQTT5, MQTT311 = 5, 4  # CONNECT protocol levels


def via(old: OldBroker, **mqtt: Any) -> dict[str, Any]:
    """``mqtt`` settings that reach the broker through ``old``; a CONNACK within 1.5 s."""
    return {"host": old.host, "port": old.port, "keepalive": 1, **mqtt}


async def health(probe: Probe) -> dict[str, Any]:
    """The latest health report."""
    found = await probe.wait_topic(HEALTH)
    report: dict[str, Any] = found[-1].json
    return report


@pytest.mark.parametrize("answer", ["refuse", "refuse_v3", "silent"])
async def test_auto_falls_back_to_3_1_1_when_the_broker_turns_5_down(
    broker: Broker,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
    answer: Any,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with OldBroker(broker.port, answer) as old, Probe(broker.port, ["iot/#"]) as probe:
        config = make_config(mqtt=via(old), devices=SWITCH)
        assert config.settings.mqtt.protocol == "auto"  # the default
        async with started(config, probe) as gateway:
            assert old.levels == [MQTT5, MQTT311]
            assert (await health(probe))["protocol"] == "3.1.1"
            assert (await probe.command("sw", {"action": "turn_on"}))["status"] == "ok"
            chosen = [r.message for r in caplog.records if "using MQTT" in r.message]
            why = "never answered" if answer == "silent" else "refused MQTT 5 (reason 132)"
            assert len(chosen) == 1, chosen
            assert why in chosen[0]
            assert "using MQTT 3.1.1" in chosen[0]

            # A reconnect goes straight to 3.1.1: the broker's version is known.
            old.drop()
            await logged(caplog, f"connected to 127.0.0.1:{old.port} again")
            assert old.levels == [MQTT5, MQTT311, MQTT311]
            assert gateway.session.protocol == "3.1.1"


async def test_auto_says_once_that_it_uses_5(
    make_config: Callable[..., Config], probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with started(make_config(devices=SWITCH), probe):
        assert (await health(probe))["protocol"] == "5"
    assert caplog.text.count("speaks MQTT 5: using it") == 1


async def test_explicit_5_never_falls_back_and_says_what_to_set(
    broker: Broker, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with OldBroker(broker.port, "refuse") as old:
        config = make_config(mqtt=via(old, protocol="5"), devices=SWITCH)
        gateway = Gateway(config, AdapterRegistry.from_entry_points())
        serving = asyncio.create_task(gateway.serve())
        try:
            await logged(caplog, "reconnecting to", count=3)
            assert set(old.levels) == {MQTT5}
            assert "Unsupported protocol version" in caplog.text
            assert 'set mqtt.protocol to "3.1.1" or "auto"' in caplog.text
            assert not gateway.connected
        finally:
            gateway.should_exit.set()
            await serving


async def test_explicit_3_1_1_never_offers_5(
    broker: Broker, make_config: Callable[..., Config]
) -> None:
    async with OldBroker(broker.port, "silent") as old, Probe(broker.port, ["iot/#"]) as probe:
        config = make_config(mqtt=via(old, protocol="3.1.1"), devices=SWITCH)
        async with started(config, probe):
            assert (await health(probe))["protocol"] == "3.1.1"
        assert old.levels == [MQTT311]
