"""The retained ``{base}/gateway/health`` report (contract 12): who, where, how well.

It says which instance runs, in which role, since when, on which broker and
MQTT version, whether the broker kept the gateway's session at the last
connect, and how often it did not. It goes out with the announcements after
every connect (so every change of broker, protocol or session is in it) and
again every ``gateway.health_interval`` seconds while connected, so its
``uptime_s`` shows a reader that the gateway is alive.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, Protocol

from gateway.core.messages import Outbound

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.core.topics import Topics

# A gateway runs only while its instance is active: a standby of a group runs no
# gateway and says its role on its own record (gateway/broker/standby_group.py).
ROLE = "active"


class BrokerLink(Protocol):
    """What the MQTT session tells about its connection (``MqttSession`` is one)."""

    @property
    def broker(self) -> str:
        """``host:port`` of the broker in use."""
        ...

    @property
    def reconnects(self) -> int:
        """Connections lost and made again."""
        ...

    protocol: str | None
    session_present: bool | None
    session_lost: int


class Health:
    """Builds the health report and republishes it on a timer."""

    def __init__(self, topics: Topics, *, instance: str, version: str, link: BrokerLink) -> None:
        """Uptime counts from now."""
        self._topic = topics.health
        self._instance = instance
        self._version = version
        self._link = link
        self._started = time.monotonic()

    def report(self) -> dict[str, Any]:
        """The report's fields, as published."""
        link = self._link
        return {
            "instance": self._instance,
            "role": ROLE,
            "version": self._version,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "broker": link.broker,
            "protocol": link.protocol,
            "session_present": link.session_present,
            "session_lost": link.session_lost,
            "reconnects": link.reconnects,
        }

    def message(self) -> Outbound:
        """The report as a retained message."""
        return Outbound(self._topic, json.dumps(self.report()).encode(), retain=True)

    async def republish(self, publish: Callable[[Outbound], None], interval: float) -> None:
        """Hand a fresh report to ``publish`` every ``interval`` seconds.

        ``publish`` may drop it while disconnected: the announcements after the
        reconnect carry a fresh one.
        """
        while True:
            await asyncio.sleep(interval)
            publish(self.message())
