"""Configuration: the YAML file, environment overrides, and every check on them.

This is the only module that reads the configuration file and the environment.
"""

from __future__ import annotations

import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from gateway.errors import format_path
from gateway.graph import find_cycle
from gateway.registry import AdapterRegistry, UnknownAdapterError
from gateway.steps import Scene, check_steps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from devices import DeviceConfig

DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RESERVED_IDS = frozenset({"gateway"})
ENV_PREFIX = "GATEWAY_"
CONFIG_ENV_VAR = "GATEWAY_CONFIG"
# libyaml's safe loader, when PyYAML was built with it, reads a large device list
# about ten times faster than the pure-Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """The configuration is missing or invalid; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[str]) -> None:
        """Keep every problem, each named by its path."""
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backoff(_Section):
    """Jittered exponential backoff bounds, in seconds."""

    min_delay: float = Field(default=0.5, gt=0)
    max_delay: float = Field(default=30, gt=0)


class Tls(_Section):
    """TLS to the broker; omit the section for plain TCP."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttSettings(_Section):
    """The broker connection."""

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default="iot-gateway", min_length=1)
    base_topic: str = Field(default="iot", pattern=r"^[^#+]+$")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(default=30, ge=1, le=65535)
    session_expiry: int = Field(default=3600, ge=0)
    reconnect: Backoff = Backoff()
    tls: Tls | None = None
    max_inflight: int = Field(default=100, ge=1, le=65535)
    response_prefix: str | None = Field(default=None, min_length=1, pattern=r"^[^#+]+$")
    """When set, results go only to Response Topics under it (``replies/``)."""

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        """YAML reads ``protocol: 5`` as a number."""
        return "5" if value == 5 and not isinstance(value, bool) else value  # noqa: PLR2004


class GatewaySettings(_Section):
    """How commands are run."""

    command_timeout: float = Field(default=10, gt=0)
    shutdown_grace: float = Field(default=5, ge=0)
    queue_size: int = Field(default=100, ge=1)
    max_payload_bytes: int = Field(default=65536, ge=1)
    dedupe_window: float = Field(default=600, ge=0)
    dedupe_max_ids: int = Field(default=100_000, ge=1)
    dedupe_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """The most bytes of stored results the dedupe window may hold."""
    device_retry: Backoff = Backoff(min_delay=1, max_delay=60)


class HttpSettings(_Section):
    """The health and metrics endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(default=9100, ge=0, le=65535)
    header_timeout: float = Field(default=10, gt=0)
    """Seconds a client has to send a request's headers."""
    idle_timeout: float = Field(default=60, gt=0)
    """Seconds a kept-alive connection may sit without a request."""
    max_connections: int = Field(default=100, ge=1)
    """Connections served at once; more wait in the kernel's backlog."""


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery."""

    discovery: bool = False
    prefix: str = "homeassistant"


class LoggingSettings(_Section):
    """Log level and line format (both go to stderr)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """The whole configuration, as the file and environment give it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    gateway: GatewaySettings = GatewaySettings()
    http: HttpSettings | None = None
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    logging: LoggingSettings = LoggingSettings()
    devices: tuple[dict[str, Any], ...] = ()
    scenes: dict[str, Scene] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables override the file (passed as init values)."""
        del settings_cls, dotenv_settings, file_secret_settings
        return env_settings, init_settings


_SCENES: TypeAdapter[dict[str, Scene]] = TypeAdapter(dict[str, Scene])


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings plus each device's config, validated by its adapter."""

    settings: Settings
    devices: tuple[DeviceConfig, ...]


def load_config(path: str | Path | None, registry: AdapterRegistry) -> Config:
    """Read, merge and check the configuration; raise ``ConfigError`` listing all."""
    raw = read_yaml(path)
    problems = _sections_not_mappings(raw) + _unknown_top_level_keys(raw)
    raw = {key: value for key, value in raw.items() if key in Settings.model_fields}
    settings = None
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        problems += describe_errors(exc)
    except SettingsError:  # an environment value for a section that is not JSON
        problems += _env_not_json()
    # Check every part even when another is wrong, to report every problem.
    entries = settings.devices if settings else _raw_list(raw, "devices")
    devices, device_problems = validate_devices(entries, registry)
    problems += device_problems
    problems += check_device_graph(devices, entries)
    scenes = settings.scenes if settings else _raw_scenes(raw)
    problems += check_scenes(scenes, devices, registry)
    if problems or settings is None:
        raise ConfigError(problems)
    return Config(settings=settings, devices=tuple(devices.values()))


def _env_not_json() -> list[str]:
    """Name the ``GATEWAY_…`` variables that should hold JSON but do not parse."""
    problems = []
    for name, value in os.environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV_VAR:
            continue
        path = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
        try:
            json.loads(value)
        except ValueError:
            if _is_structured(path):
                problems.append(f"{path}: {name} must be JSON for this setting")
    return problems or ["environment: a GATEWAY_ variable holds invalid JSON"]


def _is_structured(path: str) -> bool:
    """Whether the setting at ``path`` is a section or a list (set by JSON)."""
    model: type[BaseModel] = Settings
    for part in path.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        inner = [t for t in typing.get_args(field.annotation) if t is not type(None)]
        kind = inner[0] if inner and field.annotation is not None else field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            model = kind
            continue
        return typing.get_origin(kind) in {tuple, list, dict}
    return True


def _unknown_top_level_keys(raw: Mapping[str, Any]) -> list[str]:
    """Top-level keys not in the schema.

    Checked here, exactly: pydantic-settings would match them without case and
    take ``_``-prefixed ones as its own options.
    """
    return [f"{key}: unknown key" for key in raw if key not in Settings.model_fields]


def _sections_not_mappings(raw: Mapping[str, Any]) -> list[str]:
    """A section given as a scalar, which an environment override could hide."""
    sections = ("mqtt", "gateway", "http", "homeassistant", "logging")
    return [
        f"{name}: must be a mapping, not {type(raw[name]).__name__}"
        for name in sections
        if raw.get(name) is not None and not isinstance(raw[name], dict)
    ]


def _raw_list(raw: Mapping[str, Any], key: str) -> list[Any]:
    entries = raw.get(key)
    return entries if isinstance(entries, list) else []


def _raw_scenes(raw: Mapping[str, Any]) -> dict[str, Scene]:
    """The scenes alone, when another section spoiled the whole.

    Their own errors are reported already, by the whole's validation.
    """
    try:
        return _SCENES.validate_python(raw.get("scenes") or {})
    except ValidationError:
        return {}


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """Read the YAML file; a missing file or non-mapping document is an error."""
    if path is None:
        raise ConfigError([f"no configuration file: pass -c FILE or set {CONFIG_ENV_VAR}"])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML{_yaml_position(exc)}"]) from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a date like 2001-02-30
        raise ConfigError([f"{path}: invalid YAML value: {type(exc).__name__}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return {str(key): value for key, value in data.items()}


def _yaml_position(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's quote of the line (it may hold a secret)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ""
    mark = exc.problem_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"


def describe_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic errors into ``path: message`` lines, never echoing secrets."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        path = prefix + format_path(error["loc"])
        problems.append(f"{path}: {error['msg']}" if path else error["msg"])
    return problems


def validate_devices(
    entries: Sequence[Any], registry: AdapterRegistry
) -> tuple[dict[str, DeviceConfig], list[str]]:
    """Validate each entry with its adapter's model; return the valid ones by id."""
    devices: dict[str, DeviceConfig] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"devices[{index}]"
        if not isinstance(entry, dict):
            continue  # reported by the settings' own validation
        device_id = entry.get("id")
        if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
            problems.append(f"{where}.id: must match {DEVICE_ID.pattern}, got {device_id!r}")
            continue
        if device_id in RESERVED_IDS:
            problems.append(f"{where}.id: {device_id!r} is reserved")
            continue
        if device_id in seen:
            problems.append(f"{where}.id: duplicate device id {device_id!r}")
            continue
        seen.add(device_id)
        try:
            model = registry.get(str(entry.get("type"))).config_model
            devices[device_id] = model.model_validate(entry)
        except UnknownAdapterError as exc:
            problems.append(f"{where}.type: {exc}")
        except ValidationError as exc:
            problems += describe_errors(exc, prefix=f"{where}.")
    return devices, problems


def check_device_graph(devices: Mapping[str, DeviceConfig], entries: Sequence[Any]) -> list[str]:
    """Unknown dependencies and dependency cycles."""
    mappings = [entry if isinstance(entry, dict) else {} for entry in entries]
    known = {entry.get("id") for entry in mappings if isinstance(entry.get("id"), str)}
    problems = []
    for index, entry in enumerate(mappings):
        depends_on = entry.get("depends_on")
        if not isinstance(depends_on, list):
            continue  # the entry's own validation reports it
        problems += [
            f"devices[{index}].depends_on: unknown device {dep!r}"
            for dep in depends_on
            if isinstance(dep, str) and dep not in known
        ]
    cycle = find_cycle({d.id: d.depends_on for d in devices.values()})
    if cycle:
        problems.append(f"devices: dependency cycle {' -> '.join(cycle)}")
    return problems


def check_scenes(
    scenes: Mapping[str, Scene],
    devices: Mapping[str, DeviceConfig],
    registry: AdapterRegistry,
) -> list[str]:
    """Every scene's steps must name real devices, actions and step ids."""
    problems = []
    for name, scene in scenes.items():
        problems += check_steps(scene.steps, devices, registry, where=f"scenes.{name}.steps")
    return problems
