"""Home Assistant discovery: configs, availability, re-announce, removal, HA's commands."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.conftest import started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.broker import Broker

HA = {"discovery": True, "prefix": "homeassistant"}
NODE = "iot-gateway"  # the default client id


def config_topic(component: str, object_id: str) -> str:
    """Where the gateway puts an entity's discovery config."""
    return f"homeassistant/{component}/{NODE}/{object_id}/config"


def render(template: str, value: Any) -> str:
    """What Home Assistant's template engine makes of the gateway's command templates."""
    if "{{ value | tojson }}" in template:
        return template.replace("{{ value | tojson }}", json.dumps(value))
    if "{{ value | int }}" in template:
        return template.replace("{{ value | int }}", str(int(value)))
    return template.replace("{{ value }}", str(value))


async def test_configs_for_every_entity_with_both_availabilities(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with (
        Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
        started(make_config(homeassistant=HA), probe),
    ):
        expected = [
            config_topic("switch", "hub_power"),
            config_topic("light", "light_light"),
            config_topic("switch", "speaker_power"),
            config_topic("number", "speaker_volume"),
            config_topic("text", "speaker_play"),
            config_topic("button", "speaker_stop"),
            config_topic("sensor", "sensor_temperature"),
            config_topic("sensor", "sensor_humidity"),
        ]
        for topic in expected:
            [message] = await probe.wait_topic(topic)
            body = message.json
            assert body["availability_mode"] == "all"
            assert body["availability"][0]["topic"] == "iot/gateway/status"
            assert body["device"]["manufacturer"] == "iot-gateway"
            assert body["unique_id"].startswith(NODE)
        light = probe.on(config_topic("light", "light_light"))[0].json
        assert light["brightness_scale"] == 100
        assert light["command_topic"] == "iot/light/command"
        sensor = probe.on(config_topic("sensor", "sensor_temperature"))[0].json
        assert "command_topic" not in sensor
        assert sensor["unit_of_measurement"] == "°C"


async def test_what_home_assistant_publishes_drives_the_devices(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with (
        Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
        started(make_config(homeassistant=HA), probe),
    ):
        configs = {
            name: (await probe.wait_topic(config_topic(*name)))[0].json
            for name in [
                ("switch", "hub_power"),
                ("light", "light_light"),
                ("number", "speaker_volume"),
                ("text", "speaker_play"),
                ("button", "speaker_stop"),
                ("switch", "speaker_power"),
            ]
        }

        async def ha_sends(name: tuple[str, str], payload: str, key: str = "command_topic") -> Any:
            topic = configs[name][key]
            device = topic.split("/")[1]
            before = len(probe.on(f"iot/{device}/result"))
            await probe.publish(topic, payload)
            results = await probe.wait_topic(f"iot/{device}/result", count=before + 1)
            return results[-1].json

        hub = configs["switch", "hub_power"]
        assert (await ha_sends(("switch", "hub_power"), hub["payload_on"]))["state"][
            "power"
        ] == "on"
        light = configs["light", "light_light"]
        assert (await ha_sends(("light", "light_light"), light["payload_on"]))["status"] == "ok"
        dim = render(light["brightness_command_template"], 40)
        result = await ha_sends(("light", "light_light"), dim, "brightness_command_topic")
        assert result["state"] == {"power": "on", "brightness": 40}
        speaker = configs["switch", "speaker_power"]
        await ha_sends(("switch", "speaker_power"), speaker["payload_on"])
        volume = render(configs["number", "speaker_volume"]["command_template"], 30.0)
        assert (await ha_sends(("number", "speaker_volume"), volume))["state"]["volume"] == 30
        song = render(configs["text", "speaker_play"]["command_template"], 'Say "Hi"')
        assert (await ha_sends(("text", "speaker_play"), song))["state"]["playing"] == 'Say "Hi"'
        stop = configs["button", "speaker_stop"]["payload_press"]
        assert (await ha_sends(("button", "speaker_stop"), stop))["state"]["playing"] is None


async def test_reannounces_when_home_assistant_comes_online(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    async with (
        Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe,
        started(make_config(homeassistant=HA), probe),
    ):
        topic = config_topic("switch", "hub_power")
        await probe.wait_topic(topic)
        await probe.publish("homeassistant/status", "online")
        await probe.wait_topic(topic, count=2)


async def test_removed_device_gets_an_empty_retained_config(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    removed = config_topic("switch", "hub_power")
    async with Probe(broker.port, ["iot/#", "homeassistant/#"]) as probe:
        async with started(make_config(homeassistant=HA), probe):
            await probe.wait_topic(removed)
        devices = [{"id": "speaker", "type": "simulated.speaker"}]
        async with started(make_config(homeassistant=HA, devices=devices), probe):
            await probe.wait_for(lambda m: m.topic == removed and m.payload == b"")
    async with Probe(broker.port, ["homeassistant/#"]) as late:
        await late.wait_topic(config_topic("switch", "speaker_power"))
        assert late.on(removed) == []  # no retained config left for the removed device
