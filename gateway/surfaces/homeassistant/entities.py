"""Home Assistant entities from a device's capabilities, in the spirit of Zigbee2MQTT's exposes.

Pure functions: fields and actions in, discovery components out. Every command
an entity sends is one the gateway already understands (a bare action name, or
a JSON command rendered by the entity's command template), and every value
template reads the device's retained ``state`` JSON.

The generic mapping:

- a bool field: ``switch`` when actions set it, else ``binary_sensor``; with a
  settable ``brightness`` field beside it, a ``light``;
- a number: ``number`` when settable (bounds and step from the parameter),
  else ``sensor``;
- an enum: ``select`` when settable, else a ``sensor`` of its options;
- a string: ``text`` when settable, else ``sensor``;
- an action that sets no field: ``button`` without parameters, or a control of
  its one parameter's kind (a string parameter: ``text``);
- every device also gets an ``event`` entity firing on failed commands and a
  diagnostic "last error" sensor.

A field's ``platform`` overrides the choice (``none`` hides it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from devices.capabilities import (
    StateField,
    capabilities,
    param_names,
    param_schema,
    platform_problem,
    used_actions,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from devices import Params

Component = dict[str, Any]

BRIGHTNESS = "brightness"
TEXT_MAX = 255  # Home Assistant's longest text entity value (and state)
ERROR_EVENT = "command_error"
LAST_ERROR = "last_error"
DIAGNOSTIC = "diagnostic"


class Topics:
    """The MQTT topics one device's entities read and write."""

    def __init__(self, state: str, command: str, result: str) -> None:
        """The device's ``state``, ``command`` and ``result`` topics."""
        self.state, self.command, self.result = state, command, result


def device_entities(
    fields: Mapping[str, StateField],
    actions: Mapping[str, type[Params]],
    topics: Topics,
    error_codes: Iterable[str],
) -> dict[str, Component]:
    """Every entity of one device, by its key (the unique id's suffix)."""
    components: dict[str, Component] = {}
    light = _light_field(fields)
    for key, field in fields.items():
        if key == BRIGHTNESS and light is not None:
            continue  # part of the light
        platform = _chosen(field) or ("light" if key == light else _platform(field))
        if platform == "none":
            continue
        brightness = fields[BRIGHTNESS] if key == light else None
        entity = _entity(platform, key, field, brightness, topics)
        components[field.entity_key or ("light" if key == light else key)] = entity
    used = used_actions(fields.values())
    for action, model in actions.items():
        control = None if action in used else _action_entity(action, model, topics)
        if control is not None:
            components.setdefault(action, control)
    components[ERROR_EVENT] = _error_event(topics, error_codes)
    components[LAST_ERROR] = _last_error(topics)
    return components


def _light_field(fields: Mapping[str, StateField]) -> str | None:
    """The bool field a light switches, when a settable brightness goes with it."""
    brightness = fields.get(BRIGHTNESS)
    if brightness is None or brightness.kind != "number" or not brightness.settable:
        return None
    if brightness.platform is not None:
        return None  # shown as it says, not as part of a light
    return next(
        (
            key
            for key, field in fields.items()
            if field.kind == "bool" and field.settable and field.platform in {None, "light"}
        ),
        None,
    )


def _chosen(field: StateField) -> str | None:
    """The field's own platform, unless it cannot show the field (check-config says why)."""
    return field.platform if platform_problem(field) is None else None


def _platform(field: StateField) -> str:
    settable = {"bool": "switch", "number": "number", "enum": "select", "string": "text"}
    read_only = {"bool": "binary_sensor"}
    kind = field.kind or "string"
    return settable[kind] if field.settable else read_only.get(kind, "sensor")


def _entity(  # noqa: PLR0911 - one branch per platform
    platform: str,
    key: str,
    field: StateField,
    brightness: StateField | None,
    topics: Topics,
) -> Component:
    common = _common(platform, key, field)
    value = _value(key, field)
    if platform == "switch":
        return common | _switch(key, field, topics)
    if platform == "light":
        return common | _light(key, field, brightness, topics) | {"name": None}
    if platform == "binary_sensor":
        return common | _binary_sensor(key, field, topics)
    reads = {"state_topic": topics.state, "value_template": value}
    if platform == "number":
        return common | _number(field, topics) | reads
    if platform == "select":
        return common | _select(field, topics) | reads
    if platform == "text":
        return common | _text(field, topics) | reads
    return common | _sensor(field) | reads


def _common(platform: str, key: str, field: StateField) -> Component:
    entity: Component = {"platform": platform, "name": field.name or _title(key)}
    if field.device_class is not None:
        entity["device_class"] = field.device_class
    if field.diagnostic:
        entity["entity_category"] = DIAGNOSTIC
    return entity


def _title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _read(key: str) -> str:
    """A Jinja expression reading ``key`` from the state JSON."""
    return f"value_json[{json.dumps(key)}]"


def _value(key: str, field: StateField) -> str:
    if field.kind in {"string", "enum"}:
        # A missing or null string reads as empty, not as "None".
        return f"{{{{ {_read(key)} if {_read(key)} is not none else '' }}}}"
    return f"{{{{ {_read(key)} }}}}"


def _on_off(key: str, field: StateField) -> str:
    """``on`` or ``off`` from the field's own values (``"on"``, ``true``, ``1``...)."""
    return f"{{{{ 'on' if {_read(key)} == {json.dumps(field.on_value)} else 'off' }}}}"


def command(action: str, param: str | None = None, value: str = "{{ value }}") -> str:
    """A command's JSON text; with ``param``, its value is the Jinja expression ``value``."""
    if param is None:
        return json.dumps({"action": action})
    return f'{{"action": {json.dumps(action)}, "params": {{{json.dumps(param)}: {value}}}}}'


def _payloads(field: StateField) -> tuple[str, str]:
    """What turns the bool field on and off: bare action names, or ``set_by`` commands."""
    if field.turn_on is not None and field.turn_off is not None:
        return field.turn_on, field.turn_off
    assert field.set_by is not None  # noqa: S101 - only settable fields get here
    on, off = (json.dumps(value) for value in (field.on_value, field.off_value))
    return command(field.set_by, field.param, on), command(field.set_by, field.param, off)


def _switch(key: str, field: StateField, topics: Topics) -> Component:
    on, off = _payloads(field)
    return {
        "command_topic": topics.command,
        "state_topic": topics.state,
        "payload_on": on,
        "payload_off": off,
        "state_on": "on",
        "state_off": "off",
        "value_template": _on_off(key, field),
    }


def _light(
    key: str, field: StateField, brightness: StateField | None, topics: Topics
) -> Component:
    on, off = _payloads(field)
    light = {
        "command_topic": topics.command,
        "state_topic": topics.state,
        "payload_on": on,
        "payload_off": off,
        # A light's state must read as its own payload_on or payload_off.
        "state_value_template": (
            f"{{{{ {json.dumps(on)} if {_read(key)} == {json.dumps(field.on_value)}"
            f" else {json.dumps(off)} }}}}"
        ),
    }
    if brightness is None or brightness.set_by is None:
        return light
    level = "{{ value | int }}" if brightness.step == 1 else "{{ value }}"
    return light | {
        "brightness_scale": int(brightness.max or 255),
        "brightness_state_topic": topics.state,
        "brightness_value_template": f"{{{{ {_read(BRIGHTNESS)} }}}}",
        "brightness_command_topic": topics.command,
        "brightness_command_template": command(brightness.set_by, brightness.param, level),
    }


def _binary_sensor(key: str, field: StateField, topics: Topics) -> Component:
    return {
        "state_topic": topics.state,
        "payload_on": "on",
        "payload_off": "off",
        "value_template": _on_off(key, field),
    }


def _number(field: StateField, topics: Topics) -> Component:
    assert field.set_by is not None  # noqa: S101 - only settable fields get here
    whole = field.step == 1
    entity: Component = {
        "command_topic": topics.command,
        # Home Assistant sends a number as a float (30.0): a whole-number param needs an int.
        "command_template": command(
            field.set_by, field.param, "{{ value | int }}" if whole else "{{ value }}"
        ),
        "min": field.min if field.min is not None else -(2**31),
        "max": field.max if field.max is not None else 2**31 - 1,
        "mode": "box" if field.min is None or field.max is None else "auto",
    }
    if field.step is not None:
        entity["step"] = field.step
    if field.unit is not None:
        entity["unit_of_measurement"] = field.unit
    return entity


def _select(field: StateField, topics: Topics) -> Component:
    assert field.set_by is not None  # noqa: S101 - only settable fields get here
    return {
        "command_topic": topics.command,
        "options": list(field.options or ()),
        "command_template": command(field.set_by, field.param, "{{ value | tojson }}"),
    }


def _text(field: StateField, topics: Topics) -> Component:
    assert field.set_by is not None  # noqa: S101 - only settable fields get here
    return {
        "command_topic": topics.command,
        "command_template": command(field.set_by, field.param, "{{ value | tojson }}"),
        # 0, whatever the parameter's minimum: a state of "" (nothing playing) must show;
        # a shorter value is answered invalid_params, which the error event shows.
        "min": 0,
        "max": min(int(field.max or TEXT_MAX), TEXT_MAX),
    }


def _sensor(field: StateField) -> Component:
    entity: Component = {}
    if field.unit is not None:
        entity["unit_of_measurement"] = field.unit
    if field.state_class is not None:
        entity["state_class"] = field.state_class
    elif field.kind == "number":
        entity["state_class"] = "measurement"  # a reading: kept in long-term statistics
    if field.kind == "enum" and field.options:
        entity |= {"device_class": "enum", "options": list(field.options)}
    return entity


def _action_entity(action: str, model: type[Params], topics: Topics) -> Component | None:
    """A button for an action without parameters, or a command-only control of its one."""
    if not param_names(model):
        return {
            "platform": "button",
            "name": _title(action),
            "command_topic": topics.command,
            "payload_press": action,
        }
    if param_schema(model) is None:
        return None  # several parameters: no one control can send them
    field = capabilities({action: model}, {action: StateField(set_by=action)})[action]
    platform = _platform(field)
    entity = {"platform": platform, "name": _title(action)}
    if platform == "number":
        return entity | _number(field, topics)
    if platform == "select":
        return entity | _select(field, topics)
    if platform == "text":
        return entity | _text(field, topics)
    return None  # a bool parameter alone: two buttons' job, left to the config


def _error_event(topics: Topics, error_codes: Iterable[str]) -> Component:
    return {
        "platform": "event",
        "name": "Command failed",
        "state_topic": topics.result,
        "event_types": sorted(error_codes),
        # Only failed results fire: an empty rendering is ignored.
        "value_template": (
            "{% if value_json.status == 'error' %}"
            "{{ {'event_type': value_json.error.code, 'message': value_json.error.message,"
            " 'action': value_json.action, 'id': value_json.id} | tojson }}"
            "{% endif %}"
        ),
    }


def _last_error(topics: Topics) -> Component:
    return {
        "platform": "sensor",
        "name": "Last error",
        "entity_category": DIAGNOSTIC,
        "state_topic": topics.result,
        # A success keeps the sensor as it was (`this` is the entity's own state).
        "value_template": (
            "{% if value_json.status == 'error' %}"
            "{{ (value_json.error.code ~ ': ' ~ value_json.error.message)[:255] }}"
            "{% else %}{{ this.state }}{% endif %}"
        ),
    }
