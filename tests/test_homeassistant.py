"""Home Assistant over a real broker: the test plays Home Assistant.

It reads the device configs, publishes what Home Assistant would publish on
each entity's command topic (command templates rendered with Jinja2), and
checks that the command ran and that the state topic the entity reads now
renders, through the entity's own template, as Home Assistant would show it.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import DEMO_DEVICES, started
from tests.fakes import FakePlc, FakePlug, FakeProjector
from tests.home_assistant import VALUE_TEMPLATE, problems, render_command, render_value
from tests.probe import Probe
from tests.test_adapter_modbus import INPUT, plc_entry
from tests.test_adapter_tcp import ACTIONS as TCP_ACTIONS
from tests.test_adapter_tcp import projector_entry
from tests.test_ha_payloads import SHELLY, THERMOSTAT
from tests.test_third_party_adapter import acme_site  # noqa: F401 - a fixture used below

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Received

HA = {"discovery": True, "prefix": "homeassistant"}
PROJECTOR_POWER = {
    "power": {
        "kind": "bool",
        "on_value": "ON",
        "off_value": "OFF",
        "turn_on": "turn_on",
        "turn_off": "turn_off",
    }
}
PROJECTOR_KNOWS = {"turn_on", "turn_off", "set_volume"}
# A program that reports the level it was given: set_level makes `level` a number.
LEVEL = "import json, sys; print(json.dumps({'level': int(sys.argv[1])}))"
SCRIPT = {
    "id": "script",
    "type": "command",
    "actions": {
        "set_level": {
            "argv": [sys.executable, "-c", LEVEL, "{level}"],
            "params": {"level": {"type": "int", "min": 0, "max": 10}},
            "state_from_stdout": True,
        },
        "say": {"argv": ["/bin/echo", "{text}"], "params": {"text": "str"}},
    },
}
NODE = "iot-gateway"
ORDER = ["switch", "light", "number", "select", "text", "button"]  # power first, presses last


def config_topic(device: str) -> str:
    return f"homeassistant/device/{NODE}_{device}/config"


def emptied(topic: str) -> Callable[[Received], bool]:
    """Matches the empty retained config that removes ``topic``'s device."""
    return lambda message: message.topic == topic and message.payload == b""


class HomeAssistant:
    """What Home Assistant does with the configs: send commands, read states."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def config(self, device: str) -> dict[str, Any]:
        [message] = await self.probe.wait_for(
            lambda m: m.topic == config_topic(device) and bool(m.payload)
        )
        body: dict[str, Any] = message.json
        return body

    async def sends(self, topic: str, payload: str) -> Any:
        """Publish on an entity's command topic; the command's result."""
        result_topic = topic.rsplit("/", 1)[0] + "/result"
        since = len(self.probe.messages)
        await self.probe.publish(topic, payload)
        [result] = await self.probe.wait_for(lambda m: m.topic == result_topic, since=since)
        return result.json

    async def reads(self, topic: str, template: str, expected: str | float) -> None:
        """Wait until the latest message on ``topic`` renders as ``expected``."""

        def shown() -> bool:
            messages = self.probe.on(topic)
            if not messages:
                return False
            text = render_value(template, messages[-1].payload)
            return text == expected if isinstance(expected, str) else not _differs(expected, text)

        while not shown():
            await self.probe.wait_for(lambda m: m.topic == topic, since=len(self.probe.messages))

    def shows(self, topic: str, template: str) -> str:
        return render_value(template, self.probe.on(topic)[-1].payload)

    async def operate(self, components: dict[str, Any]) -> list[str]:
        """Use every control of a device as a user would; what each did, for the report."""
        done = []
        ordered = sorted(components.items(), key=lambda kv: _rank(kv[1]["platform"]))
        for key, entity in ordered:
            platform = entity["platform"]
            if platform in {"switch", "light"}:
                await self._switch(entity)
            if platform == "light":
                await self._brightness(entity)
            elif platform in {"number", "select", "text"}:
                await self._set(entity)
            elif platform == "button":
                result = await self.sends(entity["command_topic"], entity["payload_press"])
                assert (result["action"], result["status"]) == (entity["payload_press"], "ok")
            elif platform in {"sensor", "binary_sensor"} and key != "last_error":
                assert self.shows(entity["state_topic"], entity["value_template"]) != ""
            done.append(f"{key}:{platform}")
        return done

    async def _switch(self, entity: dict[str, Any]) -> None:
        template = entity[VALUE_TEMPLATE.get(entity["platform"], "value_template")]
        for command, shown in (("payload_off", "state_off"), ("payload_on", "state_on")):
            result = await self.sends(entity["command_topic"], entity[command])
            assert result["status"] == "ok", result
            # A light shows its own payloads; a switch its state_on/state_off.
            expected = entity.get(shown, entity[command])
            await self.reads(entity["state_topic"], template, expected)

    async def _brightness(self, entity: dict[str, Any]) -> None:
        level = entity["brightness_scale"] // 3
        payload = render_command(entity["brightness_command_template"], level)
        result = await self.sends(entity["brightness_command_topic"], payload)
        assert result["status"] == "ok", result
        template = entity["brightness_value_template"]
        await self.reads(entity["brightness_state_topic"], template, str(level))

    async def _set(self, entity: dict[str, Any]) -> None:
        if "state_topic" not in entity:  # a command without a state: it must run
            command = render_command(entity["command_template"], "hello")
            result = await self.sends(entity["command_topic"], command)
            assert result["status"] == "ok", result
            return
        current = self.shows(entity["state_topic"], entity["value_template"])
        value: Any
        if entity["platform"] == "number":
            value = next(float(v) for v in (entity["max"], entity["min"]) if _differs(v, current))
        elif entity["platform"] == "select":
            value = next(option for option in entity["options"] if option != current)
        else:
            value = 'Say "Hi" & go'
        result = await self.sends(
            entity["command_topic"], render_command(entity["command_template"], value)
        )
        assert result["status"] == "ok", result
        await self.reads(entity["state_topic"], entity["value_template"], value)


def _rank(platform: str) -> int:
    return ORDER.index(platform) if platform in ORDER else len(ORDER)


def _differs(value: float, shown: str) -> bool:
    try:
        return float(shown) != float(value)
    except ValueError:
        return True


@pytest.mark.usefixtures("acme_site")
async def test_home_assistant_drives_every_entity_of_every_kind_of_device(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with FakePlug() as plug, FakePlc() as plc, FakeProjector() as projector:
        await plc.write(INPUT, 3, 215)
        devices = [
            *DEMO_DEVICES,
            {"id": "counter", "type": "simulated.counter"},
            {**SHELLY, "base_url": plug.url},
            plc_entry(plc.port),
            projector_entry(
                projector.port,
                # The projector answers what it knows; SAY and XYZ it refuses.
                actions={k: v for k, v in TCP_ACTIONS.items() if k in PROJECTOR_KNOWS},
                state_fields=PROJECTOR_POWER,
            ),
            SCRIPT,
            THERMOSTAT,
        ]
        async with (
            Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
            started(make_config(homeassistant=HA, devices=devices), probe),
        ):
            ha = HomeAssistant(probe)
            used = {}
            for device in [d["id"] for d in devices]:
                config = await ha.config(device)
                assert problems(config) == []
                await probe.wait_topic(f"iot/{device}/state")
                used[device] = await ha.operate(config["cmps"])
            assert used["light"][:2] == ["light:light", "toggle:button"]
            assert "pump:switch" in used["plc"]
            assert "mode:select" in used["hall"]
            assert used["projector"][:2] == ["power:switch", "volume:number"]
            assert used["script"][:2] == ["level:number", "say:text"]
            assert projector.power == "ON"
            assert await plc.read(1, 1)  # the pump's coil: switched off, then on


async def test_a_failed_command_fires_the_event_and_sets_the_last_error(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with (
        Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
        started(make_config(homeassistant=HA), probe),
    ):
        ha = HomeAssistant(probe)
        components = (await ha.config("speaker"))["cmps"]
        play, event = components["play"], components["command_error"]
        last = components["last_error"]
        song = render_command(play["command_template"], "x")
        result = await ha.sends(play["command_topic"], song)
        assert result["error"]["code"] == "precondition_failed"  # the speaker is off
        payload = probe.on(event["state_topic"])[-1].payload
        fired = json.loads(render_value(event["value_template"], payload))
        assert fired["event_type"] == "precondition_failed"
        assert fired["event_type"] in event["event_types"]
        assert fired["message"] == "cannot play while the speaker is off"
        shown = render_value(last["value_template"], payload)
        assert shown == "precondition_failed: cannot play while the speaker is off"
        ok = await ha.sends(components["stop"]["command_topic"], "stop")
        ok_payload = json.dumps(ok).encode()
        assert render_value(event["value_template"], ok_payload) == ""  # fires nothing
        assert render_value(last["value_template"], ok_payload, this=shown) == shown


async def test_the_gateway_device_reports_connectivity_and_activity(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    ha_settings = {**HA, "activity_interval": 0.2}
    async with (
        Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
        started(make_config(homeassistant=ha_settings, http={"port": 0}), probe),
    ):
        ha = HomeAssistant(probe)
        gateway = await ha.config("gateway")
        assert problems(gateway) == []
        components = gateway["cmps"]
        connectivity = components["connectivity"]
        assert probe.on(connectivity["state_topic"])[-1].text == connectivity["payload_on"]
        hub = (await ha.config("hub"))["device"]
        assert hub["via_device"] == gateway["device"]["identifiers"][0]
        for _ in range(3):
            await probe.command("hub", {"action": "toggle"})
        await probe.command("hub", {"action": "fly"})  # unknown_action: refused on arrival
        commands = components["commands_per_min"]
        await ha.reads(commands["state_topic"], commands["value_template"], "3")
        errors = components["errors_per_min"]
        assert ha.shows(errors["state_topic"], errors["value_template"]) == "1"
        version = components["version"]
        assert (
            ha.shows(version["state_topic"], version["value_template"])
            == gateway["origin"]["sw_version"]
        )


async def test_per_entity_configs_of_earlier_versions_are_migrated(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    legacy = {
        # As earlier versions published them (client id iot-gateway).
        "homeassistant/switch/iot-gateway/hub_power/config": "iot-gateway_hub_power",
        "homeassistant/light/iot-gateway/light_light/config": "iot-gateway_light_light",
        "homeassistant/switch/iot-gateway/gone_power/config": "iot-gateway_gone_power",
    }
    async with Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe:
        for topic, unique_id in legacy.items():
            await probe.publish(topic, {"unique_id": unique_id, "name": "Power"}, retain=True)
        async with started(make_config(homeassistant=HA), probe):
            since = len(probe.messages)
            gone = "homeassistant/switch/iot-gateway/gone_power/config"
            await probe.wait_for(lambda m: m.topic == gone and m.payload == b"", since=since)
            sequence = [
                (m.topic, m.payload)
                for m in probe.messages[since:]
                if m.topic.startswith("homeassistant/") and not m.retain
            ]
        hub = "homeassistant/switch/iot-gateway/hub_power/config"
        migrate = b'{"migrate_discovery": true}'
        # Migrate, then the device config takes the entity over, then the old topic is cleared.
        assert sequence.index((hub, migrate)) < _index(sequence, config_topic("hub"))
        assert _index(sequence, config_topic("hub")) < sequence.index((hub, b""))
        hub_config = json.loads(dict(sequence)[config_topic("hub")])
        assert hub_config["cmps"]["power"]["unique_id"] == "iot-gateway_hub_power"
        assert (gone, migrate) not in sequence  # no entity to keep: just removed
        assert (gone, b"") in sequence
    async with Probe(broker.port, ["homeassistant/#"]) as late:
        await late.wait_topic(config_topic("hub"))
        assert not any(late.on(topic) for topic in legacy)  # nothing retained there now


def _index(sequence: list[tuple[str, bytes]], topic: str) -> int:
    return next(i for i, (t, payload) in enumerate(sequence) if t == topic and payload)


async def test_configs_no_longer_published_are_removed_and_others_left_alone(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    removed = config_topic("hub")
    foreign = "homeassistant/device/iot-gateway_x_hub/config"  # another gateway's node
    async with Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe:
        await probe.publish(foreign, {"device": {"identifiers": ["zz"]}, "cmps": {}}, retain=True)
        async with started(make_config(homeassistant=HA), probe):
            await probe.wait_topic(removed)
        devices = [{"id": "speaker", "type": "simulated.speaker"}]
        async with started(make_config(homeassistant=HA, devices=devices), probe):
            await probe.wait_for(lambda m: m.topic == removed and m.payload == b"")
    async with Probe(broker.port, ["homeassistant/#"]) as late:
        await late.wait_topic(config_topic("speaker"))
        await late.wait_topic(foreign)
        assert late.on(removed) == []


async def test_configs_come_again_when_home_assistant_comes_online(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with (
        Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
        started(make_config(homeassistant=HA), probe),
    ):
        await probe.wait_topic(config_topic("hub"))
        await probe.publish("homeassistant/status", "online")
        await probe.wait_topic(config_topic("hub"), count=2)


async def test_a_new_client_id_keeps_the_same_entities(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe:
        async with started(make_config(homeassistant=HA), probe):
            [first] = await probe.wait_topic(config_topic("hub"))
        moved = make_config(homeassistant=HA, mqtt={"client_id": "renamed"})
        async with started(moved, probe):
            [_, second] = await probe.wait_topic(config_topic("hub"), count=2)
            await probe.wait_topic(config_topic("sensor"), count=2)
        assert second.json == first.json
        assert not any(m.payload == b"" for m in probe.messages if "/device/" in m.topic)


async def test_a_new_node_id_removes_the_configs_of_the_old_one(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe:
        old = {**HA, "node_id": "attic"}
        async with started(make_config(homeassistant=old), probe):
            await probe.wait_topic("homeassistant/device/attic_hub/config")
            await probe.wait_topic("homeassistant/device/attic_gateway/config")
        async with started(make_config(homeassistant=HA), probe):
            for device in ("hub", "gateway"):
                await probe.wait_for(emptied(f"homeassistant/device/attic_{device}/config"))
    async with Probe(broker.port, ["homeassistant/#"]) as late:
        await late.wait_topic(config_topic("hub"))
        assert not any(m.topic.startswith("homeassistant/device/attic_") for m in late.messages)
