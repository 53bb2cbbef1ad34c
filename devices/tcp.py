"""The ``tcp`` adapter: a line-based text protocol (projectors, AV receivers, matrices).

Each action sends one line made from a template; with ``expect`` it waits for a
reply line that must match. Every line the device sends, reply or not, is tried
against ``state_regex`` and its named groups go into the state, so a device that
reports changes by itself (a volume knob turned) updates the state too. When the
device closes the connection the host is told, and it reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from devices.base import DeviceConfig, DeviceError, DeviceEvents, Params
from devices.capabilities import StateField
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
    need_something,
    placeholders,
    refuse,
    render,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?\d*\.\d+$")


class TcpAction(Spec):
    """An action: the line to send, and the reply it needs, if any."""

    params: ParamSpecs = Field(default_factory=dict)  # first: the template is checked on it
    send: str
    expect: re.Pattern[str] | None = None
    allow_control_characters: bool = False
    """Let string parameters hold control characters other than line breaks (framing bytes)."""

    @field_validator("send")
    @classmethod
    def _template_uses_declared_params(cls, send: str, info: ValidationInfo) -> str:
        check_placeholders(placeholders(send), declared_params(info))
        return send


class TcpConfig(ConfiguredActionsConfig):
    """A line-protocol device: address, framing, state queries and actions."""

    host: str
    port: int = Field(ge=1, le=65535)
    newline: str = Field(default="\r", min_length=1)
    encoding: str = "utf-8"
    reply_timeout: float = Field(default=2, gt=0)
    query: tuple[str, ...] = ()
    state_regex: tuple[re.Pattern[str], ...] = ()
    poll_interval: float | None = Field(default=None, gt=0)
    actions: dict[ActionName, TcpAction] = Field(default_factory=dict, validate_default=True)

    @field_validator("query", "state_regex", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @field_validator("state_regex")
    @classmethod
    def _named_groups(cls, value: tuple[re.Pattern[str], ...]) -> tuple[re.Pattern[str], ...]:
        for pattern in value:
            if not pattern.groupindex:
                raise ValueError(f"{pattern.pattern!r} has no named group (?P<name>...)")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _needs_query(cls, interval: float | None, info: ValidationInfo) -> float | None:
        if interval is not None and not info.data.get("query"):
            raise ValueError("needs a query")
        return interval

    @field_validator("actions")
    @classmethod
    def _does_something(
        cls, actions: dict[str, TcpAction], info: ValidationInfo
    ) -> dict[str, TcpAction]:
        need_something(
            actions, info, "state_regex", "a tcp device needs at least one action or state_regex"
        )
        return actions

    def build_action_models(self) -> ActionModels:
        """A parameter model per action; string values stay on their line.

        A line break (or the configured newline) would end the line and start
        another command; other control characters (NUL, VT, FF, NEL, U+2028 ...)
        are read as line ends or framing by some devices, so they too are
        refused unless the action allows them.
        """
        return {
            name: _params_model(name, action, self.newline)
            for name, action in self.actions.items()
        }


def _params_model(name: str, action: TcpAction, newline: str) -> type[Params]:
    rule = refuse("\r\n" + newline, controls=not action.allow_control_characters)
    rules = dict.fromkeys(action.params, (rule,))
    return build_params_model(name, action.params, text_rules=rules)


class TcpDevice(ConfiguredActionsAdapter):
    """A device on a TCP socket that talks in lines of text."""

    config_model: ClassVar[type[DeviceConfig]] = TcpConfig
    config: TcpConfig

    @classmethod
    def state_fields_for(cls, config: DeviceConfig) -> Mapping[str, StateField]:
        """A field per named group of ``state_regex``; its kind is unknown (a string)."""
        if not isinstance(config, TcpConfig):
            return {}
        return {
            name: StateField() for pattern in config.state_regex for name in pattern.groupindex
        }

    def __init__(self, config: DeviceConfig, events: DeviceEvents) -> None:
        """Not connected until ``open``."""
        super().__init__(config, events)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()  # one request (line out, reply in) at a time
        self._listening = False  # ``background`` reads the lines; requests wait on _reply
        self._reply: asyncio.Future[str] | None = None

    async def open(self) -> None:
        """Connect, then send the queries for a first state."""
        host, port = self.config.host, self.config.port
        try:
            self._reader, self._writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise DeviceError(f"cannot connect to {host}:{port}: {exc}") from exc
        await self._query()

    async def close(self) -> None:
        """Close the connection (safe to call again, or after a failed open)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def background(self) -> None:
        """Read every line the device sends; poll the queries; report a closed connection."""
        async with asyncio.TaskGroup() as tasks:
            poller = tasks.create_task(self._poll())
            reason = await self._read_lines()
            poller.cancel()
        self.events.connection_lost(reason)

    async def execute(self, action: str, params: Params) -> None:
        """Send the action's line; with ``expect``, check the reply."""
        spec = self.config.actions[action]
        line = render(spec.send, params.model_dump())
        what = f"action {action!r}"
        if spec.expect is None:
            await self._request(line, what, reply=False)
            return
        reply = await self._request(line, what, reply=True)
        if not spec.expect.search(reply):
            raise DeviceError(f"unexpected reply to {what}: {reply!r}")

    async def _poll(self) -> None:
        await self.poll(self.config.poll_interval, self._query)

    async def _query(self) -> None:
        for index, line in enumerate(self.config.query):
            await self._request(line, f"query[{index}]", reply=True)

    async def _request(self, line: str, what: str, *, reply: bool) -> str:
        """Send ``line``; return the next line the device sends if ``reply``, else ``""``.

        Errors name the line by ``what`` (``action 'turn_on'``, ``query[0]``), never
        by its text: it may hold a password, and the host logs them and publishes
        them in results.
        """
        async with self._lock:
            if not reply:
                await self._send(line, what)
                return ""
            # Wait for the reply before sending: it may come back before the send returns.
            waiter: asyncio.Future[str] | None = None
            if self._listening:
                waiter = self._reply = asyncio.get_running_loop().create_future()
            try:
                await self._send(line, what)
                async with asyncio.timeout(self.config.reply_timeout):
                    if waiter is not None:
                        return await waiter
                    return await self._read_reply()
            except TimeoutError:
                raise DeviceError(
                    f"no reply to {what} within {self.config.reply_timeout:g} s"
                ) from None
            finally:
                self._reply = None

    async def _send(self, line: str, what: str) -> None:
        if self._writer is None:
            raise DeviceError("not connected")
        try:
            data = (line + self.config.newline).encode(self.config.encoding)
        except UnicodeEncodeError as exc:
            # Not chained: the error holds the whole line, which may hold a secret.
            raise DeviceError(
                f"cannot send {what}: it has a character {exc.encoding} cannot encode"
            ) from None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise DeviceError(f"cannot send {what}: {exc}") from exc

    async def _read_reply(self) -> str:
        """Read the reply here: nothing else reads before ``background`` runs."""
        try:
            line = await self._read_line()
        except (OSError, asyncio.LimitOverrunError) as exc:
            raise DeviceError(f"reading failed: {exc}") from exc
        if line is None:
            raise DeviceError("the device closed the connection")
        return line

    async def _read_lines(self) -> str:
        """Hand each line to the waiting request; return why reading stopped."""
        async with self._lock:  # a request that reads its own reply finishes first
            self._listening = True
        try:
            while (line := await self._read_line()) is not None:
                if self._reply is not None and not self._reply.done():
                    self._reply.set_result(line)
        except (OSError, asyncio.LimitOverrunError) as exc:
            return f"reading failed: {exc}"
        else:
            return "the device closed the connection"
        finally:
            self._listening = False
            if self._reply is not None and not self._reply.done():
                self._reply.set_exception(DeviceError("the connection was lost"))

    async def _read_line(self) -> str | None:
        """The next non-empty line (its state applied), or None at the end of the stream."""
        if self._reader is None:
            return None
        separator = self.config.newline.encode(self.config.encoding)
        while True:
            try:
                data = await self._reader.readuntil(separator)
            except asyncio.IncompleteReadError:
                return None
            line = data.decode(self.config.encoding, errors="replace").strip()
            if line:
                self._apply(line)
                return line

    def _apply(self, line: str) -> None:
        changes: dict[str, object] = {}
        for pattern in self.config.state_regex:
            match = pattern.search(line)
            if match:
                changes.update(
                    (k, _typed(v)) for k, v in match.groupdict().items() if v is not None
                )
        if changes:
            self.merge_state(changes)


def _typed(text: str) -> object:
    """Numbers as numbers: ``"042"`` is 42, ``"1.5"`` is 1.5, anything else stays text."""
    if _INTEGER.match(text):
        return int(text)
    if _DECIMAL.match(text):
        return float(text)
    return text
