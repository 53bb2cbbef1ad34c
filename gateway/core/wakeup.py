"""The one way a device's parts wait: until a condition holds, woken when it may have changed."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class Wakeup:
    """Wakes every task waiting in ``until`` whenever its owner says something changed.

    The owner keeps the state; waiters re-check their condition on each wake-up,
    so a wake-up that changed nothing for them costs one check. A future exists
    only while someone waits: an ``asyncio.Event`` holds a deque of about 0.6 KB
    even when idle, too much for each of 10,000 devices.
    """

    __slots__ = ("_future",)

    def __init__(self) -> None:
        """Nobody waits yet."""
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        """Something changed: every waiter re-checks its condition."""
        future = self._future
        if future is not None:
            self._future = None
            if not future.done():
                future.set_result(None)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` is true; it is checked at once and after each ``fire``."""
        while not condition():
            future = self._future
            if future is None or future.done():
                future = self._future = asyncio.get_running_loop().create_future()
            try:
                await future
            except asyncio.CancelledError:
                # Cancelling a task cancels the future it awaits, and this one
                # is shared: another waiter's cancellation wakes us too. Only our
                # own cancellation ends the wait.
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
