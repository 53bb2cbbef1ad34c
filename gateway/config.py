"""Configuration: the YAML file, environment overrides, and every check on them.

This is the only module that reads the configuration file and the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.errors import format_path
from gateway.graph import find_cycle
from gateway.registry import AdapterRegistry, UnknownAdapterError
from gateway.steps import Scene, check_steps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from devices import DeviceConfig

DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RESERVED_IDS = frozenset({"gateway"})
CONFIG_ENV_VAR = "GATEWAY_CONFIG"


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


class GatewaySettings(_Section):
    """How commands are run."""

    command_timeout: float = Field(default=10, gt=0)
    shutdown_grace: float = Field(default=5, ge=0)
    queue_size: int = Field(default=100, ge=1)
    max_payload_bytes: int = Field(default=65536, ge=1)
    dedupe_window: float = Field(default=600, ge=0)
    device_retry: Backoff = Backoff(min_delay=1, max_delay=60)


class HttpSettings(_Section):
    """The health and metrics endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(default=9100, ge=0, le=65535)


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
        env_prefix="GATEWAY_",
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


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings plus each device's config, validated by its adapter."""

    settings: Settings
    devices: tuple[DeviceConfig, ...]


def load_config(path: str | Path | None, registry: AdapterRegistry) -> Config:
    """Read, merge and check the configuration; raise ``ConfigError`` listing all."""
    raw = read_yaml(path)
    problems: list[str] = []
    settings = None
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        problems += describe_errors(exc)
    # Check devices even when another section is wrong, to report every problem.
    entries = settings.devices if settings else _raw_devices(raw)
    devices, device_problems = validate_devices(entries, registry)
    problems += device_problems
    problems += check_device_graph(devices, entries)
    if settings:
        problems += check_scenes(settings.scenes, devices, registry)
    if problems or settings is None:
        raise ConfigError(problems)
    return Config(settings=settings, devices=tuple(devices.values()))


def _raw_devices(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = raw.get("devices")
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


def read_yaml(path: str | Path | None) -> dict[str, Any]:
    """Read the YAML file; a missing file or non-mapping document is an error."""
    if path is None:
        raise ConfigError([f"no configuration file: pass -c FILE or set {CONFIG_ENV_VAR}"])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return data


def describe_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic errors into ``path: message`` lines, never echoing secrets."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        path = prefix + format_path(error["loc"])
        problems.append(f"{path}: {error['msg']}" if path else error["msg"])
    return problems


def validate_devices(
    entries: Sequence[Mapping[str, Any]], registry: AdapterRegistry
) -> tuple[dict[str, DeviceConfig], list[str]]:
    """Validate each entry with its adapter's model; return them by id."""
    devices: dict[str, DeviceConfig] = {}
    problems: list[str] = []
    for index, entry in enumerate(entries):
        where = f"devices[{index}]"
        device_id = entry.get("id")
        if not isinstance(device_id, str) or not DEVICE_ID.match(device_id):
            problems.append(f"{where}.id: must match {DEVICE_ID.pattern}, got {device_id!r}")
            continue
        if device_id in RESERVED_IDS:
            problems.append(f"{where}.id: {device_id!r} is reserved")
            continue
        if device_id in devices:
            problems.append(f"{where}.id: duplicate device id {device_id!r}")
            continue
        try:
            model = registry.get(str(entry.get("type"))).config_model
            devices[device_id] = model.model_validate(entry)
        except UnknownAdapterError as exc:
            problems.append(f"{where}.type: {exc}")
        except ValidationError as exc:
            problems += describe_errors(exc, prefix=f"{where}.")
    return devices, problems


def check_device_graph(
    devices: Mapping[str, DeviceConfig], entries: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Unknown dependencies and dependency cycles."""
    problems = []
    for index, entry in enumerate(entries):
        device = devices.get(str(entry.get("id")))
        if device is None:
            continue
        problems += [
            f"devices[{index}].depends_on: unknown device {dep!r}"
            for dep in device.depends_on
            if dep not in devices
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
        problems += check_steps(scene.steps, devices, registry, where=f"scenes.{name}")
    return problems
