"""One device's commands: queued, run one at a time in arrival order, each answered once."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from devices import DeviceError, PreconditionFailedError
from gateway.core.commands import Command, Result
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.wakeup import Wakeup

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from devices import Adapter, Params

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """A queued command; ``done`` gets its result.

    ``before_run``, when set, is awaited just before the adapter is called (the
    journal's durable "started" record); an error it returns is the answer instead.
    """

    command: Command
    params: Params
    done: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    before_run: Callable[[], Awaitable[CommandError | None]] | None = None

    def finish(self, result: Result) -> None:
        """Answer once; later answers (there should be none) are ignored."""
        if not self.done.done():
            self.done.set_result(result)


class Gate(Protocol):
    """What the worker asks of its device's link before a command may run."""

    @property
    def changed(self) -> Wakeup:
        """Fired whenever the answers below may have changed."""
        ...

    def refusal(self) -> CommandError | None:
        """Why a command must be answered at once (offline, a dependency offline)."""
        ...

    def connecting(self) -> bool:
        """Still connecting: a command waits for it."""
        ...


class _Phase(enum.Enum):
    """How far shutdown has gone; with the job in hand and the deadline, all of it."""

    SERVING = "serving"
    STOPPING = "stopping"  # no new commands; queued ones answered cancelled
    CANCELLING = "cancelling"  # the grace period is over: the running action is cancelled


class CommandWorker:
    """Runs one device's commands, each under its timeout, and maps failures to error codes.

    Waits go through two ``Wakeup``s: its own (``_changed``: a job was queued or
    an action ended) and the gate's (the device connected, failed or stopped).
    """

    __slots__ = (
        "_adapter",
        "_changed",
        "_deadline",
        "_device",
        "_gate",
        "_in_hand",
        "_jobs",
        "_phase",
        "_queue_size",
        "_starting",
        "_timeout",
    )

    def __init__(
        self, device: str, adapter: Adapter, gate: Gate, *, timeout: float, queue_size: int
    ) -> None:
        """Nothing runs until ``run``; ``queue_size`` bounds the commands waiting."""
        self._device = device
        self._adapter = adapter
        self._gate = gate
        self._timeout = timeout
        self._queue_size = queue_size
        self._changed = Wakeup()
        self._phase = _Phase.SERVING
        # Made at the first command: an empty deque is about 0.6 KB, a lot at
        # 10,000 devices (an asyncio.Queue, about 3 KB).
        self._jobs: collections.deque[Job] | None = None
        self._in_hand: Job | None = None  # taken from the queue, not yet answered
        self._deadline: asyncio.Timeout | None = None  # the running action's, while one runs
        self._starting = False  # waiting for its journal record: running, for shutdown

    @property
    def queue_depth(self) -> int:
        """Commands waiting (not the running one)."""
        return 0 if self._jobs is None else len(self._jobs)

    @property
    def busy(self) -> bool:
        """An action is running right now."""
        return self._deadline is not None or self._starting

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise why not (shutting down, unavailable, expired, busy)."""
        if self._phase is not _Phase.SERVING:
            raise CommandError(ErrorCode.CANCELLED, "the gateway is shutting down")
        if (refusal := self._gate.refusal()) is not None:
            raise refusal
        if _expired(job.command):
            raise CommandError(ErrorCode.EXPIRED, "expires_at passed before the command started")
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = collections.deque()
        if len(jobs) >= self._queue_size:
            raise CommandError(
                ErrorCode.BUSY,
                f"device {self._device!r} has {len(jobs)} commands waiting; retry later",
            )
        jobs.append(job)
        self._changed.fire()

    async def run(self) -> None:
        """Answer queued commands one at a time, in arrival order, until cancelled."""
        while True:
            await self._changed.until(self._has_jobs)
            assert self._jobs  # noqa: S101 - _has_jobs just said so
            job = self._in_hand = self._jobs.popleft()
            if self._gate.connecting():
                # A command for a device still connecting waits for it (contract 2).
                await self._gate.changed.until(self._may_start)
            job.finish(await self._execute(job))
            self._in_hand = None

    def _has_jobs(self) -> bool:
        return bool(self._jobs)

    def _may_start(self) -> bool:
        return self._phase is not _Phase.SERVING or not self._gate.connecting()

    async def _execute(self, job: Job) -> Result:
        command = job.command
        started, started_at = time.monotonic(), time.time()
        error: CommandError | None
        state = None
        if self._phase is not _Phase.SERVING:
            error = CommandError(ErrorCode.CANCELLED, "the gateway shut down before it ran")
        elif (refusal := self._gate.refusal()) is not None:
            error = refusal
        elif _expired(command):
            error = CommandError(ErrorCode.EXPIRED, "expires_at passed before the command started")
        elif job.before_run is None or (error := await self._before_run(job)) is None:
            error = await self._call_adapter(command.action, job.params)
            state = dict(self._adapter.state)
        return Result(
            id=command.id,
            device=self._device,
            action=command.action,
            error=error,
            state=state,
            duration_ms=(time.monotonic() - started) * 1000,
            started_at=started_at,
        )

    async def _before_run(self, job: Job) -> CommandError | None:
        assert job.before_run is not None  # noqa: S101 - the caller checked
        self._starting = True
        try:
            return await job.before_run()
        finally:
            self._starting = False
            self._changed.fire()  # for until_idle

    async def _call_adapter(self, action: str, params: Params) -> CommandError | None:
        """Run the action under its timeout; map every failure to an error code."""
        try:
            async with asyncio.timeout(self._timeout) as self._deadline:
                await self._adapter.execute(action, params)
        except TimeoutError:
            return self._timed_out()
        except PreconditionFailedError as exc:
            return CommandError(ErrorCode.PRECONDITION_FAILED, str(exc))
        except DeviceError as exc:
            return CommandError(ErrorCode.DEVICE_ERROR, str(exc) or type(exc).__name__)
        except Exception as exc:  # a plugin bug must not take the gateway down
            log.exception("device %s: adapter raised on %r", self._device, action)
            return CommandError(ErrorCode.DEVICE_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            self._deadline = None
            self._changed.fire()  # for until_idle
        return None

    def _timed_out(self) -> CommandError:
        """Why the action raised ``TimeoutError``: shutdown, its timeout, or the adapter's own."""
        if self._phase is _Phase.CANCELLING:
            return CommandError(ErrorCode.CANCELLED, "the gateway shut down while it ran")
        if self._deadline is not None and self._deadline.expired():
            return CommandError(
                ErrorCode.TIMEOUT,
                f"the action ran past its {self._timeout:g} s timeout and was cancelled",
            )
        return CommandError(ErrorCode.DEVICE_ERROR, "the device timed out")

    # -- shutdown -------------------------------------------------------------------

    def stop(self) -> None:
        """Refuse new commands and answer every queued one ``cancelled``."""
        if self._phase is _Phase.SERVING:
            self._phase = _Phase.STOPPING
        while self._jobs:
            _cancel(self._jobs.popleft(), self._device)
        # The job in hand may be waiting for the device to connect: answer it now.
        self._gate.changed.fire()

    async def until_idle(self) -> None:
        """Wait until no action is running."""
        await self._changed.until(self._idle)

    def _idle(self) -> bool:
        return not self.busy

    def cancel_running(self) -> None:
        """Cancel the running action now (the grace period is over)."""
        if self._deadline is not None:
            self._phase = _Phase.CANCELLING
            self._deadline.reschedule(asyncio.get_running_loop().time())

    def close(self) -> None:
        """Answer ``cancelled`` a job cut off by the cancellation of ``run``, if any."""
        if self._in_hand is not None:
            _cancel(self._in_hand, self._device)


def _expired(command: Command) -> bool:
    return command.expires_at is not None and time.time() >= command.expires_at


def _cancel(job: Job, device: str) -> None:
    error = CommandError(ErrorCode.CANCELLED, "the gateway shut down before it ran")
    job.finish(Result(id=job.command.id, device=device, action=job.command.action, error=error))
