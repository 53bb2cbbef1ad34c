"""Retained topics of devices an earlier configuration had and this one has not."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from gateway.core.messages import Outbound

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from gateway.core.messages import Inbound
    from gateway.core.topics import Topics

log = logging.getLogger(__name__)

SHOWN_IN_LOG = 20  # removed device ids named in the log line; the rest are counted


class Leftovers:
    """Clears the retained state and availability of devices no longer configured.

    The gateway's own retained ``gateway/devices`` list, as the broker hands it
    over on subscribing, says which devices the previous run had.
    """

    def __init__(self, topics: Topics, devices: Iterable[str]) -> None:
        """Watch ``topics.device_list``; ``devices`` are the ids configured now."""
        self.topic = topics.device_list
        self._topics = topics
        self._current = frozenset(devices)

    def handle(self, message: Inbound, publish: Callable[[Outbound], None]) -> bool:
        """Clear what a retained device list names and we no longer have; False if not it."""
        if message.topic != self.topic:
            return False
        if message.retain:  # live, it is our own list: nothing to learn
            self._clear(sorted(set(_device_ids(message.payload)) - self._current), publish)
        message.settle()
        return True

    def _clear(self, removed: list[str], publish: Callable[[Outbound], None]) -> None:
        if not removed:
            return
        more = len(removed) - SHOWN_IN_LOG
        log.info(
            "clearing the retained state and availability of %d removed devices: %s%s",
            len(removed),
            ", ".join(removed[:SHOWN_IN_LOG]),
            f" and {more} more" if more > 0 else "",
        )
        for device in removed:
            publish(Outbound(self._topics.state(device), b"", retain=True))
            publish(Outbound(self._topics.availability(device), b"", retain=True))


def _device_ids(payload: bytes) -> list[str]:
    """The ids in a ``gateway/devices`` payload that name one topic level; none if not one."""
    try:
        listed = json.loads(payload)
    except ValueError:
        return []
    if not isinstance(listed, list):
        return []
    return [
        entry["id"]
        for entry in listed
        if isinstance(entry, dict)
        and isinstance(entry.get("id"), str)
        and entry["id"]
        and not {"/", "+", "#"} & set(entry["id"])
    ]
