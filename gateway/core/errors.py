"""The contract's error codes, and the one exception that carries them."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from devices import Params


class ErrorCode(enum.StrEnum):
    """Result error codes, in the order they are checked on arrival."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_COMMAND = "invalid_command"
    RETAINED_COMMAND = "retained_command"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_ACTION = "unknown_action"
    INVALID_PARAMS = "invalid_params"
    DEVICE_UNAVAILABLE = "device_unavailable"
    DEPENDENCY_UNAVAILABLE = "dependency_unavailable"
    JOURNAL_UNAVAILABLE = "journal_unavailable"
    BUSY = "busy"
    EXPIRED = "expired"
    PRECONDITION_FAILED = "precondition_failed"
    DEVICE_ERROR = "device_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    STEP_FAILED = "step_failed"


class CommandError(Exception):
    """A command's failure, answered as ``{"code": ..., "message": ...}``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        """Keep the code and a message that says what to do."""
        super().__init__(message)
        self.code = code
        self.message = message

    def as_json(self) -> dict[str, str]:
        """The result's ``error`` object."""
        return {"code": self.code.value, "message": self.message}


def validate_params(
    actions: Mapping[str, type[Params]], action: str, params: Mapping[str, Any]
) -> Params:
    """Check ``action`` is one of ``actions`` (a device's) and ``params`` fit its model.

    Raises:
        CommandError: ``unknown_action`` or ``invalid_params``, naming the field.
    """
    model = actions.get(action)
    if model is None:
        known = ", ".join(sorted(actions))
        raise CommandError(
            ErrorCode.UNKNOWN_ACTION, f"unknown action {action!r} (actions: {known})"
        )
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        details = "; ".join(
            f"{format_path(('params', *e['loc']))}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise CommandError(ErrorCode.INVALID_PARAMS, details) from None


def format_path(loc: Iterable[int | str]) -> str:
    """``("devices", 2, "latency")`` -> ``devices[2].latency``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.removeprefix(".")
