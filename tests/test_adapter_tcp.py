"""The ``tcp`` adapter against a stand-in projector speaking lines over loopback."""

from __future__ import annotations

import asyncio
import logging
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
        assert "unexpected reply to action 'garble': 'ERR'" in garbled["error"]["message"]

        # A line break in a parameter would smuggle a second command in; so would a
        # vertical tab to a device that reads it as one.
        for text, named in [("hi\rPWR OFF", "U+000D"), ("hi\vPWR OFF", "U+000B")]:
            sneaky = {"action": "say", "params": {"text": text}}
            refused = await probe.command("projector", sneaky)
            assert refused["error"]["code"] == "invalid_params"
            assert "params.text" in refused["error"]["message"]
            assert named in refused["error"]["message"]
        assert not any("PWR OFF" in line for line in projector.received)

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
        with pytest.raises(DeviceError, match=r"no reply to query\[0\] within 0.1 s") as caught:
            await mute.open()
        assert "PWR" not in str(caught.value)  # a query may hold a password
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


CONTROLS = [
    "\0",  # NUL: ends a C string
    "\x07",
    "\t",
    "\v",  # VT, FF, FS, NEL, LS, PS: line breaks to str.splitlines and to some devices
    "\f",
    "\x1b",  # ESC: starts a terminal or printer command
    "\x1c",
    "\x7f",
    "\x85",
    "\x9b",  # CSI, the C1 form of ESC [
    "\u2028",
    "\u2029",
]


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
async def test_a_control_character_in_a_param_is_refused(control: str) -> None:
    async with FakeProjector() as projector:
        adapter = TcpDevice(TcpConfig.model_validate(projector_entry(projector.port)), Recorder())
        await adapter.open()
        say = TcpDevice.actions_for(adapter.config)["say"]
        with pytest.raises(ValidationError) as caught:  # answered invalid_params
            say.model_validate({"text": f"hi{control}PWR OFF"})
        [error] = caught.value.errors()
        assert error["loc"] == ("text",)
        assert f"must not contain U+{ord(control):04X}" in error["msg"]
        # Text that is not control characters goes through, non-ASCII included.
        await adapter.execute("say", say.model_validate({"text": "Grüße\u00a0😀"}))
        await projector.wait_for(lambda: projector.received[-1:] == ["SAY Grüße\u00a0😀"])
        await adapter.close()


async def test_an_action_may_allow_control_characters_but_never_a_line_break() -> None:
    framed = {"send": "SAY {text}", "params": {"text": "str"}, "allow_control_characters": True}
    async with FakeProjector() as projector:
        entry = projector_entry(projector.port, actions={**ACTIONS, "framed": framed})
        adapter = TcpDevice(TcpConfig.model_validate(entry), Recorder())
        await adapter.open()
        model = TcpDevice.actions_for(adapter.config)["framed"]
        await adapter.execute("framed", model.model_validate({"text": "\x02a\0b\vc\x03"}))
        await projector.wait_for(lambda: projector.received[-1:] == ["SAY \x02a\0b\vc\x03"])
        for line_break in "\r\n":
            with pytest.raises(ValidationError, match=r"U\+000[AD] \(a line break\)"):
                model.model_validate({"text": f"a{line_break}PWR OFF"})
        await adapter.close()


async def test_query_lines_stay_out_of_logs_and_results(
    make_config: Callable[..., Config], probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeProjector() as projector:
        projector.mute = True  # the login gets no answer: the connect fails
        entry = projector_entry(
            projector.port, id="secretive", query=["LOGIN hunter2"], reply_timeout=0.1
        )
        async with started(make_config(devices=[entry]), probe):
            # Answered once the connect failed, so after the warning about it.
            result = await probe.command("secretive", {"action": "turn_on"})
            assert result["error"]["code"] == "device_unavailable"
    assert "LOGIN hunter2" in projector.received
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no reply to query[0] within 0.1 s" in message for message in warnings)
    assert not [r.getMessage() for r in caplog.records if "hunter2" in r.getMessage()]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"state_regex": "PWR=(ON|OFF)"}, "has no named group"),
        ({"state_regex": "PWR=(?P<power"}, "Input should be a valid regular expression"),
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"poll_interval": 1, "query": []}, "needs a query"),
        ({"actions": {"a": {"send": "X {y}"}}}, "undeclared parameter(s): y"),
        ({"newline": ""}, "at least 1 character"),
        (
            {"actions": {}, "state_regex": []},
            "a tcp device needs at least one action or state_regex",
        ),
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
