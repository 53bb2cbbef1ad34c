"""Remembering command ids, so a resent command is answered but not run again."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from gateway.commands import Result


class DedupeWindow:
    """Results (or results to come) of recent commands, by device and id."""

    def __init__(self, window: float) -> None:
        """Remember each id for ``window`` seconds."""
        self._window = window
        self._seen: collections.OrderedDict[
            tuple[str, str], tuple[float, asyncio.Future[Result]]
        ] = collections.OrderedDict()

    def __len__(self) -> int:
        """How many ids are remembered."""
        return len(self._seen)

    def get(self, device: str, command_id: str) -> asyncio.Future[Result] | None:
        """The first run's result (maybe not done yet) if the id is in the window."""
        self._expire(time.monotonic())
        entry = self._seen.get((device, command_id))
        return None if entry is None else entry[1]

    def remember(self, device: str, command_id: str, result: asyncio.Future[Result]) -> None:
        """Remember a command that was queued."""
        now = time.monotonic()
        self._expire(now)
        self._seen[device, command_id] = (now, result)

    def _expire(self, now: float) -> None:
        # Insertion order is time order, so expired entries are at the front.
        while self._seen:
            seen_at, _ = next(iter(self._seen.values()))
            if now - seen_at < self._window:
                return
            self._seen.popitem(last=False)
