"""Ordering, concurrency, queues, timeouts and dependencies (contract section 4)."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.conftest import started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config


def switches(count: int, **fields: Any) -> list[dict[str, Any]]:
    """``count`` simulated switches named s0, s1, ..."""
    return [{"id": f"s{i}", "type": "simulated.switch", **fields} for i in range(count)]


async def send(probe: Probe, device: str, action: str, **params: Any) -> str:
    """Publish a command with a fresh id; return the id."""
    command_id = uuid.uuid4().hex
    await probe.publish(
        f"iot/{device}/command", {"action": action, "params": params, "id": command_id}
    )
    return command_id


async def test_commands_to_one_device_run_in_arrival_order(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(devices=[{"id": "light", "type": "simulated.light", "latency": 0.01}])
    async with started(config, probe):
        ids = [await send(probe, "light", "set_brightness", level=level) for level in range(20)]
        results = await probe.wait_topic("iot/light/result", count=20)
        assert [r.json["id"] for r in results] == ids
        assert [r.json["state"]["brightness"] for r in results] == list(range(20))


async def test_slow_devices_run_concurrently(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(devices=switches(20, latency=0.5))
    async with started(config, probe):
        begin = time.monotonic()
        ids = [await send(probe, f"s{i}", "turn_on") for i in range(20)]
        for i, command_id in enumerate(ids):
            assert (await probe.result(f"s{i}", command_id))["status"] == "ok"
        elapsed = time.monotonic() - begin
        # One device's latency plus overhead; serial would take 10 s.
        assert elapsed < 2.5, elapsed


async def test_hung_device_delays_no_other_and_times_out(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "stuck", "type": "simulated.switch", "latency": 3600, "timeout": 1},
        {"id": "quick", "type": "simulated.switch"},
    ]
    async with started(make_config(devices=devices), probe):
        stuck_id = await send(probe, "stuck", "turn_on")
        begin = time.monotonic()
        quick = await probe.result("quick", await send(probe, "quick", "turn_on"))
        assert quick["status"] == "ok"
        assert time.monotonic() - begin < 0.5
        stuck = await probe.result("stuck", stuck_id, timeout=5)
        assert stuck["error"]["code"] == "timeout"
        assert stuck["state"] == {"power": "off"}
        # The cancelled action leaves the device usable.
        again = await probe.result("stuck", await send(probe, "stuck", "toggle"), timeout=5)
        assert again["error"]["code"] == "timeout"


async def test_full_queue_answers_busy_and_keeps_the_rest(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(
        devices=[{"id": "slow", "type": "simulated.switch", "latency": 0.3}],
        gateway={"queue_size": 2},
    )
    async with started(config, probe):
        ids = [await send(probe, "slow", "toggle") for _ in range(6)]
        results = {
            command_id: await probe.result("slow", command_id, timeout=10) for command_id in ids
        }
        statuses = [results[i]["error"]["code"] if results[i]["error"] else "ok" for i in ids]
        # One runs, two wait, the rest are refused at once.
        assert statuses.count("ok") == 3, statuses
        assert statuses.count("busy") == 3, statuses
        assert len(probe.on("iot/slow/result")) == 6


async def test_adapter_error_is_device_error_and_gateway_keeps_serving(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [{"id": "flaky", "type": "simulated.switch", "fail_on": ["turn_on"]}]
    async with started(make_config(devices=devices), probe):
        failed = await probe.result("flaky", await send(probe, "flaky", "turn_on"))
        assert failed["error"]["code"] == "device_error"
        assert failed["state"] == {"power": "off"}
        ok = await probe.result("flaky", await send(probe, "flaky", "toggle"))
        assert ok["status"] == "ok"
        assert ok["state"] == {"power": "on"}


async def test_dependent_connects_after_its_dependency(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "hub", "type": "simulated.switch", "connect_delay": 0.5},
        {"id": "light", "type": "simulated.light", "depends_on": ["hub"]},
        {"id": "other", "type": "simulated.switch", "connect_delay": 0.5},
    ]
    async with started(make_config(devices=devices), probe):
        # A command to a device still connecting waits in its queue.
        command_id = await send(probe, "light", "turn_on")
        result = await probe.result("light", command_id)
        assert result["status"] == "ok"
        online = await probe.wait_for(
            lambda m: m.topic.endswith("/availability") and m.payload == b"online", count=3
        )
        at = {m.topic.split("/")[1]: m.at for m in online}
        assert at["hub"] <= at["light"]
        # Independent devices connect concurrently: hub and other each take 0.5 s.
        assert abs(at["hub"] - at["other"]) < 0.3, at


async def test_dependency_offline_makes_dependent_unavailable(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "hub", "type": "simulated.switch", "open_failures": 1000},
        {"id": "light", "type": "simulated.light", "depends_on": ["hub"]},
    ]
    async with started(make_config(devices=devices), probe):
        await probe.wait_for(lambda m: m.topic == "iot/hub/availability")
        hub = await probe.result("hub", await send(probe, "hub", "turn_on"))
        assert hub["error"]["code"] == "device_unavailable"
        light = await probe.result("light", await send(probe, "light", "turn_on"))
        assert light["error"]["code"] == "dependency_unavailable"
        assert probe.on("iot/light/availability")[-1].payload == b"offline"


async def test_failed_open_is_retried_until_online(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "late", "type": "simulated.switch", "open_failures": 3},
        {"id": "light", "type": "simulated.light", "depends_on": ["late"]},
    ]
    async with started(make_config(devices=devices), probe):
        await probe.wait_for(
            lambda m: m.topic == "iot/light/availability" and m.payload == b"online", timeout=10
        )
        assert [m.payload for m in probe.on("iot/late/availability")][-1] == b"online"
        result = await probe.result("late", await send(probe, "late", "turn_on"))
        assert result["status"] == "ok"


async def test_sensor_publishes_a_reading_every_interval(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [{"id": "sensor", "type": "simulated.sensor", "interval": 0.2}]
    async with started(make_config(devices=devices), probe):
        readings = await probe.wait_topic("iot/sensor/state", count=4, timeout=5)
        assert all(set(r.json) == {"temperature", "humidity"} for r in readings)
        gaps = [b.at - a.at for a, b in itertools.pairwise(readings[1:])]
        assert all(0.1 < gap < 0.6 for gap in gaps), gaps


async def test_announces_status_devices_availability_and_state(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        await probe.wait_topic("iot/sensor/state")
        [devices] = await probe.wait_topic("iot/gateway/devices")
        listed = {d["id"]: d for d in devices.json}
        assert set(listed) == {"hub", "light", "speaker", "sensor"}
        assert listed["light"]["depends_on"] == ["hub"]
        level = listed["light"]["actions"]["set_brightness"]["properties"]["level"]
        assert (level["type"], level["minimum"], level["maximum"]) == ("integer", 0, 100)
        assert listed["speaker"]["actions"]["play"]["required"] == ["song"]
        for device in listed:
            [availability] = await probe.wait_topic(f"iot/{device}/availability")
            assert availability.payload == b"online"
        [state] = await probe.wait_topic("iot/speaker/state")
        assert state.json == {"power": "off", "volume": 50, "playing": None}


async def test_retained_topics_are_retained(
    make_config: Callable[..., Config], probe: Probe, broker: Any
) -> None:
    async with started(make_config(), probe):
        await probe.wait_topic("iot/sensor/state")
        async with Probe(broker.port, ["iot/#"]) as late:
            await late.wait_topic("iot/sensor/state")
            await late.wait_topic("iot/gateway/devices")
            retained = ("status", "devices", "scenes")
            for topic in [f"iot/gateway/{t}" for t in retained] + [
                "iot/hub/availability",
                "iot/hub/state",
            ]:
                [message] = await late.wait_topic(topic)
                assert message.retain, topic
