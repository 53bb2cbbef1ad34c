"""Configuration: the YAML file, environment overrides, and every check on them.

This is the only module that reads the configuration file and the environment.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config import yaml_loader
from gateway.config.checks import (
    DEVICE_ID,
    check_device_graph,
    check_scenes,
    check_standby,
    describe_errors,
    validate_devices,
)
from gateway.config.env_overrides import OverriddenSource, Overrides
from gateway.core.steps import Scene

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from devices import DeviceConfig
    from gateway.core.registry import AdapterRegistry

__all__ = [  # the checks are here too, where their callers have always found them
    "CONFIG_ENV_VAR",
    "DEVICE_ID",
    "ENV_PREFIX",
    "Backoff",
    "Config",
    "ConfigError",
    "GatewaySettings",
    "HomeAssistantSettings",
    "HttpSettings",
    "LoggingSettings",
    "MqttSettings",
    "Settings",
    "Tls",
    "check_device_graph",
    "check_scenes",
    "default_journal_path",
    "describe_errors",
    "environment_overrides",
    "load_config",
    "parse_host_port",
    "read_yaml",
    "settings_from_environment",
    "validate_devices",
]

ENV_PREFIX = "GATEWAY_"
CONFIG_ENV_VAR = "GATEWAY_CONFIG"  # names the file; not a setting
# MQTT's longest password: Binary Data has a two-byte length (MQTT 5.0, 1.5.6).
MAX_PASSWORD_BYTES = 65535
MIN_TOKEN_LENGTH = 16
"""The shortest dashboard token taken: a guessable one would be no control at all."""


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


def _host_port(value: str) -> str:
    """``host:port`` (``[::1]:1883`` for IPv6), checked; the text as given."""
    parse_host_port(value)
    return value


def parse_host_port(value: str) -> tuple[str, int]:
    """``("host", port)`` from ``host:port``; ``ValueError`` says what is wrong."""
    host, separator, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port_text.isdigit():
        msg = f"must be host:port (like broker.lan:1883), got {value!r}"
        raise ValueError(msg)
    port = int(port_text)
    if not 1 <= port <= 65535:  # noqa: PLR2004 - TCP's port range
        msg = f"port must be 1-65535, got {port}"
        raise ValueError(msg)
    return host, port


HostPort = Annotated[str, AfterValidator(_host_port)]


class MqttSettings(_Section):
    """The broker connection."""

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    hosts: tuple[HostPort, ...] | None = None
    """Brokers (``host:port``) tried in order, for a cluster; instead of ``host``/``port``."""
    username: str | None = None
    password: SecretStr | None = None
    """Set from ``password_file`` when that is given."""
    password_file: Path | None = None
    """A file holding the password (one trailing newline dropped); not with ``password``.

    Unlike ``GATEWAY_MQTT__PASSWORD``, a file's content is in no process's
    environment, so no program the gateway starts inherits it.
    """
    client_id: str = Field(default="iot-gateway", min_length=1)
    base_topic: str = Field(default="iot", pattern=r"^[^#+]+$")
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    """``auto``: MQTT 5, or 3.1.1 when the broker refuses 5 or never answers it."""
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

    @field_validator("hosts")
    @classmethod
    def _some_hosts(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value == ():
            msg = "list at least one host:port"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _hosts_or_host(self) -> MqttSettings:
        if self.hosts is not None and {"host", "port"} & self.model_fields_set:
            msg = "set either hosts or host/port, not both"
            raise ValueError(msg)
        return self

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every broker address to try, in order: ``hosts``, else ``host`` and ``port``."""
        if self.hosts is None:
            return ((self.host, self.port),)
        return tuple(parse_host_port(entry) for entry in self.hosts)


def default_journal_path() -> Path:
    """Where the journal lives unless ``gateway.journal`` says otherwise.

    ``$STATE_DIRECTORY`` when systemd sets it (``StateDirectory=``, also set by
    docker-compose.yml), else ``$XDG_STATE_HOME/iot-gateway`` (by default
    ``~/.local/state/iot-gateway``), which a normal user can write.
    """
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "journal.sqlite3"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(xdg) / "iot-gateway" / "journal.sqlite3"


class GatewaySettings(_Section):
    """How commands are run."""

    instance: str = Field(default_factory=socket.gethostname, min_length=1)
    """This gateway's name in its health topic (contract 12); the host name by default."""
    health_interval: float = Field(default=60, gt=0, le=60)
    """Seconds between republishes of ``{base}/gateway/health`` (it also goes out on change)."""
    command_timeout: float = Field(default=10, gt=0)
    shutdown_grace: float = Field(default=5, ge=0)
    queue_size: int = Field(default=100, ge=1)
    max_payload_bytes: int = Field(default=65536, ge=1)
    dedupe_window: float = Field(default=600, ge=0)
    dedupe_max_ids: int = Field(default=100_000, ge=1)
    dedupe_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """The most bytes of stored results the dedupe window may hold."""
    device_retry: Backoff = Backoff(min_delay=1, max_delay=60)
    journal: Path | None = Field(default_factory=default_journal_path)
    """The SQLite file that makes command ids durable (contract 10); null for none."""
    journal_sync: Literal["normal", "full"] = "normal"
    """``normal``: each record reaches the OS (survives a killed gateway); ``full``: fsync."""

    @field_validator("journal", mode="before")
    @classmethod
    def _journal_off(cls, value: object) -> object:
        """``GATEWAY_GATEWAY__JOURNAL=null`` (or empty) turns it off, as ``null`` in YAML."""
        return None if isinstance(value, str) and value.strip() in {"", "null"} else value


class HttpSettings(_Section):
    """The health and metrics endpoint, and the dashboard with its API."""

    host: str = "127.0.0.1"
    port: int = Field(default=9100, ge=0, le=65535)
    header_timeout: float = Field(default=10, gt=0)
    """Seconds a client has to send a request's headers."""
    idle_timeout: float = Field(default=60, gt=0)
    """Seconds a kept-alive connection may sit without a request."""
    max_connections: int = Field(default=100, ge=1)
    """Connections served at once; more wait in the kernel's backlog."""
    token: SecretStr | None = Field(default=None, min_length=MIN_TOKEN_LENGTH)
    """Allows control from the dashboard and its API, sent as ``Authorization: Bearer``.

    Without one the dashboard is read-only. Set from ``token_file`` when that is given.
    """
    token_file: Path | None = None
    """A file holding the token (one trailing newline dropped); not with ``token``."""


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery."""

    discovery: bool = False
    prefix: str = Field(default="homeassistant", min_length=1, pattern=r"^[^#+]+$")
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    """This gateway in discovery topics and unique ids (default: from ``mqtt.base_topic``)."""
    support_url: str | None = None
    """Where Home Assistant's device pages link for help with the gateway."""
    configuration_url: str | None = None
    """The gateway device's link (default: the HTTP server's page, when ``http`` is set)."""
    activity_interval: float = Field(default=60, gt=0)
    """Seconds between updates of the gateway's diagnostic figures."""


class StandbySettings(_Section):
    """Hot standby (README "Hot standby"): instances with one configuration, one active."""

    enabled: bool = False
    takeover_delay: float = Field(default=2, gt=0)
    """Seconds between standbys' turns to take over, and the watch before a first one."""
    username: str | None = None
    """The watcher connection's login (default: ``mqtt.username``)."""
    password: SecretStr | None = None
    """Its password (default: ``mqtt.password``)."""


class LoggingSettings(_Section):
    """Log level and line format (both go to stderr)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """The whole configuration: keyword values (the file's) under the environment's.

    ``Settings(**file)`` and ``Settings()`` merge the ``GATEWAY_*`` variables in
    as ``load_config`` does; only ``load_config`` reports the variables that
    name no setting.
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    mqtt: MqttSettings = MqttSettings()
    # A factory: the default journal path is read from the environment at load time.
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    http: HttpSettings | None = None
    homeassistant: HomeAssistantSettings = HomeAssistantSettings()
    standby: StandbySettings = StandbySettings()
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
        """One source: the keyword values with the environment merged in by ``Overrides``."""
        del env_settings, dotenv_settings, file_secret_settings
        return (OverriddenSource(settings_cls, init_settings, environment_overrides),)


def environment_overrides() -> Overrides:
    """What the ``GATEWAY_*`` variables set, and which of them name no setting."""
    return Overrides.parse(os.environ, Settings, ENV_PREFIX, exempt={CONFIG_ENV_VAR})


_SCENES: TypeAdapter[dict[str, Scene]] = TypeAdapter(dict[str, Scene])


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings plus each device's config, validated by its adapter."""

    settings: Settings
    devices: tuple[DeviceConfig, ...]


def load_config(path: str | Path | None, registry: AdapterRegistry) -> Config:
    """Read, merge and check the configuration; raise ``ConfigError`` listing all.

    Environment variables ``GATEWAY_<SECTION>__<KEY>`` override the file; one
    that names no setting is a problem too, and every problem that comes from
    a variable names it.
    """
    overrides = environment_overrides()
    file = read_yaml(path)
    problems = [*overrides.problems, *_unknown_top_level_keys(file)]
    file = {key: value for key, value in file.items() if key in Settings.model_fields}
    settings = None
    try:
        settings = Settings(**file)
    except ValidationError as exc:
        problems += describe_errors(exc)
    raw = overrides.applied_to(file)  # what Settings validated, for the parts of a failure
    # Check every part even when another is wrong, to report every problem.
    mqtt = settings.mqtt if settings else _raw_mqtt(raw)
    password, file_problems = _read_mqtt_files(mqtt) if mqtt else (None, [])
    problems += file_problems
    token, token_problems = _read_http_token(settings.http if settings else None)
    problems += token_problems
    entries = settings.devices if settings else _raw_list(raw, "devices")
    devices, device_problems = validate_devices(entries, registry)
    problems += device_problems
    problems += check_device_graph(devices, entries)
    scenes = settings.scenes if settings else _raw_scenes(raw)
    problems += check_scenes(scenes, devices, registry)
    if settings is not None:
        problems += check_standby(
            enabled=settings.standby.enabled, instance=settings.gateway.instance
        )
    if problems or settings is None:
        raise ConfigError(overrides.name_origins(problems))
    settings = _with_token(_with_password(settings, password), token)
    return Config(settings=settings, devices=tuple(devices.values()))


def settings_from_environment() -> Settings:
    """The settings the ``GATEWAY_*`` variables alone give, for tools run without a file.

    Checked as ``load_config`` checks them, ``mqtt.password_file`` read.
    """
    overrides = environment_overrides()
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(overrides.name_origins(describe_errors(exc))) from None
    password, problems = _read_mqtt_files(settings.mqtt)
    if overrides.problems or problems:
        raise ConfigError(overrides.name_origins([*overrides.problems, *problems]))
    return _with_password(settings, password)


def _with_password(settings: Settings, password: SecretStr | None) -> Settings:
    """``settings`` with the password read from ``password_file``, if there was one."""
    if password is None:
        return settings
    mqtt = settings.mqtt.model_copy(update={"password": password})
    return settings.model_copy(update={"mqtt": mqtt})


def _with_token(settings: Settings, token: SecretStr | None) -> Settings:
    """``settings`` with the HTTP token read from ``token_file``, if there was one."""
    if token is None or settings.http is None:
        return settings
    return settings.model_copy(
        update={"http": settings.http.model_copy(update={"token": token, "token_file": None})}
    )


def _read_http_token(http: HttpSettings | None) -> tuple[SecretStr | None, list[str]]:
    """The dashboard's token from ``http.token_file``, and what stops it being read."""
    if http is None or http.token_file is None:
        return None, []
    if http.token is not None:
        return None, ["http.token_file: set either token or token_file"]
    try:
        token = _read_password(http.token_file)
    except ValueError as exc:
        return None, [f"http.token_file: {exc}"]
    if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        return None, [f"http.token_file: at least {MIN_TOKEN_LENGTH} characters"]
    return token, []


def _unknown_top_level_keys(raw: Mapping[str, Any]) -> list[str]:
    """Top-level keys not in the schema.

    Checked here, exactly: pydantic-settings would match them without case and
    take ``_``-prefixed ones as its own options.
    """
    return [f"{key}: unknown key" for key in raw if key not in Settings.model_fields]


def _read_mqtt_files(mqtt: MqttSettings) -> tuple[SecretStr | None, list[str]]:
    """The password from ``password_file``, and whatever stops the files being read."""
    problems = _unreadable_tls_files(mqtt.tls)
    if mqtt.password_file is None:
        return None, problems
    if mqtt.password is not None:
        return None, [*problems, "mqtt.password_file: set either password or password_file"]
    try:
        return _read_password(mqtt.password_file), problems
    except ValueError as exc:
        return None, [*problems, f"mqtt.password_file: {exc}"]


def _read_password(path: Path) -> SecretStr:
    """The file's text less one trailing newline; ``ValueError`` says why not (never what)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PASSWORD_BYTES + 3)  # enough to tell "too long"
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    data = data[:-2] if data.endswith(b"\r\n") else data.removesuffix(b"\n")
    if not data:
        raise ValueError(f"{path} is empty")
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"{path}: longer than MQTT's {MAX_PASSWORD_BYTES:,} bytes")
    try:
        return SecretStr(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def _unreadable_tls_files(tls: Tls | None) -> list[str]:
    """TLS files that cannot be opened now; the broker connection would fail on them later."""
    problems = []
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name, None)
        why = _why_unreadable(path) if path is not None else None
        if why is not None:
            problems.append(f"mqtt.tls.{name}: cannot read {path}: {why}")
    return problems


def _why_unreadable(path: Path) -> str | None:
    """Why ``path`` is no file this process can read, or None when it is."""
    try:
        # Non-blocking, so a named pipe cannot stall the check.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    try:
        is_dir = stat.S_ISDIR(os.fstat(descriptor).st_mode)
    finally:
        os.close(descriptor)
    return "Is a directory" if is_dir else None


def _raw_mqtt(raw: Mapping[str, Any]) -> MqttSettings | None:
    """The ``mqtt`` section's file settings alone, when something else spoiled the whole."""
    section = raw.get("mqtt")
    if not isinstance(section, dict):
        return None
    files = {key: section[key] for key in ("password", "password_file", "tls") if key in section}
    try:
        return MqttSettings.model_validate(files)
    except ValidationError:
        return None  # reported by the whole's validation


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
        data = yaml_loader.load(text)
    except yaml_loader.YamlError as exc:
        raise ConfigError([f"{path}: {problem}" for problem in exc.problems]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return {str(key): value for key, value in data.items()}
