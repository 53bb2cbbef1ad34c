"""The ``http`` adapter against a stand-in Shelly Gen2 plug on loopback."""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from devices import DeviceError
from devices.http import HttpConfig, HttpDevice
from tests.broker import free_port
from tests.conftest import started
from tests.fakes import FakePlug, self_signed_cert

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway import Config
    from tests.probe import Probe

STATUS = {"path": "/rpc/Switch.GetStatus?id=0"}
SHELLY_ACTIONS: dict[str, Any] = {
    "turn_on": {"path": "/rpc/Switch.Set", "body": {"id": 0, "on": True}},
    "turn_off": {"path": "/rpc/Switch.Set", "body": {"id": 0, "on": False}},
    "set_brightness": {
        "path": "/rpc/Light.Set",
        "body": {"id": 0, "brightness": "{level}"},
        "params": {"level": {"type": "int", "min": 0, "max": 100}},
    },
}


class Recorder:
    """Collects what the adapter tells its host."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.lost: list[str] = []

    def state_changed(self, state: Any, *, force: bool = False) -> None:
        del force
        self.states.append(dict(state))

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


def device(**fields: Any) -> HttpDevice:
    config = HttpConfig.model_validate({"id": "plug", "type": "http", **fields})
    return HttpDevice(config, Recorder())


async def run(adapter: HttpDevice, action: str, **params: Any) -> None:
    model = HttpDevice.actions_for(adapter.config)[action]
    await adapter.execute(action, model.model_validate(params))


async def test_shelly_plug_from_config_alone_over_mqtt(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with FakePlug() as plug:
        entry = {
            "id": "plug",
            "type": "http",
            "base_url": plug.url,
            "state": STATUS,
            "poll_interval": 0.05,
            "actions": SHELLY_ACTIONS,
        }
        async with started(make_config(devices=[entry]), probe):
            listing = (await probe.wait_topic("iot/gateway/devices"))[-1].json
            schema = listing[0]["actions"]["set_brightness"]
            assert schema["properties"]["level"] == {
                "maximum": 100,
                "minimum": 0,
                "title": "Level",
                "type": "integer",
            }
            assert schema["additionalProperties"] is False

            result = await probe.command("plug", {"action": "turn_on"})
            assert result["status"] == "ok", result
            assert result["state"]["output"] is True
            assert plug.requests[-2].body == {"id": 0, "on": True}  # then the state was re-read

            result = await probe.command(
                "plug", {"action": "set_brightness", "params": {"level": 30}}
            )
            assert result["state"]["brightness"] == 30
            assert plug.requests[-2].body == {"id": 0, "brightness": 30}  # a number stays one

            bad = await probe.command(
                "plug", {"action": "set_brightness", "params": {"level": "9"}}
            )
            assert bad["error"]["code"] == "invalid_params"

            pressed_at = time.monotonic()
            plug.output = False  # someone pressed the button: the poll notices
            await probe.wait_for(
                lambda m: (
                    m.topic == "iot/plug/state" and not m.json["output"] and m.at > pressed_at
                )
            )


async def test_path_params_are_quoted_body_from_params_and_headers() -> None:
    async with FakePlug() as plug:
        adapter = device(
            base_url=plug.url + "/",
            headers={"Authorization": "Bearer abc"},
            actions={
                "echo": {
                    "method": "GET",
                    "path": "/rpc/Sys.Echo/{word}",
                    "params": {"word": "str"},
                    "state_from_response": True,
                },
                "set": {
                    "path": "/rpc/Switch.Set",
                    "params": {"id": "int", "on": "bool"},
                    "body_from_params": True,
                },
                "dim": {
                    "path": "/rpc/Light.Set",
                    "body": {"id": 0, "brightness": "{level}"},
                    "params": {"level": "int"},
                    "state_from_response": ["result"],
                },
            },
        )
        await adapter.open()
        await run(adapter, "echo", word="a/b c?d=1")
        assert plug.requests[-1].path == "/rpc/Sys.Echo/a/b c?d=1"  # one path segment
        assert plug.requests[-1].query == {}
        assert plug.requests[-1].headers["Authorization"] == "Bearer abc"
        assert adapter.state == {"word": "a/b c?d=1"}
        await run(adapter, "set", id=0, on=True)
        assert plug.requests[-1].body == {"id": 0, "on": True}
        await run(adapter, "dim", level=7)
        assert adapter.state == {"word": "a/b c?d=1", "brightness": 7}
        await adapter.close()


TRAVERSAL: dict[str, Any] = {
    "reset": {
        "path": "/{a}/{b}/reset",
        "params": {"a": "str", "b": "str"},
        "state_from_response": True,
    },
    "find": {  # a value after ``?`` is no path segment: dots are only text there
        "method": "GET",
        "path": "/find?name={name}",
        "params": {"name": "str"},
        "state_from_response": True,
    },
    "dotted": {  # the template itself puts a dot in front of the value
        "path": "/.{a}/reset",
        "params": {"a": "str"},
        "state_from_response": True,
    },
}


@pytest.mark.parametrize("dots", [".", ".."])
async def test_a_dot_segment_is_refused_before_anything_is_sent(dots: str) -> None:
    async with FakePlug() as plug:
        adapter = device(
            base_url=plug.url + "/api/v1",
            headers={"Authorization": "Bearer abc"},
            actions=TRAVERSAL,
        )
        await adapter.open()
        reset = HttpDevice.actions_for(adapter.config)["reset"]
        with pytest.raises(ValidationError) as caught:  # answered invalid_params
            reset.model_validate({"a": dots, "b": "admin"})
        [error] = caught.value.errors()
        assert error["loc"] == ("a",)
        assert f"must not be {dots!r}" in error["msg"]
        assert plug.requests == []  # above all, no POST /api/admin/reset with our token
        await run(adapter, "find", name=dots)
        assert plug.requests[-1].query == {"name": dots}
        await adapter.close()


async def test_a_path_value_is_percent_encoded_into_its_own_segment() -> None:
    async with FakePlug() as plug:
        adapter = device(base_url=plug.url + "/api/v1", actions=TRAVERSAL)
        await adapter.open()
        await run(adapter, "reset", a="a/b?c#d%e", b="...")
        assert plug.requests[-1].raw_path == "/api/v1/a%2Fb%3Fc%23d%25e/.../reset"
        assert plug.requests[-1].path == "/api/v1/a/b?c#d%e/.../reset"  # as the device reads it
        await run(adapter, "reset", a="%2e%2E", b="%2F")  # encoded dots and slashes stay text
        assert plug.requests[-1].raw_path == "/api/v1/%252e%252E/%252F/reset"
        await run(adapter, "dotted", a="x")
        assert plug.requests[-1].raw_path == "/api/v1/.x/reset"
        sent = len(plug.requests)
        with pytest.raises(DeviceError, match=r"'\.' or '\.\.' path segment"):
            await run(adapter, "dotted", a="")  # the template and the value make "."
        assert len(plug.requests) == sent
        await adapter.close()


async def test_http_errors_and_bad_json_are_device_errors() -> None:
    async with FakePlug() as plug:
        adapter = device(
            base_url=plug.url,
            actions={
                "wrong_id": {"method": "GET", "path": "/rpc/Switch.GetStatus?id=9"},
                "deep": {
                    "method": "GET",
                    "path": "/rpc/Switch.GetStatus?id=0",
                    "state_from_response": ["no", "such"],
                },
            },
        )
        await adapter.open()
        with pytest.raises(DeviceError, match=r"HTTP 400.*no such id"):
            await run(adapter, "wrong_id")
        with pytest.raises(DeviceError, match="nothing at"):
            await run(adapter, "deep")
        await adapter.close()


async def test_tls_is_verified_unless_told_otherwise(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with FakePlug(tls=context) as plug:
        assert plug.url.startswith("https://")
        untrusted = device(base_url=plug.url, state=STATUS)
        with pytest.raises(DeviceError, match="TLS"):
            await untrusted.open()
        await untrusted.close()

        trusted = device(base_url=plug.url, state=STATUS, ca_file=str(cert))
        await trusted.open()
        assert trusted.state["output"] is False
        await trusted.close()

        unverified = device(base_url=plug.url, state=STATUS, verify_tls=False)
        await unverified.open()
        await unverified.close()


async def test_connection_refused_is_retried_then_device_error_over_mqtt(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    entry = {
        "id": "gone",
        "type": "http",
        "base_url": f"http://127.0.0.1:{free_port()}",
        "retries": 2,
        "retry_delay": 0.2,
        "actions": SHELLY_ACTIONS,
    }
    async with started(make_config(devices=[entry]), probe):
        begin = time.monotonic()
        result = await probe.command("gone", {"action": "turn_on"})
        assert result["error"]["code"] == "device_error"
        assert "cannot connect after 3 attempts" in result["error"]["message"]
        assert time.monotonic() - begin >= 0.4  # two waits between three attempts


ONE_ACTION = {"path": "/rpc/X"}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"base_url": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"poll_interval": 1}, "needs a state request"),
        ({"actions": {"a": {"path": "/{nope}"}}}, "undeclared parameter(s): nope"),
        ({"actions": {"a": {**ONE_ACTION, "body": {}, "body_from_params": True}}}, "not both"),
        ({"actions": {"Bad-Name": ONE_ACTION}}, "String should match pattern"),
        ({"actions": {"a": {**ONE_ACTION, "params": {"json": "int"}}}}, "'json' is reserved"),
        ({"actions": {"a": {**ONE_ACTION, "params": {"x": "complex"}}}}, "Input should be 'int'"),
        (
            {"actions": {"a": {**ONE_ACTION, "params": {"x": {"type": "bool", "min": 1}}}}},
            "no min",
        ),
        ({"verify_tls": False, "ca_file": __file__}, "ca_file needs verify_tls"),
        ({}, "an http device needs at least one action or a state request"),
    ],
)
def test_config_is_checked(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HttpConfig.model_validate({"id": "d", "type": "http", "base_url": "http://x", **fields})
    assert problem in str(caught.value)


def test_a_device_that_only_reads_its_state_needs_no_action() -> None:
    config = {"id": "meter", "type": "http", "base_url": "http://x", "state": STATUS}
    assert HttpConfig.model_validate(config).actions == {}
