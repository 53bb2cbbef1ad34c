"""Each adapter's config is checked by its own model; the example config really works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from pydantic import ValidationError

from gateway import AdapterRegistry
from gateway.config import validate_devices
from tests.conftest import started
from tests.fakes import FakePlc, FakePlug, FakeProjector

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.probe import Probe, Received

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "adapters.yaml"
REFERENCE = ROOT / "docs" / "adapters.md"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m gateway check-config -c PATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
        check=False,
    )


def test_check_config_names_the_bad_field_of_each_adapter(tmp_path: Path) -> None:
    shelly = {"base_url": "http://plug"}
    devices: list[dict[str, Any]] = [
        {"id": "plug", "type": "http", "base_url": "ftp://plug", "state": {"path": "/s"}},
        {"id": "plug2", "type": "http", **shelly, "actions": {"on": {"method": "FETCH"}}},
        {"id": "projector", "type": "tcp", "host": "p", "port": 70000, "state_regex": "(?P<s>.)"},
        {"id": "shell", "type": "command", "actions": {"run": {"argv": ["echo", "-x={x}"]}}},
        {"id": "plc", "type": "modbus", "host": "p", "registers": {"t": {"address": -1}}},
    ]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"devices": devices}), encoding="utf-8")
    done = check_config(path)
    assert done.returncode == 78, done.stderr
    expected = [
        "devices[0].base_url: Value error, must be an http:// or https:// URL with a host",
        "devices[1].actions.on.method: Input should be 'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'",
        "devices[1].actions.on.path: Field required",
        "devices[2].port: Input should be less than or equal to 65535",
        (
            "devices[3].actions.run.argv: Value error, argv[1] '-x={x}': a parameter must be a "
            "whole argument, like '{name}'"
        ),
        "devices[4].registers.t.address: Input should be greater than or equal to 0",
    ]
    assert done.stderr.splitlines() == [f"config error: {line}" for line in expected]


def test_check_config_refuses_a_device_that_can_do_nothing(tmp_path: Path) -> None:
    devices: list[dict[str, Any]] = [
        {"id": "bare", "type": "command"},
        {"id": "plug", "type": "http", "base_url": "http://plug"},
        {"id": "projector", "type": "tcp", "host": "p", "port": 4352, "query": "PWR?"},
        {"id": "plc", "type": "modbus", "host": "p"},
        # Each of these reads a state, so it does something without actions.
        {"id": "meter", "type": "http", "base_url": "http://m", "state": {"path": "/status"}},
        {"id": "listener", "type": "tcp", "host": "p", "port": 1, "state_regex": "V=(?P<v>.*)"},
        {"id": "date", "type": "command", "state": {"argv": ["/bin/date", "+{{}}"]}},
        {"id": "gauge", "type": "modbus", "host": "p", "registers": {"t": {"address": 0}}},
    ]
    path = tmp_path / "bare.yaml"
    path.write_text(yaml.safe_dump({"devices": devices}), encoding="utf-8")
    done = check_config(path)
    assert done.returncode == 78, done.stderr
    expected = [
        (
            "devices[0].actions: Value error, a command device needs at least one action or a "
            "state program"
        ),
        (
            "devices[1].actions: Value error, an http device needs at least one action or a "
            "state request"
        ),
        "devices[2].actions: Value error, a tcp device needs at least one action or state_regex",
        "devices[3].registers: Value error, a modbus device needs at least one coil or register",
    ]
    assert done.stderr.splitlines() == [f"config error: {line}" for line in expected]


def test_string_params_have_a_length_limit_unless_the_config_sets_one() -> None:
    params = {
        "plain": "str",
        "short": {"type": "str", "max": 20},
        "long": {"type": "str", "min": 2000},
    }
    entries: list[dict[str, Any]] = [
        {
            "id": "h",
            "type": "http",
            "base_url": "http://h",
            "actions": {"a": {"path": "/{plain}/{short}/{long}"}},
        },
        {"id": "t", "type": "tcp", "host": "t", "port": 1, "actions": {"a": {"send": "{plain}"}}},
        {"id": "c", "type": "command", "actions": {"a": {"argv": ["/bin/echo", "{plain}"]}}},
    ]
    registry = AdapterRegistry.from_entry_points()
    for entry in entries:
        entry["actions"]["a"]["params"] = params
    devices, problems = validate_devices(entries, registry)
    assert problems == []
    for device in devices.values():
        model = registry.get(device.type).actions_for(device)["a"]
        lengths = {
            name: field.get("maxLength")
            for name, field in model.model_json_schema()["properties"].items()
        }
        assert lengths == {"plain": 1024, "short": 20, "long": 2000}, device.type
        model.model_validate({"plain": "x" * 1024, "short": "x", "long": "x" * 2000})
        with pytest.raises(ValidationError, match="at most 1024 characters"):
            model.model_validate({"plain": "x" * 1025, "short": "x", "long": "x" * 2000})
    play = registry.get("simulated.speaker").actions["play"]
    assert play.model_json_schema()["properties"]["song"]["maxLength"] == 255


def test_the_reference_examples_are_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.DOTALL)
    entries = [
        entry for block in blocks if isinstance(e := yaml.safe_load(block), list) for entry in e
    ]
    assert {entry["type"] for entry in entries} == {"http", "tcp", "command", "modbus"}
    devices, problems = validate_devices(entries, AdapterRegistry.from_entry_points())
    assert problems == []
    assert len(devices) == len(entries)


def test_the_example_config_is_valid() -> None:
    done = check_config(EXAMPLE)
    assert done.returncode == 0, done.stderr
    assert "OK (4 devices)" in done.stdout


async def test_the_example_config_runs_against_stand_ins(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["devices"]
    by_id = {device["id"]: device for device in devices}
    async with FakePlug() as plug, FakeProjector() as projector, FakePlc() as plc:
        by_id["plug"]["base_url"] = plug.url
        by_id["projector"]["port"] = projector.port
        by_id["boiler"]["port"] = plc.port
        async with started(make_config(devices=devices), probe):
            for device in by_id:
                await probe.wait_for(online(device))
            commands = {
                "host": {"action": "say", "params": {"text": "hello; rm -rf /"}},
                "plug": {"action": "set", "params": {"on": True}},
                "projector": {"action": "set_volume", "params": {"level": 20}},
                "boiler": {"action": "set_setpoint", "params": {"value": 21.5}},
            }
            for device, command in commands.items():
                result = await probe.command(device, command)
                assert result["status"] == "ok", result
            assert plug.output is True
            assert projector.volume == 20
            assert await plc.read(3, 2) == 43


def online(device: str) -> Callable[[Received], bool]:
    """Matches ``device`` saying it is online."""
    topic = f"iot/{device}/availability"
    return lambda m: m.topic == topic and m.payload == b"online"
