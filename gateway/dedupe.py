"""Remembering command ids, so a resent command is answered but not run again."""

from __future__ import annotations

import collections
import functools
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from gateway.commands import Result

log = logging.getLogger(__name__)


# A finished command as its repeats are answered: the result's payload (with
# duplicate set to true), its error code and message. A plain tuple of plain values,
# which the garbage collector stops tracking: 100,000 remembered Results
# (objects, dicts, futures) made every full collection a pause of tens of
# milliseconds, the gateway's latency tail.
Answered = tuple[bytes, str | None, str]


def answered(result: Result) -> Answered:
    """The compact form of a finished command's ``result``."""
    error = result.error
    if error is None:
        return (result.to_json(duplicate=True), None, "")
    return (result.to_json(duplicate=True), error.code.value, error.message)


class DedupeWindow:
    """Results (or results to come) of recent commands, by device and id.

    Each id is remembered for ``window`` seconds, but never more than
    ``max_ids`` at once (about 0.6 KB each): a sustained stream faster than
    ``max_ids / window`` commands per second forgets its oldest ids early
    rather than growing without bound.
    """

    def __init__(self, window: float, max_ids: int) -> None:
        """Remember each id for ``window`` seconds, at most ``max_ids`` of them."""
        self._window = window
        self._max_ids = max_ids
        self._seen: collections.OrderedDict[
            tuple[str, str], tuple[float, asyncio.Future[Result] | Answered]
        ] = collections.OrderedDict()
        self._warned = False

    def __len__(self) -> int:
        """How many ids are remembered."""
        return len(self._seen)

    def get(self, device: str, command_id: str) -> asyncio.Future[Result] | Answered | None:
        """The first run's result (maybe still to come) if the id is in the window."""
        self._expire(time.monotonic())
        entry = self._seen.get((device, command_id))
        return None if entry is None else entry[1]

    def remember(self, device: str, command_id: str, result: asyncio.Future[Result]) -> None:
        """Remember a command that was queued."""
        now = time.monotonic()
        self._expire(now)
        key = (device, command_id)
        self._seen[key] = (now, result)
        result.add_done_callback(functools.partial(self._answered, key))
        if len(self._seen) > self._max_ids:
            seen_at, _ = self._seen.popitem(last=False)[1]
            self._warn_full(now - seen_at)

    def _answered(self, key: tuple[str, str], result: asyncio.Future[Result]) -> None:
        entry = self._seen.get(key)
        if entry is not None and entry[1] is result and not result.cancelled():
            self._seen[key] = (entry[0], answered(result.result()))

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
