"""Keeping one device connected: after its dependencies, with retries, and whether it is usable."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any, Protocol

from devices import Adapter
from gateway.core.backoff import Backoff
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.wakeup import Wakeup

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from devices import DeviceConfig
    from gateway.config import Backoff as RetrySettings
    from gateway.core.state_publisher import StatePublisher

log = logging.getLogger(__name__)


class Status(enum.Enum):
    """Where a device is in its life."""

    CONNECTING = "connecting"  # first connect not yet done: commands wait
    ONLINE = "online"
    OFFLINE = "offline"  # connect failed or connection lost: commands refused


class Linked(Protocol):
    """A device in the dependency graph, as seen by the links of its neighbours."""

    @property
    def link(self) -> DeviceLink:
        """The device's link."""
        ...


class DeviceLink:
    """Opens one adapter once its dependencies are online, and reopens it with backoff.

    It is also the adapter's event sink (``devices.DeviceEvents``), and it decides
    availability: online, and so is every device it depends on. Whatever waits
    on the device's status (its own retry loop, its command worker) waits on
    ``changed``, fired whenever this device's or a dependency's status changes,
    the connection drops, or the worker begins shutting down.
    """

    __slots__ = (
        "_available",
        "_blocked",
        "_dependencies",
        "_dependents",
        "_deps_available",
        "_lost",
        "_on_status",
        "_publisher",
        "_retry",
        "_timeout",
        "adapter",
        "changed",
        "id",
        "opened",
        "status",
    )

    def __init__(  # noqa: PLR0913 - each is a separate collaborator
        self,
        config: DeviceConfig,
        adapter_type: type[Adapter],
        *,
        dependencies: Sequence[Linked],
        dependents: Sequence[Linked],
        retry: RetrySettings,
        timeout: float,
        publisher: StatePublisher,
        on_status: Callable[[], None],
    ) -> None:
        """Make the adapter, reporting to this link; nothing connects until ``run``.

        ``dependents`` may still grow after this (it is read, not copied).
        ``on_status`` is called whenever the device's status changes.
        """
        self.id = config.id
        self.status = Status.CONNECTING
        self.changed = Wakeup()
        self.opened = False  # the adapter is open: ``close`` must close it
        self._lost = False  # the open connection dropped
        self._dependencies = dependencies
        self._dependents = dependents
        self._retry = retry
        self._timeout = timeout
        self._publisher = publisher
        self._on_status = on_status
        # Kept up to date by ``notify`` from the dependencies' own, so a question
        # never walks the graph: walks repeated per path were exponential in a
        # layered graph (60 devices in 29 layers froze the event loop).
        self._available = False  # online, and so is every device it depends on
        self._blocked = False  # offline, or a dependency is: commands are refused
        self._deps_available = all(d.link.available for d in dependencies)
        self.adapter = adapter_type(config, self)

    # -- availability ---------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Online, and so is every device it depends on."""
        return self._available

    def refusal(self) -> CommandError | None:
        """Why a command must be answered at once instead of queued, if it must."""
        if self.status is Status.OFFLINE:
            return CommandError(ErrorCode.DEVICE_UNAVAILABLE, f"device {self.id!r} is offline")
        if not self._blocked:
            return None
        for dep in self._dependencies:
            if dep.link._blocked:  # noqa: SLF001 - links of one graph share their state
                return CommandError(
                    ErrorCode.DEPENDENCY_UNAVAILABLE,
                    f"device {self.id!r} depends on {dep.link.id!r}, which is offline",
                )
        return None

    def connecting(self) -> bool:
        """Still connecting (itself or a dependency): a command waits instead of being refused."""
        if self.status is Status.ONLINE and not self._dependencies:
            return False  # the usual case, checked per command
        return not self.available and self.refusal() is None

    def notify(self) -> None:
        """Wake what waits on this device or on one that depends on it; publish availability.

        A dependent is visited again only when a device it depends on changed
        what it derives from them, so a change costs one pass over the edges.
        """
        pending = [self]
        while pending:
            link = pending.pop()
            changed = link._recompute()  # noqa: SLF001 - links of one graph share their state
            link.changed.fire()
            link._publisher.availability(available=link._available)  # noqa: SLF001
            if changed or link is self:
                pending.extend(dependent.link for dependent in link._dependents)  # noqa: SLF001

    def _recompute(self) -> bool:
        """Derive availability from this status and the dependencies'; whether it changed."""
        deps = [d.link for d in self._dependencies]
        before = (self._available, self._blocked, self._deps_available)
        self._deps_available = all(d._available for d in deps)  # noqa: SLF001
        self._available = self.status is Status.ONLINE and self._deps_available
        self._blocked = self.status is Status.OFFLINE or any(d._blocked for d in deps)  # noqa: SLF001
        return (self._available, self._blocked, self._deps_available) != before

    def _set_status(self, status: Status) -> None:
        if status is not self.status:
            log.info("device %s is %s", self.id, status.value)
        self.status = status
        self._on_status()
        self.notify()

    # -- from the adapter (devices.DeviceEvents) -------------------------------------

    def state_changed(self, state: Mapping[str, Any], *, force: bool = False) -> None:
        """Publish the state if it changed (or when forced)."""
        if self.status is Status.CONNECTING and not self.opened:
            return  # published once the device is online
        self._publisher.state(state, force=force)

    def connection_lost(self, reason: str) -> None:
        """The connection dropped: ``run`` closes the adapter and reopens it."""
        log.warning("device %s lost its connection: %s", self.id, reason)
        self._lost = True
        self.changed.fire()

    # -- the connection -----------------------------------------------------------

    async def run(self) -> None:
        """Connect once the dependencies are online, stay connected, retry; until cancelled."""
        backoff = Backoff(self._retry.min_delay, self._retry.max_delay)
        while True:
            await self.changed.until(self._dependencies_available)
            if await self._open():
                backoff.reset()
                await self._serve_until_lost()
            delay = backoff.next_delay()
            log.info("device %s: retrying connect in %.1f s", self.id, delay)
            await asyncio.sleep(delay)

    def _dependencies_available(self) -> bool:
        return self._deps_available

    def _is_lost(self) -> bool:
        return self._lost

    async def _open(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self.adapter.open()
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not take the gateway down
            log.warning("device %s failed to connect: %s", self.id, exc or type(exc).__name__)
            await self._close_adapter()
            self._set_status(Status.OFFLINE)
            return False
        self.opened = True
        self._lost = False  # a loss reported before now (while opening) was of the old connection
        self._set_status(Status.ONLINE)
        self._publisher.state(self.adapter.state, force=True)
        return True

    async def _serve_until_lost(self) -> None:
        if type(self.adapter).background is Adapter.background:
            await self.changed.until(self._is_lost)  # no background work: no task for it
        else:
            async with asyncio.TaskGroup() as tasks:
                background = tasks.create_task(self._background())
                await self.changed.until(self._is_lost)
                background.cancel()
        self._set_status(Status.OFFLINE)
        await self._close_adapter()

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
        self.opened = False

    async def close(self) -> None:
        """Close the adapter (after ``run`` was cancelled) and say ``offline``."""
        if self.opened:
            await self._close_adapter()
        self.status = Status.OFFLINE  # no notify: every device is closing
        self._recompute()
        self._publisher.availability(available=self._available)
