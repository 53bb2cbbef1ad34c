"""Who of a standby group is active: the role rules, with no I/O (README "Hot standby").

Every instance of the group watches the same retained topics: ``gateway/status``
(the active's ``online``, or ``offline`` from its will or clean shutdown),
``gateway/health`` (whose ``instance`` names the active) and one record per
other instance (``standby``, ``taking_over``, ``active``, or gone). ``RoleMachine`` turns
what was seen into one answer: whether, and from when, this instance may take
over. The broker settles the rest: only one connection holds the shared
client id.

The rules, each against a failure:

- only on ``offline`` (or no status at all), never blind, never while another
  instance's record says ``taking_over`` or ``active`` (a dead one's will
  clears it): no split brain while the active is alive or one is starting;
- standbys take turns by instance name, ``takeover_delay`` apart, and a first
  decision waits ``takeover_delay`` after start, so two started together see
  each other: exactly one goes;
- an instance that stepped down goes a turn after every other standby: it never
  takes the session straight back (no ping-pong), but does when nobody else did;
- a stale ``online`` that names this instance (it lost the broker, which never
  published its will) counts as ``offline`` for it.
"""

from __future__ import annotations

import enum
import math


class Role(enum.Enum):
    """An instance's role in its group."""

    STANDBY = "standby"
    ACTIVE = "active"


class PeerState(enum.Enum):
    """What another instance's retained record says."""

    STANDBY = "standby"
    TAKING_OVER = "taking_over"
    ACTIVE = "active"


class RoleMachine:
    """The role of one instance, and when it may take over; times are monotonic seconds."""

    def __init__(self, instance: str, *, takeover_delay: float, now: float) -> None:
        """A standby that watches for ``takeover_delay`` before its first decision."""
        self.instance = instance
        self._delay = takeover_delay
        self.role = Role.STANDBY
        self.since = now
        """When the current role began."""
        self._status: str | None = None  # no retained status seen: none was ever published
        self._active: str | None = None  # the instance the last health report names
        self._peers: dict[str, PeerState] = {}
        self._watching = False  # blind until the watcher has read the retained topics
        self._watch_until = now + takeover_delay
        self._stepped_down = False
        self._eligible_since: float | None = now
        self.changes = dict.fromkeys(Role, 0)
        """How many times this instance became each role."""

    # -- what the watcher saw -----------------------------------------------------

    def watching(self, *, connected: bool, now: float) -> None:
        """The watcher (re)connected and subscribed, or lost its connection.

        A standby decides nothing blind, nor before ``takeover_delay`` of
        watching: the retained records of peers started with it arrive meanwhile.
        """
        self._watching = connected
        if connected:
            self._watch_until = now + self._delay

    def saw_status(self, payload: str | None, now: float) -> None:
        """``gateway/status`` is ``payload`` (None: cleared)."""
        self._status = payload
        self._update(now)

    def saw_health(self, instance: str | None, now: float) -> None:
        """``gateway/health`` names ``instance`` as the active (None: unreadable or gone)."""
        self._active = instance
        self._update(now)

    def saw_peer(self, instance: str, state: PeerState | None, now: float) -> None:
        """Another instance's record: its state, or None once it is gone."""
        if instance == self.instance:
            return
        if state is None:
            self._peers.pop(instance, None)
        else:
            self._peers[instance] = state
        self._update(now)

    # -- what this instance did ---------------------------------------------------

    def became_active(self, now: float) -> str:
        """It connected with the shared client id; the log line to write."""
        self.role, self.since = Role.ACTIVE, now
        self.changes[Role.ACTIVE] += 1
        self._stepped_down = False
        self._eligible_since = None
        return f"standby: instance {self.instance} is now active"

    def stepped_down(self, reason: str, now: float) -> str:
        """It lost the session (taken over, or the connection); the log line to write."""
        self.role, self.since = Role.STANDBY, now
        self.changes[Role.STANDBY] += 1
        self._stepped_down = True
        self._eligible_since = None
        self._update(now)
        return f"standby: instance {self.instance} stepped down to standby ({reason})"

    # -- the answer ------------------------------------------------------------------

    @property
    def eligible(self) -> bool:
        """A standby that sees no live active and no other instance taking over."""
        if self.role is not Role.STANDBY:
            return False
        if any(state is not PeerState.STANDBY for state in self._peers.values()):
            return False  # one is on its way, or says it is active: its will clears that
        if self._status is None or self._status == "offline":
            return True
        # An `online` only this instance could have left: its own, from before.
        return self._status == "online" and self._active == self.instance

    def takeover_at(self) -> float:
        """When this instance may take over if nothing changes (``inf``: not now)."""
        if not self._watching or self._eligible_since is None or not self.eligible:
            return math.inf
        start = max(self._eligible_since, self._watch_until)
        return start + self.rank() * self._delay

    def may_take_over(self, now: float) -> bool:
        """Whether to connect with the shared client id now."""
        at = self.takeover_at()
        return at != math.inf and now >= at

    def rank(self) -> int:
        """This instance's turn among the standbys: 0 first, by name.

        One that stepped down comes after every other, and one turn later still:
        the instance that took its session needs that long to say ``online``.
        """
        if self._stepped_down:
            return len(self._peers) + 1
        return sum(name < self.instance for name in self._peers)

    def record(self) -> str:
        """What this instance's own retained record says."""
        return self.role.value

    def active_instance(self) -> str | None:
        """The instance the health report names, while the status is ``online``."""
        return self._active if self._status == "online" else None

    def _update(self, now: float) -> None:
        """Start the turn's clock when eligibility begins; stop it when it ends."""
        if self._status == "online" and self._active not in {None, self.instance}:
            self._stepped_down = False  # another took over: an ordinary standby again
        if not self.eligible:
            self._eligible_since = None
        elif self._eligible_since is None:
            self._eligible_since = now
