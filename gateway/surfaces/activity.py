"""The gateway's activity in numbers, for Home Assistant's gateway device.

Commands and failed results of the last minute, reconnects, reconnects that
found the broker had lost the gateway's session, uptime and version, as a
retained JSON object on ``{base}/gateway/activity``: published on every
connect and every ``interval`` seconds. Fed by the event stream.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import TYPE_CHECKING, TypedDict

from gateway.core.events import CommandAccepted, ConnectionChanged, ResultPublished
from gateway.core.messages import Outbound

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.core.events import Event

WINDOW = 60  # seconds counted in the per-minute figures


class Figures(TypedDict):
    """The activity payload."""

    version: str
    uptime_s: int
    commands_per_min: int
    errors_per_min: int
    reconnects: int
    session_lost: int


class Activity:
    """Counts commands and errors per second over the last minute; counts reconnects."""

    def __init__(
        self,
        topic: str,
        version: str,
        clock: Callable[[], float] = time.monotonic,
        session_lost: Callable[[], int] = lambda: 0,
    ) -> None:
        """Publish on ``topic``; ``clock`` is monotonic seconds (tests pass their own).

        ``session_lost`` reads the MQTT session's count of lost sessions.
        """
        self.topic = topic
        self.version = version
        self._clock = clock
        self._session_lost = session_lost
        self._started = clock()
        # One (second, commands, errors) per second that had any: at most WINDOW of them.
        self._seconds: collections.deque[list[int]] = collections.deque(maxlen=WINDOW)
        self._connects = 0

    def on_event(self, event: Event) -> None:
        """Count what the event stream says happened."""
        if isinstance(event, CommandAccepted):
            self._bucket()[1] += 1
        elif isinstance(event, ResultPublished) and not event.result.ok:
            self._bucket()[2] += 1
        elif isinstance(event, ConnectionChanged) and event.connected:
            self._connects += 1

    def _bucket(self) -> list[int]:
        now = int(self._clock())
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append([now, 0, 0])
        return self._seconds[-1]

    def figures(self) -> Figures:
        """The activity payload's content."""
        since = int(self._clock()) - WINDOW
        recent = [bucket for bucket in self._seconds if bucket[0] > since]
        return {
            "version": self.version,
            "uptime_s": round(self._clock() - self._started),
            "commands_per_min": sum(bucket[1] for bucket in recent),
            "errors_per_min": sum(bucket[2] for bucket in recent),
            "reconnects": max(self._connects - 1, 0),
            "session_lost": self._session_lost(),
        }

    def message(self) -> Outbound:
        """The retained activity message as it is now."""
        return Outbound(self.topic, json.dumps(self.figures()).encode(), retain=True)

    async def run(self, publish: Callable[[Outbound], None], interval: float) -> None:
        """Publish the figures every ``interval`` seconds (``publish`` may drop them)."""
        while True:
            await asyncio.sleep(interval)
            publish(self.message())
