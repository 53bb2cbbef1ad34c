"""What a standby group's instance shows (README "Hot standby"): role metrics, HTTP.

``RoleCollector`` reads the role machine at each scrape; it joins the active
gateway's registry, and ``StandbyMetrics`` serves it (with the process metrics)
from ``StandbyHttp``, the HTTP server of an instance while it is standby and
no gateway runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from gateway.broker.standby import Role
from gateway.surfaces.http import HttpServer

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from gateway.broker.standby import RoleMachine
    from gateway.broker.standby_group import StandbyGroup
    from gateway.config import HttpSettings

PREFIX = "iot_gateway"


class RoleCollector:
    """``iot_gateway_active`` and ``iot_gateway_role_changes_total{role}``."""

    def __init__(self, roles: RoleMachine) -> None:
        """Read ``roles`` at every scrape."""
        self._roles = roles

    def collect(self) -> Iterator[Metric]:
        """Yield whether this instance is active, and its changes of role."""
        yield GaugeMetricFamily(
            f"{PREFIX}_active",
            "1 while this instance is its standby group's active one, else 0.",
            value=int(self._roles.role is Role.ACTIVE),
        )
        changes = CounterMetricFamily(
            f"{PREFIX}_role_changes",
            "Times this instance became active (took over) or standby (stepped down).",
            labels=["role"],
        )
        for role, count in self._roles.changes.items():
            changes.add_metric([role.value], count)
        yield changes


class StandbyMetrics:
    """What ``/metrics`` shows while standby: the role and the process."""

    def __init__(self, roles: RoleMachine) -> None:
        """A registry of its own, as every gateway has."""
        self.registry = CollectorRegistry()
        self.registry.register(RoleCollector(roles))
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every metric in the format the ``Accept`` header asks for."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class StandbyHttp:
    """The HTTP server while standby: ``/healthz`` 200, ``/readyz`` 503 (why), ``/metrics``."""

    def __init__(self, settings: HttpSettings | None, group: StandbyGroup) -> None:
        """Nothing listens until ``start``; without ``http`` settings, nothing ever does."""
        self._settings = settings
        self._group = group
        self._metrics = StandbyMetrics(group.roles)
        self.tasks: asyncio.TaskGroup | None = None
        """Where the server runs; set before ``start``."""
        self._running: tuple[HttpServer, asyncio.Task[None]] | None = None

    async def start(self) -> None:
        """Listen (once started; the port is free again after the gateway's server)."""
        if self._settings is None or self.tasks is None or self._running is not None:
            return
        server = HttpServer(self._settings, self._group.not_ready_reason, self._metrics)
        task = self.tasks.create_task(server.run(), name="standby-http")
        self._running = server, task
        await server.started.wait()

    async def stop(self) -> None:
        """Close the server and wait for it (the gateway's server takes the port next)."""
        if self._running is None:
            return
        server, task = self._running
        self._running = None
        server.stop()
        await task
