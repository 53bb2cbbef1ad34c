"""Devices removed from the configuration leave no retained state or availability behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.conftest import started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.broker import Broker


def devices(*ids: str) -> list[dict[str, str]]:
    return [{"id": device_id, "type": "simulated.switch"} for device_id in ids]


async def retained(broker: Broker) -> dict[str, bytes]:
    """Every retained message under iot/ now: a fresh subscriber gets them at once."""
    async with Probe(broker.port, ["iot/#", "marker/end"]) as fresh:
        await fresh.publish("marker/end", b"x")  # after the retained ones, in order
        await fresh.wait_topic("marker/end")
        return {m.topic: m.payload for m in fresh.messages if m.retain}


async def test_a_restart_with_fewer_devices_clears_what_the_removed_ones_left(
    broker: Broker, make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(devices=devices("kept", "gone", "also-gone")), probe):
        await probe.wait_for(lambda m: m.topic == "iot/also-gone/state")
    before = await retained(broker)
    assert {"iot/gone/state", "iot/gone/availability", "iot/also-gone/state"} <= set(before)

    async with started(make_config(devices=devices("kept")), probe) as gateway:
        await probe.wait_for(lambda m: m.topic == "iot/also-gone/availability" and not m.payload)
        await probe.wait_for(lambda m: m.topic == "iot/gone/state" and not m.payload)
        after = await retained(broker)
        assert gateway.session.reconnects == 0
    assert not {t for t in after if t.startswith(("iot/gone/", "iot/also-gone/"))}, after
    assert after["iot/kept/availability"] == b"online"
    assert after["iot/kept/state"]


async def test_a_restart_with_the_same_devices_clears_nothing(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(devices=devices("one", "two"))
    async with started(config, probe):
        await probe.wait_for(lambda m: m.topic == "iot/two/state")
    async with started(config, probe):
        await probe.wait_for(lambda m: m.topic == "iot/two/state", count=2)
    assert not [m for m in probe.messages if not m.payload]
