"""The dashboard's model on its own: what it keeps is bounded, rates roll over, steps and runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import yaml

from gateway import AdapterRegistry, Gateway, load_config
from gateway.core.commands import Result
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.events import CommandAccepted, ResultPublished, StepChanged
from gateway.surfaces.dashboard.model import ACTIVITY_SIZE, BUCKETS, RECENT_SIZE, DashboardModel

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    """A gateway with two switches and the dashboard, never started."""
    config = {
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "http": {"port": 0},
        "devices": [
            {"id": "a", "type": "simulated.switch"},
            {"id": "b", "type": "simulated.switch"},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    registry = AdapterRegistry.from_entry_points()
    return Gateway(load_config(path, registry), registry)


def model_of(gateway: Gateway) -> DashboardModel:
    assert gateway.dashboard is not None
    return gateway.dashboard.model


def answer(gateway: Gateway, device: str, command_id: str, code: ErrorCode | None = None) -> None:
    error = None if code is None else CommandError(code, "no")
    gateway.events.emit(ResultPublished(Result(command_id, device, "toggle", error=error)))


def test_what_it_keeps_is_bounded_and_unknown_devices_leave_nothing(gateway: Gateway) -> None:
    model = model_of(gateway)
    for i in range(ACTIVITY_SIZE + 100):
        answer(gateway, "a", f"c{i}")
    for i in range(10):
        answer(gateway, f"typo{i}", f"t{i}", ErrorCode.UNKNOWN_DEVICE)
    assert len(model.activity) == ACTIVITY_SIZE
    assert len(model.recent("a")) == RECENT_SIZE
    assert model.recent("typo0") == []
    assert [row["id"] for row in model.devices()] == ["a", "b"]
    newest, left_out = model.since(model.seq - 5, 100)
    assert [entry["id"] for entry in newest] == [f"t{i}" for i in range(5, 10)]
    assert left_out == 0
    newest, left_out = model.since(0, 100)
    assert len(newest) == 100
    assert left_out == model.seq - 100


def test_what_a_client_chose_is_kept_shortened(gateway: Gateway) -> None:
    model = model_of(gateway)
    action = "x" * 60_000
    error = CommandError(ErrorCode.UNKNOWN_ACTION, f"unknown action {action!r}")
    gateway.events.emit(ResultPublished(Result("c1", "y" * 60_000, action, error=error)))
    (entry,) = model.activity
    assert len(json.dumps(entry)) < 1000
    assert entry["action"].startswith("xxx")
    assert entry["action"].endswith("(60000 characters)")


def test_the_last_command_stays_the_queued_one_until_it_is_answered(gateway: Gateway) -> None:
    model = model_of(gateway)
    gateway.events.emit(CommandAccepted("a", "first", "toggle"))
    gateway.events.emit(CommandAccepted("a", "second", "toggle"))
    answer(gateway, "a", "first")
    (row,) = model.rows({"a"})
    assert (row["last_command"]["id"], row["last_command"]["status"]) == ("second", "queued")
    answer(gateway, "a", "second", ErrorCode.DEVICE_ERROR)
    (row,) = model.rows({"a"})
    assert row["last_command"]["id"] == "second"
    assert row["last_error"]["error"]["code"] == "device_error"


def test_rates_are_counted_per_ten_seconds_and_roll_over(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = model_of(gateway)
    now = [1000.0]
    monkeypatch.setattr("gateway.surfaces.dashboard.model.time.time", lambda: now[0])
    answer(gateway, "a", "1")
    now[0] = 1005.0
    answer(gateway, "a", "2", ErrorCode.TIMEOUT)
    now[0] = 1031.0
    answer(gateway, "a", "3")
    rates = model.gateway()["rates"]
    assert rates["commands"] == [2, 0, 0, 1]
    assert rates["errors"] == [1, 0, 0, 0]
    now[0] = 5000.0  # long quiet: a chart's worth of empty buckets, no more
    rates = model.gateway()["rates"]
    assert rates["commands"] == [0] * BUCKETS
    assert rates["until"] == 5010


def test_a_run_follows_its_steps_then_takes_the_devices_own_times(gateway: Gateway) -> None:
    model = model_of(gateway)
    for status in ("running", "ok"):
        gateway.events.emit(StepChanged("r1", "morning", "s1", "a", "turn_on", status))
    (run,) = model.runs()
    assert (run["status"], run["steps"]["s1"]["status"]) == ("running", "ok")
    steps = {"s1": {"status": "ok", "error": None, "duration_ms": 5.0, "started_at": 1.0}}
    result = Result("r1", "gateway", "run_scene", extra={"steps": steps})
    gateway.events.emit(ResultPublished(result))
    (run,) = model.runs()
    assert run["status"] == "ok"
    assert run["steps"]["s1"]["started_at"] == 1.0
    assert model.rows({"a"})[0]["last_command"]["id"] == "r1/s1"
