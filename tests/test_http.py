"""The HTTP endpoint: liveness, readiness that follows the broker, Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway import AdapterRegistry, running_gateway
from tests.conftest import config_data, gateway_process, started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway import Config, Gateway
    from tests.broker import Broker

HTTP = {"host": "127.0.0.1", "port": 0}  # a free port, read back from the gateway
NOT_CONNECTED = {"ready": False, "reason": "not connected to the broker"}

Answer = tuple[int, Any]


def url(gateway: Gateway, path: str) -> str:
    """Where ``path`` is served."""
    assert gateway.http_port, "the HTTP server is not listening"
    return f"http://127.0.0.1:{gateway.http_port}{path}"


async def fetch(http: aiohttp.ClientSession, gateway: Gateway, path: str) -> Answer:
    """GET ``path``: the status and the body (parsed when it is JSON)."""
    async with http.get(url(gateway, path), timeout=aiohttp.ClientTimeout(total=5)) as response:
        text = await response.text()
        if response.content_type == "application/json":
            return response.status, json.loads(text)
        return response.status, text


async def poll(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    path: str,
    check: Callable[[int, Any], bool],
    *,
    timeout: float = 10,
) -> Answer:
    """GET ``path`` until ``check(status, body)`` holds; fail after ``timeout``.

    The endpoint is what is under test, so its own answers are the events waited for.
    """
    answer: Answer = (0, None)
    try:
        async with asyncio.timeout(timeout):
            while not check(*answer):
                await asyncio.sleep(0.02)  # between requests, not to synchronise
                answer = await fetch(http, gateway, path)
    except TimeoutError:
        raise AssertionError(f"{path} never passed the check; last answer {answer}") from None
    return answer


def readiness(answer: Answer) -> Answer:
    """A ``/readyz`` answer without its ``broker`` (the node in use, checked apart)."""
    status, body = answer
    if not isinstance(body, dict):  # no answer yet (poll's start)
        return answer
    return status, {key: value for key, value in body.items() if key != "broker"}


def ready(status: int, body: Any) -> bool:
    """``/readyz`` says ready."""
    return readiness((status, body)) == (200, {"ready": True})


def not_connected(status: int, body: Any) -> bool:
    """``/readyz`` says the broker is missing."""
    return readiness((status, body)) == (503, NOT_CONNECTED)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in a scrape, if any."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def test_readyz_follows_the_broker_and_healthz_answers_throughout(
    make_config: Callable[..., Config], broker: Broker
) -> None:
    broker.kill()  # the gateway starts with no broker to talk to
    config = make_config(http=HTTP, devices=[{"id": "sw", "type": "simulated.switch"}])
    registry = AdapterRegistry.from_entry_points()
    async with running_gateway(config, registry) as gateway, aiohttp.ClientSession() as http:
        assert await fetch(http, gateway, "/healthz") == (200, {"alive": True})
        assert readiness(await fetch(http, gateway, "/readyz")) == (503, NOT_CONNECTED)
        await asyncio.to_thread(broker.start)
        await poll(http, gateway, "/readyz", ready)
        assert gateway.ready
        await asyncio.to_thread(broker.kill)
        await poll(http, gateway, "/readyz", not_connected)
        assert await fetch(http, gateway, "/healthz") == (200, {"alive": True})
        await asyncio.to_thread(broker.start)
        await poll(http, gateway, "/readyz", ready)


async def test_readyz_waits_for_connecting_devices_not_for_ones_that_gave_up(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(
        http=HTTP,
        devices=[
            {"id": "slow-a", "type": "simulated.switch", "connect_delay": 60},
            {"id": "broken", "type": "simulated.switch", "open_failures": 1000},
            {"id": "slow-b", "type": "simulated.switch", "connect_delay": 60},
            {"id": "fine", "type": "simulated.switch"},
        ],
    )
    registry = AdapterRegistry.from_entry_points()
    async with running_gateway(config, registry) as gateway, aiohttp.ClientSession() as http:
        waiting = {"ready": False, "reason": "devices still connecting: slow-a, slow-b"}
        await poll(http, gateway, "/readyz", lambda *answer: readiness(answer) == (503, waiting))
        _, scrape = await fetch(http, gateway, "/metrics")
        assert sample(scrape, "iot_gateway_broker_connected") == 1
        online = {
            device: sample(scrape, "iot_gateway_device_online", device=device)
            for device in ("slow-a", "broken", "slow-b", "fine")
        }
        assert online == {"slow-a": 0, "broken": 0, "slow-b": 0, "fine": 1}


async def test_metrics_count_commands_time_them_and_follow_the_broker(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    config = make_config(
        http=HTTP,
        devices=[
            {"id": "light", "type": "simulated.light", "fail_on": ["toggle"]},
            {"id": "slow", "type": "simulated.switch", "latency": 30},
            {"id": "marker", "type": "simulated.switch"},
        ],
    )
    async with started(config, probe) as gateway, aiohttp.ClientSession() as http:
        for payload in (
            {"action": "turn_on"},
            {"action": "turn_off"},
            {"action": "toggle"},  # fails: device_error, after running
            {"action": "set_brightness", "params": {"level": 500}},  # refused on arrival
        ):
            await probe.command("light", payload)
        await probe.command(f"nosuch-{uuid.uuid4().hex[:6]}", {"action": "turn_on"})
        for _ in range(3):  # one runs for 30 s, two wait behind it
            await probe.publish("iot/slow/command", {"action": "toggle"})
        # Commands arrive in order: once the marker is answered, the slow ones are in.
        await probe.command("marker", {"action": "toggle"})

        status, text = await fetch(http, gateway, "/metrics")
        assert status == 200
        commands = "iot_gateway_commands_total"
        assert sample(text, commands, device="light", outcome="ok") == 2
        assert sample(text, commands, device="light", outcome="device_error") == 1
        assert sample(text, commands, device="light", outcome="invalid_params") == 1
        assert sample(text, commands, device="_unknown", outcome="unknown_device") == 1
        assert sample(text, commands, device="marker", outcome="ok") == 1
        assert sample(text, commands, device="slow", outcome="ok") is None  # still running
        # Timed: the three that ran on the light, not the one refused on arrival.
        duration = "iot_gateway_command_duration_seconds"
        assert sample(text, f"{duration}_count", device="light") == 3
        assert sample(text, f"{duration}_bucket", device="light", le="+Inf") == 3
        assert sample(text, f"{duration}_bucket", device="light", le="1.0") == 3
        assert (sample(text, f"{duration}_sum", device="light") or 0) > 0
        assert sample(text, "iot_gateway_queue_depth", device="slow") == 2
        assert sample(text, "iot_gateway_queue_depth", device="light") == 0
        assert sample(text, "iot_gateway_device_online", device="light") == 1
        assert sample(text, "iot_gateway_broker_connected") == 1
        assert sample(text, "iot_gateway_reconnects_total") == 0

        await asyncio.to_thread(broker.kill)
        _, text = await poll(
            http, gateway, "/metrics", lambda _, t: sample(t, "iot_gateway_broker_connected") == 0
        )
        assert sample(text, "iot_gateway_reconnects_total") == 0
        await asyncio.to_thread(broker.start)
        _, text = await poll(
            http,
            gateway,
            "/metrics",
            lambda _, t: sample(t, "iot_gateway_broker_connected") == 1,
        )
        assert sample(text, "iot_gateway_reconnects_total") == 1

        gateway.should_exit.set()  # the drain waits for the slow command (grace: 1 s)
        assert readiness(await fetch(http, gateway, "/readyz")) == (
            503,
            {"ready": False, "reason": "shutting down"},
        )
        assert await fetch(http, gateway, "/healthz") == (200, {"alive": True})


async def test_metrics_speak_openmetrics_when_asked(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(http=HTTP, devices=[{"id": "sw", "type": "simulated.switch"}])
    async with started(config, probe) as gateway, aiohttp.ClientSession() as http:
        await probe.command("sw", {"action": "turn_on"})
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(url(gateway, "/metrics"), headers=headers) as response:
            assert response.content_type == "application/openmetrics-text"
            text = await response.text()
        assert 'iot_gateway_commands_total{device="sw",outcome="ok"} 1.0' in text
        assert text.endswith("# EOF\n")
        async with http.get(url(gateway, "/metrics")) as response:
            assert response.content_type == "text/plain"
            text = await response.text()
        assert (sample(text, "process_resident_memory_bytes") or 0) > 0  # the usual ones too
        async with http.get(url(gateway, "/nowhere")) as response:
            assert response.status == 404


async def test_no_http_section_means_no_server(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    config = make_config(devices=[{"id": "sw", "type": "simulated.switch"}])
    assert config.settings.http is None
    async with started(config, probe) as gateway:
        assert gateway.http is None
        assert gateway.http_port is None


async def test_two_gateways_in_one_process_keep_their_own_metrics(
    make_config: Callable[..., Config], broker: Broker, probe: Probe
) -> None:
    first = make_config(http=HTTP, devices=[{"id": "a", "type": "simulated.switch"}])
    second = make_config(
        http=HTTP,
        mqtt={"base_topic": "other", "client_id": "other-gateway"},
        devices=[{"id": "a", "type": "simulated.switch"}],
    )
    async with (
        Probe(broker.port, ["other/#"]) as other,
        started(first, probe) as one,
        started(second, other) as two,
        aiohttp.ClientSession() as http,
    ):
        assert one.http_port != two.http_port
        await probe.command("a", {"action": "turn_on"})
        await probe.command("a", {"action": "turn_off"})
        await other.command("a", {"action": "turn_on"}, base="other")
        _, text_one = await fetch(http, one, "/metrics")
        _, text_two = await fetch(http, two, "/metrics")
        assert sample(text_one, "iot_gateway_commands_total", device="a", outcome="ok") == 2
        assert sample(text_two, "iot_gateway_commands_total", device="a", outcome="ok") == 1


async def test_a_taken_port_exits_1_with_a_clear_message(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = config_data(broker, http={"host": "127.0.0.1", "port": port})
        with gateway_process(write_config(data)) as process:
            assert await process.wait(10) == 1
            log = process.log()
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in log
    assert "Traceback" not in log
