"""Home Assistant MQTT discovery: configs that make HA publish our own commands.

Every entity's command is a command the gateway already understands (a bare
action name, or a JSON command from a template), so nothing here translates at
run time. Availability requires both the gateway's status and the device's
availability to be ``online``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.core.messages import Inbound, Outbound

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config import HomeAssistantSettings
    from gateway.core.topics import Topics

Entity = tuple[str, str, dict[str, Any]]  # (component, object suffix, config)

POWER = {
    "payload_on": "turn_on",
    "payload_off": "turn_off",
    "state_on": "on",
    "state_off": "off",
    "value_template": "{{ value_json.power }}",
}


def _command(action: str, **params: str) -> str:
    """A command template: HA renders ``{{ value }}`` into it."""
    body = ", ".join(f'"{name}": {value}' for name, value in params.items())
    return f'{{"action": "{action}", "params": {{{body}}}}}'


def _switch(name: str) -> Entity:
    return ("switch", "power", {"name": name, **POWER})


def _light() -> Entity:
    return (
        "light",
        "light",
        {
            "name": None,  # the device's own name
            "payload_on": "turn_on",
            "payload_off": "turn_off",
            # A light's state must read as its payload_on/payload_off.
            "state_value_template": "{{ 'turn_on' if value_json.power == 'on' else 'turn_off' }}",
            "brightness_scale": 100,
            "brightness_state_topic": "{state}",
            "brightness_value_template": "{{ value_json.brightness }}",
            "brightness_command_topic": "{command}",
            "brightness_command_template": _command("set_brightness", level="{{ value }}"),
        },
    )


def _speaker() -> list[Entity]:
    return [
        _switch("Power"),
        (
            "number",
            "volume",
            {
                "name": "Volume",
                "min": 0,
                "max": 100,
                "value_template": "{{ value_json.volume }}",
                "command_template": _command("set_volume", level="{{ value | int }}"),
            },
        ),
        (
            "text",
            "play",
            {
                "name": "Play",
                "value_template": "{{ value_json.playing or '' }}",
                "command_template": _command("play", song="{{ value | tojson }}"),
            },
        ),
        ("button", "stop", {"name": "Stop", "payload_press": "stop"}),
    ]


def _sensor() -> list[Entity]:
    return [
        (
            "sensor",
            field,
            {
                "name": field.capitalize(),
                "device_class": field,
                "unit_of_measurement": unit,
                "state_class": "measurement",
                "value_template": f"{{{{ value_json.{field} }}}}",
            },
        )
        for field, unit in (("temperature", "°C"), ("humidity", "%"))
    ]


COMMANDED = frozenset({"switch", "light", "number", "text", "button"})

ENTITIES: dict[str, Callable[[], list[Entity]]] = {
    "simulated.switch": lambda: [_switch("Power")],
    "simulated.light": lambda: [_light()],
    "simulated.speaker": _speaker,
    "simulated.sensor": _sensor,
}


class Discovery:
    """Builds the retained discovery configs for the gateway's devices."""

    def __init__(
        self,
        settings: HomeAssistantSettings,
        topics: Topics,
        node_id: str,
        devices: Sequence[tuple[str, str]],
    ) -> None:
        """Describe ``devices``, ``(id, type)`` pairs, under ``node_id``.

        ``node_id`` (the MQTT client id) keeps two gateways' entities apart.
        """
        self.prefix = settings.prefix
        self.topics = topics
        self.node_id = "".join(c if c.isalnum() or c in "_-" else "_" for c in node_id)
        self.devices = list(devices)

    @property
    def watched(self) -> list[str]:
        """Topic filters to read: HA's status, and our own earlier configs."""
        return [self.status_topic, self.config_filter]

    def handle(self, message: Inbound, publish: Callable[[Outbound], None]) -> bool:
        """Act on a watched message; False if it is not one of ours.

        Home Assistant saying ``online`` (it restarted) gets every config again;
        a retained config of a device no longer configured gets an empty one,
        which removes the entity.
        """
        topic = message.topic
        parts = topic.split("/")
        ours = len(parts) == 5 and parts[0] == self.prefix and parts[2] == self.node_id  # noqa: PLR2004
        if topic == self.status_topic:
            if message.payload.strip() == b"online":
                for announcement in self.announcements():
                    publish(announcement)
        elif ours and parts[4] == "config":
            current = {m.topic for m in self.announcements()}
            if message.retain and message.payload and topic not in current:
                publish(Outbound(topic, b"", retain=True))
        else:
            return False
        message.settle()
        return True

    @property
    def status_topic(self) -> str:
        """Where Home Assistant says ``online`` when it (re)starts."""
        return f"{self.prefix}/status"

    @property
    def config_filter(self) -> str:
        """Every discovery config this gateway may have published before."""
        return f"{self.prefix}/+/{self.node_id}/+/config"

    def config_topic(self, component: str, object_id: str) -> str:
        """Where one entity's config goes."""
        return f"{self.prefix}/{component}/{self.node_id}/{object_id}/config"

    def announcements(self) -> list[Outbound]:
        """A retained config per entity of every device HA can show."""
        messages = []
        for device_id, device_type in self.devices:
            for component, suffix, config in ENTITIES.get(device_type, list)():
                object_id = f"{device_id}_{suffix}"
                body = self._complete(device_id, device_type, object_id, config)
                if component in COMMANDED:
                    body.setdefault("command_topic", f"{self.topics.base}/{device_id}/command")
                payload = json.dumps(body).encode()
                topic = self.config_topic(component, object_id)
                messages.append(Outbound(topic, payload, retain=True))
        return messages

    def _complete(
        self, device_id: str, device_type: str, object_id: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        topics = self.topics
        state, command = topics.state(device_id), f"{topics.base}/{device_id}/command"
        body = {
            key: value.format(state=state, command=command)
            if value in {"{state}", "{command}"}
            else value
            for key, value in config.items()
        }
        if "payload_press" not in body:  # a button has no state
            body.setdefault("state_topic", state)
        body["unique_id"] = f"{self.node_id}_{object_id}"
        body["availability"] = [
            {"topic": topics.status},
            {"topic": topics.availability(device_id)},
        ]
        body["availability_mode"] = "all"
        body["device"] = {
            "identifiers": [f"{self.node_id}_{device_id}"],
            "name": device_id,
            "manufacturer": "iot-gateway",
            "model": device_type,
        }
        return body
