"""The broker connection's life as a user sees it: the first connect, a missing broker, a stop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from gateway import AdapterRegistry, Gateway
from gateway.broker.aiomqtt_transport import PACKET_HEADROOM
from tests.conftest import started

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Probe

SWITCH = [{"id": "sw", "type": "simulated.switch"}]


async def logged(caplog: pytest.LogCaptureFixture, text: str, *, count: int = 1) -> None:
    """Wait until ``text`` was logged ``count`` times (the log is what is under test)."""
    try:
        async with asyncio.timeout(10):
            while caplog.text.count(text) < count:  # noqa: ASYNC110 - a log has no event
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{text!r} not logged {count} times:\n{caplog.text}") from None


async def test_a_missing_broker_gets_one_hint_and_the_first_connect_is_no_reconnect(
    make_config: Callable[..., Config],
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    broker.kill()
    gateway = Gateway(make_config(devices=SWITCH), AdapterRegistry.from_entry_points())
    serving = asyncio.create_task(gateway.serve())
    try:
        await logged(caplog, "Connection refused; reconnecting", count=3)
        assert caplog.text.count("Is the broker running?") == 1
        assert "systemctl start mosquitto" in caplog.text
        await asyncio.to_thread(broker.start)
        await logged(caplog, f"MQTT: connected to {broker.host}:{broker.port}")
        assert "connected to" in caplog.text
        assert " again" not in caplog.text.split("MQTT: connected to", 1)[1].split("\n", 1)[0]
        assert gateway.session.reconnects == 0
    finally:
        gateway.should_exit.set()
        await serving


async def test_stopping_without_a_broker_is_immediate_and_does_not_reconnect(
    make_config: Callable[..., Config],
    broker: Broker,
    probe: Probe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    config = make_config(devices=SWITCH)
    async with started(config, probe) as gateway:
        await asyncio.to_thread(broker.kill)
        await logged(caplog, "reconnecting to")
        begun = time.monotonic()
        gateway.should_exit.set()
        await gateway.stopped.wait()
        took = time.monotonic() - begun
        after_stop = caplog.text.rsplit("shutting down", 1)[-1]
    # The flush timeout is 5 s; with no broker there is nothing to wait for.
    assert took < 3, f"stopping took {took:.1f} s"
    assert "not connected to the broker" in caplog.text
    assert "reconnecting to" not in after_stop.split("not connected to the broker", 1)[-1]


async def test_the_broker_is_asked_not_to_send_packets_far_over_the_payload_limit(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    limit = 1000
    config = make_config(devices=SWITCH, gateway={"max_payload_bytes": limit})
    async with started(config, probe):
        over = {"action": "turn_on", "pad": "x" * limit}  # unread, so its id would be unknown
        since = len(probe.messages)
        await probe.publish("iot/sw/command", json.dumps(over).encode())
        (refused,) = await probe.wait_for(lambda m: m.topic == "iot/sw/result", since=since)
        assert refused.json["error"]["code"] == "payload_too_large"

        # Far over: the broker drops it (MQTT 5 Maximum Packet Size) instead of
        # the gateway holding it; results come in order, so none ever will.
        huge = {"action": "turn_on", "pad": "x" * PACKET_HEADROOM * 2}
        since = len(probe.messages)
        await probe.publish("iot/sw/command", json.dumps(huge).encode())
        after = await probe.command("sw", {"action": "turn_off"})
        assert after["status"] == "ok"
        results = [m.json for m in probe.messages[since:] if m.topic == "iot/sw/result"]
        assert results == [after]
