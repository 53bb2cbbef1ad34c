"""Capabilities: state fields derived from actions, declared by adapters, corrected by config."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import Field, ValidationError

from devices import NoParams, Params, StateField, capabilities
from devices.capabilities import describe, device_fields
from devices.modbus import ModbusConfig, ModbusDevice
from devices.simulated import SimulatedConfig, SimulatedSensor, SimulatedSpeaker
from devices.tcp import TcpConfig, TcpDevice
from gateway import AdapterRegistry
from gateway.config import validate_devices


class Level(Params):
    level: int = Field(ge=0, le=100)


class Mode(Params):
    mode: Literal["heat", "off"]


class Label(Params):
    text: str = Field(max_length=40)


class Two(Params):
    a: int
    b: int


def test_set_and_turn_actions_make_settable_fields_of_their_parameter_kind() -> None:
    fields = capabilities(
        {
            "set_volume": Level,
            "set_mode": Mode,
            "set_label": Label,
            "set_pair": Two,  # two parameters: not a setter
            "turn_on_pump": NoParams,
            "turn_off_pump": NoParams,
            "reboot": NoParams,
        },
        {},
    )
    assert set(fields) == {"volume", "mode", "label", "pump"}
    volume = fields["volume"]
    assert (volume.kind, volume.min, volume.max, volume.step) == ("number", 0, 100, 1)
    assert (volume.set_by, volume.param, volume.settable) == ("set_volume", "level", True)
    assert (fields["mode"].kind, fields["mode"].options) == ("enum", ("heat", "off"))
    assert (fields["label"].kind, fields["label"].max) == ("string", 40)
    pump = fields["pump"]
    assert (pump.kind, pump.turn_on, pump.turn_off) == ("bool", "turn_on_pump", "turn_off_pump")
    assert (pump.on_value, pump.off_value) == (True, False)


def test_declared_fields_add_to_derived_ones_and_config_corrects_both() -> None:
    config = SimulatedConfig(
        id="speaker",
        type="simulated.speaker",
        state_fields={"volume": {"unit": "%"}, "bass": {"kind": "number", "diagnostic": True}},
    )
    fields = device_fields(SimulatedSpeaker, config)
    assert fields["volume"].unit == "%"
    assert fields["volume"].max == 100  # still derived from set_volume
    assert fields["power"].on_value == "on"  # declared by the adapter
    assert fields["playing"].set_by == "play"
    assert (fields["playing"].param, fields["playing"].max) == ("song", 255)
    assert fields["bass"].diagnostic
    assert not fields["bass"].settable


def test_a_setter_that_does_not_exist_leaves_the_field_read_only() -> None:
    fields = capabilities({}, {"level": StateField(kind="number", set_by="set_levle")})
    assert fields["level"].set_by is None
    assert not fields["level"].settable


def test_config_naming_actions_that_do_not_exist_is_a_config_error() -> None:
    entry = {
        "id": "speaker",
        "type": "simulated.speaker",
        "state_fields": {
            "volume": {"set_by": "set_volume", "param": "lvl"},
            "bass": {"set_by": "set_bass"},
            "mute": {"kind": "bool", "turn_on": "mute", "turn_off": "unmute"},
        },
    }
    devices, problems = validate_devices([entry], AdapterRegistry.from_entry_points())
    assert "speaker" in devices
    known = "(known: play, set_volume, stop, turn_off, turn_on)"
    assert problems == [
        "devices[0].state_fields.volume.param: 'set_volume' has no parameter 'lvl'",
        f"devices[0].state_fields.bass.set_by: no action 'set_bass' {known}",
        f"devices[0].state_fields.mute.turn_on: no action 'mute' {known}",
        f"devices[0].state_fields.mute.turn_off: no action 'unmute' {known}",
    ]


def test_a_field_of_unknown_kind_is_a_string() -> None:
    assert capabilities({}, {"mystery": StateField()})["mystery"].kind == "string"


def test_sensor_declares_its_readings() -> None:
    fields = device_fields(SimulatedSensor, SimulatedConfig(id="s", type="simulated.sensor"))
    assert fields["temperature"].unit == "°C"
    assert fields["humidity"].device_class == "humidity"


def test_modbus_points_are_fields_and_writable_ones_settable() -> None:
    config = ModbusConfig(
        id="plc",
        type="modbus",
        host="127.0.0.1",
        coils={"pump": {"address": 1, "writable": True}, "alarm": {"address": 2, "input": True}},
        registers={
            "setpoint": {"address": 2, "writable": True, "scale": 0.5, "min": 5, "max": 30},
            "temperature": {"address": 3, "input": True, "scale": 0.1},
        },
        state_fields={"temperature": {"unit": "°C", "device_class": "temperature"}},
    )
    fields = device_fields(ModbusDevice, config)
    assert (fields["pump"].kind, fields["pump"].settable) == ("bool", True)
    assert (fields["alarm"].kind, fields["alarm"].settable) == ("bool", False)
    setpoint = fields["setpoint"]
    assert (setpoint.kind, setpoint.min, setpoint.max, setpoint.step) == ("number", 5, 30, 0.5)
    assert setpoint.set_by == "set_setpoint"
    temperature = fields["temperature"]
    assert (temperature.kind, temperature.step, temperature.unit) == ("number", 0.1, "°C")
    assert not temperature.settable


def test_tcp_state_regex_groups_are_fields() -> None:
    config = TcpConfig(
        id="projector",
        type="tcp",
        host="127.0.0.1",
        port=4352,
        state_regex=[r"^POWR=(?P<power>\d)$", r"^INPT=(?P<input>\w+)$"],
    )
    assert set(device_fields(TcpDevice, config)) == {"power", "input"}


def test_described_fields_are_json_without_unset_keys() -> None:
    fields = describe(capabilities({"set_volume": Level}, {}))
    assert fields == {
        "volume": {
            "kind": "number",
            "min": 0,
            "max": 100,
            "step": 1,
            "set_by": "set_volume",
            "param": "level",
            "settable": True,
        }
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "colour"},
        {"step": 0},
        {"platform": "vacuum"},
        {"entity_key": "Not Valid"},
        {"unknown": 1},
    ],
)
def test_a_bad_state_field_in_the_config_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SimulatedConfig(id="x", type="simulated.switch", state_fields={"power": bad})


def test_a_platform_that_cannot_show_its_field_is_a_config_error() -> None:
    entry = {
        "id": "sensor",
        "type": "simulated.sensor",
        "state_fields": {
            "temperature": {"platform": "switch"},
            "humidity": {"platform": "select"},
            "mood": {"kind": "enum", "platform": "select", "entity_key": "last_error"},
        },
    }
    _, problems = validate_devices([entry], AdapterRegistry.from_entry_points())
    assert problems == [
        "devices[0].state_fields.temperature.platform: a switch shows a bool field, not a number",
        "devices[0].state_fields.humidity.platform: a select shows an enum field, not a number",
        "devices[0].state_fields.mood.platform: a select needs an action that sets the field",
        "devices[0].state_fields.mood.entity_key: 'last_error' is taken",
    ]
