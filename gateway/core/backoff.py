"""Jittered exponential backoff, shared by broker reconnects and device retries."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``min_delay`` up to ``max_delay``, with jitter.

    Each delay is drawn between the previous bound and the doubled one, so
    many clients restarted together spread out instead of retrying in step.
    """

    def __init__(self, min_delay: float, max_delay: float) -> None:
        """Bounds in seconds; ``max_delay`` below ``min_delay`` is raised to it."""
        self.min_delay = min_delay
        self.max_delay = max(min_delay, max_delay)
        self._attempts = 0

    def reset(self) -> None:
        """Start again from ``min_delay`` (after a success)."""
        self._attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        upper = min(self.max_delay, self.min_delay * 2 ** min(self._attempts, 32))
        lower = max(self.min_delay, upper / 2)
        self._attempts += 1
        return random.uniform(lower, upper)  # noqa: S311 - jitter, not secrecy
