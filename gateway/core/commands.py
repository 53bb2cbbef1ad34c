"""Reading command payloads and writing result payloads (pure, no I/O)."""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.core.errors import CommandError, ErrorCode

BARE_ACTION = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_ID_LENGTH = 128


def new_id() -> str:
    """An id for a command that came without one (or could not be read)."""
    return f"gw-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Command:
    """A command as read from its payload."""

    action: str
    id: str = field(default_factory=new_id)
    params: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None
    given_id: bool = field(default=False, compare=False)
    """The id came with the command (not made by the gateway): it is journaled."""


class InvalidCommandError(CommandError):
    """A payload that is not a command; ``command_id`` is its own id if readable."""

    def __init__(self, code: ErrorCode, message: str, command_id: str | None) -> None:
        """Keep the command's id, so the result can carry it."""
        super().__init__(code, message)
        self.command_id = command_id


def parse_command(payload: bytes) -> Command:
    """Read a JSON command object or a bare action name."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCommandError(
            ErrorCode.INVALID_JSON, "the payload is not UTF-8", None
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidCommandError(
            ErrorCode.INVALID_JSON, "the JSON is nested too deeply", None
        ) from None
    except ValueError:
        bare = text.strip()
        if BARE_ACTION.match(bare):
            return Command(action=bare)
        raise InvalidCommandError(
            ErrorCode.INVALID_JSON,
            "the payload is neither JSON nor a bare action name like turn_on",
            None,
        ) from None
    return _command_from_json(data)


def _reject_constant(name: str) -> object:
    """NaN and Infinity are not JSON (RFC 8259), though Python's parser allows them."""
    raise ValueError(f"{name} is not JSON")


def _command_from_json(data: object) -> Command:
    if not isinstance(data, dict):
        raise InvalidCommandError(
            ErrorCode.INVALID_COMMAND,
            f"a command must be a JSON object, not {type(data).__name__}",
            None,
        )
    command_id = data.get("id")
    readable_id = command_id if _valid_id(command_id) else None

    def invalid(message: str) -> InvalidCommandError:
        return InvalidCommandError(ErrorCode.INVALID_COMMAND, message, readable_id)

    action, params, expires_at = (
        data.get("action"),
        data.get("params", {}),
        data.get("expires_at"),
    )
    if not isinstance(action, str) or not action:
        raise invalid("'action' is required and must be a non-empty string")
    if not isinstance(params, dict):
        raise invalid("'params' must be a JSON object")
    if command_id is not None and readable_id is None:
        raise invalid(f"'id' must be a string of 1 to {MAX_ID_LENGTH} characters")
    if expires_at is not None and not _is_number(expires_at):
        raise invalid("'expires_at' must be a number (Unix time in seconds)")
    return Command(
        action=action,
        id=readable_id or new_id(),
        params=params,
        expires_at=expires_at,
        given_id=readable_id is not None,
    )


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    # An int is always finite (math.isfinite would overflow on a huge one).
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def as_duplicate(payload: bytes) -> bytes:
    """A result payload answering a repeated id: the same, with ``"duplicate": true``."""
    body = json.loads(payload)
    body["duplicate"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Result:
    """The one answer to a command message."""

    id: str
    device: str
    action: str | None
    error: CommandError | None = None
    state: dict[str, Any] | None = None
    duration_ms: float = 0.0
    duplicate: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None  # Unix time the device started it (not published)

    @property
    def ok(self) -> bool:
        """Whether the command succeeded."""
        return self.error is None

    def to_json(self, *, duplicate: bool | None = None) -> bytes:
        """The result payload; ``duplicate`` overrides the flag for a repeated id."""
        body = {
            "id": self.id,
            "device": self.device,
            "action": self.action,
            "status": "ok" if self.error is None else "error",
            "error": None if self.error is None else self.error.as_json(),
            "state": self.state,
            "duplicate": self.duplicate if duplicate is None else duplicate,
            "duration_ms": round(self.duration_ms, 1),
            **self.extra,
        }
        try:
            return json.dumps(body, separators=(",", ":"), default=str, allow_nan=False).encode()
        except ValueError:  # NaN or infinity in an adapter's state: not JSON
            body["state"] = None
            return json.dumps(body, separators=(",", ":"), default=str).encode()
