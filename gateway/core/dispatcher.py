"""From a command message to exactly one result: checks on arrival, then a device queue."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Protocol

from gateway.core.commands import InvalidCommandError, Result, as_duplicate, new_id, parse_command
from gateway.core.dedupe import INTERRUPTED, DedupeWindow, Interrupted, compact
from gateway.core.describe import register as register_describe
from gateway.core.device_runner import Job
from gateway.core.errors import CommandError, ErrorCode, validate_params
from gateway.core.events import CommandAccepted, EventStream, ResultPublished
from gateway.core.gateway_commands import GatewayCommands
from gateway.core.journal import durable_start
from gateway.core.lifecycle import Lifecycle
from gateway.core.logs import Throttle, shorten
from gateway.core.messages import Inbound, Outbound, answering
from gateway.core.scenes import register as register_scenes
from gateway.core.topics import GATEWAY
from gateway.core.wakeup import Wakeup

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import GatewaySettings
    from gateway.core.commands import Command
    from gateway.core.dedupe import Answered
    from gateway.core.fleet import Fleet
    from gateway.core.journal import Journal, Record
    from gateway.core.scenes import SceneRunner
    from gateway.core.topics import Topics

log = logging.getLogger(__name__)


class Dispatcher:
    """Reads each command message and answers it, now or when its device has run it."""

    def __init__(  # noqa: PLR0913 - each is a separate collaborator
        self,
        settings: GatewaySettings,
        topics: Topics,
        fleet: Fleet,
        publish: Callable[[Outbound], None],
        scenes: SceneRunner,
        *,
        lifecycle: Lifecycle | None = None,
        events: EventStream | None = None,
        journal: Journal | None = None,
    ) -> None:
        """Wire the dispatcher to the devices, the gateway's own commands and the outbox.

        With a ``journal``, device commands with ids are recorded there (contract 10).
        """
        self._settings = settings
        self._topics = topics
        self._fleet = fleet
        self._publish = publish
        self.gateway_commands = builtin_commands(fleet, scenes)
        """What ``{base}/gateway/command`` answers; more may be registered before commands come."""
        self._events = EventStream() if events is None else events
        self._dedupe = DedupeWindow(
            settings.dedupe_window, settings.dedupe_max_ids, settings.dedupe_max_bytes
        )
        self._refusal_log = Throttle()
        self._lifecycle = Lifecycle() if lifecycle is None else lifecycle
        self._journal = journal
        self._unpublished = 0  # results waiting for their journal record
        self._published = Wakeup()
        self._journal_log = Throttle()

    def restore(self, records: list[Record]) -> None:
        """Remember what the journal held from before (oldest first)."""
        now = time.time()
        for device, command_id, seen, answered in records:
            answer = INTERRUPTED if answered is None else answered
            self._dedupe.restore(device, command_id, now - seen, answer)

    def recall(self, device: str, command_id: str) -> Answered | Interrupted | None:
        """What is remembered of a finished (or interrupted) id, if anything."""
        remembered = self._dedupe.get(device, command_id)
        return remembered if isinstance(remembered, tuple | Interrupted) else None

    async def journal_settled(self) -> None:
        """Wait until every result waiting for its journal record is published."""
        await self._published.until(lambda: not self._unpublished)

    def on_message(self, message: Inbound) -> None:
        """Handle one inbound message; every command message gets one result."""
        device = self._topics.command_target(message.topic)
        if device is None or (message.retain and not message.payload):
            # Not a command topic, or a retained command being cleared (MQTT 3.3.1.3:
            # an empty retained message deletes it): nothing to answer.
            log.debug("ignoring a message on %s", shorten(message.topic))
            message.settle()
            return

        def answer(result: Result, payload: bytes | None = None) -> None:
            self._answer(message, result, payload)

        command: Command | None = None
        try:
            command = self._read(message)
            self._check_fresh(message)
            self._route(device, command, answer)
        except InvalidCommandError as exc:
            answer(Result(id=exc.command_id or new_id(), device=device, action=None, error=exc))
        except CommandError as exc:
            assert command is not None  # noqa: S101 - only _read raises before it is set
            answer(Result(id=command.id, device=device, action=command.action, error=exc))
        except Exception:
            # A bug of ours must still answer the command, and not end the session.
            log.exception("command on %s: failed to handle it", shorten(message.topic))
            error = CommandError(
                ErrorCode.DEVICE_ERROR, "the gateway failed to handle this command; see its log"
            )
            answer(
                Result(
                    id=command.id if command else new_id(),
                    device=device,
                    action=command.action if command else None,
                    error=error,
                )
            )

    @staticmethod
    def _check_fresh(message: Inbound) -> None:
        if message.retain:
            raise CommandError(
                ErrorCode.RETAINED_COMMAND,
                "retained commands are stale and never run; publish without the retain flag",
            )

    def _read(self, message: Inbound) -> Command:
        """Size and syntax: the checks that need only the payload."""
        size = len(message.payload)
        if size > self._settings.max_payload_bytes:
            raise InvalidCommandError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the payload is {size} bytes; the limit is {self._settings.max_payload_bytes}",
                None,
            )
        return parse_command(message.payload)

    def _route(self, device: str, command: Command, answer: _Answer) -> None:
        """Validate against the target, then answer a repeat or start the command."""
        start = self._prepare(device, command)
        first_run = self._dedupe.get(device, command.id)
        if isinstance(first_run, tuple):
            answer(_repeat(device, command, first_run), as_duplicate(first_run[0]))
            return
        if isinstance(first_run, Interrupted):
            # Started before a crash, never finished: answered, not run again.
            self._dedupe.forget(device, command.id)
            start = self._interrupted(device, command)
        elif first_run is not None:
            _when_done(first_run, lambda result: answer(_as_duplicate(result)))
            return
        if not self._lifecycle.accepting:
            raise CommandError(ErrorCode.CANCELLED, "the gateway is shutting down")
        done = start()
        self._dedupe.remember(device, command.id, done)
        if self._events.wanted:
            self._events.emit(CommandAccepted(device, command.id, command.action))
        journal = self._journal_for(command)

        def first_run_answered(result: Result) -> None:
            payload = result.to_json()  # once: published, and kept for repeats
            if result.error is not None and result.error.code is ErrorCode.JOURNAL_UNAVAILABLE:
                self._dedupe.forget(device, command.id)  # refused: may be sent again
                answer(result, payload)
                return
            self._dedupe.answered(device, command.id, result, payload)
            if journal is None:
                answer(result, payload)
                return
            # Recorded before it is published: a repeat after a crash gets this result.
            self._after_recording(
                journal,
                device,
                command.id,
                compact(result, payload),
                lambda: answer(result, payload),
            )

        _when_done(done, first_run_answered)

    def _journal_for(self, command: Command) -> Journal | None:
        """The journal, if this command is recorded there: one with its own id.

        A gateway command (a scene, a step list) gets only a finished record: its
        steps are journaled one by one as they run (``SceneRunner.journal_steps``).
        """
        return self._journal if command.given_id else None

    def _after_recording(
        self,
        journal: Journal,
        device: str,
        command_id: str,
        answered: Answered,
        publish: Callable[[], None],
    ) -> None:
        """Journal the result, then publish it (in the same pass as the commit)."""
        self._unpublished += 1

        def then(error: str | None) -> None:
            self._unpublished -= 1  # published next, before anything else runs
            self._published.fire()
            if error is not None:
                self._log_unrecorded(command_id, error)
            publish()

        journal.finish_then(device, command_id, answered, then)

    def _log_unrecorded(self, command_id: str, exc: str) -> None:
        held_back = self._journal_log.allow()
        if held_back is not None:
            log.warning(
                "command %s: its result is published but not journaled (%s)%s",
                shorten(command_id),
                exc,
                f" ({held_back} more such lines held back)" if held_back else "",
            )

    def _interrupted(self, device: str, command: Command) -> Callable[[], asyncio.Future[Result]]:
        runner = self._fleet.get(device)

        def answer_now() -> asyncio.Future[Result]:
            done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            error = CommandError(
                ErrorCode.INTERRUPTED,
                "the gateway stopped (crashed or was killed) while this command ran; "
                "it was not run again: check the device's state",
            )
            state = None if runner is None else dict(runner.adapter.state)
            done.set_result(
                Result(
                    id=command.id, device=device, action=command.action, error=error, state=state
                )
            )
            return done

        return answer_now

    def _prepare(self, device: str, command: Command) -> Callable[[], asyncio.Future[Result]]:
        """Check device, action and params; return what starts the command."""
        if device == GATEWAY:
            return self.gateway_commands.prepare(command)
        runner = self._fleet.get(device)
        if runner is None:
            raise CommandError(ErrorCode.UNKNOWN_DEVICE, f"no device {device!r}")
        actions = runner.adapter_type.actions_for(runner.config)
        job = Job(command, validate_params(actions, command.action, command.params))
        journal = self._journal_for(command)
        if journal is not None:
            job.before_run = durable_start(
                journal, device, command.id, refused="nothing ran: resend later"
            )

        def submit() -> asyncio.Future[Result]:
            if journal is not None and journal.problem is not None:
                # In the contract's order: after the device's refusals, before busy.
                if (refusal := runner.refusal()) is not None:
                    raise refusal
                raise _journal_unavailable(journal.problem)
            runner.submit(job)
            return job.done

        return submit

    def _answer(self, message: Inbound, result: Result, payload: bytes | None = None) -> None:
        """Publish ``result`` (as ``payload``, when already encoded)."""
        if self._events.wanted:
            self._events.emit(ResultPublished(result))
        if result.error is not None:
            _log_error(result)
        if payload is None:
            payload = result.to_json()
        if message.reply is not None:
            message.reply(payload)
        topic = self._topics.result(result.device)
        self._publish(answering(message, topic, payload))
        if message.response_topic:
            refusal = self._topics.response_topic_refusal(message.response_topic)
            if refusal is None:
                self._publish(
                    Outbound(
                        message.response_topic, payload, correlation_data=message.correlation_data
                    )
                )
            else:
                self._log_refused_response_topic(result.id, message.response_topic, refusal)

    def _log_refused_response_topic(self, command_id: str, topic: str, refusal: str) -> None:
        held_back = self._refusal_log.allow()
        if held_back is None:
            return
        log.warning(
            "command %s: not answering on response topic %r: %s%s",
            shorten(command_id),
            shorten(topic),
            refusal,
            f" ({held_back} more such lines held back)" if held_back else "",
        )


def builtin_commands(fleet: Fleet, scenes: SceneRunner) -> GatewayCommands:
    """The gateway's own commands: a new one is its module's ``register`` call here."""
    commands = GatewayCommands()
    register_scenes(commands, scenes)
    register_describe(commands, devices=fleet.describe, scenes=scenes.describe)
    return commands


# Failures of the device are news for the operator; refusals of bad input are not.
_DEVICE_FAILURES = frozenset({ErrorCode.DEVICE_ERROR, ErrorCode.TIMEOUT})


def _log_error(result: Result) -> None:
    assert result.error is not None  # noqa: S101 - the caller checked
    level = logging.WARNING if result.error.code in _DEVICE_FAILURES else logging.DEBUG
    log.log(
        level,
        "command %s to %s (%s): %s: %s",
        result.id,
        result.device,
        result.action,
        result.error.code.value,
        result.error.message,
    )


def _journal_unavailable(problem: str) -> CommandError:
    return CommandError(
        ErrorCode.JOURNAL_UNAVAILABLE,
        f"the journal cannot be written ({problem}); nothing ran: resend later",
    )


class _Answer(Protocol):
    def __call__(self, result: Result, payload: bytes | None = None) -> None: ...


def _repeat(device: str, command: Command, first_run: Answered) -> Result:
    """The result of a repeated id, for metrics and logs (its payload is stored)."""
    _, code, message = first_run
    error = None if code is None else CommandError(ErrorCode(code), message)
    return Result(id=command.id, device=device, action=command.action, error=error, duplicate=True)


def _as_duplicate(result: Result) -> Result:
    return dataclasses.replace(result, duplicate=True)


def _when_done(future: asyncio.Future[Result], callback: Callable[[Result], None]) -> None:
    if future.done():
        callback(future.result())
    else:
        future.add_done_callback(lambda done: callback(done.result()))
