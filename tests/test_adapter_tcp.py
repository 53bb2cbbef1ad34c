"""The ``tcp`` adapter against a stand-in projector speaking lines over loopback."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from devices import DeviceError
from devices.tcp import TcpConfig, TcpDevice
from tests.conftest import started
from tests.fakes import FakeProjector

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.probe import Probe

ACTIONS: dict[str, Any] = {
    "turn_on": {"send": "PWR ON", "expect": "^PWR=ON$"},
    "turn_off": {"send": "PWR OFF", "expect": "^PWR=OFF$"},
    "set_volume": {
        "send": "VOL {level}",
        "params": {"level": {"type": "int", "min": 0, "max": 40}},
        "expect": "^VOL=",
    },
    "say": {"send": "SAY {text}", "params": {"text": "str"}},
    "garble": {"send": "XYZ", "expect": "^OK$"},
}


def projector_entry(port: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": "projector",
        "type": "tcp",
        "host": "127.0.0.1",
        "port": port,
        "query": ["PWR?", "VOL?"],
        "state_regex": ["PWR=(?P<power>ON|OFF)", "VOL=(?P<volume>\\d+)"],
        "actions": ACTIONS,
        **fields,
    }


async def test_projector_over_mqtt(make_config: Callable[..., Config], probe: Probe) -> None:
    async with (
        FakeProjector() as projector,
        started(make_config(devices=[projector_entry(projector.port)]), probe),
    ):
        state = await probe.wait_topic("iot/projector/state")
        assert state[-1].json == {"power": "OFF", "volume": 10}

        result = await probe.command("projector", {"action": "turn_on"})
        assert result["status"] == "ok", result
        assert result["state"] == {"power": "ON", "volume": 10}
        result = await probe.command(
            "projector", {"action": "set_volume", "params": {"level": 25}}
        )
        assert result["state"]["volume"] == 25
        assert projector.received[-1] == "VOL 25"

        garbled = await probe.command("projector", {"action": "garble"})
        assert garbled["error"]["code"] == "device_error"
        assert "unexpected reply to 'XYZ': 'ERR'" in garbled["error"]["message"]

        # A line break in a parameter would smuggle a second command in.
        sneaky = {"action": "say", "params": {"text": "hi\rPWR OFF"}}
        refused = await probe.command("projector", sneaky)
        assert refused["error"]["code"] == "invalid_params"
        assert "PWR OFF" not in projector.received

        projector.push("VOL=33")  # someone turned the knob
        await probe.wait_for(lambda m: m.topic == "iot/projector/state" and m.json["volume"] == 33)


async def test_dropped_connection_goes_offline_then_reconnects(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    topic = "iot/projector/availability"
    async with FakeProjector() as projector:
        config = make_config(devices=[projector_entry(projector.port)])
        async with started(config, probe):
            await probe.wait_for(lambda m: m.topic == topic and m.payload == b"online")
            dropped_at = time.monotonic()
            projector.drop()
            [offline] = await probe.wait_for(
                lambda m: m.topic == topic and m.payload == b"offline" and m.at > dropped_at
            )
            await probe.wait_for(
                lambda m: m.topic == topic and m.payload == b"online" and m.at > offline.at
            )
            assert projector.connections == 2
            result = await probe.command("projector", {"action": "turn_on"})
            assert result["status"] == "ok", result


async def test_a_silent_device_is_lost_when_a_poll_gets_no_reply(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    topic = "iot/quiet/availability"
    async with FakeProjector() as projector:
        entry = projector_entry(
            projector.port, id="quiet", query="VOL?", poll_interval=0.05, reply_timeout=0.2
        )
        async with started(make_config(devices=[entry]), probe):
            await probe.wait_for(lambda m: m.topic == topic and m.payload == b"online")
            muted_at = time.monotonic()
            projector.mute = True
            await probe.wait_for(
                lambda m: m.topic == topic and m.payload == b"offline" and m.at > muted_at
            )


async def test_refused_connection_and_missing_reply_are_device_errors() -> None:
    async with FakeProjector() as projector:
        port = projector.port
    closed = TcpDevice(TcpConfig.model_validate(projector_entry(port)), Recorder())
    with pytest.raises(DeviceError, match="cannot connect"):
        await closed.open()
    await closed.close()

    async with FakeProjector() as projector:
        projector.mute = True
        config = TcpConfig.model_validate(projector_entry(projector.port, reply_timeout=0.1))
        mute = TcpDevice(config, Recorder())
        with pytest.raises(DeviceError, match=r"no reply to 'PWR\?' within 0.1 s"):
            await mute.open()
        await mute.close()


async def test_replies_are_read_before_and_after_background_starts() -> None:
    async with FakeProjector() as projector:
        adapter = TcpDevice(TcpConfig.model_validate(projector_entry(projector.port)), Recorder())
        await adapter.open()
        models = TcpDevice.actions_for(adapter.config)
        await adapter.execute("turn_on", models["turn_on"]())  # read here, no reader yet
        async with asyncio.TaskGroup() as tasks:
            background = tasks.create_task(adapter.background())
            await adapter.execute("set_volume", models["set_volume"].model_validate({"level": 5}))
            await adapter.execute("turn_off", models["turn_off"]())
            background.cancel()
        assert adapter.state == {"power": "OFF", "volume": 5}
        await adapter.close()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"state_regex": "PWR=(ON|OFF)"}, "has no named group"),
        ({"state_regex": "PWR=(?P<power"}, "Input should be a valid regular expression"),
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"poll_interval": 1, "query": []}, "needs a query"),
        ({"actions": {"a": {"send": "X {y}"}}}, "undeclared parameter(s): y"),
        ({"newline": ""}, "at least 1 character"),
    ],
)
def test_config_is_checked(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TcpConfig.model_validate(projector_entry(1, **fields))
    assert problem in str(caught.value)


class Recorder:
    """Collects what the adapter tells its host."""

    def __init__(self) -> None:
        self.lost: list[str] = []

    def state_changed(self, state: Any, *, force: bool = False) -> None:
        del state, force

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)
