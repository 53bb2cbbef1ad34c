"""The daemon's lifecycle: start everything, run until told to stop, drain, say offline."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
from typing import TYPE_CHECKING

from gateway.broker.aiomqtt_transport import AiomqttTransport
from gateway.broker.leftovers import Leftovers
from gateway.broker.session import MqttSession
from gateway.broker.standby_group import StandbyGroup
from gateway.core.events import AvailabilityChanged, ConnectionChanged, EventStream
from gateway.core.health import Health
from gateway.core.messages import Inbound, Outbound
from gateway.core.runtime import Core
from gateway.core.topics import Topics
from gateway.surfaces.activity import Activity
from gateway.surfaces.dashboard import Dashboard, DashboardModel, GatewayFacts
from gateway.surfaces.homeassistant import Discovery, device_info, http_page
from gateway.surfaces.homeassistant.payloads import gateway_version
from gateway.surfaces.http import HttpServer
from gateway.surfaces.metrics import Metrics
from gateway.surfaces.standby import RoleCollector, StandbyHttp
from gateway.surfaces.systemd import Notifier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.config import Config
    from gateway.core.events import Event
    from gateway.core.registry import AdapterRegistry

log = logging.getLogger(__name__)

# After the drain, how long to wait for the last results and `offline` to reach
# the broker before disconnecting anyway.
FLUSH_TIMEOUT = 5.0
# How long the HTTP server and the systemd notifier get to close at the very end.
BACKGROUND_STOP_TIMEOUT = 5.0


class Gateway:
    """Devices, dispatcher, MQTT session, HTTP and systemd: started and stopped together."""

    def __init__(
        self, config: Config, registry: AdapterRegistry, *, step_down_on_loss: bool = False
    ) -> None:
        """Build every part; nothing runs until ``serve``.

        With ``step_down_on_loss`` (an instance of a standby group), a failed or
        lost broker connection ends ``serve`` instead of being retried, and
        ``stepped_down`` says why.
        """
        self.config = config
        settings = config.settings
        self.topics = Topics(settings.mqtt.base_topic, settings.mqtt.response_prefix)
        self._changed = asyncio.Event()  # connection or a device changed: recheck readiness
        self.events = EventStream()
        """Everything that happens, for any part to follow (metrics, readiness, ...)."""
        self.core = Core(config, registry, self.topics, self.events, on_status=self._changed.set)
        self.outbox, self.fleet = self.core.outbox, self.core.fleet
        self.scenes, self.dispatcher = self.core.scenes, self.core.dispatcher
        self.discovery, self.activity = self._home_assistant(config, registry)
        self.leftovers = Leftovers(self.topics, (device.id for device in config.devices))
        watched = [self.leftovers.topic, *(self.discovery.watched if self.discovery else [])]
        transport = AiomqttTransport(
            settings.mqtt,
            will_topic=self.topics.status,
            max_payload_bytes=settings.gateway.max_payload_bytes,
        )
        self._in_group = step_down_on_loss
        self.stepped_down: str | None = None
        """Why the gateway gave up its session (standby groups only), or None."""
        self.session = MqttSession(
            settings.mqtt,
            self.topics,
            self.outbox,
            self,
            transport,
            watch=watched,
            on_lost=self._step_down if step_down_on_loss else None,
        )
        self.health = Health(
            self.topics, instance=settings.gateway.instance, version=_version(), link=self.session
        )
        self.metrics = Metrics(self.fleet, self.session, lambda: self.connected)
        self.events.subscribe(self.metrics.on_event)
        self.events.subscribe(self._readiness_may_change)
        self.dashboard = self._dashboard()
        self.http = (
            HttpServer(
                settings.http,
                self.not_ready_reason,
                self.metrics,
                broker=lambda: self.session.broker,
                dashboard=self.dashboard,
            )
            if settings.http is not None
            else None
        )
        self.systemd = Notifier()
        self.connected = False
        self.should_exit = asyncio.Event()
        self.stopped = asyncio.Event()
        self._signals = 0
        self._was_connected = False
        self._loops: list[asyncio.Task[None]] = []  # background loops, cancelled at the end

    def _home_assistant(
        self, config: Config, registry: AdapterRegistry
    ) -> tuple[Discovery | None, Activity | None]:
        """Discovery and the gateway's activity figures, when discovery is on."""
        settings = config.settings
        if not settings.homeassistant.discovery:
            return None, None
        devices = [device_info(device, registry) for device in config.devices]
        discovery = Discovery(
            settings.homeassistant,
            self.topics,
            devices,
            configuration_url=http_page(settings.http),
        )
        activity = Activity(
            discovery.payloads.activity_topic,
            discovery.payloads.version,
            session_lost=lambda: self.session.session_lost,
        )
        self.events.subscribe(activity.on_event)
        return discovery, activity

    def _dashboard(self) -> Dashboard | None:
        """The web dashboard, following the events from the start, when HTTP is on."""
        http = self.config.settings.http
        if http is None:
            return None
        facts = GatewayFacts(
            version=gateway_version(),
            broker=self._broker,
            reconnects=lambda: self.session.reconnects,
            journal=self._journal_state,
            control=http.token is not None,
        )
        model = DashboardModel(self.fleet, self.scenes.describe, facts)
        self.events.subscribe(model.on_event)
        return Dashboard(
            http,
            model=model,
            events=self.events,
            fleet=self.fleet,
            topics=self.topics,
            submit=self.dispatcher.on_message,
            gateway_actions=self.dispatcher.gateway_commands.schemas,
        )

    def _journal_state(self) -> str:
        if self.core.journal is None:
            return "off"
        return self.core.journal_problem or "ok"

    @property
    def ready(self) -> bool:
        """Connected, subscribed, every device started (online or given up), not stopping."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why the gateway is not ready, or None when it is."""
        if self.should_exit.is_set():
            return "shutting down"
        if not self.connected:
            return "not connected to the broker"
        if (problem := self.core.journal_problem) is not None:
            return f"the journal cannot be written: {problem}"
        if not self.fleet.started:
            return f"devices still connecting: {', '.join(self.fleet.still_connecting())}"
        return None

    def _readiness_may_change(self, event: Event) -> None:
        if isinstance(event, ConnectionChanged | AvailabilityChanged):
            self._changed.set()

    @property
    def http_port(self) -> int | None:
        """The port the HTTP server listens on (once started), or None without one."""
        return None if self.http is None else self.http.port

    # -- what the MQTT session calls ---------------------------------------------

    def announcements(self) -> list[Outbound]:
        """Status, device list, then each device's availability and state."""
        messages = [
            Outbound(self.topics.status, b"online", retain=True),
            Outbound(self.topics.device_list, self.fleet.describe_json(), retain=True),
            Outbound(self.topics.scenes, self.scenes.describe_json(), retain=True),
            self.health.message(),
        ]
        for runner in self.fleet:
            messages += runner.announcements()
        if self.discovery is not None:
            messages += self.discovery.announcements()
        if self.activity is not None:
            messages.append(self.activity.message())
        return messages

    def on_message(self, message: Inbound) -> None:
        """A message arrived: the dispatcher answers commands.

        The gateway's own retained device list and Home Assistant's topics are
        handled apart.
        """
        if self.leftovers.handle(message, self.outbox.put):
            return
        if self.discovery is not None and self.discovery.handle(message, self.outbox.put):
            return
        self.dispatcher.on_message(message)

    def _publish_if_connected(self, message: Outbound) -> None:
        """Publish a periodic update now, or not at all: the next connect sends a fresh one."""
        if self.connected:
            self.outbox.put(message)

    def on_connection(self, *, connected: bool) -> None:
        """Track the broker connection (for readiness) and tell systemd."""
        self.connected = connected
        self.events.emit(ConnectionChanged(connected=connected))
        if self.should_exit.is_set():
            return
        if connected:
            self._was_connected = True
            self.systemd.status(f"connected to the broker at {self._broker}; {self._online()}")
        elif self._was_connected:
            self.systemd.status(f"lost the broker at {self._broker}; reconnecting")
        else:
            self.systemd.status(f"connecting to the broker at {self._broker} (not reachable yet)")

    @property
    def _broker(self) -> str:
        return self.session.broker

    def _online(self) -> str:
        online = sum(runner.available for runner in self.fleet)
        return f"{online} of {len(self.fleet.runners)} devices online"

    # -- lifecycle ----------------------------------------------------------------

    def _step_down(self, reason: str) -> None:
        """The session is gone for good (another instance may hold it): stop at once."""
        self.stepped_down = reason
        self.should_exit.set()

    def handle_exit(self, sig: int | None = None) -> None:
        """Signal handler: the first asks for a graceful stop, a second forces it."""
        self._signals += 1
        name = signal.Signals(sig).name if sig else "request"
        if self._signals == 1:
            log.info("%s received: shutting down (send again to force)", name)
            if self._in_group:  # the next active answers what comes from now on
                self.session.stop_taking()
            self.should_exit.set()
        else:
            log.warning(
                "%s received again: exiting at once; the broker publishes `offline` (the will)",
                name,
            )
            logging.shutdown()  # flush the log: nothing below runs
            # No DISCONNECT: a normal one would suppress the will (MQTT 5 §3.14.4), and
            # the retained status would say `online` after the gateway is gone.
            os._exit(1)

    async def serve(self) -> None:
        """Run until ``should_exit`` is set, then shut down cleanly."""
        mqtt = self.config.settings.mqtt
        brokers = ", ".join(mqtt.hosts) if mqtt.hosts else f"{mqtt.host}:{mqtt.port}"
        log.info("starting with %d devices; broker %s", len(self.fleet.runners), brokers)
        self.systemd.status(f"connecting to the broker at {self._broker}")
        try:
            async with asyncio.TaskGroup() as tasks:
                background = await self._start_background(tasks)
                await self.core.open_journal()  # before any command can come
                tasks.create_task(self.core.run(), name="core")
                session = tasks.create_task(self.session.run(), name="mqtt")
                await self.should_exit.wait()
                await self._shutdown(session)
                await self._stop_background(background)
        finally:
            self.stopped.set()
        log.info("stopped")

    async def _start_background(self, tasks: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """The HTTP server (listening before this returns) and the systemd notifier."""
        background = []
        if self.http is not None:
            background.append(tasks.create_task(self.http.run(), name="http"))
            # A port already taken ends serve() here, before anything connects.
            await self.http.started.wait()
        health_interval = self.config.settings.gateway.health_interval
        health = self.health.republish(self._publish_if_connected, health_interval)
        self._loops.append(tasks.create_task(health, name="health"))
        if self.activity is not None:
            interval = self.config.settings.homeassistant.activity_interval
            activity = self.activity.run(self._publish_if_connected, interval)
            self._loops.append(tasks.create_task(activity, name="activity"))
        if self.discovery is not None:
            probe = self.discovery.run(self.outbox.put)
            self._loops.append(tasks.create_task(probe, name="discovery"))
        background += self._loops
        if self.systemd.enabled:
            background.append(tasks.create_task(self.systemd.run(), name="systemd"))
            background.append(tasks.create_task(self._notify_ready(), name="readiness"))
        return background

    async def _notify_ready(self) -> None:
        """Send systemd ``READY=1`` the first time the gateway is ready."""
        while not self.should_exit.is_set():
            self._changed.clear()
            if self.ready:
                self.systemd.ready(f"ready: broker {self._broker}; {self._online()}")
                return
            await self._changed.wait()

    async def _stop_background(self, background: list[asyncio.Task[None]]) -> None:
        """Last of all, so /healthz answers and the watchdog pings through the drain."""
        if self.http is not None:
            self.http.stop()
        for loop in self._loops:
            loop.cancel()  # loops with nothing to finish
        self.systemd.close()
        if background:
            _, late = await asyncio.wait(background, timeout=BACKGROUND_STOP_TIMEOUT)
            for task in late:
                task.cancel()

    async def _shutdown(self, session: asyncio.Task[None]) -> None:
        self.systemd.stopping("stopping: finishing running commands, then going offline")
        self._changed.set()  # the readiness watcher, if still waiting, gives up
        if self.stepped_down is not None:
            # Another instance may be executing already: cancel what runs now. No
            # `offline`: the status is the new active's (and nothing would carry it).
            await self.core.drain(grace=0)
            session.cancel()
            return
        await self.core.drain()  # every command and scene is answered by now
        self.outbox.put(Outbound(self.topics.status, b"offline", retain=True))
        self.outbox.close()
        if not self.connected:  # nothing to deliver to: stop now, not after the flush timeout
            log.warning(
                "not connected to the broker: %d messages not delivered before exit",
                len(self.outbox),
            )
            session.cancel()
            return
        done, _ = await asyncio.wait({session}, timeout=FLUSH_TIMEOUT)
        if not done:
            log.warning(
                "could not deliver %d messages to the broker before exit",
                len(self.outbox),
            )
            session.cancel()


def _version() -> str:
    try:
        return importlib.metadata.version("iot-gateway")
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "unknown"


def install_signal_handlers(gateway: Gateway | StandbyGroup) -> None:
    """SIGTERM and SIGINT ask the gateway (or the group's instance) to stop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.handle_exit, sig)


async def serve_in_group(config: Config, registry: AdapterRegistry) -> None:
    """Run as one instance of a standby group (``standby.enabled``) until a signal.

    While standby, only the group's watcher runs, with HTTP (``/readyz`` says
    standby) and systemd's notifications; each turn as active is a fresh
    ``Gateway`` (devices opened, journal reopened), ended by a signal or by
    losing its session.
    """
    settings = config.settings
    topics = Topics(settings.mqtt.base_topic, settings.mqtt.response_prefix)
    group = StandbyGroup(settings, topics, version=_version())
    install_signal_handlers(group)
    notifier = Notifier()
    standby_http = StandbyHttp(config.settings.http, group)

    async def serve_active() -> str | None:
        await standby_http.stop()  # the gateway's own server takes the port
        gateway = Gateway(config, registry, step_down_on_loss=True)
        gateway.metrics.registry.register(RoleCollector(group.roles))
        gateway.events.subscribe(
            lambda event: (
                group.active_connected()
                if isinstance(event, ConnectionChanged) and event.connected
                else None
            )
        )
        group.exit_active = gateway.handle_exit
        try:
            await gateway.serve()
        finally:
            group.exit_active = None
        if gateway.stepped_down is not None:
            await standby_http.start()
        return gateway.stepped_down

    async with asyncio.TaskGroup() as tasks:
        standby_http.tasks = tasks
        await standby_http.start()
        readiness = tasks.create_task(_ready_when_watching(group, notifier), name="readiness")
        if notifier.enabled:
            tasks.create_task(notifier.run(), name="systemd")
        try:
            await group.run(serve_active)
        finally:
            readiness.cancel()  # a watcher that never connected
            await standby_http.stop()
            notifier.close()


async def _ready_when_watching(group: StandbyGroup, notifier: Notifier) -> None:
    """A standby is started once it watches: systemd gets ``READY=1`` then."""
    await group.watching.wait()
    notifier.ready(f"instance {group.instance} of a standby group: watching")


@contextlib.asynccontextmanager
async def running_gateway(config: Config, registry: AdapterRegistry) -> AsyncIterator[Gateway]:
    """Run a gateway in the background for the block's duration (for tests).

    With ``http`` configured, the block starts once the server listens, so
    ``gateway.http_port`` is known.
    """
    gateway = Gateway(config, registry)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(gateway.serve())
        try:
            if gateway.http is not None:
                await gateway.http.started.wait()
            yield gateway
        finally:
            gateway.should_exit.set()
