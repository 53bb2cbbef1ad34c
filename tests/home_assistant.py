"""Playing Home Assistant's part: required discovery keys, and its templates rendered as it does.

The required keys are written out from Home Assistant's MQTT documentation
(each platform's page, "Configuration Variables" marked required) and its
device-based discovery section: a device config needs ``device`` (with
``identifiers``), ``origin`` (with ``name``) and ``cmps``, each component a
``platform`` and a ``unique_id``.

Templates are rendered with Jinja2's sandbox, as Home Assistant does: a value
template sees ``value`` (the payload text), ``value_json`` (it parsed) and
``this`` (the entity's current state); a command template sees ``value``.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

REQUIRED: dict[str, set[str]] = {
    "binary_sensor": {"state_topic"},
    "button": {"command_topic"},
    "event": {"state_topic", "event_types"},
    "light": {"command_topic"},
    "number": {"command_topic"},
    "select": {"command_topic", "options"},
    "sensor": {"state_topic"},
    "switch": {"command_topic"},
    "text": {"command_topic"},
}
# What each platform reads its state with, when it has one.
VALUE_TEMPLATE = {"light": "state_value_template"}
# Keys Home Assistant accepts for the shared parts (abbreviations left out).
DEVICE_KEYS = {
    "identifiers",
    "name",
    "manufacturer",
    "model",
    "sw_version",
    "suggested_area",
    "via_device",
    "configuration_url",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
ENTITY_CATEGORIES = {"config", "diagnostic"}

_jinja = ImmutableSandboxedEnvironment()


class This:
    """The ``this`` of a template: the entity's current state."""

    def __init__(self, state: str) -> None:
        self.state = state


def render_value(template: str, payload: bytes, this: str = "unknown") -> str:
    """What a value template makes of ``payload``."""
    text = payload.decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return _jinja.from_string(template).render(value=text, value_json=parsed, this=This(this))


def render_command(template: str, value: Any) -> str:
    """What a command template makes of the value Home Assistant sends."""
    return _jinja.from_string(template).render(value=value)


def problems(config: dict[str, Any]) -> list[str]:
    """What Home Assistant would refuse in a device-based discovery payload."""
    found = []
    device, origin = config.get("device", {}), config.get("origin", {})
    if not device.get("identifiers"):
        found.append("device.identifiers missing")
    found += [f"device.{key} unknown" for key in set(device) - DEVICE_KEYS]
    if not origin.get("name"):
        found.append("origin.name missing")
    found += [f"origin.{key} unknown" for key in set(origin) - ORIGIN_KEYS]
    components = config.get("cmps") or {}
    if not components:
        found.append("no cmps")
    for key, component in components.items():
        found += [f"{key}: {problem}" for problem in component_problems(component)]
    return found


def component_problems(component: dict[str, Any]) -> list[str]:
    """What one component lacks, or holds that its platform refuses."""
    platform = component.get("platform")
    if platform not in REQUIRED:
        return [f"platform {platform!r}"]
    found = [f"{key} missing" for key in REQUIRED[platform] if key not in component]
    if not component.get("unique_id"):
        found.append("unique_id missing")
    if "object_id" in component:
        found.append("object_id (Home Assistant 2026.4 drops it: default_entity_id)")
    if not str(component.get("default_entity_id", "")).startswith(f"{platform}."):
        found.append("default_entity_id is not of its platform")
    if component.get("entity_category", "config") not in ENTITY_CATEGORIES:
        found.append("entity_category")
    found += _bounds_problems(platform, component)
    for key, value in component.items():
        if key.endswith("template"):
            _jinja.parse(value)  # raises on a template Home Assistant could not compile
    return found


def _bounds_problems(platform: str, component: dict[str, Any]) -> list[str]:
    if platform == "number" and not component.get("min", 1) < component.get("max", 100):
        return ["min is not below max"]
    if platform == "text" and not 0 <= component.get("min", 0) <= component.get("max", 255) <= 255:
        return ["text length bounds outside 0..255"]
    if platform in {"select", "event"}:
        values = component.get("options" if platform == "select" else "event_types")
        if not values or not all(isinstance(v, str) for v in values):
            return ["options must be a non-empty list of strings"]
    return []
