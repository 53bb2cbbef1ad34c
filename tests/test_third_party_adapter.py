"""A third-party adapter package, registered by its own entry point, driven over MQTT.

The package is made in a temporary directory as an installer would leave it (a
module and a ``*.dist-info`` with ``entry_points.txt``) and put on ``sys.path``,
where ``importlib.metadata`` finds it. Its adapter is the one printed in
``docs/writing-an-adapter.md``, taken from the guide itself, so the guide works.
Beside it: an adapter with a bug, and one that offers the contract tests a sample.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from gateway import AdapterRegistry, running_gateway
from tests.test_adapter_contract import CONTRACT_CHECKS, SAMPLES, contract_case, contract_types

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from gateway import Config
    from tests.probe import Probe

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-an-adapter.md"
MODULES = ("acme_thermostat", "acme_buggy", "acme_lamp")

BUGGY = '''
"""An adapter with a bug: the host must still answer, with device_error."""

from devices import Adapter, NoParams


class Buggy(Adapter):
    actions = {"crash": NoParams}

    async def open(self):
        pass

    async def close(self):
        pass

    async def execute(self, action, params):
        raise RuntimeError("a bug in the adapter")
'''


LAMP = '''
"""An adapter that offers the gateway's contract tests a sample of itself."""

import contextlib

from devices import Adapter, ContractSample, DeviceConfig, DeviceError, NoParams


class LampConfig(DeviceConfig):
    reachable: bool = True


class Lamp(Adapter):
    config_model = LampConfig
    actions = {"turn_on": NoParams, "jam": NoParams}

    @classmethod
    @contextlib.asynccontextmanager
    async def contract_sample(cls):
        yield ContractSample(
            config={},
            broken={"reachable": False},
            changing=("turn_on", {}),
            failing=("jam", {}),
        )

    async def open(self):
        if not self.config.reachable:
            raise DeviceError("no lamp there")
        self.state.setdefault("power", "off")

    async def close(self):
        pass

    async def execute(self, action, params):
        if action == "jam":
            raise DeviceError("the switch is stuck")
        self.update_state(power="on")
'''


def code_from_guide(file_name: str) -> str:
    """The Python block that follows ``<!-- file: NAME -->`` in the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    marker = f"<!-- file: {file_name} -->\n```python\n"
    start = text.index(marker) + len(marker)
    return text[start : text.index("\n```", start)] + "\n"


@pytest.fixture
def acme_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ``iot-gateway-acme`` package, installed into a directory on ``sys.path``."""
    site = tmp_path / "site"
    dist = site / "iot_gateway_acme-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: iot-gateway-acme\nVersion: 0.1.0\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        "[iot_gateway.adapters]\n"
        "acme.thermostat = acme_thermostat:Thermostat\n"
        "acme.buggy = acme_buggy:Buggy\n"
        "acme.lamp = acme_lamp:Lamp\n",
        encoding="utf-8",
    )
    (site / "acme_thermostat.py").write_text(code_from_guide("acme_thermostat.py"), "utf-8")
    (site / "acme_buggy.py").write_text(BUGGY, encoding="utf-8")
    (site / "acme_lamp.py").write_text(LAMP, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in MODULES:
        sys.modules.pop(module, None)


def test_without_the_package_the_types_are_unknown() -> None:
    names = set(AdapterRegistry.from_entry_points().names())
    assert not {"acme.thermostat", "acme.buggy", "acme.lamp"} & names


async def test_the_contract_checks_a_third_party_adapter_only_with_a_sample(
    acme_site: Path,
) -> None:
    del acme_site
    registry = AdapterRegistry.from_entry_points()
    checked = set(contract_types(registry))
    assert set(SAMPLES) | {"acme.lamp"} <= checked
    assert "acme.buggy" not in checked  # no sample: not checked, and no failure either
    offers = registry.get("acme.thermostat").contract_sample() is not None  # as the guide has it
    assert ("acme.thermostat" in checked) is offers
    async with contract_case(registry, "acme.lamp") as case:
        for check in CONTRACT_CHECKS:
            await check(case)


async def test_third_party_adapter_runs_over_mqtt(
    acme_site: Path, make_config: Callable[..., Config], probe: Probe
) -> None:
    del acme_site
    registry = AdapterRegistry.from_entry_points()
    assert {"acme.thermostat", "acme.buggy"} <= set(registry.names())
    devices = [
        {"id": "hall", "type": "acme.thermostat", "host": "192.0.2.20"},
        {"id": "bug", "type": "acme.buggy"},
    ]
    async with running_gateway(make_config(devices=devices), registry):
        listing = (await probe.wait_topic("iot/gateway/devices"))[-1].json
        hall = next(d for d in listing if d["id"] == "hall")
        assert hall["type"] == "acme.thermostat"
        assert hall["actions"]["set_target"]["properties"]["celsius"]["maximum"] == 30
        state = await probe.wait_topic("iot/hall/state")
        assert state[-1].json == {"mode": "off", "target": 20.0, "temperature": 19.5}

        refused = await probe.command("hall", {"action": "boost"})
        assert refused["error"]["code"] == "precondition_failed"
        assert (await command(probe, "hall", "set_mode", mode="heat"))["status"] == "ok"
        boosted = await probe.command("hall", {"action": "boost"})
        assert boosted["status"] == "ok"
        assert boosted["state"]["target"] == 24.0
        too_hot = await command(probe, "hall", "set_target", celsius=99)
        assert too_hot["error"]["code"] == "invalid_params"
        assert "params.celsius" in too_hot["error"]["message"]

        crashed = await probe.command("bug", {"action": "crash"})
        assert crashed["error"]["code"] == "device_error"
        assert "RuntimeError: a bug in the adapter" in crashed["error"]["message"]


def test_check_config_validates_with_the_third_party_model(
    acme_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "acme.yaml"
    devices = [{"id": "hall", "type": "acme.thermostat", "report_every": 0}]
    config.write_text(yaml.safe_dump({"devices": devices}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "PYTHONPATH": str(acme_site)},
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "devices[0].host: Field required" in done.stderr
    assert "devices[0].report_every: Input should be greater than 0" in done.stderr


async def command(probe: Probe, device: str, action: str, **params: Any) -> Any:
    """Send ``action`` with ``params`` and return its result."""
    return await probe.command(device, {"action": action, "params": params})
