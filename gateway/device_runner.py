"""One device: connecting it after its dependencies, its queue, and its worker."""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devices import Adapter, DeviceError, PreconditionFailedError
from gateway.backoff import Backoff
from gateway.commands import Command, Result
from gateway.errors import CommandError, ErrorCode
from gateway.messages import Outbound

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from devices import DeviceConfig, Params
    from gateway.config import GatewaySettings
    from gateway.topics import Topics

log = logging.getLogger(__name__)


class Status(enum.Enum):
    """Where a device is in its life."""

    CONNECTING = "connecting"  # first connect not yet done: commands wait
    ONLINE = "online"
    OFFLINE = "offline"  # connect failed or connection lost: commands refused


@dataclass(slots=True)
class Job:
    """A queued command; ``done`` gets its result."""

    command: Command
    params: Params
    done: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def finish(self, result: Result) -> None:
        """Answer once; later answers (there should be none) are ignored."""
        if not self.done.done():
            self.done.set_result(result)


class DeviceRunner:
    """Runs one adapter: open with retries, one command at a time, state out."""

    def __init__(  # noqa: PLR0913 - each is a separate collaborator
        self,
        *,
        config: DeviceConfig,
        adapter_type: type[Adapter],
        settings: GatewaySettings,
        topics: Topics,
        publish: Callable[[Outbound], None],
        dependencies: list[DeviceRunner],
        on_status: Callable[[], None] = lambda: None,
    ) -> None:
        """Wire the runner; nothing starts until ``run``.

        ``on_status`` is called whenever the device's status changes.
        """
        self.id = config.id
        self.config = config
        self.adapter_type = adapter_type
        self.adapter = adapter_type(config, self)
        self.dependencies = dependencies
        self.dependents: list[DeviceRunner] = []
        self.status = Status.CONNECTING
        # A deque made at the first command and a future made only while the
        # worker waits: an asyncio.Queue costs about 3 KB per device and an
        # empty deque 0.8 KB, a lot at 10,000 devices.
        self._jobs: collections.deque[Job] | None = None
        self._job_ready: asyncio.Future[None] | None = None
        self._settings = settings
        self._topics = topics
        self._publish = publish
        self._on_status = on_status
        self._timeout = config.timeout or settings.command_timeout
        self._changed: asyncio.Event | None = None  # made when someone waits: see _until
        self._lost: asyncio.Future[None] | None = None  # set when the connection drops
        self._running: asyncio.Timeout | None = None
        self._acting = False  # an action is running
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._in_hand: Job | None = None  # taken from the queue, not yet answered
        self._force_cancelled = False
        self._closing = False
        self._opened = False
        self._published_state: str | None = None
        self._published_availability: str | None = None

    # -- availability -------------------------------------------------------

    @property
    def available(self) -> bool:
        """Online, and so is every device it depends on."""
        return self.status is Status.ONLINE and all(d.available for d in self.dependencies)

    def refusal(self) -> CommandError | None:
        """Why a command must be answered at once instead of queued, if it must."""
        if self.status is Status.OFFLINE:
            return CommandError(ErrorCode.DEVICE_UNAVAILABLE, f"device {self.id!r} is offline")
        for dep in self.dependencies:
            if dep.status is Status.OFFLINE or dep.refusal() is not None:
                return CommandError(
                    ErrorCode.DEPENDENCY_UNAVAILABLE,
                    f"device {self.id!r} depends on {dep.id!r}, which is offline",
                )
        return None

    def _waiting(self) -> bool:
        """Still connecting (itself or a dependency), so queued commands wait."""
        if self.status is Status.ONLINE and not self.dependencies:
            return False  # the usual case, checked per command
        return not self._closing and not self.available and self.refusal() is None

    def _set_status(self, status: Status) -> None:
        if status is not self.status:
            log.info("device %s is %s", self.id, status.value)
        self.status = status
        self._on_status()
        self._notify()

    def _notify(self) -> None:
        """Wake whatever waits on this device or on a device that depends on it."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        self.publish_availability()
        for dependent in self.dependents:
            dependent._notify()  # noqa: SLF001 - same class

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    # -- what goes out ----------------------------------------------------------

    def publish_availability(self, *, force: bool = False) -> None:
        """Publish ``online``/``offline`` if it changed (or when forced)."""
        value = "online" if self.available else "offline"
        if force or value != self._published_availability:
            self._published_availability = value
            self._publish(
                Outbound(self._topics.availability(self.id), value.encode(), retain=True)
            )

    def announcements(self) -> list[Outbound]:
        """Availability and, once known, state: republished after every connect."""
        value = "online" if self.available else "offline"
        self._published_availability = value
        messages = [Outbound(self._topics.availability(self.id), value.encode(), retain=True)]
        if self._published_state is not None:
            state = self._published_state.encode()
            messages.append(Outbound(self._topics.state(self.id), state, retain=True))
        return messages

    def state_changed(self, state: Mapping[str, Any], *, force: bool = False) -> None:
        """From the adapter: publish the state if it changed (or when forced)."""
        if self.status is Status.CONNECTING and not self._opened:
            return  # published once the device is online
        payload = json.dumps(state, separators=(",", ":"), default=str)
        if force or payload != self._published_state:
            self._published_state = payload
            self._publish(Outbound(self._topics.state(self.id), payload.encode(), retain=True))

    def connection_lost(self, reason: str) -> None:
        """From the adapter: its connection dropped."""
        log.warning("device %s lost its connection: %s", self.id, reason)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # -- commands -----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise the refusal (unavailable, busy, expired)."""
        if self._closing:
            raise CommandError(ErrorCode.CANCELLED, "the gateway is shutting down")
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        if _expired(job.command):
            raise CommandError(ErrorCode.EXPIRED, "expires_at passed before the command started")
        if self._jobs is None:
            self._jobs = collections.deque()
        if len(self._jobs) >= self._settings.queue_size:
            raise CommandError(
                ErrorCode.BUSY,
                f"device {self.id!r} has {len(self._jobs)} commands waiting; retry later",
            )
        self._jobs.append(job)
        if self._job_ready is not None and not self._job_ready.done():
            self._job_ready.set_result(None)

    @property
    def queue_depth(self) -> int:
        """Commands waiting (not the running one)."""
        return 0 if self._jobs is None else len(self._jobs)

    async def _next_job(self) -> Job:
        while not self._jobs:
            self._job_ready = asyncio.get_running_loop().create_future()
            await self._job_ready
        return self._jobs.popleft()

    async def _work(self) -> None:
        """Run queued commands one at a time, in arrival order."""
        while True:
            self._in_hand = job = await self._next_job()
            await self._until(lambda: not self._waiting())
            job.finish(await self._execute(job))
            self._in_hand = None

    async def _execute(self, job: Job) -> Result:
        command = job.command
        started, started_at = time.monotonic(), time.time()

        def result(
            error: CommandError | None = None, state: dict[str, Any] | None = None
        ) -> Result:
            return Result(
                id=command.id,
                device=self.id,
                action=command.action,
                error=error,
                state=state,
                duration_ms=(time.monotonic() - started) * 1000,
                started_at=started_at,
            )

        if self._closing:
            return result(CommandError(ErrorCode.CANCELLED, "the gateway shut down before it ran"))
        if (refusal := self.refusal()) is not None:
            return result(refusal)
        if _expired(command):
            return result(
                CommandError(ErrorCode.EXPIRED, "expires_at passed before the command started")
            )
        error = await self._call_adapter(command.action, job.params)
        return result(error, dict(self.adapter.state))

    async def _call_adapter(  # noqa: PLR0911 - one return per error code
        self, action: str, params: Params
    ) -> CommandError | None:
        """Run the action under its timeout; map every failure to an error code."""
        self._acting = True
        try:
            async with asyncio.timeout(self._timeout) as self._running:
                await self.adapter.execute(action, params)
        except TimeoutError:
            if self._force_cancelled:
                return CommandError(ErrorCode.CANCELLED, "the gateway shut down while it ran")
            if self._running is not None and self._running.expired():
                return CommandError(
                    ErrorCode.TIMEOUT,
                    f"the action ran past its {self._timeout:g} s timeout and was cancelled",
                )
            return CommandError(ErrorCode.DEVICE_ERROR, "the device timed out")
        except PreconditionFailedError as exc:
            return CommandError(ErrorCode.PRECONDITION_FAILED, str(exc))
        except DeviceError as exc:
            return CommandError(ErrorCode.DEVICE_ERROR, str(exc) or type(exc).__name__)
        except Exception as exc:  # a plugin bug must not take the gateway down
            log.exception("device %s: adapter raised on %r", self.id, action)
            return CommandError(ErrorCode.DEVICE_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            self._running = None
            self._acting = False
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()
        return None

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (after the dependencies), serve commands, reconnect when lost."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._work())
            await self._stay_connected()

    async def _stay_connected(self) -> None:
        backoff = Backoff(
            self._settings.device_retry.min_delay, self._settings.device_retry.max_delay
        )
        while True:
            await self._until(lambda: all(d.available for d in self.dependencies))
            if await self._open():
                backoff.reset()
                await self._serve_until_lost()
            delay = backoff.next_delay()
            log.info("device %s: retrying connect in %.1f s", self.id, delay)
            await asyncio.sleep(delay)

    async def _open(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self.adapter.open()
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not take the gateway down
            log.warning("device %s failed to connect: %s", self.id, exc or type(exc).__name__)
            await self._close_adapter()
            self._set_status(Status.OFFLINE)
            return False
        self._opened = True
        # A loss reported before now (while opening) was of the old connection.
        self._lost = asyncio.get_running_loop().create_future()
        self._set_status(Status.ONLINE)
        self.state_changed(self.adapter.state, force=True)
        return True

    async def _serve_until_lost(self) -> None:
        if type(self.adapter).background is Adapter.background:
            await self._until_connection_lost()  # no background work: no task for it
        else:
            async with asyncio.TaskGroup() as tasks:
                background = tasks.create_task(self._background())
                await self._until_connection_lost()
                background.cancel()
        self._set_status(Status.OFFLINE)
        await self._close_adapter()

    async def _until_connection_lost(self) -> None:
        if self._lost is not None:  # made by every successful _open
            await self._lost

    async def _background(self) -> None:
        try:
            await self.adapter.background()
        except Exception as exc:  # a plugin bug must not take the gateway down
            log.exception("device %s: background work failed", self.id)
            self.connection_lost(f"background work failed: {exc}")

    async def _close_adapter(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self.adapter.close()
        except Exception:  # a plugin bug must not take the gateway down
            log.exception("device %s: close failed", self.id)
        self._opened = False

    # -- shutdown -------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Refuse new commands and answer every queued one ``cancelled``."""
        self._closing = True
        while self._jobs:
            _cancel(self._jobs.popleft(), self.id)
        self._notify()

    @property
    def busy(self) -> bool:
        """An action is running right now."""
        return self._acting

    async def until_idle(self) -> None:
        """Wait until no action is running."""
        while self._acting:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def cancel_running(self) -> None:
        """Cancel the running action now (the grace period is over)."""
        if self._running is not None:
            self._force_cancelled = True
            self._running.reschedule(asyncio.get_running_loop().time())

    async def close(self) -> None:
        """Close the adapter (after ``run`` was cancelled) and say ``offline``."""
        if self._in_hand is not None:
            _cancel(self._in_hand, self.id)
        if self._opened:
            await self._close_adapter()
        self.status = Status.OFFLINE
        self.publish_availability()


def _expired(command: Command) -> bool:
    return command.expires_at is not None and time.time() >= command.expires_at


def _cancel(job: Job, device: str) -> None:
    error = CommandError(ErrorCode.CANCELLED, "the gateway shut down before it ran")
    job.finish(Result(id=job.command.id, device=device, action=job.command.action, error=error))
