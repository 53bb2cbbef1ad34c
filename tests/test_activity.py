"""The gateway's activity figures: commands and errors of the last minute, reconnects."""

from __future__ import annotations

import json

from gateway.core.commands import Result
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.events import CommandAccepted, ConnectionChanged, ResultPublished
from gateway.surfaces.activity import Activity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failed() -> ResultPublished:
    error = CommandError(ErrorCode.DEVICE_ERROR, "broken")
    return ResultPublished(Result(id="c", device="hub", action="turn_on", error=error))


def test_per_minute_figures_forget_what_is_older_than_a_minute() -> None:
    clock = Clock()
    activity = Activity("iot/gateway/activity", "1.0", clock)
    for _ in range(3):
        activity.on_event(CommandAccepted(device="hub", command_id="c", action="turn_on"))
    activity.on_event(failed())
    activity.on_event(ResultPublished(Result(id="c", device="hub", action="turn_on")))
    clock.now += 30
    activity.on_event(CommandAccepted(device="hub", command_id="d", action="turn_on"))
    assert activity.figures() == {
        "version": "1.0",
        "uptime_s": 30,
        "commands_per_min": 4,
        "errors_per_min": 1,
        "reconnects": 0,
        "session_lost": 0,
    }
    clock.now += 45  # the first three and the error are 75 s old
    figures = activity.figures()
    assert (figures["commands_per_min"], figures["errors_per_min"]) == (1, 0)
    clock.now += 60
    assert activity.figures()["commands_per_min"] == 0


def test_reconnects_are_connects_after_the_first() -> None:
    activity = Activity("iot/gateway/activity", "1.0", Clock())
    for connected in (True, False, True, False, True):
        activity.on_event(ConnectionChanged(connected=connected))
    message = activity.message()
    assert (message.topic, message.retain) == ("iot/gateway/activity", True)
    assert json.loads(message.payload)["reconnects"] == 2


def test_lost_sessions_are_read_from_the_session() -> None:
    lost = [0]
    activity = Activity("iot/gateway/activity", "1.0", Clock(), session_lost=lambda: lost[0])
    lost[0] = 2
    assert activity.figures()["session_lost"] == 2


def test_a_busy_minute_keeps_at_most_one_bucket_per_second() -> None:
    clock = Clock()
    activity = Activity("iot/gateway/activity", "1.0", clock)
    for step in range(10_000):
        clock.now = 1000 + step / 100  # 100 commands a second for 100 s
        activity.on_event(CommandAccepted(device="hub", command_id=str(step), action="turn_on"))
    assert len(activity._seconds) <= 60  # noqa: SLF001 - the bound is the point
    assert 5_900 <= activity.figures()["commands_per_min"] <= 6_000
