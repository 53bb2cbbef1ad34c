"""What a device exposes: its state fields, their kinds, and the actions that set them.

An adapter declares what cannot be read off its actions (``Adapter.state_fields``,
or ``state_fields_for`` when it depends on the configuration); a device entry may
add or correct any field (``state_fields`` in the configuration). The rest is
derived from the actions' parameter models, by convention:

- ``set_<field>`` with one parameter sets ``<field>``, whose kind, bounds and
  options are the parameter's (``set_volume(level: int 0..100)``);
- ``turn_on_<field>`` and ``turn_off_<field>`` switch the bool ``<field>``.

Consumers (Home Assistant discovery, the dashboard, anything reading the
retained ``gateway/devices`` list) map these fields to controls.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from devices.base import Adapter, DeviceConfig, Params

Kind = Literal["bool", "number", "enum", "string"]
Platform = Literal[
    "switch", "light", "binary_sensor", "sensor", "number", "select", "text", "none"
]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr

_KIND_OF_JSON_TYPE: Mapping[str, Kind] = {
    "integer": "number",
    "number": "number",
    "string": "string",
    "boolean": "bool",
}


class StateField(BaseModel):
    """One field of a device's state, as a control or a reading.

    Every key is optional, so a device entry can correct one detail of a field
    its adapter declared or derived; what is left unsaid is derived, and a field
    of unknown kind is a string.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind | None = None
    """``bool``, ``number``, ``enum`` (one of ``options``) or ``string``."""
    name: str | None = None
    """What a user sees (default: the field's key, spaced and capitalised)."""
    unit: str | None = None
    device_class: str | None = None
    """Home Assistant's device class (``temperature``, ``power``, ``door`` ...)."""
    state_class: Literal["measurement", "total", "total_increasing"] | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = Field(default=None, gt=0)
    options: tuple[str, ...] | None = None
    on_value: Scalar | None = None
    """A bool field's value when on, if not ``true`` (quote it in YAML: ``"on"``)."""
    off_value: Scalar | None = None
    set_by: str | None = None
    """The action that sets the field to its one parameter's value."""
    param: str | None = None
    """That parameter (default: the action's only one)."""
    turn_on: str | None = None
    """For a bool field: the action that switches it on (no parameters)."""
    turn_off: str | None = None
    platform: Platform | None = None
    """Overrides the control the generic mapping would pick (``none``: no control)."""
    entity_key: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")
    """The control's key and unique id suffix (default: the field's key)."""
    diagnostic: bool = False
    """A reading about the device rather than of what it controls."""

    @property
    def settable(self) -> bool:
        """Whether an action changes it."""
        return self.set_by is not None or (self.turn_on is not None and self.turn_off is not None)

    def merged(self, override: StateField) -> StateField:
        """This field with what ``override`` states explicitly replacing its own."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


def capabilities(
    actions: Mapping[str, type[Params]],
    declared: Mapping[str, StateField],
    overrides: Mapping[str, StateField] | None = None,
) -> dict[str, StateField]:
    """Every state field of a device: derived from ``actions``, then declared, then overridden.

    Args:
        actions: action name to its parameter model.
        declared: what the adapter says of its fields.
        overrides: what the device's configuration says of them.
    """
    # Devices of one type mostly share all three: computed once per combination
    # (10,000 devices took 0.36 s each time the device list was made, 2 ms now).
    return dict(
        _capabilities(
            tuple(actions.items()), tuple(declared.items()), tuple((overrides or {}).items())
        )
    )


@functools.lru_cache(maxsize=1024)
def _capabilities(
    actions: tuple[tuple[str, type[Params]], ...],
    declared: tuple[tuple[str, StateField], ...],
    overrides: tuple[tuple[str, StateField], ...],
) -> dict[str, StateField]:
    by_name = dict(actions)
    fields = _derived(by_name)
    for layer in (declared, overrides):
        for key, field in layer:
            fields[key] = fields[key].merged(field) if key in fields else field
    return {key: _complete(field, by_name) for key, field in fields.items()}


def used_actions(fields: Iterable[StateField]) -> set[str]:
    """The actions that set some field (the rest are controls of their own)."""
    used: set[str] = set()
    for field in fields:
        used.update(a for a in (field.set_by, field.turn_on, field.turn_off) if a)
    return used


def describe(fields: Mapping[str, StateField]) -> dict[str, dict[str, Any]]:
    """The fields as JSON, leaving out what is unset (for the ``gateway/devices`` list)."""
    return {key: dict(_described(field)) for key, field in fields.items()}


@functools.lru_cache(maxsize=4096)
def _described(field: StateField) -> dict[str, Any]:
    # Devices of one type share their fields (see capabilities), so mostly a cache hit.
    return field.model_dump(exclude_none=True, exclude_defaults=True) | {
        "kind": field.kind,
        "settable": field.settable,
    }


def param_schema(
    model: type[Params], param: str | None = None
) -> tuple[str, dict[str, Any]] | None:
    """The name and JSON Schema of ``model``'s parameter ``param``, or of its only one."""
    properties: dict[str, dict[str, Any]] = _schema(model).get("properties", {})
    if param is None:
        if len(properties) != 1:
            return None
        [param] = properties
    schema = properties.get(param)
    return None if schema is None else (param, schema)


def param_names(model: type[Params]) -> list[str]:
    """The names of ``model``'s parameters."""
    return list(_schema(model).get("properties", {}))


@functools.cache
def _schema(model: type[Params]) -> dict[str, Any]:
    """A parameter model's JSON Schema; many devices share a few models, and it is slow."""
    return model.model_json_schema()


def _derived(actions: Mapping[str, type[Params]]) -> dict[str, StateField]:
    fields: dict[str, StateField] = {}
    for action, model in actions.items():
        key = action.removeprefix("set_")
        if key != action and key and param_schema(model) is not None:
            fields[key] = StateField(set_by=action)
    for action in actions:
        key = action.removeprefix("turn_on_")
        if key != action and key and f"turn_off_{key}" in actions:
            fields[key] = StateField(kind="bool", turn_on=action, turn_off=f"turn_off_{key}")
    return fields


def _complete(field: StateField, actions: Mapping[str, type[Params]]) -> StateField:
    """Fill kind, bounds and options from the setter's parameter; a bool is true/false."""
    update: dict[str, Any] = {}
    model = actions.get(field.set_by) if field.set_by else None
    found = param_schema(model, field.param) if model is not None else None
    if found is not None:
        param, schema = found
        update = {"param": param, **_from_schema(schema)}
    update = {key: value for key, value in update.items() if getattr(field, key) is None}
    if field.set_by is not None and found is None:
        update["set_by"] = None  # no such action, or no such parameter: read only
    kind = field.kind or update.get("kind") or "string"
    if kind == "bool":
        update |= {"on_value": _or(field.on_value, default=True)}
        update |= {"off_value": _or(field.off_value, default=False)}
    return field.model_copy(update={**update, "kind": kind})


def _or(value: Scalar | None, *, default: Scalar) -> Scalar:
    return default if value is None else value


def _from_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Kind, bounds, step and options of a parameter's JSON Schema."""
    if "enum" in schema:
        return {"kind": "enum", "options": tuple(str(option) for option in schema["enum"])}
    kind = _KIND_OF_JSON_TYPE.get(schema.get("type", ""), "string")
    found: dict[str, Any] = {"kind": kind}
    if kind == "number":
        found["min"] = schema.get("minimum", schema.get("exclusiveMinimum"))
        found["max"] = schema.get("maximum", schema.get("exclusiveMaximum"))
        if schema.get("type") == "integer":
            found["step"] = 1
    elif kind == "string":
        found["min"] = schema.get("minLength")
        found["max"] = schema.get("maxLength")
    return {key: value for key, value in found.items() if value is not None}


def device_fields(adapter: type[Adapter], config: DeviceConfig) -> dict[str, StateField]:
    """Every state field of the device ``config`` configures, for its ``adapter``."""
    return capabilities(
        adapter.actions_for(config), adapter.state_fields_for(config), config.state_fields
    )


# What each platform override needs of its field: its kind, and whether an action sets it.
_NEEDS: Mapping[str, tuple[set[str], bool]] = {
    "switch": ({"bool"}, True),
    "light": ({"bool"}, True),
    "binary_sensor": ({"bool"}, False),
    "number": ({"number"}, True),
    "select": ({"enum"}, True),
    "text": ({"string"}, True),
}
RESERVED_KEYS = frozenset({"command_error", "last_error"})
"""Entity keys every device's own entities take (its failed-command event and last error)."""


def platform_problem(field: StateField) -> str | None:
    """Why the field's ``platform`` cannot show it, or None when it can (or it has none)."""
    needs = _NEEDS.get(field.platform or "")
    if needs is None:
        return None
    kinds, settable = needs
    if field.kind not in kinds:
        return (
            f"a {field.platform} shows {_article(kinds)} field, not {_article({field.kind or ''})}"
        )
    if settable and not (field.set_by if field.kind != "bool" else field.settable):
        return f"a {field.platform} needs an action that sets the field"
    if field.platform == "select" and not field.options:
        return "a select needs options"
    return None


def _article(kinds: set[str]) -> str:
    """``a bool``, ``an enum``."""
    words = " or ".join(sorted(kinds))
    return f"{'an' if words[:1] in set('aeiou') else 'a'} {words}"


def unknown_actions(
    fields: Mapping[str, StateField], actions: Mapping[str, type[Params]]
) -> list[str]:
    """Problems, as ``<field>.<key>: ...``, with actions ``fields`` name that do not exist."""
    problems = []
    for key, field in fields.items():
        for name in ("set_by", "turn_on", "turn_off"):
            action = getattr(field, name)
            if action is not None and action not in actions:
                known = ", ".join(sorted(actions)) or "none"
                problems.append(f"{key}.{name}: no action {action!r} (known: {known})")
        setter = actions.get(field.set_by or "")
        if setter is not None and param_schema(setter, field.param) is None:
            problems.append(
                f"{key}.param: {field.set_by!r} has no parameter {field.param!r}"
                if field.param
                else f"{key}.set_by: {field.set_by!r} takes more than one parameter; name `param`"
            )
    return problems


def field_problems(fields: Mapping[str, StateField]) -> list[str]:
    """Problems, as ``<field>.<key>: ...``, with the completed fields' platforms and keys."""
    problems = []
    for key, field in fields.items():
        if (problem := platform_problem(field)) is not None:
            problems.append(f"{key}.platform: {problem}")
        if (field.entity_key or key) in RESERVED_KEYS:
            problems.append(f"{key}.entity_key: {field.entity_key or key!r} is taken")
    return problems
