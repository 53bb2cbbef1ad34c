"""The in-process event stream: what happened, as typed events, for any part to follow.

Every accepted command, result, state change, availability change and broker
connection change is emitted here. Metrics, readiness and Home Assistant
follow it instead of being called from the dispatcher or polling; the
dashboard's live feed and the journal can follow it the same way.

Subscribers are plain callbacks, called at once on the event loop: they must
not block. An async consumer takes a ``Feed``, a bounded buffer that drops the
oldest events (and says how many) rather than ever making the emitter wait, so
a slow or stuck consumer can never stall dispatch. With no subscriber, an
emitter can skip building the event altogether (``EventStream.wanted``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from gateway.core.commands import Result

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandAccepted:
    """A command was queued for its device (it passed every check on arrival)."""

    device: str
    command_id: str
    action: str


@dataclass(frozen=True, slots=True)
class ResultPublished:
    """A command's one result was handed to the broker connection."""

    result: Result


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A device's state changed (a command, or the device by itself)."""

    device: str
    state: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    """A device went online or offline."""

    device: str
    online: bool


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The broker connection came up (subscribed, announced) or went down."""

    connected: bool


@dataclass(frozen=True, slots=True)
class StepChanged:
    """A step of a running scene or step list was queued on its device, or finished.

    ``run`` is the scene command's id, ``scene`` its name (None for ``run_steps``);
    ``status`` is ``running``, then ``ok``, ``error`` or ``skipped``.
    """

    run: str
    scene: str | None
    step: str
    device: str
    action: str
    status: str
    error: Mapping[str, str] | None = None


Event = (
    CommandAccepted
    | ResultPublished
    | StateChanged
    | AvailabilityChanged
    | ConnectionChanged
    | StepChanged
)


class EventStream:
    """Fans each event out to its subscribers, in order, without waiting for any."""

    def __init__(self) -> None:
        """No subscribers yet."""
        self._subscribers: list[Callable[[Event], None]] = []

    @property
    def wanted(self) -> bool:
        """Whether anyone follows: emitters may skip building events otherwise."""
        return bool(self._subscribers)

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every later event; returns what unsubscribes it."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; one that raises is logged and skipped."""
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("events: a subscriber failed on %s", type(event).__name__)

    def feed(self, size: int = 1000) -> Feed:
        """A bounded buffer of the events from now on, for an async consumer."""
        feed = Feed(size)
        feed.close = self.subscribe(feed.put)
        return feed


class Feed:
    """Events for one async consumer: at most ``size`` held, the oldest dropped first."""

    def __init__(self, size: int) -> None:
        """Empty; ``EventStream.feed`` makes and connects it."""
        self._events: collections.deque[Event] = collections.deque(maxlen=size)
        self._arrived = asyncio.Event()
        self.dropped = 0
        """Events dropped because the consumer fell behind (it should resynchronise)."""
        self.close: Callable[[], None] = lambda: None
        """Stop receiving events."""

    def put(self, event: Event) -> None:
        """Buffer ``event``, dropping the oldest when full."""
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        self._arrived.set()

    async def get(self) -> list[Event]:
        """Every buffered event, waiting for one if there is none."""
        while not self._events:
            self._arrived.clear()
            await self._arrived.wait()
        return self.take()

    def take(self) -> list[Event]:
        """Every buffered event now, perhaps none: never waits."""
        events = list(self._events)
        self._events.clear()
        return events
