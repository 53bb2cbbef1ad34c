"""The MQTT topic layout of the contract, as pure functions (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the gateway uses, under one base topic."""

    base: str

    @property
    def command_filter(self) -> str:
        """Subscription for device and gateway commands."""
        return f"{self.base}/+/command"

    @property
    def status(self) -> str:
        """The gateway's retained ``online``/``offline`` (also its will)."""
        return f"{self.base}/{GATEWAY}/status"

    @property
    def device_list(self) -> str:
        """The retained list of devices and their actions."""
        return f"{self.base}/{GATEWAY}/devices"

    @property
    def scenes(self) -> str:
        """The retained list of scenes."""
        return f"{self.base}/{GATEWAY}/scenes"

    def result(self, device: str) -> str:
        """Where results of commands to ``device`` go."""
        return f"{self.base}/{device}/result"

    def state(self, device: str) -> str:
        """The device's retained state."""
        return f"{self.base}/{device}/state"

    def availability(self, device: str) -> str:
        """The device's retained ``online``/``offline``."""
        return f"{self.base}/{device}/availability"

    def command_target(self, topic: str) -> str | None:
        """The device segment of a command topic, or None for any other topic."""
        prefix = f"{self.base}/"
        if not topic.startswith(prefix) or not topic.endswith("/command"):
            return None
        segment = topic[len(prefix) : -len("/command")]
        return segment if segment and "/" not in segment else None
