"""The ``modbus`` adapter against pymodbus's own server on loopback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from devices import DeviceError
from devices.modbus import ModbusConfig, ModbusDevice
from tests.broker import free_port
from tests.conftest import started
from tests.fakes import FakePlc

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.probe import Probe

COILS = 1
HOLDING = 3
INPUT = 4


def plc_entry(port: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": "plc",
        "type": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "unit": 1,
        "coils": {
            "pump": {"address": 1, "writable": True},
            "alarm": {"address": 2, "input": True},
        },
        "registers": {
            "setpoint": {"address": 2, "writable": True, "scale": 0.5, "min": 5, "max": 30},
            "offset": {"address": 4, "writable": True, "signed": True},
            "temperature": {"address": 3, "input": True, "scale": 0.1},
        },
        **fields,
    }


async def test_plc_over_mqtt(make_config: Callable[..., Config], probe: Probe) -> None:
    async with FakePlc() as plc:
        await plc.write(INPUT, 3, 215)
        entry = plc_entry(plc.port, poll_interval=0.05)
        async with started(make_config(devices=[entry]), probe):
            listing = (await probe.wait_topic("iot/gateway/devices"))[-1].json
            actions = listing[0]["actions"]
            assert set(actions) == {
                "set_pump",
                "turn_on_pump",
                "turn_off_pump",
                "set_setpoint",
                "set_offset",
            }
            assert actions["set_setpoint"]["properties"]["value"]["maximum"] == 30
            assert actions["set_offset"]["properties"]["value"]["minimum"] == -32768
            state = await probe.wait_topic("iot/plc/state")
            assert state[-1].json == {
                "pump": False,
                "alarm": False,
                "setpoint": 0.0,
                "offset": 0,
                "temperature": 21.5,
            }

            result = await probe.command("plc", {"action": "turn_on_pump"})
            assert result["status"] == "ok", result
            assert result["state"]["pump"] is True
            assert await plc.read(COILS, 1) is True
            result = await probe.command(
                "plc", {"action": "set_setpoint", "params": {"value": 21.5}}
            )
            assert result["state"]["setpoint"] == 21.5
            assert await plc.read(HOLDING, 2) == 43
            result = await probe.command("plc", {"action": "set_offset", "params": {"value": -2}})
            assert result["state"]["offset"] == -2
            assert await plc.read(HOLDING, 4) == 0xFFFE

            too_high = {"action": "set_setpoint", "params": {"value": 31}}
            assert (await probe.command("plc", too_high))["error"]["code"] == "invalid_params"
            not_bool = {"action": "set_pump", "params": {"value": 1}}
            assert (await probe.command("plc", not_bool))["error"]["code"] == "invalid_params"

            await plc.write(INPUT, 3, 230)  # the PLC measured a new temperature
            await probe.wait_for(
                lambda m: m.topic == "iot/plc/state" and m.json["temperature"] == 23.0
            )


async def test_refusals_and_a_lost_connection_are_device_errors() -> None:
    lost: list[str] = []

    class Events:
        def state_changed(self, state: Any, *, force: bool = False) -> None:
            del state, force

        def connection_lost(self, reason: str) -> None:
            lost.append(reason)

    async with FakePlc() as plc:
        locked = {"locked": {"address": 15, "writable": True}}
        entry = plc_entry(plc.port, registers=locked, request_timeout=0.3)
        adapter = ModbusDevice(ModbusConfig.model_validate(entry), Events())
        await adapter.open()
        assert adapter.state["locked"] == 7
        set_locked = ModbusDevice.actions_for(adapter.config)["set_locked"]
        with pytest.raises(DeviceError, match="refused"):
            await adapter.execute("set_locked", set_locked.model_validate({"value": 1}))
    # The PLC is gone: the next request fails, and the host hears the link is lost.
    with pytest.raises(DeviceError):
        await adapter.execute("set_locked", set_locked.model_validate({"value": 1}))
    assert lost
    await adapter.close()
    await adapter.close()


async def test_unreachable_plc_fails_open() -> None:
    adapter = ModbusDevice(ModbusConfig.model_validate(plc_entry(free_port())), Events())
    with pytest.raises(DeviceError, match="cannot connect"):
        await adapter.open()
    await adapter.close()


class Events:
    """An event sink that ignores everything."""

    def state_changed(self, state: Any, *, force: bool = False) -> None:
        del state, force

    def connection_lost(self, reason: str) -> None:
        del reason


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"coils": {"a": {"address": 1, "writable": True, "input": True}}}, "cannot be writable"),
        ({"registers": {"a": {"address": 70000}}}, "less than or equal to 65535"),
        ({"registers": {"pump": {"address": 1}}}, "pump: both a coil and a register"),
        ({"registers": {"Bad Name": {"address": 1}}}, "String should match pattern"),
        ({"registers": {"a": {"address": 1, "scale": 0}}}, "greater than 0"),
        ({"unit": 300}, "less than or equal to 255"),
        ({"coils": {}, "registers": {}}, "a modbus device needs at least one coil or register"),
    ],
)
def test_config_is_checked(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModbusConfig.model_validate(plc_entry(502, **fields))
    assert problem in str(caught.value)
