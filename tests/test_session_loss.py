"""A broker that lost the gateway's session is never silent: a warning, a metric, health."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.broker import Broker
from tests.conftest import started
from tests.probe import Probe
from tests.test_http import HTTP, fetch, poll, sample
from tests.test_session_lifecycle import logged

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest

    from gateway import Config

HEALTH = "iot/gateway/health"
SWITCH = [{"id": "sw", "type": "simulated.switch"}]
LOST = "no longer had the gateway's session"


async def health_where(probe: Probe, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first health report (from the start of the recording) that passes ``check``."""
    found = await probe.wait_for(lambda m: m.topic == HEALTH and check(m.json), timeout=20)
    report: dict[str, Any] = found[0].json
    return report


async def test_a_restarted_broker_without_persistence_is_reported_as_a_lost_session(
    tmp_path: Path,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    workdir = tmp_path / "forgetful"
    workdir.mkdir()
    forgetful = Broker(workdir, persistence=False)
    forgetful.start()
    try:
        config = make_config(
            mqtt={"host": forgetful.host, "port": forgetful.port},
            gateway={"instance": "hall-pi"},
            http=HTTP,
            devices=SWITCH,
        )
        async with (
            Probe(forgetful.port, ["iot/#"]) as probe,
            started(config, probe) as gateway,
            aiohttp.ClientSession() as http,
        ):
            first = await health_where(probe, lambda _: True)
            assert first["instance"] == "hall-pi"
            assert first["role"] == "active"
            assert first["broker"] == f"127.0.0.1:{forgetful.port}"
            assert first["protocol"] == "5"
            assert (first["session_lost"], first["reconnects"]) == (0, 0)
            assert LOST not in caplog.text  # a first connect to a fresh broker has no session

            await asyncio.to_thread(forgetful.restart)  # SIGTERM: it saves nothing
            report = await health_where(probe, lambda r: r["reconnects"] == 1)
            assert report["session_present"] is False
            assert report["session_lost"] == 1
            await logged(caplog, LOST)
            assert "may be lost" in caplog.text
            assert "persistence true" in caplog.text
            _, text = await poll(
                http,
                gateway,
                "/metrics",
                lambda _, t: sample(t, "iot_gateway_broker_connected") == 1,
            )
            assert sample(text, "iot_gateway_session_lost_total") == 1
            status, body = await fetch(http, gateway, "/readyz")
            assert (status, body["broker"]) == (200, f"127.0.0.1:{forgetful.port}")
            # Still serving commands after it.
            assert (await probe.command("sw", {"action": "turn_on"}))["status"] == "ok"
    finally:
        forgetful.kill()


async def test_a_broker_that_kept_the_session_is_no_loss(
    broker: Broker,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    config = make_config(devices=SWITCH)
    async with Probe(broker.port, ["iot/#"]) as probe, started(config, probe) as gateway:
        await asyncio.to_thread(broker.restart)  # persistence: the session survives
        report = await health_where(probe, lambda r: r["reconnects"] == 1)
        assert (report["session_present"], report["session_lost"]) == (True, 0)
        assert gateway.session.session_lost == 0
    assert LOST not in caplog.text


async def test_health_is_republished_on_a_timer_with_a_growing_uptime(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(gateway={"health_interval": 0.2}, devices=SWITCH)
    async with started(config, probe):
        reports = await probe.wait_topic(HEALTH, count=4)
    uptimes = [report.json["uptime_s"] for report in reports]
    assert uptimes == sorted(uptimes)
    assert uptimes[-1] > uptimes[0]
    assert all(report.json["version"] for report in reports)
