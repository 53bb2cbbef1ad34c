"""Fixtures: a private Mosquitto per test, configs, an in-process gateway, a probe client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from gateway import AdapterRegistry, Config, Gateway, load_config, running_gateway
from tests.broker import Broker
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

# Short timings keep the suite fast; the defaults are for production.
FAST = {
    "mqtt": {"reconnect": {"min_delay": 0.05, "max_delay": 0.5}, "keepalive": 5},
    "gateway": {"shutdown_grace": 1, "device_retry": {"min_delay": 0.05, "max_delay": 0.5}},
}

DEMO_DEVICES: list[dict[str, Any]] = [
    {"id": "hub", "type": "simulated.switch"},
    {"id": "light", "type": "simulated.light", "depends_on": ["hub"]},
    {"id": "speaker", "type": "simulated.speaker"},
    {"id": "sensor", "type": "simulated.sensor", "interval": 30},
]


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own state directory, so its journal is its own (and in-process ones too)."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return state


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running private broker, with persistence, stopped after the test."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    server = Broker(workdir)
    server.start()
    yield server
    server.kill()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base``, nested mappings merged too."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_data(broker: Broker, **sections: Any) -> dict[str, Any]:
    """Config data for ``broker``: fast timings, demo devices unless given."""
    data = deep_merge(FAST, {"mqtt": {"host": broker.host, "port": broker.port}})
    data["devices"] = DEMO_DEVICES
    return deep_merge(data, sections)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write config data to a YAML file and return its path."""

    def write(data: dict[str, Any]) -> Path:
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def make_config(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> Callable[..., Config]:
    """Build a validated Config for the test broker; keyword sections override."""

    def make(**sections: Any) -> Config:
        path = write_config(config_data(broker, **sections))
        return load_config(path, AdapterRegistry.from_entry_points())

    return make


@pytest.fixture
async def probe(broker: Broker) -> AsyncIterator[Probe]:
    """A client watching everything under ``iot/``."""
    async with Probe(broker.port, ["iot/#"]) as client:
        yield client


@contextlib.asynccontextmanager
async def started(config: Config, probe: Probe) -> AsyncIterator[Gateway]:
    """Run a gateway in-process and wait until it announced itself."""
    base = config.settings.mqtt.base_topic
    status = f"{base}/gateway/status"
    async with running_gateway(config, AdapterRegistry.from_entry_points()) as gateway:
        await probe.wait_for(lambda m: m.topic == status and m.payload == b"online")
        yield gateway


@contextlib.contextmanager
def gateway_process(config_path: Path, **env: str) -> Iterator[GatewayProcess]:
    """Run ``python -m gateway run -c FILE`` as a real process; killed on exit."""
    process = GatewayProcess(config_path, env)
    try:
        yield process
    finally:
        process.kill()


class GatewayProcess:
    """The gateway as a child process, its stderr kept in a file beside the config."""

    def __init__(self, config_path: Path, env: dict[str, str]) -> None:
        """Start it."""
        self.log_path = config_path.with_suffix(".log")
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, **env},
            )

    def send_signal(self, sig: int) -> None:
        """Signal the process."""
        self.popen.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """Wait for the exit code without blocking the event loop."""
        return await asyncio.wait_for(asyncio.to_thread(self.popen.wait), timeout)

    def log(self) -> str:
        """What it wrote to stderr."""
        return self.log_path.read_text()

    def kill(self) -> None:
        """Make sure it is gone."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
