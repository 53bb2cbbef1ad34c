"""Simulated devices for demos and tests: a switch, a light, a speaker and a sensor."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from devices.base import (
    Adapter,
    DeviceConfig,
    DeviceError,
    DeviceEvents,
    NoParams,
    Params,
    PreconditionFailedError,
)
from devices.capabilities import StateField

if TYPE_CHECKING:
    from collections.abc import Mapping


class SimulatedConfig(DeviceConfig):
    """Knobs every simulated device takes."""

    latency: float = Field(default=0, ge=0)
    connect_delay: float = Field(default=0, ge=0)
    fail_on: tuple[str, ...] = ()
    open_failures: int = Field(default=0, ge=0)
    """How many opens fail before one succeeds (to show retry with backoff)."""


class SensorConfig(SimulatedConfig):
    """A sensor also publishes a reading every ``interval`` seconds."""

    interval: float = Field(default=30, gt=0)


class Level(Params):
    """A level from 0 to 100 (brightness, volume)."""

    level: int = Field(ge=0, le=100)


class Song(Params):
    """The song to play: a title or a URI, not a document."""

    # 255: the longest state Home Assistant keeps; the song is the `playing` text entity's.
    song: str = Field(min_length=1, max_length=255)


_POWER_ACTIONS: Mapping[str, type[Params]] = {
    "turn_on": NoParams,
    "turn_off": NoParams,
    "toggle": NoParams,
}


# `power` is "on"/"off", switched by turn_on/turn_off.
_POWER = StateField(
    kind="bool", on_value="on", off_value="off", turn_on="turn_on", turn_off="turn_off"
)


class SimulatedDevice(Adapter):
    """Shared behaviour: connect delay, latency, injected failures."""

    config_model: ClassVar[type[DeviceConfig]] = SimulatedConfig
    manufacturer: ClassVar[str | None] = "iot-gateway"
    initial_state: ClassVar[Mapping[str, object]] = {}
    config: SimulatedConfig

    def __init__(self, config: DeviceConfig, events: DeviceEvents) -> None:
        """Start with no failed opens."""
        super().__init__(config, events)
        self._opens_failed = 0

    async def open(self) -> None:
        """Connect after ``connect_delay``; fail the first ``open_failures`` times."""
        await asyncio.sleep(self.config.connect_delay)
        if self._opens_failed < self.config.open_failures:
            self._opens_failed += 1
            raise DeviceError(f"simulated connect failure {self._opens_failed}")
        if not self.state:
            self.state.update(self.initial_state)

    async def close(self) -> None:
        """Nothing to release."""

    async def execute(self, action: str, params: Params) -> None:
        """Wait ``latency``, fail if asked to, then apply the action."""
        await asyncio.sleep(self.config.latency)
        if action in self.config.fail_on:
            raise DeviceError(f"simulated failure of {action!r}")
        await self.apply(action, params)

    async def apply(self, action: str, params: Params) -> None:
        """Change the state for ``action``; the power actions are shared."""
        del params
        power = {"turn_on": "on", "turn_off": "off"}.get(action)
        if action == "toggle":
            power = "off" if self.state.get("power") == "on" else "on"
        if power is not None:
            self.update_state(power=power)


class SimulatedSwitch(SimulatedDevice):
    """An on/off switch."""

    actions: ClassVar[Mapping[str, type[Params]]] = _POWER_ACTIONS
    state_fields: ClassVar[Mapping[str, StateField]] = {"power": _POWER}
    model: ClassVar[str | None] = "Simulated switch"
    initial_state: ClassVar[Mapping[str, object]] = {"power": "off"}


class SimulatedLight(SimulatedDevice):
    """A dimmable light."""

    actions: ClassVar[Mapping[str, type[Params]]] = {**_POWER_ACTIONS, "set_brightness": Level}
    # brightness is derived from set_brightness; with power, a light.
    state_fields: ClassVar[Mapping[str, StateField]] = {"power": _POWER}
    model: ClassVar[str | None] = "Simulated light"
    initial_state: ClassVar[Mapping[str, object]] = {"power": "off", "brightness": 100}

    async def apply(self, action: str, params: Params) -> None:
        """Set the brightness, or switch power."""
        if isinstance(params, Level):
            self.update_state(brightness=params.level)
        else:
            await super().apply(action, params)


class SimulatedSpeaker(SimulatedDevice):
    """A speaker that plays only while on."""

    actions: ClassVar[Mapping[str, type[Params]]] = {
        "turn_on": NoParams,
        "turn_off": NoParams,
        "set_volume": Level,
        "play": Song,
        "stop": NoParams,
    }
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "power": _POWER,
        # `play` sets what is playing; `play` keeps the key of earlier discovery configs.
        "playing": StateField(kind="string", set_by="play", entity_key="play", name="Play"),
    }
    model: ClassVar[str | None] = "Simulated speaker"
    initial_state: ClassVar[Mapping[str, object]] = {"power": "off", "volume": 50, "playing": None}

    async def apply(self, action: str, params: Params) -> None:
        """Play, stop, set the volume, or switch power (off also stops)."""
        if isinstance(params, Level):
            self.update_state(volume=params.level)
        elif isinstance(params, Song):
            if self.state["power"] != "on":
                raise PreconditionFailedError("cannot play while the speaker is off")
            self.update_state(playing=params.song)
        elif action == "stop":
            self.update_state(playing=None)
        elif action == "turn_off":
            self.update_state(power="off", playing=None)
        else:
            await super().apply(action, params)


class SimulatedSensor(SimulatedDevice):
    """A temperature and humidity sensor that reports every ``interval``."""

    config_model: ClassVar[type[DeviceConfig]] = SensorConfig
    actions: ClassVar[Mapping[str, type[Params]]] = {"read": NoParams}
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "temperature": StateField(
            kind="number", unit="°C", device_class="temperature", state_class="measurement"
        ),
        "humidity": StateField(
            kind="number", unit="%", device_class="humidity", state_class="measurement"
        ),
    }
    model: ClassVar[str | None] = "Simulated sensor"
    config: SensorConfig

    async def open(self) -> None:
        """Connect and take a first reading."""
        await super().open()
        self.state.update(self._reading())

    async def background(self) -> None:
        """Publish a fresh reading every interval, changed or not."""
        while True:
            await asyncio.sleep(self.config.interval)
            self.update_state(force=True, **self._reading())

    async def apply(self, action: str, params: Params) -> None:
        """Take a reading now."""
        del action, params
        self.update_state(force=True, **self._reading())

    @staticmethod
    def _reading() -> dict[str, float]:
        return {
            "temperature": round(random.uniform(18, 24), 1),  # noqa: S311
            "humidity": round(random.uniform(35, 55), 1),  # noqa: S311
        }


class SimulatedCounter(SimulatedDevice):
    """Counts the commands it runs: shows that none runs twice or is lost."""

    actions: ClassVar[Mapping[str, type[Params]]] = {"increment": NoParams, "reset": NoParams}
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "count": StateField(kind="number", state_class="total_increasing")
    }
    model: ClassVar[str | None] = "Simulated counter"
    initial_state: ClassVar[Mapping[str, object]] = {"count": 0}

    async def apply(self, action: str, params: Params) -> None:
        """Add one, or go back to zero."""
        del params
        self.update_state(count=0 if action == "reset" else self.state["count"] + 1)
