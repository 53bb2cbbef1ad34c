"""The gateway's own commands (``{base}/gateway/command``): action name -> params model, handler.

A gateway command is one small module with a ``register`` function that adds its
action to a ``GatewayCommands``: a params model (a ``devices.Params``, whose JSON
Schema clients see as they see devices' actions) and a handler. The registry
answers unknown actions and bad params, so a handler only ever gets params that
fit its model. For example::

    class Ping(Params):
        note: str = ""

    def register(commands: GatewayCommands) -> None:
        def prepare(command: Command, params: Ping) -> Begin:
            return lambda: Result(id=command.id, device=GATEWAY, action=command.action,
                                  extra={"pong": params.note})
        commands.register("ping", Ping, prepare)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from devices import Params
from gateway.core.commands import BARE_ACTION, Result
from gateway.core.errors import CommandError, ErrorCode, validate_params

if TYPE_CHECKING:
    from gateway.core.commands import Command

P = TypeVar("P", bound=Params)

Begin = Callable[[], "Result | asyncio.Future[Result]"]
"""Runs a checked command: its result now, or a future that gets it."""

Start = Callable[[], "asyncio.Future[Result]"]
"""What the dispatcher calls to run a checked command; the future gets its one result."""

Handler = Callable[["Command", P], Begin]
"""Checks a command whose params fit the model (raising ``CommandError``), returns its ``Begin``.

Checking and running are two calls because the dispatcher answers a repeated id
in between: a command refused by its checks is not remembered, so it may be resent.
"""


@dataclass(frozen=True, slots=True)
class GatewayCommand(Generic[P]):
    """One gateway action: its params model, that model's JSON Schema, its handler."""

    params: type[P]
    schema: dict[str, Any]
    handler: Handler[P]


class GatewayCommands:
    """The actions the gateway itself answers on ``{base}/gateway/command``."""

    def __init__(self) -> None:
        """An empty registry; each command module's ``register`` adds to it."""
        self._commands: dict[str, GatewayCommand[Any]] = {}

    def register(self, action: str, params: type[P], handler: Handler[P]) -> None:
        """Answer ``action`` with ``handler``, once its params fit ``params``.

        Raises:
            ValueError: the name is taken, or could not be sent as a bare action name.
        """
        if not BARE_ACTION.match(action):
            raise ValueError(f"gateway action {action!r} must match {BARE_ACTION.pattern}")
        if action in self._commands:
            raise ValueError(f"gateway action {action!r} is already registered")
        # The schema now, not per describe: a model that cannot make one fails at startup.
        self._commands[action] = GatewayCommand(params, params.model_json_schema(), handler)

    def names(self) -> list[str]:
        """Every registered action, sorted."""
        return sorted(self._commands)

    def schemas(self) -> dict[str, dict[str, Any]]:
        """Each action's params JSON Schema, by name (as ``gateway/devices`` lists actions)."""
        return {name: self._commands[name].schema for name in self.names()}

    def prepare(self, command: Command) -> Start:
        """Check ``command`` before anything runs; return what runs it.

        Raises:
            CommandError: ``unknown_action`` listing the known ones, ``invalid_params``
                naming the field, or whatever the handler's own checks refuse.
        """
        entry = self._commands.get(command.action)
        if entry is None:
            known = ", ".join(self.names())
            raise CommandError(
                ErrorCode.UNKNOWN_ACTION,
                f"the gateway has no action {command.action!r} ({known})",
            )
        params = validate_params({command.action: entry.params}, command.action, command.params)
        begin = entry.handler(command, params)
        return lambda: _start(command, begin)


def _start(command: Command, begin: Begin) -> asyncio.Future[Result]:
    # As for a device's queue: past expires_at when it would start, it does not
    # (contract 2); raised, so the dispatcher does not remember the id.
    if command.expires_at is not None and time.time() >= command.expires_at:
        raise CommandError(ErrorCode.EXPIRED, "expires_at passed before the command started")
    outcome = begin()
    if isinstance(outcome, Result):
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        done.set_result(outcome)
        return done
    return outcome
