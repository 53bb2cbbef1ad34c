"""The daemon's lifecycle: start everything, run until told to stop, drain, say offline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from gateway.dispatcher import Dispatcher
from gateway.fleet import Fleet
from gateway.messages import Inbound, Outbound, Outbox
from gateway.mqtt import MqttSession
from gateway.scenes import SceneRunner
from gateway.topics import Topics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.config import Config
    from gateway.registry import AdapterRegistry

log = logging.getLogger(__name__)

# After the drain, how long to wait for the last results and `offline` to reach
# the broker before disconnecting anyway.
FLUSH_TIMEOUT = 5.0


class Gateway:
    """Devices, dispatcher and MQTT session, started and stopped together."""

    def __init__(self, config: Config, registry: AdapterRegistry) -> None:
        """Build every part; nothing runs until ``serve``."""
        self.config = config
        settings = config.settings
        self.topics = Topics(settings.mqtt.base_topic)
        self.outbox = Outbox()
        self.fleet = Fleet(config, registry, self.topics, self.outbox.put)
        self.scenes = SceneRunner(settings.scenes, self.fleet, registry)
        self.dispatcher = Dispatcher(
            settings.gateway, self.topics, self.fleet, self.outbox.put, self.scenes
        )
        self.session = MqttSession(settings.mqtt, self.topics, self.outbox, self)
        self.connected = False
        self.should_exit = asyncio.Event()
        self.stopped = asyncio.Event()
        self._signals = 0

    @property
    def ready(self) -> bool:
        """Connected, subscribed and every device started (online or given up)."""
        return self.connected and self.fleet.started

    # -- what the MQTT session calls ---------------------------------------------

    def announcements(self) -> list[Outbound]:
        """Status, device list, then each device's availability and state."""
        messages = [
            Outbound(self.topics.status, b"online", retain=True),
            Outbound(self.topics.device_list, self.fleet.describe_json(), retain=True),
            Outbound(self.topics.scenes, self.scenes.describe_json(), retain=True),
        ]
        for runner in self.fleet:
            messages += runner.announcements()
        return messages

    def on_message(self, message: Inbound) -> None:
        """A message arrived: the dispatcher answers it."""
        self.dispatcher.on_message(message)

    def on_connection(self, *, connected: bool) -> None:
        """Track the broker connection (for readiness)."""
        self.connected = connected

    # -- lifecycle ----------------------------------------------------------------

    def handle_exit(self, sig: int | None = None) -> None:
        """Signal handler: the first asks for a graceful stop, a second forces it."""
        self._signals += 1
        name = signal.Signals(sig).name if sig else "request"
        if self._signals == 1:
            log.info("%s received: shutting down (send again to force)", name)
            self.should_exit.set()
        else:
            log.warning("%s received again: forcing exit", name)
            raise SystemExit(1)

    async def serve(self) -> None:
        """Run until ``should_exit`` is set, then shut down cleanly."""
        log.info(
            "starting with %d devices; broker %s:%d",
            len(self.fleet.runners),
            self.config.settings.mqtt.host,
            self.config.settings.mqtt.port,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.fleet.run(), name="fleet")
                scenes = tasks.create_task(self.scenes.run(), name="scenes")
                session = tasks.create_task(self.session.run(), name="mqtt")
                await self.should_exit.wait()
                await self._shutdown(session, scenes)
        finally:
            self.stopped.set()
        log.info("stopped")

    async def _shutdown(self, session: asyncio.Task[None], scenes: asyncio.Task[None]) -> None:
        self.dispatcher.closing = True
        self.scenes.stop()
        await self.fleet.shutdown(self.config.settings.gateway.shutdown_grace)
        await scenes  # every scene has its steps answered by now, so it answers too
        self.outbox.put(Outbound(self.topics.status, b"offline", retain=True))
        self.outbox.close()
        done, _ = await asyncio.wait({session}, timeout=FLUSH_TIMEOUT)
        if not done:
            log.warning(
                "could not deliver %d messages to the broker before exit",
                len(self.outbox),
            )
            session.cancel()


def install_signal_handlers(gateway: Gateway) -> None:
    """SIGTERM and SIGINT ask the gateway to stop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.handle_exit, sig)


@contextlib.asynccontextmanager
async def running_gateway(config: Config, registry: AdapterRegistry) -> AsyncIterator[Gateway]:
    """Run a gateway in the background for the block's duration (for tests)."""
    gateway = Gateway(config, registry)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(gateway.serve())
        try:
            yield gateway
        finally:
            gateway.should_exit.set()
