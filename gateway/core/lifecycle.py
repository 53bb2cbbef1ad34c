"""The core's one lifecycle stage, shared by every part that takes work."""

from __future__ import annotations

import enum


class Stage(enum.Enum):
    """Where the core is in its life."""

    STARTING = "starting"  # devices still making their first connect; commands queue
    RUNNING = "running"
    DRAINING = "draining"  # no new commands; running ones finish within the grace
    STOPPED = "stopped"


class Lifecycle:
    """The stage, read by the dispatcher and the scene runner instead of flags of their own."""

    def __init__(self) -> None:
        """Starting."""
        self.stage = Stage.STARTING

    @property
    def accepting(self) -> bool:
        """Whether new commands may start."""
        return self.stage in (Stage.STARTING, Stage.RUNNING)
