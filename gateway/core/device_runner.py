"""One device, behind one face: its link, its command worker and what it publishes.

The work is done by three parts, each with one job:

- ``DeviceLink`` (``device_link.py``): connecting after the dependencies, retrying
  with backoff, reopening a lost connection, and availability;
- ``CommandWorker`` (``command_worker.py``): the queue, one command at a time in
  arrival order, timeouts, and every result code a device gives (``busy`` to
  ``cancelled``); it also holds the device's whole shutdown state;
- ``StatePublisher`` (``state_publisher.py``): retained state and availability,
  published only when changed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.core.command_worker import CommandWorker, Job
from gateway.core.device_link import DeviceLink, Status
from gateway.core.state_publisher import StatePublisher

if TYPE_CHECKING:
    from collections.abc import Callable

    from devices import Adapter, DeviceConfig
    from gateway.config import GatewaySettings
    from gateway.core.errors import CommandError
    from gateway.core.events import EventStream
    from gateway.core.messages import Outbound
    from gateway.core.topics import Topics

__all__ = ["DeviceRunner", "Job", "Status"]


class DeviceRunner:
    """Runs one adapter: open with retries, one command at a time, state out."""

    # Slots: 10,000 devices each hold one of these and the three parts.
    __slots__ = (
        "_publisher",
        "_worker",
        "adapter_type",
        "config",
        "dependencies",
        "dependents",
        "id",
        "link",
    )

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
        events: EventStream | None = None,
    ) -> None:
        """Wire the parts; nothing starts until ``run``.

        ``on_status`` is called whenever the device's status changes; ``events``
        gets its state and availability changes.
        """
        self.id = config.id
        self.config = config
        self.adapter_type = adapter_type
        self.dependencies = dependencies
        self.dependents: list[DeviceRunner] = []
        self._publisher = StatePublisher(config.id, topics, publish, events)
        timeout = config.timeout or settings.command_timeout
        self.link = DeviceLink(
            config,
            adapter_type,
            dependencies=dependencies,
            dependents=self.dependents,
            retry=settings.device_retry,
            timeout=timeout,
            publisher=self._publisher,
            on_status=on_status,
        )
        self._worker = CommandWorker(
            config.id,
            self.link.adapter,
            self.link,
            timeout=timeout,
            queue_size=settings.queue_size,
        )

    @property
    def adapter(self) -> Adapter:
        """The device's adapter (its events go to the link)."""
        return self.link.adapter

    # -- availability ---------------------------------------------------------------

    @property
    def status(self) -> Status:
        """Connecting, online or offline (the device itself, not its dependencies)."""
        return self.link.status

    @property
    def available(self) -> bool:
        """Online, and so is every device it depends on."""
        return self.link.available

    def refusal(self) -> CommandError | None:
        """Why a command must be answered at once instead of queued, if it must."""
        return self.link.refusal()

    def announcements(self) -> list[Outbound]:
        """Availability and, once known, state: republished after every connect."""
        return self._publisher.announcements(available=self.link.available)

    # -- commands -------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise the refusal (unavailable, busy, expired)."""
        self._worker.submit(job)

    @property
    def queue_depth(self) -> int:
        """Commands waiting (not the running one)."""
        return self._worker.queue_depth

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (after the dependencies), serve commands, reconnect when lost."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._worker.run())
            await self.link.run()

    def stop_accepting(self) -> None:
        """Refuse new commands and answer every queued one ``cancelled``."""
        self._worker.stop()

    @property
    def busy(self) -> bool:
        """An action is running right now."""
        return self._worker.busy

    async def until_idle(self) -> None:
        """Wait until no action is running."""
        await self._worker.until_idle()

    def cancel_running(self) -> None:
        """Cancel the running action now (the grace period is over)."""
        self._worker.cancel_running()

    async def close(self) -> None:
        """Close the adapter (after ``run`` was cancelled) and say ``offline``."""
        self._worker.close()
        await self.link.close()
