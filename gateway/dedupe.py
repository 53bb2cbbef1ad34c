"""Remembering command ids, so a resent command is answered but not run again."""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from gateway.commands import Result

log = logging.getLogger(__name__)


class DedupeWindow:
    """Results (or results to come) of recent commands, by device and id.

    Each id is remembered for ``window`` seconds, but never more than
    ``max_ids`` at once (about 0.9 KB each): a sustained stream faster than
    ``max_ids / window`` commands per second forgets its oldest ids early
    rather than growing without bound.
    """

    def __init__(self, window: float, max_ids: int) -> None:
        """Remember each id for ``window`` seconds, at most ``max_ids`` of them."""
        self._window = window
        self._max_ids = max_ids
        self._seen: collections.OrderedDict[
            tuple[str, str], tuple[float, asyncio.Future[Result]]
        ] = collections.OrderedDict()
        self._warned = False

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
        if len(self._seen) > self._max_ids:
            seen_at, _ = self._seen.popitem(last=False)[1]
            self._warn_full(now - seen_at)

    def _expire(self, now: float) -> None:
        # Insertion order is time order, so expired entries are at the front.
        while self._seen:
            seen_at, _ = next(iter(self._seen.values()))
            if now - seen_at < self._window:
                return
            self._seen.popitem(last=False)

    def _warn_full(self, age: float) -> None:
        if self._warned:
            return
        self._warned = True  # once per run: the cause is the sustained rate, not one id
        log.warning(
            "dedupe: %d ids remembered, the most allowed; ids are now forgotten after "
            "%.0f s instead of %.0f s. Raise gateway.dedupe_max_ids to keep them longer",
            self._max_ids,
            age,
            self._window,
        )
