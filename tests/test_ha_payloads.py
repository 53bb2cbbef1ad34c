"""Home Assistant discovery payloads for every built-in device type and the guide's adapter.

Each configured device must yield the entities the generic mapping promises,
with every key Home Assistant requires of their platforms (``tests/home_assistant.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway import AdapterRegistry, load_config
from gateway.config import HomeAssistantSettings, HttpSettings, validate_devices
from gateway.core.topics import Topics
from gateway.surfaces.homeassistant import (
    Discovery,
    Payloads,
    default_node_id,
    device_info,
    http_page,
)
from tests.home_assistant import problems, render_value
from tests.test_third_party_adapter import acme_site  # noqa: F401 - a fixture used below

if TYPE_CHECKING:
    from gateway.core.messages import Outbound

SHELLY: dict[str, Any] = {
    "id": "plug",
    "type": "http",
    "base_url": "http://192.0.2.10",
    "state": {"path": "/rpc/Switch.GetStatus?id=0"},
    "actions": {
        "turn_on": {"path": "/rpc/Switch.Set", "body": {"id": 0, "on": True}},
        "turn_off": {"path": "/rpc/Switch.Set", "body": {"id": 0, "on": False}},
        "set_brightness": {
            "path": "/rpc/Light.Set",
            "body": {"id": 0, "brightness": "{level}"},
            "params": {"level": {"type": "int", "min": 0, "max": 100}},
        },
    },
    # What the plug's JSON cannot say: which field the on/off actions switch, and units.
    "state_fields": {
        "output": {"kind": "bool", "turn_on": "turn_on", "turn_off": "turn_off"},
        "apower": {"kind": "number", "unit": "W", "device_class": "power"},
    },
    "name": "Kitchen plug",
    "area": "Kitchen",
    "manufacturer": "Shelly",
    "model": "Plus Plug S",
}
PLC: dict[str, Any] = {
    "id": "boiler",
    "type": "modbus",
    "host": "192.0.2.11",
    "coils": {
        "pump": {"address": 1, "writable": True},
        "alarm": {"address": 2, "input": True},
    },
    "registers": {
        "setpoint": {"address": 2, "writable": True, "scale": 0.5, "min": 5, "max": 30},
        "offset": {"address": 4, "writable": True, "signed": True},
        "temperature": {"address": 3, "input": True, "scale": 0.1},
    },
    "state_fields": {
        "temperature": {"unit": "°C", "device_class": "temperature"},
        "setpoint": {"unit": "°C"},
        "alarm": {"device_class": "problem"},
    },
}
PROJECTOR: dict[str, Any] = {
    "id": "projector",
    "type": "tcp",
    "host": "192.0.2.12",
    "port": 4352,
    "state_regex": [r"^%1POWR=(?P<power>\d)$"],
    "actions": {
        "power_on": {"send": "%1POWR 1"},
        "set_input": {"send": "%1INPT {input}", "params": {"input": {"type": "str", "max": 2}}},
        "say": {"send": "%1SAY {text}", "params": {"text": "str"}},
    },
}
SCRIPT: dict[str, Any] = {
    "id": "blinds",
    "type": "command",
    "actions": {
        "open": {"argv": ["/usr/bin/true"]},
        "set_position": {
            "argv": ["/usr/bin/true", "{position}"],
            "params": {"position": {"type": "int", "min": 0, "max": 100}},
        },
    },
}
THERMOSTAT = {"id": "hall", "type": "acme.thermostat", "host": "192.0.2.20"}

COMMON = {"command_error": "event", "last_error": "sensor"}
EXPECTED: dict[str, dict[str, str]] = {
    "simulated.switch": {"power": "switch", "toggle": "button"},
    "simulated.light": {"light": "light", "toggle": "button"},
    "simulated.speaker": {"power": "switch", "volume": "number", "play": "text", "stop": "button"},
    "simulated.sensor": {"temperature": "sensor", "humidity": "sensor", "read": "button"},
    "simulated.counter": {"count": "sensor", "increment": "button", "reset": "button"},
    "http": {"light": "light", "apower": "sensor"},
    "modbus": {
        "pump": "switch",
        "alarm": "binary_sensor",
        "setpoint": "number",
        "offset": "number",
        "temperature": "sensor",
    },
    "tcp": {"power": "sensor", "power_on": "button", "input": "text", "say": "text"},
    "command": {"open": "button", "position": "number"},
    "acme.thermostat": {
        "target": "number",
        "mode": "select",
        "temperature": "sensor",
        "boost": "button",
    },
}
ENTRIES = {
    **{kind: {"id": kind.split(".")[1], "type": kind} for kind in EXPECTED if "simulated" in kind},
    "http": SHELLY,
    "modbus": PLC,
    "tcp": PROJECTOR,
    "command": SCRIPT,
    "acme.thermostat": THERMOSTAT,
}
TOPICS = Topics("iot", None)


def device_payload(entry: dict[str, Any]) -> dict[str, Any]:
    registry = AdapterRegistry.from_entry_points()
    devices, errors = validate_devices([entry], registry)
    assert errors == []
    config = devices[entry["id"]]
    return Payloads("iot-gateway", TOPICS).device(device_info(config, registry))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.usefixtures("acme_site")
def test_every_device_type_gets_the_entities_the_mapping_promises(kind: str) -> None:
    payload = device_payload(ENTRIES[kind])
    assert problems(payload) == []
    platforms = {key: component["platform"] for key, component in payload["cmps"].items()}
    assert platforms == EXPECTED[kind] | COMMON
    device = ENTRIES[kind]["id"]
    for key, component in payload["cmps"].items():
        assert component["unique_id"] == f"iot-gateway_{device}_{key}"
    assert payload["device"]["via_device"] == "iot-gateway_gateway"
    assert payload["availability"] == [
        {"topic": "iot/gateway/status"},
        {"topic": f"iot/{device}/availability"},
    ]


def test_names_area_manufacturer_and_model_come_from_the_config() -> None:
    device = device_payload(SHELLY)["device"]
    assert device == {
        "identifiers": ["iot-gateway_plug"],
        "name": "Kitchen plug",
        "suggested_area": "Kitchen",
        "manufacturer": "Shelly",
        "model": "Plus Plug S",
        "sw_version": device["sw_version"],  # the gateway's own: http is built in
        "via_device": "iot-gateway_gateway",
    }


@pytest.mark.usefixtures("acme_site")
def test_a_third_party_device_names_its_maker_and_package_version() -> None:
    device = device_payload(THERMOSTAT)["device"]
    assert (device["manufacturer"], device["model"]) == ("ACME", "Thermostat T1")
    assert device["sw_version"] == "0.1.0"  # iot-gateway-acme's, from its dist-info
    assert device["name"] == "hall"  # no name: the id


def test_numbers_take_bounds_units_and_steps_from_params_and_config() -> None:
    components = device_payload(PLC)["cmps"]
    setpoint = components["setpoint"]
    assert (setpoint["min"], setpoint["max"], setpoint["step"]) == (5, 30, 0.5)
    assert setpoint["unit_of_measurement"] == "°C"
    offset = components["offset"]
    assert (offset["min"], offset["max"], offset["step"]) == (-32768, 32767, 1)
    assert components["temperature"]["device_class"] == "temperature"
    alarm = components["alarm"]
    assert alarm["device_class"] == "problem"
    assert render_value(alarm["value_template"], b'{"alarm": true}') == "on"
    assert render_value(alarm["value_template"], b'{"alarm": false}') == "off"


def test_the_event_entity_fires_only_on_failed_results() -> None:
    components = device_payload(ENTRIES["simulated.speaker"])["cmps"]
    event, last = components["command_error"], components["last_error"]
    assert event["state_topic"] == "iot/speaker/result"
    assert "precondition_failed" in event["event_types"]
    failed = (
        b'{"id": "c-1", "device": "speaker", "action": "play", "status": "error",'
        b' "error": {"code": "precondition_failed", "message": "off"}, "state": null}'
    )
    fired = render_value(event["value_template"], failed)
    assert fired == (
        '{"action": "play", "event_type": "precondition_failed", "id": "c-1", "message": "off"}'
    )
    succeeded = b'{"id": "c-2", "action": "stop", "status": "ok", "error": null}'
    assert render_value(event["value_template"], succeeded) == ""  # ignored by HA
    assert render_value(last["value_template"], failed) == "precondition_failed: off"
    assert render_value(last["value_template"], succeeded, this="earlier") == "earlier"
    assert last["entity_category"] == "diagnostic"


def test_the_gateway_device_has_diagnostic_entities_and_its_page() -> None:
    http = HttpSettings(host="0.0.0.0", port=9100)  # noqa: S104 - a setting, nothing binds
    payload = Payloads(
        "iot-gateway",
        TOPICS,
        support_url="https://example.org/help",
        configuration_url=http_page(http),
    ).gateway()
    assert problems(payload) == []
    assert payload["device"]["configuration_url"].endswith(":9100/")
    assert payload["origin"]["support_url"] == "https://example.org/help"
    components = payload["cmps"]
    assert set(components) == {
        "connectivity",
        "version",
        "uptime",
        "commands_per_min",
        "errors_per_min",
        "reconnects",
        "session_lost",
    }
    assert all(c["entity_category"] == "diagnostic" for c in components.values())
    connectivity = components["connectivity"]
    assert connectivity["state_topic"] == "iot/gateway/status"
    assert (connectivity["payload_on"], connectivity["payload_off"]) == ("online", "offline")
    assert "availability" not in connectivity  # it shows offline, not unavailable
    figures = b'{"version": "1.2", "uptime_s": 5, "commands_per_min": 3, "errors_per_min": 1,'
    figures += b' "reconnects": 2, "session_lost": 1}'
    assert render_value(components["commands_per_min"]["value_template"], figures) == "3"
    assert render_value(components["reconnects"]["value_template"], figures) == "2"
    assert render_value(components["session_lost"]["value_template"], figures) == "1"


def test_loopback_and_ipv6_pages() -> None:
    assert http_page(HttpSettings()) == "http://127.0.0.1:9100/"
    assert http_page(HttpSettings(host="::1", port=80)) == "http://[::1]:80/"
    assert http_page(None) is None


def test_the_node_id_comes_from_the_base_topic_not_the_client_id() -> None:
    assert default_node_id("iot") == "iot-gateway"  # as earlier versions' default client id
    assert default_node_id("home/gw 2") == "iot-gateway_home_gw_2"
    settings = HomeAssistantSettings(discovery=True)
    discovery = Discovery(settings, TOPICS, [])
    assert discovery.config_topic("hub") == "homeassistant/device/iot-gateway_hub/config"
    custom = Discovery(HomeAssistantSettings(node_id="attic"), TOPICS, [])
    assert custom.config_topic("hub") == "homeassistant/device/attic_hub/config"


def test_config_refuses_a_node_id_home_assistant_would_not_take(tmp_path: Path) -> None:
    del tmp_path
    with pytest.raises(ValueError, match="node_id"):
        HomeAssistantSettings(node_id="a/b")


def test_the_readme_example_gets_the_entities_the_readme_lists(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Home Assistant\n") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    example = section[start : section.index("\n```", start)]
    path = tmp_path / "ha.yaml"
    path.write_text(example, encoding="utf-8")
    config = load_config(path, AdapterRegistry.from_entry_points())
    registry = AdapterRegistry.from_entry_points()
    payloads = Payloads("iot-gateway", TOPICS)
    table = section[section.index("| device | entities |") : section.index("Discovery is")]
    for device in config.devices:
        payload = payloads.device(device_info(device, registry))
        assert problems(payload) == []
        row = next(
            line
            for line in table.splitlines()
            if line.startswith(f"| {device.name or device.id} ")
        )
        listed = set(re.findall(r"`([a-z_]+\.[a-z0-9_]+)`", row))
        assert listed == {c["default_entity_id"] for c in payload["cmps"].values()}


async def test_without_the_probe_coming_back_the_configs_still_go_out() -> None:
    settings = HomeAssistantSettings(discovery=True)
    discovery = Discovery(settings, TOPICS, [], probe_timeout=0.01)
    published: list[Outbound] = []
    arrived = asyncio.Event()

    def publish(message: Outbound) -> None:
        published.append(message)
        arrived.set()

    async with asyncio.TaskGroup() as tasks:
        loop = tasks.create_task(discovery.run(publish))
        [probe] = discovery.announcements()  # sent, never read back
        async with asyncio.timeout(5):
            await arrived.wait()
        loop.cancel()
    assert probe.topic == "iot/gateway/discovery_sync"
    assert [m.topic for m in published] == ["homeassistant/device/iot-gateway_gateway/config"]
    assert published[0].retain


def test_a_field_may_choose_its_platform_or_none() -> None:
    entry = {
        "id": "speaker",
        "type": "simulated.speaker",
        "state_fields": {
            "volume": {"platform": "sensor", "unit": "%"},  # shown, not set, from HA
            "playing": {"platform": "none"},
            "power": {"platform": "light"},  # a light without brightness
        },
    }
    components = device_payload(entry)["cmps"]
    assert "play" not in components
    assert components["volume"]["platform"] == "sensor"
    assert "command_topic" not in components["volume"]
    light = components["power"]
    assert (light["platform"], light["payload_on"]) == ("light", "turn_on")
    assert "brightness_command_topic" not in light
    assert problems(device_payload(entry)) == []


def test_a_brightness_with_a_platform_of_its_own_is_not_part_of_a_light() -> None:
    entry = {
        "id": "light",
        "type": "simulated.light",
        "state_fields": {"brightness": {"platform": "number"}},
    }
    components = device_payload(entry)["cmps"]
    assert components["power"]["platform"] == "switch"
    assert components["brightness"]["platform"] == "number"
    assert "light" not in components


@pytest.mark.skipif(not os.environ.get("HA_PYTHON"), reason="HA_PYTHON names no Home Assistant")
@pytest.mark.usefixtures("acme_site")
def test_home_assistant_accepts_every_payload_with_its_own_schemas() -> None:
    """Opt-in: ``HA_PYTHON`` is the Python of a Home Assistant installation (2025.1+).

    For example: ``python3.12 -m venv /tmp/ha && /tmp/ha/bin/pip install -c
    package_constraints.txt homeassistant==2025.1.4 paho-mqtt==1.6.1`` (the
    constraints file is in the installed package), then ``HA_PYTHON=/tmp/ha/bin/python``.
    """
    payloads = {kind: device_payload(entry) for kind, entry in ENTRIES.items()}
    payloads["gateway"] = Payloads("iot-gateway", TOPICS, configuration_url="http://gw/").gateway()
    checked = subprocess.run(
        [os.environ["HA_PYTHON"], str(Path(__file__).with_name("ha_schema_check.py"))],
        input=json.dumps(payloads),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
