"""What the dashboard shows, kept up to date from the event stream.

One ``DashboardModel`` per gateway follows every event with a plain callback
(dictionary updates, no I/O) and answers the API's questions from what it holds
and from the live fleet: rows of the devices table, a device's recent results,
the activity feed, the gateway's counters and each scene run's steps.
Everything it keeps is bounded, whatever the traffic.
"""

from __future__ import annotations

import collections
import heapq
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.core.events import (
    AvailabilityChanged,
    CommandAccepted,
    ConnectionChanged,
    ResultPublished,
    StateChanged,
    StepChanged,
)
from gateway.core.logs import shorten
from gateway.core.topics import GATEWAY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from gateway.core.commands import Result
    from gateway.core.device_runner import DeviceRunner
    from gateway.core.events import Event
    from gateway.core.fleet import Fleet

ACTIVITY_SIZE = 500
"""Results the activity feed keeps (all devices)."""
RECENT_SIZE = 20
"""Results kept per device for its own view."""
RUNS_SIZE = 20
"""Scene and step-list runs kept, newest last."""
TEXT_LIMIT = 200
"""Characters kept of what a client chose (a topic's device segment, an action, a
message quoting them): 500 results of 64 KB actions would otherwise hold 64 MB."""
BUCKET_SECONDS = 10
BUCKETS = 30
"""The rate chart: commands and errors per 10 s over the last 5 minutes."""


@dataclass(frozen=True, slots=True)
class GatewayFacts:
    """What the model reads from the running gateway when asked (never stale)."""

    version: str
    broker: str
    reconnects: Callable[[], int]
    journal: Callable[[], str]
    """``off``, ``ok`` or why it cannot be written."""
    control: bool
    """Whether commands may be sent from the dashboard (a token is set)."""


@dataclass(slots=True)
class SceneRun:
    """One run of a scene or step list, as its steps progress."""

    run: str
    scene: str | None
    started_at: float
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The run for the API: its steps, and its result once it has one."""
        return {
            "id": self.run,
            "scene": self.scene,
            "started_at": self.started_at,
            "steps": self.steps,
            "status": "running" if self.result is None else self.result["status"],
            "error": None if self.result is None else self.result["error"],
        }


class DashboardModel:
    """The dashboard's view of the gateway; ``on_event`` follows the event stream."""

    def __init__(
        self, fleet: Fleet, scenes: Callable[[], list[dict[str, Any]]], facts: GatewayFacts
    ) -> None:
        """Start with nothing seen; ``scenes`` lists the configured scenes."""
        self._fleet = fleet
        self._scenes = scenes
        self.facts = facts
        self._started = time.time()
        self._connected = False
        self._connected_since: float | None = None
        self._state: dict[str, Mapping[str, Any]] = {}
        self._last_command: dict[str, dict[str, Any]] = {}
        self._last_error: dict[str, dict[str, Any]] = {}
        self._recent: dict[str, collections.deque[dict[str, Any]]] = {}
        self.activity: collections.deque[dict[str, Any]] = collections.deque(maxlen=ACTIVITY_SIZE)
        self._runs: collections.OrderedDict[str, SceneRun] = collections.OrderedDict()
        self._rates: collections.deque[list[int]] = collections.deque(maxlen=BUCKETS)
        self._rate_start = 0  # the bucket number of _rates[-1]
        self.seq = 0
        """The number of the last result taken in (each entry has its ``seq``)."""

    # -- following events -----------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Take in one event (called by the event stream for each)."""
        if isinstance(event, ResultPublished):
            self._result(event.result)
        elif isinstance(event, StateChanged):
            self._state[event.device] = event.state
        elif isinstance(event, CommandAccepted):
            self._last_command[event.device] = {
                "id": event.command_id,
                "action": event.action,
                "at": time.time(),
                "status": "queued",
                "error": None,
            }
        elif isinstance(event, StepChanged):
            self._step(event)
        elif isinstance(event, ConnectionChanged):
            self._connected = event.connected
            self._connected_since = time.time()
        elif isinstance(event, AvailabilityChanged):
            pass  # read from the fleet when a row is made

    def _result(self, result: Result) -> None:
        self.seq += 1
        now = time.time()
        entry = result_entry(result, self.seq, now)
        self.activity.append(entry)
        recent = self._recent.get(result.device)
        if recent is None and self._known(result.device):
            recent = self._recent[result.device] = collections.deque(maxlen=RECENT_SIZE)
        if recent is not None:
            recent.append(entry)
            answered = {
                "id": result.id,
                "action": entry["action"],
                "at": now,
                "status": entry["status"],
                "error": entry["error"],
            }
            last = self._last_command.get(result.device)
            # A later command still queued stays the last one shown.
            if last is None or last["id"] == result.id or last["status"] != "queued":
                self._last_command[result.device] = answered
            if result.error is not None:
                self._last_error[result.device] = answered
        self._count(now, error=result.error is not None)
        if result.device == GATEWAY and "steps" in result.extra:
            self._finish_run(result, entry)

    def _known(self, device: str) -> bool:
        """A configured device or the gateway: ids from clients' typos are not kept."""
        return device == GATEWAY or self._fleet.get(device) is not None

    def _count(self, now: float, *, error: bool) -> None:
        bucket = int(now // BUCKET_SECONDS)
        if bucket != self._rate_start or not self._rates:
            self._roll(bucket)
        counts = self._rates[-1]
        counts[0] += 1
        if error:
            counts[1] += 1

    def _roll(self, bucket: int) -> None:
        """Start empty buckets up to ``bucket`` (at most a chart's worth)."""
        if not self._rates:
            self._rates.append([0, 0])
            self._rate_start = bucket
        for _ in range(min(bucket - self._rate_start, BUCKETS)):
            self._rates.append([0, 0])
        self._rate_start = max(self._rate_start, bucket)

    def _step(self, event: StepChanged) -> None:
        run = self._runs.get(event.run)
        if run is None:
            run = self._runs[event.run] = SceneRun(event.run, event.scene, time.time())
            while len(self._runs) > RUNS_SIZE:
                self._runs.popitem(last=False)
        step = run.steps.setdefault(event.step, {"device": event.device})
        step.update(status=event.status, error=event.error)
        now = time.time()
        step.setdefault("started_at", now)
        if event.status != "running":
            step["finished_at"] = now
        if event.status != "skipped":  # a step that reached its device is its last command
            last = {
                "id": f"{event.run}/{event.step}",
                "action": event.action,
                "at": now,
                "status": event.status,
                "error": event.error,
            }
            self._last_command[event.device] = last
            if event.error is not None:
                self._last_error[event.device] = last

    def _finish_run(self, result: Result, entry: dict[str, Any]) -> None:
        run = self._runs.get(result.id)
        if run is None:  # every step refused at once, or a run from before
            return
        for step_id, outcome in result.extra["steps"].items():
            step = run.steps.setdefault(step_id, {})
            step.update(outcome)  # the device's own start and end, where it ran
        run.result = entry

    # -- answering ------------------------------------------------------------------

    def gateway(self) -> dict[str, Any]:
        """The gateway panel."""
        now = time.time()
        self._roll(int(now // BUCKET_SECONDS))
        devices = online = queued = 0
        waiting: list[tuple[int, str]] = []
        for runner in self._fleet:  # one pass: 10,000 devices take milliseconds
            devices += 1
            online += runner.available
            if depth := runner.queue_depth:
                queued += depth
                waiting.append((depth, runner.id))
        return {
            "version": self.facts.version,
            "broker": self.facts.broker,
            "connected": self._connected,
            "connected_since": self._connected_since,
            "started_at": self._started,
            "uptime_s": round(now - self._started, 1),
            "reconnects": self.facts.reconnects(),
            "journal": self.facts.journal(),
            "control": self.facts.control,
            "devices": devices,
            "online": online,
            "queued": queued,
            "busiest_queues": {device: depth for depth, device in heapq.nlargest(5, waiting)},
            "rates": {
                "bucket_s": BUCKET_SECONDS,
                "until": (self._rate_start + 1) * BUCKET_SECONDS,
                "commands": [bucket[0] for bucket in self._rates],
                "errors": [bucket[1] for bucket in self._rates],
            },
        }

    def devices(self) -> list[dict[str, Any]]:
        """Every device's row, dependencies first."""
        return [self.row(runner) for runner in self._fleet]

    def row(self, runner: DeviceRunner) -> dict[str, Any]:
        """One device's row of the devices table."""
        return {
            "type": runner.config.type,
            "depends_on": list(runner.config.depends_on),
            **self.changes(runner),
        }

    def changes(self, runner: DeviceRunner) -> dict[str, Any]:
        """The parts of a device's row that change (what live updates carry)."""
        device = runner.id
        return {
            "id": device,
            "status": runner.status.value,
            "available": runner.available,
            "state": self._state.get(device),
            "queue_depth": runner.queue_depth,
            "last_command": self._last_command.get(device),
            "last_error": self._last_error.get(device),
        }

    def rows(self, device_ids: Iterable[str]) -> list[dict[str, Any]]:
        """What changes in the rows of ``device_ids`` (ones that are not devices left out)."""
        get = self._fleet.get
        return [self.changes(r) for d in device_ids if (r := get(d)) is not None]

    def recent(self, device: str) -> list[dict[str, Any]]:
        """A device's recent results, oldest first."""
        return list(self._recent.get(device, ()))

    def scenes(self) -> list[dict[str, Any]]:
        """Every configured scene with its steps."""
        return self._scenes()

    def runs(self, run_ids: set[str] | None = None) -> list[dict[str, Any]]:
        """Recent scene runs (or only ``run_ids``), oldest first."""
        return [
            run.as_json() for run in self._runs.values() if run_ids is None or run.run in run_ids
        ]

    def since(self, seq: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Results after number ``seq``: the last ``limit`` of them, and how many were left out."""
        newer: list[dict[str, Any]] = []
        for entry in reversed(self.activity):
            if entry["seq"] <= seq or len(newer) == limit:
                break
            newer.append(entry)
        newer.reverse()
        left_out = self.seq - seq - len(newer)
        return newer, left_out

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, for a (re)connecting page."""
        return {
            "seq": self.seq,
            "gateway": self.gateway(),
            "devices": self.devices(),
            "scenes": self.scenes(),
            "runs": self.runs(),
            "activity": list(self.activity),
        }


def result_entry(result: Result, seq: int, now: float) -> dict[str, Any]:
    """A result as the dashboard lists it: the MQTT payload's fields, when, and its number."""
    error = result.error
    entry: dict[str, Any] = {
        "seq": seq,
        "id": result.id,
        "device": shorten(result.device, TEXT_LIMIT),
        "action": None if result.action is None else shorten(result.action, TEXT_LIMIT),
        "status": "ok" if error is None else "error",
        "error": None
        if error is None
        else {"code": error.code.value, "message": shorten(error.message, TEXT_LIMIT)},
        "duplicate": result.duplicate,
        "duration_ms": round(result.duration_ms, 1),
        "at": now,
    }
    if "steps" in result.extra:
        entry["steps"] = result.extra["steps"]
    return entry
