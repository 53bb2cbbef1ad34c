"""Run, stop, restart: signals, the drain, the persistent session, broker restarts."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.conftest import config_data, gateway_process, started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway import Config
    from tests.broker import Broker


def ids(count: int) -> list[str]:
    """``count`` fresh command ids."""
    return [uuid.uuid4().hex for _ in range(count)]


async def test_sigterm_drains_cancels_says_offline_and_exits_0(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    data = config_data(
        broker,
        devices=[
            {"id": "quick", "type": "simulated.switch", "latency": 0.3},
            {"id": "slow", "type": "simulated.switch", "latency": 30},
        ],
        gateway={"shutdown_grace": 1},
    )
    with gateway_process(write_config(data)) as process:
        await probe.wait_for(
            lambda m: m.topic == "iot/slow/availability" and m.payload == b"online"
        )
        quick, slow = ids(2), ids(3)
        for command_id in slow:
            await probe.publish("iot/slow/command", {"action": "toggle", "id": command_id})
        for command_id in quick:
            await probe.publish("iot/quick/command", {"action": "toggle", "id": command_id})
        # Commands arrive in order: once a quick one ran, every slow one is queued.
        await probe.wait_for(lambda m: m.topic == "iot/quick/state" and m.json["power"] == "on")
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await process.wait(10) == 0
        elapsed = time.monotonic() - began
        assert elapsed < 1 + 3, elapsed  # the grace period plus a generous margin
        results = {cid: await probe.result("quick", cid) for cid in quick}
        results |= {cid: await probe.result("slow", cid) for cid in slow}
        codes = {cid: (r["error"] or {}).get("code", "ok") for cid, r in results.items()}
        assert codes[quick[0]] == "ok"
        assert set(codes.values()) <= {"ok", "cancelled"}
        assert all(codes[cid] == "cancelled" for cid in slow), codes
        offline = {"iot/quick/availability", "iot/slow/availability", "iot/gateway/status"}
        await probe.wait_for(lambda m: m.topic in offline and m.payload == b"offline", count=3)
        assert probe.on("iot/gateway/status")[-1].payload == b"offline"


async def test_sigint_also_stops_cleanly_and_logs_json(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    data = config_data(broker, logging={"format": "json", "level": "DEBUG"})
    secret = {"GATEWAY_MQTT__PASSWORD": "hunter2-secret"}
    with gateway_process(write_config(data), **secret) as process:
        await probe.wait_for(lambda m: m.topic == "iot/sensor/availability")
        process.send_signal(signal.SIGINT)
        assert await process.wait(10) == 0
        lines = process.log().splitlines()
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        messages = [e["message"] for e in entries]
        assert any("SIGINT" in m for m in messages), messages
        assert any("device hub is online" in m for m in messages)
        assert "hunter2-secret" not in "\n".join(lines)


async def test_commands_sent_while_stopped_run_once_after_start(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(devices=[{"id": "sw", "type": "simulated.switch"}])
    async with started(config, probe):
        pass  # the first run creates the persistent session and its subscription
    sent = ids(10)
    for command_id in sent:
        await probe.publish("iot/sw/command", {"action": "toggle", "id": command_id})
    async with started(config, probe):
        results = [await probe.result("sw", cid) for cid in sent]
        assert all(r["status"] == "ok" for r in results)
        # Ten toggles from off, each run exactly once, in order.
        powers = [r["state"]["power"] for r in results]
        assert powers == ["on", "off"] * 5
        follow_up = ids(1)[0]
        await probe.publish("iot/sw/command", {"action": "toggle", "id": follow_up})
        await probe.result("sw", follow_up)
        counts = collections.Counter(m.json["id"] for m in probe.on("iot/sw/result"))
        assert all(counts[cid] == 1 for cid in sent), counts


async def test_broker_restart_reconnects_and_answers_every_command(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    config = make_config(devices=[{"id": "light", "type": "simulated.light"}])
    probe = Probe(broker.port, ["iot/#"], client_id="restart-probe", persistent=True)
    async with probe, started(config, probe) as gateway:
        sent = ids(60)
        for index, command_id in enumerate(sent):
            if index == 30:
                await asyncio.to_thread(broker.restart)
            payload = {
                "action": "set_brightness",
                "params": {"level": index},
                "id": command_id,
            }
            await probe.publish("iot/light/command", payload, timeout=20)
        results = [await probe.result("light", cid, timeout=20) for cid in sent]
        assert all(r["status"] == "ok" for r in results)
        onlines = probe.on("iot/gateway/status")
        assert [m.payload for m in onlines].count(b"online") >= 2
        assert gateway.session.reconnects >= 1


async def test_second_signal_forces_exit(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    data = config_data(
        broker,
        devices=[
            {"id": "slow", "type": "simulated.switch", "latency": 30},
            {"id": "marker", "type": "simulated.switch"},
        ],
        gateway={"shutdown_grace": 60},
    )
    with gateway_process(write_config(data)) as process:
        await probe.wait_for(
            lambda m: m.topic == "iot/slow/availability" and m.payload == b"online"
        )
        await probe.publish("iot/slow/command", {"action": "toggle", "id": "long"})
        await probe.publish("iot/slow/command", {"action": "toggle", "id": "queued"})
        # Commands arrive in order: once the marker is answered, both slow ones are in.
        await probe.command("marker", {"action": "toggle"})
        process.send_signal(signal.SIGTERM)
        # The first signal starts the drain: the queued command is cancelled at once.
        queued = await probe.result("slow", "queued")
        assert queued["error"]["code"] == "cancelled"
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await process.wait(5) == 1
        assert time.monotonic() - began < 3
    # No DISCONNECT went out, so the broker published the will: nobody is told
    # the gateway is online after it is gone.
    await probe.wait_for(lambda m: m.topic == "iot/gateway/status" and m.payload == b"offline")
