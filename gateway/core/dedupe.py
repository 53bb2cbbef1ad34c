"""Remembering command ids, so a resent command is answered but not run again."""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from gateway.core.commands import Result

log = logging.getLogger(__name__)


# A finished command as its repeats are answered: the result's payload (as first
# published), its error code and message. A plain tuple of plain values,
# which the garbage collector stops tracking: 100,000 remembered Results
# (objects, dicts, futures) made every full collection a pause of tens of
# milliseconds, the gateway's latency tail.
Answered = tuple[bytes, str | None, str]


class Interrupted:
    """A command the journal says started but never finished (a crash cut it off)."""

    __slots__ = ()


INTERRUPTED = Interrupted()


def compact(result: Result, payload: bytes) -> Answered:
    """``result``, published as ``payload``, as repeats of its id are answered."""
    error = result.error
    return (payload, None, "") if error is None else (payload, error.code.value, error.message)


# Bytes an entry costs beyond its payload: its key, tuples, the ordered dict's node.
ENTRY_OVERHEAD = 600


class DedupeWindow:
    """Results (or results to come) of recent commands, by device and id.

    Each id is remembered for ``window`` seconds, but never more than
    ``max_ids`` at once, nor more than ``max_bytes`` of stored results (an
    entry costs its result's payload plus about 0.6 KB): a sustained stream,
    or one of large results, forgets its oldest ids early rather than growing
    without bound.
    """

    def __init__(self, window: float, max_ids: int, max_bytes: int) -> None:
        """Remember each id for ``window`` seconds, within ``max_ids`` and ``max_bytes``."""
        self._window = window
        self._max_ids = max_ids
        self._max_bytes = max_bytes
        self._bytes = 0
        # (device, id) -> (when seen, future or compact result, its size in bytes)
        self._seen: collections.OrderedDict[
            tuple[str, str], tuple[float, asyncio.Future[Result] | Answered | Interrupted, int]
        ] = collections.OrderedDict()
        self._warned = False

    def __len__(self) -> int:
        """How many ids are remembered."""
        return len(self._seen)

    @property
    def size_bytes(self) -> int:
        """The estimated bytes the remembered results hold."""
        return self._bytes

    def get(
        self, device: str, command_id: str
    ) -> asyncio.Future[Result] | Answered | Interrupted | None:
        """The first run's result (maybe still to come) if the id is in the window."""
        self._expire(time.monotonic())
        entry = self._seen.get((device, command_id))
        return None if entry is None else entry[1]

    def remember(self, device: str, command_id: str, result: asyncio.Future[Result]) -> None:
        """Remember a command that was queued."""
        now = time.monotonic()
        self._expire(now)
        key = (device, command_id)
        size = ENTRY_OVERHEAD + len(device) + len(command_id)
        self._seen[key] = (now, result, size)
        self._bytes += size
        self._keep_within_bounds(now)

    def restore(
        self, device: str, command_id: str, age: float, answer: Answered | Interrupted
    ) -> None:
        """Remember what the journal held from before a restart, seen ``age`` seconds ago.

        Restored oldest first, so the window stays in time order.
        """
        now = time.monotonic()
        size = ENTRY_OVERHEAD + len(device) + len(command_id)
        if isinstance(answer, tuple):
            size += len(answer[0]) + len(answer[2])
        self._seen[device, command_id] = (now - age, answer, size)
        self._bytes += size
        self._keep_within_bounds(now)

    def forget(self, device: str, command_id: str) -> None:
        """Forget an id (its command was refused after all: it may be sent again)."""
        entry = self._seen.pop((device, command_id), None)
        if entry is not None:
            self._bytes -= entry[2]

    def answered(self, device: str, command_id: str, result: Result, payload: bytes) -> None:
        """The command remembered as ``device``/``command_id`` was answered with ``payload``.

        Its result is kept as plain values from now on (see ``Answered``).
        """
        key = (device, command_id)
        entry = self._seen.get(key)
        if entry is None or isinstance(entry[1], tuple):
            return
        answer = compact(result, payload)
        size = ENTRY_OVERHEAD + len(device) + len(command_id) + len(payload) + len(answer[2])
        self._seen[key] = (entry[0], answer, size)
        self._bytes += size - entry[2]
        self._keep_within_bounds(time.monotonic())

    def _keep_within_bounds(self, now: float) -> None:
        while self._seen and (len(self._seen) > self._max_ids or self._bytes > self._max_bytes):
            seen_at, _, size = self._seen.popitem(last=False)[1]
            self._bytes -= size
            self._warn_full(now - seen_at)

    def _expire(self, now: float) -> None:
        # Insertion order is time order, so expired entries are at the front.
        while self._seen:
            seen_at, _, size = next(iter(self._seen.values()))
            if now - seen_at < self._window:
                return
            self._seen.popitem(last=False)
            self._bytes -= size

    def _warn_full(self, age: float) -> None:
        if self._warned:
            return
        self._warned = True  # once per run: the cause is the sustained rate, not one id
        log.warning(
            "dedupe: %d ids (%.1f MB of results) remembered, the most allowed; ids are now "
            "forgotten after %.0f s instead of %.0f s. Raise gateway.dedupe_max_ids or "
            "gateway.dedupe_max_bytes to keep them longer",
            len(self._seen),
            self._bytes / 1e6,
            age,
            self._window,
        )
