"""Nothing lost, nothing twice: broker restarts and kills, gateway kills, adapter faults."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from gateway.supervisor import Gateway
from tests.conftest import config_data, gateway_process, started
from tests.probe import Probe, Received

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

    from gateway import Config
    from gateway.core.messages import Inbound
    from tests.broker import Broker

COUNTER = {"id": "c", "type": "simulated.counter"}


def ids(count: int) -> list[str]:
    """``count`` fresh command ids."""
    return [uuid.uuid4().hex for _ in range(count)]


def results_by_id(probe: Probe, device: str) -> dict[str, list[Any]]:
    """Every result seen for ``device``, grouped by command id."""
    grouped: dict[str, list[Any]] = collections.defaultdict(list)
    for message in probe.on(f"iot/{device}/result"):
        body = message.json
        grouped[body["id"]].append(body)
    return grouped


def repeat_of(command_id: str) -> Callable[[Received], bool]:
    """Matches a ``duplicate: true`` result of ``command_id``."""

    def match(message: Received) -> bool:
        if not message.topic.endswith("/result"):
            return False
        body = message.json
        return bool(body["id"] == command_id and body["duplicate"])

    return match


def assert_each_ran_once(probe: Probe, sent: list[str]) -> None:
    """Every id answered ok; the counter counted each exactly once."""
    grouped = results_by_id(probe, "c")
    assert set(grouped) >= set(sent), f"{len(set(sent) - set(grouped))} commands lost"
    # A repeat answers with the first run's state, so any result of an id will do.
    firsts = [grouped[cid][0] for cid in sent]
    failed = [r for r in firsts if r["status"] != "ok"]
    assert not failed, failed[:3]
    counts = sorted(r["state"]["count"] for r in firsts)
    assert counts == list(range(1, len(sent) + 1)), "a command ran twice or was lost"


async def test_broker_restart_during_1000_commands_loses_none_runs_none_twice(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    # The broker delivers what it held across its restart in one burst: room for
    # all of it in the device's queue, so every command runs (none is `busy`).
    config = make_config(devices=[COUNTER], gateway={"queue_size": 1000})
    probe = Probe(broker.port, ["iot/#"], client_id="stream", persistent=True)
    async with probe, started(config, probe):
        sent = ids(1000)
        for index, command_id in enumerate(sent):
            if index == 500:
                await asyncio.to_thread(broker.restart)
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        for command_id in sent:
            await probe.result("c", command_id, timeout=30)
        assert_each_ran_once(probe, sent)


async def test_broker_killed_with_a_resending_client_completes_every_id_once(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    config = make_config(devices=[COUNTER])
    probe = Probe(broker.port, ["iot/#"], client_id="resender", persistent=True)
    async with probe, started(config, probe):
        sent = ids(300)
        for index, command_id in enumerate(sent):
            if index == 150:
                await asyncio.to_thread(broker.kill)
                await asyncio.to_thread(broker.start)
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        # The client's side of the contract: resend what got no result in time.
        deadline = time.monotonic() + 60
        while missing := [cid for cid in sent if cid not in results_by_id(probe, "c")]:
            assert time.monotonic() < deadline, f"{len(missing)} ids never completed"
            for command_id in missing:
                await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
            await probe.result("c", missing[-1], timeout=10)
        assert_each_ran_once(probe, sent)


async def test_gateway_killed_runs_no_id_twice_and_answers_the_cut_off_interrupted(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    """Contract 10: across a SIGKILL, each id is answered once and runs at most once."""
    data = config_data(broker, devices=[{**COUNTER, "latency": 0.3}])
    path = write_config(data)
    sent = ids(10)
    with gateway_process(path) as first:
        await probe.wait_for(lambda m: m.topic == "iot/c/availability" and m.payload == b"online")
        for command_id in sent:
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        await probe.result("c", sent[1])
        await asyncio.sleep(0.1)  # the third is running: its "started" is journaled
        # The rest are received (one running, the others queued) but not answered.
        first.send_signal(signal.SIGKILL)
        await first.wait(10)
    before = results_by_id(probe, "c")
    assert len(before) < len(sent)
    mark = len(probe.messages)
    with gateway_process(path):
        for command_id in sent:  # the broker redelivers what was not acknowledged
            await probe.result("c", command_id, timeout=15)
        for command_id in sent:  # and a client resends every id
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        for command_id in sent:
            await probe.wait_for(repeat_of(command_id), since=mark)
    grouped = results_by_id(probe, "c")
    firsts = {cid: [r for r in grouped[cid] if not r["duplicate"]] for cid in sent}
    assert all(len(answers) <= 1 for answers in firsts.values()), "an id answered twice"
    statuses = {cid: answers[0]["error"] for cid, answers in firsts.items() if answers}
    interrupted = [cid for cid, error in statuses.items() if error is not None]
    assert interrupted, "the running command was not answered interrupted"
    assert all(statuses[cid]["code"] == "interrupted" for cid in interrupted)
    # The second run's counter counted only the ids it ran, each once.
    second = [firsts[cid][0] for cid in sent if cid not in before and cid not in interrupted]
    assert sorted(r["state"]["count"] for r in second) == list(range(1, len(second) + 1))
    # Every repeat answers as the first answer did, and nothing ran again.
    for cid in sent:
        assert {r["status"] for r in grouped[cid]} == {grouped[cid][0]["status"]}
    counts = [m.json["count"] for m in probe.messages[mark:] if m.topic == "iot/c/state"]
    assert counts[-1] == len(second)


async def test_a_slow_command_does_not_hold_back_other_devices(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    # Commands are acknowledged in arrival order, so a slow one holds back the
    # acknowledgements behind it; the broker must still deliver the rest.
    devices = [{"id": "slow", "type": "simulated.switch", "latency": 8}, COUNTER]
    async with started(make_config(devices=devices), probe):
        await probe.publish("iot/slow/command", {"action": "toggle", "id": "slow-1"})
        began = time.monotonic()
        sent = ids(300)
        for command_id in sent:
            await probe.publish("iot/c/command", {"action": "increment", "id": command_id})
        await probe.result("c", sent[-1], timeout=6)
        assert time.monotonic() - began < 6
        assert probe.on("iot/slow/result") == []  # still running: it really held the front


async def test_device_losing_its_connection_goes_offline_and_comes_back(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "tv", "type": "simulated.switch"},
        {"id": "lamp", "type": "simulated.switch"},
    ]
    async with started(make_config(devices=devices), probe) as gateway:
        await probe.wait_for(lambda m: m.topic == "iot/tv/availability" and m.payload == b"online")
        onlines = len([m for m in probe.on("iot/tv/availability") if m.payload == b"online"])
        # What an adapter reports when its device drops the connection.
        gateway.fleet.runners["tv"].adapter.events.connection_lost("cable pulled")
        await probe.wait_for(
            lambda m: m.topic == "iot/tv/availability" and m.payload == b"offline"
        )
        began = time.monotonic()
        lamp = await probe.command("lamp", {"action": "toggle"})
        assert lamp["status"] == "ok"
        assert time.monotonic() - began < 0.5
        await probe.wait_for(
            lambda m: m.topic == "iot/tv/availability" and m.payload == b"online",
            count=onlines + 1,
        )
        assert (await probe.command("tv", {"action": "toggle"}))["status"] == "ok"


async def test_a_bug_handling_one_message_is_logged_and_acknowledged_and_the_rest_go_on(
    make_config: Callable[..., Config],
    probe: Probe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The message is dropped with a log line, never redelivered forever; the session lives."""
    handled: list[bytes] = []
    handle = Gateway.on_message

    def buggy(self: Gateway, message: Inbound) -> None:
        handled.append(message.payload)
        if message.payload == b"boom":
            raise RuntimeError("a bug")
        handle(self, message)

    monkeypatch.setattr(Gateway, "on_message", buggy)
    config = make_config(devices=[{"id": "light", "type": "simulated.light"}])
    async with started(config, probe):
        await probe.publish("iot/light/command", b"boom")
        assert (await probe.command("light", {"action": "turn_on"}))["status"] == "ok"
    assert "failed to handle a message on 'iot/light/command'" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    # Acknowledged: the same persistent session does not deliver it again.
    handled.clear()
    async with started(config, probe):
        assert (await probe.command("light", {"action": "turn_off"}))["status"] == "ok"
    assert b"boom" not in handled
