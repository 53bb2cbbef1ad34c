"""The gateway's core: devices, dispatcher, gateway commands and scenes, and the outbox.

It runs without the daemon around it: no broker connection, HTTP server or
systemd. The daemon (``supervisor.py``) hands it each inbound message
(``dispatcher.on_message``) and publishes what it puts in ``outbox``; tests
do the same with no broker at all. One lifecycle for every part (``Stage``):
starting, running, draining, stopped.

The core imports devices, commands and dispatch modules, never a surface
(HTTP, metrics, systemd, Home Assistant) nor the MQTT session or transport
(``tests/test_layering.py`` keeps it so).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.core.dispatcher import Dispatcher
from gateway.core.fleet import Fleet
from gateway.core.journal import Journal
from gateway.core.lifecycle import Lifecycle, Stage
from gateway.core.messages import Outbox
from gateway.core.scenes import SceneRunner

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import Config
    from gateway.core.events import EventStream
    from gateway.core.registry import AdapterRegistry
    from gateway.core.topics import Topics


class Core:
    """Every part that turns commands into results, with one lifecycle."""

    def __init__(
        self,
        config: Config,
        registry: AdapterRegistry,
        topics: Topics,
        events: EventStream,
        *,
        on_status: Callable[[], None] = lambda: None,
    ) -> None:
        """Build every part; nothing runs until ``run``.

        ``on_status`` is called whenever a device's status changes.
        """
        settings = config.settings
        self.lifecycle = Lifecycle()
        self.outbox = Outbox()
        self._on_status = on_status
        self.fleet = Fleet(
            config, registry, topics, self.outbox.put, on_status=self._status, events=events
        )
        gateway = settings.gateway
        self.journal = (
            None
            if gateway.journal is None
            else Journal(
                gateway.journal,
                sync=gateway.journal_sync,
                window=gateway.dedupe_window,
                max_bytes=gateway.dedupe_max_bytes,
                on_change=on_status,
            )
        )
        self._journal_opened = False
        self.scenes = SceneRunner(
            settings.scenes, self.fleet, registry, self.lifecycle, events=events
        )
        self.dispatcher = Dispatcher(
            settings.gateway,
            topics,
            self.fleet,
            self.outbox.put,
            self.scenes,
            lifecycle=self.lifecycle,
            events=events,
            journal=self.journal,
        )
        if self.journal is not None:
            self.scenes.journal_steps(self.journal, self.dispatcher.recall)
        self._grace = settings.gateway.shutdown_grace
        self._scenes_done = asyncio.Event()
        self._running = False

    @property
    def stage(self) -> Stage:
        """Where the core is in its life."""
        return self.lifecycle.stage

    @property
    def journal_problem(self) -> str | None:
        """Why the journal cannot be written now, or None (also with no journal)."""
        return None if self.journal is None else self.journal.problem

    async def open_journal(self) -> None:
        """Open the journal and remember what it holds; before commands come (once)."""
        if self.journal is None or self._journal_opened:
            return
        self._journal_opened = True
        self.dispatcher.restore(await self.journal.open())

    async def run(self) -> None:
        """Run the devices and scenes; returns once ``drain`` has finished them."""
        await self.open_journal()
        self._running = True
        self._status()  # with no devices, it is running at once
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.fleet.run(), name="fleet")
                await self.scenes.run()  # until drain stops it and its scenes answered
        finally:
            self._scenes_done.set()

    async def drain(self, grace: float | None = None) -> None:
        """Take no new commands, give running ones ``grace`` seconds, close the devices.

        Commands received but not started are answered ``cancelled``; so are
        running ones still going when the grace (``gateway.shutdown_grace`` by
        default) is over. Every answer is in ``outbox`` when this returns.
        """
        self.lifecycle.stage = Stage.DRAINING
        self.scenes.stop()
        await self.fleet.shutdown(self._grace if grace is None else grace)
        if self._running:
            await self._scenes_done.wait()
        await self.dispatcher.journal_settled()
        if self.journal is not None and self._journal_opened:
            await self.journal.close()
        self.lifecycle.stage = Stage.STOPPED

    def _status(self) -> None:
        if self.lifecycle.stage is Stage.STARTING and self.fleet.started:
            self.lifecycle.stage = Stage.RUNNING
        self._on_status()
