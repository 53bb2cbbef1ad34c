"""Live updates for dashboard pages: the event stream, coalesced, fanned out as Server-Sent Events.

One hub follows the gateway's events through a bounded ``Feed`` while any page
is connected. At most every ``interval`` seconds (``busy_interval`` while busy)
it turns what arrived into one ``update`` message: the current rows of up to
200 devices that changed (the rest in the next updates, longest waiting first),
the latest results, the scene runs that moved, and the gateway panel once a
second. So a thousand devices changing at once cost a page five messages, not
thousands, and the gateway a bounded amount of work a second, however busy.

Each page has a bounded queue of those messages. A page that does not keep up
has its queue cleared and gets a ``resync`` (a full snapshot) instead; one whose
connection stays blocked for long (``api.WRITE_TIMEOUT``) is dropped, and the browser's
EventSource reconnects and starts from a snapshot. Nothing here ever makes the
dispatcher wait: events are handed over with a deque append.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from typing import TYPE_CHECKING, Any

from gateway.core.events import (
    AvailabilityChanged,
    CommandAccepted,
    ConnectionChanged,
    ResultPublished,
    StateChanged,
    StepChanged,
)

if TYPE_CHECKING:
    from gateway.core.events import Event, EventStream, Feed
    from gateway.surfaces.dashboard.model import DashboardModel

RESULTS_PER_UPDATE = 50
"""Results one update carries at most (200 a second); the page is told how many it left out."""
ROWS_PER_UPDATE = 200
"""Device rows one update carries at most; the others changed wait for the next, oldest first,
so a page's cost (and the gateway's) stays bounded however many devices change."""
BUSY_ROWS = 100
"""Rows in an update that make the next one wait ``busy_interval``, as do left-out results."""
GATEWAY_EVERY = 1.0
"""Seconds between two gateway panels in updates: it reads every device (1 ms per 1,000)."""


def sse(name: str, data: object) -> bytes:
    """One Server-Sent Event: compact JSON has no newline, so one ``data`` line."""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {name}\ndata: {body}\n\n".encode()


class LiveClient:
    """One connected page: its queue of encoded updates, bounded."""

    def __init__(self, size: int) -> None:
        """An empty queue of at most ``size`` updates."""
        self._queue: collections.deque[bytes] = collections.deque()
        self._size = size
        self._ready = asyncio.Event()
        self.resync = False
        """The page fell behind: its queue was cleared and it needs a snapshot."""
        self.closed = False

    def offer(self, update: bytes) -> None:
        """Queue ``update``; when the queue is full, drop it all and ask for a resync."""
        if len(self._queue) >= self._size:
            self._queue.clear()
            self.resync = True
        else:
            self._queue.append(update)
        self._ready.set()

    def fell_behind(self) -> None:
        """Updates were lost before they reached the queue: resync."""
        self._queue.clear()
        self.resync = True
        self._ready.set()

    def close(self) -> None:
        """The server is stopping: ``next`` returns at once."""
        self.closed = True
        self._ready.set()

    async def next(self) -> list[bytes]:
        """Every queued update, waiting for one (empty when resync is due or closed)."""
        while not (self._queue or self.resync or self.closed):
            self._ready.clear()
            await self._ready.wait()
        updates = list(self._queue)
        self._queue.clear()
        return updates


class LiveHub:
    """Follows the events while pages are connected; sends each page coalesced updates."""

    def __init__(  # noqa: PLR0913 - each timing and bound is a separate setting
        self,
        events: EventStream,
        model: DashboardModel,
        *,
        interval: float = 0.25,
        busy_interval: float = 1.0,
        client_queue: int = 64,
        feed_size: int = 10_000,
    ) -> None:
        """Nothing is followed until a page joins.

        Args:
            events: The gateway's event stream.
            model: What the updates are made of.
            interval: The least time between two updates, in seconds.
            busy_interval: The same after a busy update (many rows or results).
            client_queue: Updates a page may have waiting before it must resync.
            feed_size: Events the hub may fall behind by before every page resyncs.
        """
        self._events = events
        self._model = model
        self._interval = interval
        self._busy_interval = busy_interval
        self._client_queue = client_queue
        self._feed_size = feed_size
        self._clients: set[LiveClient] = set()
        self._feed: Feed | None = None
        self._following = asyncio.Event()
        self._seq = 0  # the last result sent in an update
        self._dirty: dict[str, None] = {}  # devices whose rows are due, oldest first
        self._gateway_sent = float("-inf")

    @property
    def clients(self) -> int:
        """Pages connected now."""
        return len(self._clients)

    def join(self) -> LiveClient:
        """A new page: it gets every update from now on (send it a snapshot first)."""
        if self._feed is None:  # from this instant, before anything else can happen
            self._feed = self._events.feed(self._feed_size)
            self._seq = self._model.seq
            self._following.set()
        client = LiveClient(self._client_queue)
        self._clients.add(client)
        return client

    def leave(self, client: LiveClient) -> None:
        """The page is gone."""
        self._clients.discard(client)

    def close_all(self) -> None:
        """The server is stopping: every page's stream ends."""
        for client in self._clients:
            client.close()

    async def run(self) -> None:
        """Make and send updates while pages are connected, until cancelled."""
        while True:
            await self._following.wait()
            self._following.clear()
            feed = self._feed
            assert feed is not None  # noqa: S101 - join opened it before setting the flag
            try:
                await self._follow(feed)
            finally:
                feed.close()
                self._feed = None

    async def _follow(self, feed: Feed) -> None:
        last, interval = 0.0, self._interval
        while self._clients:
            events = [] if self._dirty else await feed.get()  # rows still due: no waiting
            if (wait := last + interval - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # coalescing: at most one update per interval
            events += feed.take()
            last = time.monotonic()
            if feed.dropped:
                feed.dropped = 0
                self._seq = self._model.seq
                self._dirty.clear()
                for client in self._clients:
                    client.fell_behind()
                continue
            update, busy = self._update(events)
            for client in self._clients:
                client.offer(update)
            # Busy: fewer, fuller updates, for the gateway and for a page on a phone.
            interval = self._busy_interval if busy else self._interval

    def _update(self, events: list[Event]) -> tuple[bytes, bool]:
        """One update for ``events``, and whether it was a busy one."""
        devices = self._dirty
        runs: set[str] = set()
        panel_due = time.monotonic() - self._gateway_sent >= GATEWAY_EVERY
        for event in events:  # the most frequent kinds first
            if isinstance(event, ResultPublished):
                devices[event.result.device] = None
                if "steps" in event.result.extra:
                    runs.add(event.result.id)  # a run ended
            elif isinstance(event, StateChanged | CommandAccepted | AvailabilityChanged):
                devices[event.device] = None
            elif isinstance(event, StepChanged):
                runs.add(event.run)
                devices[event.device] = None
            elif isinstance(event, ConnectionChanged):
                panel_due = True
        due = list(itertools.islice(devices, ROWS_PER_UPDATE))
        for device in due:
            del devices[device]
        results, left_out = self._model.since(self._seq, RESULTS_PER_UPDATE)
        self._seq = self._model.seq
        body: dict[str, Any] = {
            "seq": self._seq,
            "devices": self._model.rows(due),
            "results": results,
            "results_left_out": left_out,
            "runs": self._model.runs(runs) if runs else [],
        }
        if panel_due:
            self._gateway_sent = time.monotonic()
            body["gateway"] = self._model.gateway()
        busy = left_out > 0 or len(due) > BUSY_ROWS or bool(devices)
        return sse("update", body), busy
