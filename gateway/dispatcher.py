"""From a command message to exactly one result: checks on arrival, then a device queue."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from gateway.commands import InvalidCommandError, Result, new_id, parse_command
from gateway.dedupe import DedupeWindow
from gateway.device_runner import Job
from gateway.errors import CommandError, ErrorCode, validate_params
from gateway.messages import Inbound, Outbound
from gateway.topics import GATEWAY

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from gateway.commands import Command
    from gateway.config import GatewaySettings
    from gateway.fleet import Fleet
    from gateway.topics import Topics

log = logging.getLogger(__name__)


class Dispatcher:
    """Reads each command message and answers it, now or when its device has run it."""

    def __init__(
        self,
        settings: GatewaySettings,
        topics: Topics,
        fleet: Fleet,
        publish: Callable[[Outbound], None],
        gateway_commands: Callable[[Command, Callable[[Result], None]], None] | None = None,
    ) -> None:
        """Wire the dispatcher to the devices and the outbox."""
        self._settings = settings
        self._topics = topics
        self._fleet = fleet
        self._publish = publish
        self._gateway_commands = gateway_commands
        self._dedupe = DedupeWindow(settings.dedupe_window)
        self.closing = False

    def on_message(self, message: Inbound) -> None:
        """Handle one inbound message; every command message gets one result."""
        device = self._topics.command_target(message.topic)
        if device is None:
            log.debug("ignoring a message on %s", message.topic)
            return
        received = time.monotonic()

        def answer(result: Result) -> None:
            self._answer(message, result)

        try:
            command = self._read(message)
        except InvalidCommandError as exc:
            answer(Result(id=exc.command_id or new_id(), device=device, action=None, error=exc))
            return
        try:
            self._route(device, command, received, answer)
        except CommandError as exc:
            answer(Result(id=command.id, device=device, action=command.action, error=exc))

    def _read(self, message: Inbound) -> Command:
        """The checks that need only the message itself, in the contract's order."""
        size = len(message.payload)
        if size > self._settings.max_payload_bytes:
            raise InvalidCommandError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the payload is {size} bytes; the limit is {self._settings.max_payload_bytes}",
                None,
            )
        command = parse_command(message.payload)
        if message.retain:
            raise InvalidCommandError(
                ErrorCode.RETAINED_COMMAND,
                "retained commands are stale and never run; publish without the retain flag",
                command.id,
            )
        return command

    def _route(
        self,
        device: str,
        command: Command,
        received: float,
        answer: Callable[[Result], None],
    ) -> None:
        if device == GATEWAY and self._gateway_commands is not None:
            self._gateway_commands(command, answer)
            return
        runner = self._fleet.get(device)
        if runner is None:
            raise CommandError(ErrorCode.UNKNOWN_DEVICE, f"no device {device!r}")
        params = validate_params(runner.adapter_type, command.action, command.params)
        first_run = self._dedupe.get(device, command.id)
        if first_run is not None:
            _when_done(first_run, lambda result: answer(_as_duplicate(result)))
            return
        if self.closing:
            raise CommandError(ErrorCode.CANCELLED, "the gateway is shutting down")
        job = Job(command, params, received, answer)
        runner.submit(job)
        self._dedupe.remember(device, command.id, job.done)

    def _answer(self, message: Inbound, result: Result) -> None:
        if result.error is not None:
            log.info(
                "command %s to %s (%s): %s",
                result.id,
                result.device,
                result.action,
                result.error.code.value,
            )
        payload = result.to_json()
        self._publish(Outbound(self._topics.result(result.device), payload))
        if message.response_topic:
            self._publish(
                Outbound(
                    message.response_topic,
                    payload,
                    correlation_data=message.correlation_data,
                )
            )


def _as_duplicate(result: Result) -> Result:
    return dataclasses.replace(result, duplicate=True)


def _when_done(future: asyncio.Future[Result], callback: Callable[[Result], None]) -> None:
    if future.done():
        callback(future.result())
    else:
        future.add_done_callback(lambda done: callback(done.result()))
