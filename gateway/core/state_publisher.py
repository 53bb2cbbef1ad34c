"""What one device says on MQTT: its retained ``availability`` and ``state``, when changed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.core.events import AvailabilityChanged, StateChanged
from gateway.core.messages import Outbound

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from gateway.core.events import EventStream
    from gateway.core.topics import Topics


class StatePublisher:
    """Publishes a device's availability and state, each only when it changed.

    It remembers the last payload of each, so an unchanged value costs no
    message, and a reconnect to the broker can republish both (``announcements``).
    """

    __slots__ = ("_availability", "_device", "_events", "_publish", "_state", "_topics")

    def __init__(
        self,
        device: str,
        topics: Topics,
        publish: Callable[[Outbound], None],
        events: EventStream | None = None,
    ) -> None:
        """Nothing is published until a value is given; each change is also an event."""
        self._device = device
        self._topics = topics
        self._publish = publish
        self._events = events
        self._state: str | None = None
        self._availability: str | None = None

    def availability(self, *, available: bool, force: bool = False) -> None:
        """Publish ``online``/``offline`` if it changed (or when forced)."""
        value = "online" if available else "offline"
        if force or value != self._availability:
            self._availability = value
            self._publish(
                Outbound(self._topics.availability(self._device), value.encode(), retain=True)
            )
            if self._events is not None and self._events.wanted:
                self._events.emit(AvailabilityChanged(self._device, online=available))

    def state(self, state: Mapping[str, Any], *, force: bool = False) -> None:
        """Publish ``state`` as compact JSON if it changed (or when forced)."""
        payload = json.dumps(state, separators=(",", ":"), default=str)
        if force or payload != self._state:
            self._state = payload
            self._publish(
                Outbound(self._topics.state(self._device), payload.encode(), retain=True)
            )
            if self._events is not None and self._events.wanted:
                self._events.emit(StateChanged(self._device, dict(state)))  # a snapshot

    def announcements(self, *, available: bool) -> list[Outbound]:
        """Availability and, once known, state: what a reconnect to the broker republishes."""
        value = "online" if available else "offline"
        self._availability = value
        messages = [Outbound(self._topics.availability(self._device), value.encode(), retain=True)]
        if self._state is not None:
            messages.append(
                Outbound(self._topics.state(self._device), self._state.encode(), retain=True)
            )
        return messages
