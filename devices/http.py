"""The ``http`` adapter: a device with an HTTP/JSON API, driven from its configuration.

Each action is a request (method, path, JSON body) with parameters filled into
its path and body; an optional state request is read on connect, after every
action and every ``poll_interval``. Enough for Shelly Gen2 RPC and most REST
devices without a line of code.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import Field, FilePath, JsonValue, ValidationInfo, field_validator

from devices.base import DeviceConfig, DeviceError, DeviceEvents, Params
from devices.templates import (
    ActionModels,
    ActionName,
    ConfiguredActionsAdapter,
    ConfiguredActionsConfig,
    ParamSpecs,
    Spec,
    build_params_model,
    check_placeholders,
    declared_params,
    is_dot_segment,
    json_placeholders,
    need_something,
    not_a_dot_segment,
    placeholders,
    render,
    render_json,
    select,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
JsonPath = tuple[str | int, ...]


class HttpRequest(Spec):
    """A request: method and path (with query), relative to ``base_url``."""

    method: Method = "GET"
    path: str = Field(pattern=r"^/")


class HttpAction(Spec):
    """An action: a request whose path and body take the action's parameters."""

    params: ParamSpecs = Field(default_factory=dict)  # first: the templates are checked on it
    method: Method = "POST"
    path: str = Field(pattern=r"^/")
    body: JsonValue = None
    body_from_params: bool = False
    state_from_response: bool | JsonPath = False

    def path_params(self) -> set[str]:
        """The parameters filling the path itself, before any ``?query``."""
        return placeholders(self.path.partition("?")[0])

    @field_validator("path")
    @classmethod
    def _path_uses_declared_params(cls, path: str, info: ValidationInfo) -> str:
        check_placeholders(placeholders(path), declared_params(info))
        return path

    @field_validator("body")
    @classmethod
    def _body_uses_declared_params(cls, body: JsonValue, info: ValidationInfo) -> JsonValue:
        check_placeholders(json_placeholders(body), declared_params(info))
        return body

    @field_validator("body_from_params")
    @classmethod
    def _one_body(cls, body_from_params: bool, info: ValidationInfo) -> bool:  # noqa: FBT001
        if body_from_params and info.data.get("body") is not None:
            raise ValueError("give body or body_from_params, not both")
        return body_from_params


class HttpConfig(ConfiguredActionsConfig):
    """An HTTP device: where it is, how to reach it, its state request and actions."""

    base_url: str
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True
    ca_file: FilePath | None = None
    request_timeout: float = Field(default=5, gt=0)
    retries: int = Field(default=2, ge=0)
    retry_delay: float = Field(default=0.5, ge=0)
    state: HttpRequest | None = None
    state_path: JsonPath = ()
    poll_interval: float | None = Field(default=None, gt=0)
    actions: dict[ActionName, HttpAction] = Field(default_factory=dict, validate_default=True)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _only_when_verifying(cls, ca_file: Path | None, info: ValidationInfo) -> Path | None:
        if ca_file is not None and info.data.get("verify_tls") is False:
            raise ValueError("ca_file needs verify_tls")
        return ca_file

    @field_validator("poll_interval")
    @classmethod
    def _needs_state(cls, interval: float | None, info: ValidationInfo) -> float | None:
        if interval is not None and info.data.get("state") is None:
            raise ValueError("needs a state request")
        return interval

    @field_validator("actions")
    @classmethod
    def _does_something(
        cls, actions: dict[str, HttpAction], info: ValidationInfo
    ) -> dict[str, HttpAction]:
        need_something(
            actions, info, "state", "an http device needs at least one action or a state request"
        )
        return actions

    def build_action_models(self) -> ActionModels:
        """A parameter model per configured action; a path parameter cannot be a dot segment."""
        return {
            name: build_params_model(
                name,
                action.params,
                text_rules=dict.fromkeys(action.path_params(), (not_a_dot_segment,)),
            )
            for name, action in self.actions.items()
        }


class HttpDevice(ConfiguredActionsAdapter):
    """A device reached over HTTP(S) with JSON bodies."""

    config_model: ClassVar[type[DeviceConfig]] = HttpConfig
    config: HttpConfig

    def __init__(self, config: DeviceConfig, events: DeviceEvents) -> None:
        """No session until ``open``."""
        super().__init__(config, events)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Start a session and read the state, if there is a state request."""
        try:
            tls = self._tls()
        except (OSError, ssl.SSLError) as exc:
            raise DeviceError(f"cannot load ca_file: {exc}") from exc
        self._session = aiohttp.ClientSession(
            headers=self.config.headers,
            timeout=aiohttp.ClientTimeout(total=self.config.request_timeout),
            connector=aiohttp.TCPConnector(ssl=tls),
        )
        await self._read_state()

    def _tls(self) -> ssl.SSLContext | bool:
        if not self.config.verify_tls:
            return False
        cafile = None if self.config.ca_file is None else str(self.config.ca_file)
        return ssl.create_default_context(cafile=cafile)

    async def close(self) -> None:
        """Close the session (safe to call again, or after a failed open)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def background(self) -> None:
        """Read the state every ``poll_interval``; a failed read means the device is lost."""
        await self.poll(self.config.poll_interval, self._read_state)

    async def execute(self, action: str, params: Params) -> None:
        """Send the action's request; take state from its response or re-read it."""
        spec = self.config.actions[action]
        values = params.model_dump()
        path = _fill_path(spec.path, values, action)
        body = values if spec.body_from_params else render_json(spec.body, values)
        has_body = spec.body_from_params or spec.body is not None
        text = await self._request(spec.method, path, body if has_body else None)
        if spec.state_from_response is not False:
            where = () if spec.state_from_response is True else spec.state_from_response
            self.merge_state(_object_at(text, where, f"the response to {action}"))
        else:
            await self._read_state()

    async def _read_state(self) -> None:
        request = self.config.state
        if request is None:
            return
        text = await self._request(request.method, request.path, None)
        self.merge_state(_object_at(text, self.config.state_path, "the state response"))

    async def _request(self, method: str, path: str, body: JsonValue) -> str:
        """The response text; connection failures are retried ``retries`` times."""
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._request_once(method, path, body)
            except aiohttp.ClientSSLError as exc:
                raise DeviceError(f"{method} {path}: TLS failed: {exc}") from exc
            except aiohttp.ClientConnectorError as exc:
                if attempt == attempts:
                    raise DeviceError(
                        f"{method} {path}: cannot connect after {attempts} attempts: {exc}"
                    ) from exc
            await asyncio.sleep(self.config.retry_delay)
        raise AssertionError  # pragma: no cover - the loop returns or raises

    async def _request_once(self, method: str, path: str, body: JsonValue) -> str:
        if self._session is None:
            raise DeviceError("not connected")
        url = self.config.base_url + path
        try:
            async with self._session.request(method, url, json=body) as response:
                text = await response.text()
        except aiohttp.ClientConnectorError:
            raise  # retried by the caller
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            raise DeviceError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status >= 400:  # noqa: PLR2004 - HTTP's error classes start here
            raise DeviceError(f"{method} {path}: HTTP {response.status}: {text[-200:]}")
        return text


def _fill_path(template: str, values: Mapping[str, object], action: str) -> str:
    """``template`` with each value percent-encoded in its place (``/?#%`` included).

    A value cannot be ``.`` or ``..`` (its model refuses them), but a template may
    still make a dot segment of values and text (``/.{a}`` with an empty ``a``),
    which the client would resolve, moving the request elsewhere: refused here.
    """
    path = render(template, values, quote=lambda text: quote(text, safe=""))
    # As many segments as the template: an encoded value holds no ``/``.
    parts = zip(
        template.partition("?")[0].split("/"), path.partition("?")[0].split("/"), strict=True
    )
    if any(placeholders(part) and is_dot_segment(filled) for part, filled in parts):
        raise DeviceError(
            f"action {action!r}: the parameters make a '.' or '..' path segment,"
            " which would move the request up the path"
        )
    return path


def _object_at(text: str, path: JsonPath, what: str) -> Mapping[str, JsonValue]:
    """The JSON object at ``path`` in the JSON ``text``."""
    try:
        value = select(json.loads(text), path)
    except ValueError as exc:
        raise DeviceError(f"{what} is not JSON: {exc}") from exc
    except KeyError as exc:
        raise DeviceError(f"{what} has nothing at {list(path)} ({exc} is missing)") from exc
    if not isinstance(value, dict):
        raise DeviceError(f"{what} at {list(path)} is not a JSON object")
    return value
