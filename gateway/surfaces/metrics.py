"""Prometheus metrics: commands counted as they are answered, the rest read at scrape time.

Each gateway has its own ``CollectorRegistry`` (never the global one), so several
gateways in one process, as in the tests, keep separate counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from gateway.core.events import ResultPublished
from gateway.core.topics import GATEWAY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.metrics_core import Metric

    from gateway.broker.session import MqttSession
    from gateway.core.commands import Result
    from gateway.core.events import Event
    from gateway.core.fleet import Fleet

PREFIX = "iot_gateway"
# Commands for a device the gateway does not have share one label value: the
# topic segment is the client's choice, and a label value per guess would let
# any client grow the metrics without bound. No device id starts with "_".
UNKNOWN_DEVICE = "_unknown"
# Seconds: from a simulated instant switch to the default 10 s command timeout and past.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's metrics and their registry."""

    def __init__(self, fleet: Fleet, session: MqttSession, connected: Callable[[], bool]) -> None:
        """Define every metric in a registry of this gateway's own.

        Args:
            fleet: The devices, read at scrape time (queue depth, online).
            session: The MQTT session, read at scrape time (reconnects).
            connected: Whether the broker connection is up right now.
        """
        self.registry = CollectorRegistry()
        self._devices = frozenset(runner.id for runner in fleet) | {GATEWAY}
        self._commands = Counter(
            f"{PREFIX}_commands",
            "Command messages answered, by device and outcome (ok or the error code).",
            ["device", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            f"{PREFIX}_command_duration_seconds",
            "How long commands that ran took, by device (refusals on arrival are not timed).",
            ["device"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(fleet, session, connected))
        # The usual process_*, python_gc_* and python_info metrics of a Python exporter.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)

    def on_event(self, event: Event) -> None:
        """Follow the event stream: count each result."""
        if isinstance(event, ResultPublished):
            self.observe(event.result)

    def observe(self, result: Result) -> None:
        """Count one answered command."""
        device = result.device if result.device in self._devices else UNKNOWN_DEVICE
        outcome = "ok" if result.error is None else result.error.code.value
        self._commands.labels(device=device, outcome=outcome).inc()
        # A repeated id did not run again; a refusal on arrival never started.
        if not result.duplicate and result.duration_ms > 0:
            self._duration.labels(device=device).observe(result.duration_ms / 1000)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every metric, and its content type, in the format the ``Accept`` header asks for.

        Prometheus text unless OpenMetrics is asked for; the client library chooses.
        """
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _LiveCollector:
    """Values read from the running gateway at each scrape, so they are never stale."""

    def __init__(self, fleet: Fleet, session: MqttSession, connected: Callable[[], bool]) -> None:
        self._fleet = fleet
        self._session = session
        self._connected = connected

    def collect(self) -> Iterator[Metric]:
        """Yield queue depth, device and broker state, reconnects and lost sessions."""
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Commands waiting in a device's queue (not counting the running one).",
            labels=["device"],
        )
        online = GaugeMetricFamily(
            f"{PREFIX}_device_online",
            "1 while a device is usable (its availability topic says online), else 0.",
            labels=["device"],
        )
        for runner in self._fleet:
            depth.add_metric([runner.id], runner.queue_depth)
            online.add_metric([runner.id], int(runner.available))
        yield depth
        yield online
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_connected",
            "1 while connected and subscribed to the MQTT broker, else 0.",
            value=int(self._connected()),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_reconnects",
            "Times the broker connection was lost and established again.",
            value=self._session.reconnects,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_session_lost",
            "Reconnects that found the broker no longer had the gateway's session "
            "(commands queued for it may be lost).",
            value=self._session.session_lost,
        )
