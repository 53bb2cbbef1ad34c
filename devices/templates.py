"""Actions defined in a device's configuration: parameter specs, their models, templates.

The ``http``, ``tcp``, ``command`` and ``modbus`` adapters take their actions from
the configuration instead of a class attribute. Each action declares its
parameters as simple specs (``level: int`` or ``{type: int, min: 0, max: 100}``);
a strict pydantic ``Params`` model is built from them once, when the
configuration is validated, and the host reaches it through ``actions_for``.

Templates name parameters as ``{level}``; ``{{`` and ``}}`` stand for literal
braces. Only names of declared parameters are allowed, so a typo is a
configuration error, not a literal ``{levle}`` sent to a device.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    create_model,
    model_validator,
)

from devices.base import Adapter, DeviceConfig, DeviceError, Params

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ACTION_PATTERN = r"^[a-z_][a-z0-9_]*$"  # what a bare-name command can reach
_TOKEN = re.compile(r"\{\{|\}\}|\{([a-z][a-z0-9_]*)\}")
_WHOLE = re.compile(r"^\{([a-z][a-z0-9_]*)\}$")
_TYPES: Mapping[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
ActionModels = dict[str, type[Params]]
"""Action name to its parameter model (``type`` is a config field in config classes)."""
TextRule = Callable[[str], str]
"""A check of a string parameter's value: returns it, or raises ``ValueError`` saying why."""

DEFAULT_MAX_LENGTH = 1024
"""A string parameter's length limit when its spec sets no ``max``.

Every value is held in memory, sent to the device and echoed in the state and the
result; a kilobyte is more than a name, a preset or a line of text needs.
"""
# C0 controls, DEL and C1 controls (Unicode category Cc), and the line and paragraph
# separators (Zl, Zp): what a device may read as the end of a line or as framing.
_CONTROLS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines splits on
_DOT_SEGMENTS = frozenset({".", ".."})


class Spec(BaseModel):
    """Base of the configuration models here: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(Spec):
    """One action parameter: its type and optional bounds, pattern and default.

    ``min``/``max`` bound a number's value and a string's length; a string without
    ``max`` is at most ``DEFAULT_MAX_LENGTH`` long (or ``min``, if that is more).
    """

    type: Literal["int", "float", "str", "bool"]
    min: StrictInt | StrictFloat | None = None
    max: StrictInt | StrictFloat | None = None
    pattern: str | None = None
    default: StrictBool | StrictInt | StrictFloat | StrictStr | None = None
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        """``level: int`` means ``level: {type: int}``."""
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "bool" and (self.min is not None or self.max is not None):
            raise ValueError("a bool parameter takes no min or max")
        if self.pattern is not None and self.type != "str":
            raise ValueError("only a str parameter takes a pattern")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        whole = self.type in {"int", "str"}  # an int's bounds, a string's length
        for bound in (self.min, self.max):
            if whole and bound is not None and not float(bound).is_integer():
                raise ValueError(f"min and max must be whole numbers for type {self.type}")
        if self.type == "str" and any(b is not None and b < 0 for b in (self.min, self.max)):
            raise ValueError("a string's length cannot be negative")
        if self.default is not None and not _fits(self.default, self.type):
            raise ValueError(f"default {self.default!r} is not a {self.type}")
        return self


def _fits(value: object, type_name: str) -> bool:
    if type_name == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _TYPES[type_name])


def _check_names(specs: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
    for name in specs:
        if not re.match(NAME_PATTERN, name):
            raise ValueError(f"parameter name {name!r} must match {NAME_PATTERN}")
        if name.startswith("model_") or hasattr(Params, name):
            raise ValueError(f"parameter name {name!r} is reserved")
    return specs


ParamSpecs = Annotated[dict[str, ParamSpec], AfterValidator(_check_names)]
"""An action's ``params``: parameter name to its spec."""

ActionName = Annotated[str, Field(pattern=ACTION_PATTERN)]


def build_params_model(
    action: str,
    specs: Mapping[str, ParamSpec],
    *,
    text_rules: Mapping[str, Sequence[TextRule]] | None = None,
) -> type[Params]:
    """A strict ``Params`` model for ``specs``.

    Args:
        action: the action's name, which names the model.
        specs: parameter name to its spec.
        text_rules: parameter name to the rules its value must pass, when it is a string.
    """
    rules = text_rules or {}
    fields: dict[str, Any] = {
        name: _field(spec, rules.get(name, ())) for name, spec in specs.items()
    }
    title = "".join(part.capitalize() for part in action.split("_")) + "Params"
    return create_model(title, __base__=Params, **fields)


def _field(spec: ParamSpec, rules: Sequence[TextRule]) -> tuple[Any, Any]:
    """``(annotation, FieldInfo)`` for ``create_model``."""
    default = ... if spec.default is None else spec.default
    if spec.type != "str":
        info = Field(default, ge=spec.min, le=spec.max, description=spec.description)
        return _TYPES[spec.type], info
    low = None if spec.min is None else int(spec.min)
    info = Field(
        default,
        min_length=low,
        max_length=_max_length(spec.max, low),
        pattern=spec.pattern,
        description=spec.description,
    )
    if rules:
        return Annotated[str, AfterValidator(_all(rules))], info
    return str, info


def _all(rules: Sequence[TextRule]) -> TextRule:
    def check(value: str) -> str:
        for rule in rules:
            value = rule(value)
        return value

    return check


def _max_length(high: float | None, low: int | None) -> int:
    """The spec's ``max``, else the default (raised to ``min``, so the spec stays satisfiable)."""
    if high is not None:
        return int(high)
    return max(DEFAULT_MAX_LENGTH, low or 0)


def refuse(characters: str = "", *, controls: bool = False) -> TextRule:
    """A rule refusing each of ``characters`` and, with ``controls``, every control character.

    Control characters are C0 and C1 controls, DEL, and the Unicode line and
    paragraph separators (U+2028, U+2029). The error names the first one found.
    """
    members = "".join(re.escape(c) for c in characters) + (_CONTROLS if controls else "")
    if not members:
        return _unchanged
    found = re.compile(f"[{members}]").search

    def check(value: str) -> str:
        match = found(value)
        if match is not None:
            raise ValueError(f"must not contain {describe_character(match.group())}")
        return value

    return check


def _unchanged(value: str) -> str:
    return value


def describe_character(character: str) -> str:
    """``U+000D (a line break)``: its code point, and what it is when that is not obvious."""
    code = f"U+{ord(character):04X}"
    if character in _LINE_BREAKS:
        return f"{code} (a line break)"
    if unicodedata.category(character) == "Cc":
        return f"{code} (a control character)"
    return f"{code} {character!r}"


def not_a_dot_segment(value: str) -> str:
    """A rule for a value that fills a URL path segment: ``.`` and ``..`` would leave it.

    A client resolves them (RFC 3986, 5.2.4), so ``/{a}/{b}`` with ``..`` and
    ``admin`` would become ``/admin``. Encoding does not help: ``%2E`` is an
    unreserved character's encoding, which a client may decode first.
    """
    if value in _DOT_SEGMENTS:
        raise ValueError(f"must not be {value!r}: a path segment of dots moves up the path")
    return value


def is_dot_segment(segment: str) -> bool:
    """Whether a URL path segment (percent-encoded or not) is ``.`` or ``..``."""
    return unquote(segment) in _DOT_SEGMENTS


# -- templates -----------------------------------------------------------------


def placeholders(template: str) -> set[str]:
    """The parameter names ``template`` refers to."""
    return {m.group(1) for m in _TOKEN.finditer(template) if m.group(1)}


def json_placeholders(template: JsonValue) -> set[str]:
    """The parameter names used anywhere in a JSON template."""
    if isinstance(template, str):
        return placeholders(template)
    if isinstance(template, dict):
        return set().union(*(json_placeholders(v) for v in template.values()))
    if isinstance(template, list):
        return set().union(*(json_placeholders(v) for v in template))
    return set()


def whole_placeholder(template: str) -> str | None:
    """The parameter name if ``template`` is exactly ``{name}``, else None."""
    match = _WHOLE.match(template)
    return match.group(1) if match else None


def declared_params(info: ValidationInfo) -> Mapping[str, ParamSpec] | None:
    """In a field validator, the ``params`` field validated before it (None if invalid)."""
    params = info.data.get("params")
    return params if isinstance(params, dict) else None


def check_placeholders(used: set[str], declared: Mapping[str, ParamSpec] | None) -> None:
    """Raise ``ValueError`` when a template names an undeclared parameter.

    ``None`` (the parameters were invalid, and their own error says why) skips it.
    """
    if declared is None:
        return
    unknown = sorted(used - set(declared))
    if unknown:
        raise ValueError(f"template uses undeclared parameter(s): {', '.join(unknown)}")


def need_something(value: object, info: ValidationInfo, other: str, message: str) -> None:
    """Raise ``ValueError(message)`` when ``value`` and the field ``other`` are both empty.

    A device that has no actions and reads no state can do nothing: a mistake in
    its configuration. An ``other`` that failed its own validation is missing
    from ``info.data``; its own error is reported, so this says nothing.
    """
    if not value and other in info.data and not info.data[other]:
        raise ValueError(message)


def as_text(value: object) -> str:
    """How a parameter value is written into text: ``true``/``false`` for bools."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: str, values: Mapping[str, object], quote: Callable[[str], str] = str) -> str:
    """``template`` with each ``{name}`` replaced by ``quote`` of its value as text."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return match.group(0)[0] if name is None else quote(as_text(values[name]))

    return _TOKEN.sub(replace, template)


def render_json(template: JsonValue, values: Mapping[str, Any]) -> JsonValue:
    """A JSON template filled in with ``values``.

    A string that is exactly ``{name}`` becomes the value itself (a number stays a
    number); other strings are rendered as text.
    """
    if isinstance(template, str):
        name = whole_placeholder(template)
        return values[name] if name is not None else render(template, values)
    if isinstance(template, dict):
        return {key: render_json(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [render_json(value, values) for value in template]
    return template


def select(value: JsonValue, path: tuple[str | int, ...]) -> JsonValue:
    """The part of ``value`` at ``path`` (object keys and list indexes).

    Raises:
        KeyError: the path does not lead anywhere in ``value``.
    """
    for key in path:
        if isinstance(value, dict) and isinstance(key, str):
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int):
            try:
                value = value[key]
            except IndexError:
                raise KeyError(key) from None
        else:
            raise KeyError(key)
    return value


# -- configs and adapters with config-defined actions ----------------------------


class ConfiguredActionsConfig(DeviceConfig):
    """A device config that defines actions: their models are built once, on validation."""

    _action_models: ActionModels = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:  # noqa: ANN401 - pydantic's signature
        """Build the parameter models of the configured actions."""
        del context
        self._action_models = self.build_action_models()

    def build_action_models(self) -> ActionModels:
        """Action name to its parameter model; subclasses say how."""
        return {}

    @property
    def action_models(self) -> ActionModels:
        """The models ``build_action_models`` made."""
        return self._action_models


class ConfiguredActionsAdapter(Adapter):
    """An adapter whose actions come from its ``ConfiguredActionsConfig``."""

    @classmethod
    def actions_for(cls, config: DeviceConfig) -> Mapping[str, type[Params]]:
        """The actions the device's configuration defines."""
        if isinstance(config, ConfiguredActionsConfig):
            return config.action_models
        return cls.actions

    async def poll(self, interval: float | None, read: Callable[[], Awaitable[object]]) -> None:
        """Call ``read`` every ``interval`` seconds (never when None).

        A failed read means the device is lost: the host reconnects it.
        """
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await read()
            except DeviceError as exc:
                self.events.connection_lost(str(exc))
                return

    def merge_state(self, changes: Mapping[str, object]) -> None:
        """Merge ``changes`` (any keys, ``force`` included) into ``state`` and tell the host."""
        self.state.update(changes)
        self.events.state_changed(self.state)
