"""Environment variables as overrides of the configuration file: pure, no I/O.

``GATEWAY_MQTT__RECONNECT__MAX_DELAY=5`` sets ``mqtt.reconnect.max_delay``:
after the prefix, ``__`` separates the keys, in any case. A section or list is
set as JSON (``GATEWAY_MQTT__TLS='{"ca_file": "/etc/ca.pem"}'``) and merged
into the file's; a scalar is handed on as text for the model to convert.

A variable that names no setting is a problem, as an unknown key in the file
is: ``GATEWAY_MQTT_HOST`` (one ``_``) used to be ignored without a word.
``gateway.config`` reads the environment and passes it here.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

    from pydantic.fields import FieldInfo

_SEPARATOR = "__"


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the environment sets, where each setting came from, and what is wrong."""

    values: tuple[tuple[tuple[str, ...], object], ...]
    """(path, value) pairs, shallowest path first."""
    origins: Mapping[str, str]
    """Dotted setting path (``mqtt.port``, ``devices``) -> the variable that set it."""
    problems: tuple[str, ...]

    @classmethod
    def parse(
        cls,
        environ: Mapping[str, str],
        model: type[BaseModel],
        prefix: str,
        exempt: Collection[str] = (),
    ) -> Overrides:
        """The overrides in ``environ`` for ``model``'s settings.

        Args:
            environ: the variables, such as ``os.environ``.
            model: the settings' model; a variable must name one of its fields.
            prefix: what every variable for a setting starts with (``GATEWAY_``).
            exempt: variables with the prefix that are no setting (``GATEWAY_CONFIG``).
        """
        values: list[tuple[tuple[str, ...], object]] = []
        origins: dict[str, str] = {}
        problems: list[str] = []
        for name, text in sorted(environ.items()):
            if not name.upper().startswith(prefix) or name in exempt:
                continue
            path = tuple(name[len(prefix) :].lower().split(_SEPARATOR))
            kind = _setting_type(model, path)
            if kind is None:
                problems.append(_unknown(name, model, prefix))
                continue
            dotted = ".".join(path)
            try:
                value = json.loads(text) if _is_structured(kind) else text
            except ValueError:
                problems.append(f"{dotted} (from {name}): must be JSON for this setting")
                continue
            values.append((path, value))
            origins.update(dict.fromkeys(_leaves(dotted, value), name))
        values.sort(key=lambda pair: len(pair[0]))
        return cls(tuple(values), origins, tuple(problems))

    def applied_to(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (the file's) with every override merged in; ``data`` is not changed."""
        merged: object = data
        for path, value in self.values:
            merged = _merged(merged, path, value)
        return typing.cast("dict[str, Any]", merged)

    def name_origins(self, problems: Iterable[str]) -> list[str]:
        """``mqtt.port: ...`` -> ``mqtt.port (from GATEWAY_MQTT__PORT): ...`` where it was."""
        named = []
        for problem in problems:
            path, separator, message = problem.partition(": ")
            variable = self._origin(path) if separator else None
            named.append(f"{path} (from {variable}): {message}" if variable else problem)
        return named

    def _origin(self, path: str) -> str | None:
        """The variable that set ``path``, or a setting that holds it (``devices[0]``)."""
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[: max(path.rfind("."), path.rfind("["), 0)]
        return None


class OverriddenSource(PydanticBaseSettingsSource):
    """A settings source: another source's values with the overrides merged in.

    In place of pydantic-settings' own environment source, which ignores a
    variable that names no setting and lets a variable hide a file's section
    that is not a mapping.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        values: PydanticBaseSettingsSource,
        overrides: Callable[[], Overrides],
    ) -> None:
        """``overrides`` is called each time settings are made: it reads the environment."""
        super().__init__(settings_cls)
        self._values = values
        self._overrides = overrides

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` gives every value at once."""
        del field
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        """The values, overridden."""
        return self._overrides().applied_to(self._values())


def _setting_type(model: type[BaseModel], path: Sequence[str]) -> Any:  # noqa: ANN401 - a type
    """The type of the setting at ``path`` under ``model``, or None if there is none."""
    kind: Any = model
    for key in path:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(key)
            if field is None:
                return None
            kind = _without_none(field.annotation)
        elif typing.get_origin(kind) is dict and key:  # a mapping by name, such as scenes
            kind = typing.get_args(kind)[1]
        else:
            return None
    return kind


def _without_none(annotation: Any) -> Any:  # noqa: ANN401 - a type
    """``X | None`` is ``X``: the variable sets the ``X``."""
    if typing.get_origin(annotation) in {typing.Union, types.UnionType}:
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _is_structured(kind: Any) -> bool:  # noqa: ANN401 - a type
    """A section or a collection, which a variable sets as JSON."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return True
    return typing.get_origin(kind) in {tuple, list, dict}


def _unknown(name: str, model: type[BaseModel], prefix: str) -> str:
    """The problem for a variable that names no setting, with the likeliest meant."""
    known = list(_variable_names(model, prefix))
    close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{name}: no such setting (keys are separated by {_SEPARATOR!r}){hint}"


def _variable_names(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every variable that names a setting (sections included), upper case."""
    stack: list[tuple[str, type[BaseModel]]] = [(prefix, model)]
    while stack:
        start, section = stack.pop()
        for key, field in section.model_fields.items():
            name = f"{start}{key.upper()}"
            yield name
            kind = _without_none(field.annotation)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                stack.append((name + _SEPARATOR, kind))


def _leaves(path: str, value: object) -> Iterator[str]:
    """The paths a value sets: a JSON object's own keys, so the file's others are not named."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict) and item:
            stack.extend((f"{where}.{key}", inner) for key, inner in item.items())
        else:
            yield where


def _merged(base: object, path: Sequence[str], value: object) -> object:
    """``base`` with ``value`` at ``path``, each mapping on the way copied (YAML shares some)."""
    if not path:
        return _deep_merged(base, value)
    if base is None:
        base = {}
    if not isinstance(base, dict):
        return base  # the file's own value is wrong; an override must not hide that
    return {**base, path[0]: _merged(base.get(path[0]), path[1:], value)}


def _deep_merged(base: object, value: object) -> object:
    """A JSON object merged into the file's mapping key by key; anything else replaces it."""
    if not (isinstance(base, dict) and isinstance(value, dict)):
        return value
    return {**base, **{key: _deep_merged(base.get(key), inner) for key, inner in value.items()}}
