"""The MQTT topic layout of the contract, as pure functions (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

GATEWAY = "gateway"
MAX_TOPIC_BYTES = 65535


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the gateway uses, under one base topic."""

    base: str
    response_prefix: str | None = None
    """When set, Response Topics must lie under it (``mqtt.response_prefix``)."""

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
    def health(self) -> str:
        """The retained health report (contract 12)."""
        return f"{self.base}/{GATEWAY}/health"

    def standby_record(self, instance: str) -> str:
        """An instance's retained role record in a standby group (README "Hot standby")."""
        return f"{self.base}/{GATEWAY}/standby/{instance}"

    @property
    def standby_records(self) -> str:
        """Every instance's role record."""
        return f"{self.base}/{GATEWAY}/standby/+"

    @property
    def results(self) -> str:
        """Every device's (and the gateway's) result topic."""
        return f"{self.base}/+/result"

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
        if len(topic) < len(prefix) + len("/command"):  # "iot/command": the two overlap
            return None
        segment = topic[len(prefix) : -len("/command")]
        # An empty segment (iot//command) matches the subscription too: it is
        # answered unknown_device like any other wrong id.
        return segment if "/" not in segment else None

    def response_topic_refusal(self, topic: str) -> str | None:
        """Why a command's Response Topic cannot be used, or None if it can.

        A result may not land on a wildcard (MQTT 5 §3.3.2.3.5), nor anywhere under
        the base topic, where it would forge another device's result, state or
        command, whatever the base's depth; with a ``response_prefix``, only under it.
        """
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            return "it is not a valid topic name"
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            return "it is too long"
        if topic == self.base or topic.startswith(f"{self.base}/"):
            return f"it lies under the gateway's base topic {self.base!r}"
        prefix = self.response_prefix
        if prefix is not None and not topic.startswith(f"{prefix.rstrip('/')}/"):
            return f"it lies outside mqtt.response_prefix {prefix!r}"
        return None
