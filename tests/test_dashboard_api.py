"""The dashboard's JSON API and live stream, and its security rules, without a browser."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from gateway import AdapterRegistry, ConfigError, Gateway, load_config
from tests.conftest import config_data, started

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Probe
from tests.test_scenes import MORNING as SCENE_STEPS

TOKEN = "a-long-enough-test-token"  # noqa: S105 - a test's own
HTTP = {"host": "127.0.0.1", "port": 0}
CONTROL = {**HTTP, "token": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MORNING = {"morning": SCENE_STEPS}  # the scene tests' morning scene


def base_url(gateway: Gateway) -> str:
    assert gateway.http_port
    return f"http://127.0.0.1:{gateway.http_port}"


async def get(http: aiohttp.ClientSession, gateway: Gateway, path: str) -> tuple[int, Any]:
    async with http.get(base_url(gateway) + path) as response:
        return response.status, await response.json()


async def post(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    device: str,
    command: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    url = f"{base_url(gateway)}/api/devices/{device}/command"
    async with http.post(url, json=command, headers=AUTH if headers is None else headers) as r:
        return r.status, await r.json()


class Stream:
    """The live event stream, read as (event, data) pairs."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 5) -> tuple[str, Any]:
        name, data = "", ""
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data = line[len("data: ") :]
                elif not line and name:
                    return name, json.loads(data)

    async def until(
        self, check: Callable[[str, Any], bool], timeout: float = 10
    ) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                name, data = await self.next(timeout)
                if check(name, data):
                    return name, data


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_devices_gateway_and_a_device_with_its_action_schemas(
    make_config: Callable[..., Config], probe: Probe, http: aiohttp.ClientSession
) -> None:
    async with started(make_config(http=HTTP), probe) as gateway:
        await probe.wait_topic("iot/speaker/state")
        status, devices = await get(http, gateway, "/api/devices")
        assert status == 200
        assert [d["id"] for d in devices] == ["hub", "light", "speaker", "sensor"]
        light = next(d for d in devices if d["id"] == "light")
        assert light["type"] == "simulated.light"
        assert light["depends_on"] == ["hub"]
        assert light["available"] is True
        assert light["state"] == {"power": "off", "brightness": 100}
        status, info = await get(http, gateway, "/api/gateway")
        assert status == 200
        assert info["connected"] is True
        assert info["control"] is False
        assert info["devices"] == 4
        status, one = await get(http, gateway, "/api/devices/light")
        level = one["actions"]["set_brightness"]["properties"]["level"]
        assert (level["minimum"], level["maximum"]) == (0, 100)
        assert (await get(http, gateway, "/api/devices/nope"))[0] == 404
        status, body = await get(http, gateway, "/api/devices/gateway")
        assert "run_scene" in body["actions"]


async def test_a_command_from_the_api_runs_as_one_from_mqtt_and_its_result_is_on_mqtt_too(
    make_config: Callable[..., Config], probe: Probe, http: aiohttp.ClientSession
) -> None:
    async with started(make_config(http=CONTROL), probe) as gateway:
        await probe.wait_topic("iot/light/availability")
        command_id = f"api-{uuid.uuid4().hex}"
        status, result = await post(http, gateway, "light", {"action": "toggle", "id": command_id})
        assert status == 200
        assert result["status"] == "ok"
        assert result["state"]["power"] == "on"
        on_mqtt = await probe.result("light", command_id)
        assert on_mqtt == result
        # Same dedupe: the id again is not run again.
        status, again = await post(http, gateway, "light", {"action": "toggle", "id": command_id})
        assert again["duplicate"] is True
        assert again["state"]["power"] == "on"
        # Same validation, same codes.
        _, bad = await post(http, gateway, "light", {"action": "set_brightness"})
        assert bad["error"]["code"] == "invalid_params"
        assert "level" in bad["error"]["message"]
        _, unknown = await post(http, gateway, "lamp", {"action": "toggle"})
        assert unknown["error"]["code"] == "unknown_device"
        for segment in ("%2B", "%23", "a%2Fb"):  # no topic can carry these
            assert (await post(http, gateway, segment, {"action": "toggle"}))[0] == 404
        _, bare = await post(http, gateway, "hub", "turn_on")
        assert bare["error"]["code"] == "invalid_command"  # a JSON string, as over MQTT
        _, results = await get(http, gateway, "/api/devices/light/results")
        assert [r["id"] for r in results][:2] == [command_id, command_id]
        _, errors = await get(http, gateway, "/api/activity?status=error&code=invalid_params")
        assert [e["device"] for e in errors] == ["light"]


async def test_a_scene_from_the_api_reports_each_step_with_its_times(
    make_config: Callable[..., Config], probe: Probe, http: aiohttp.ClientSession
) -> None:
    config = make_config(http=CONTROL, scenes=MORNING)
    async with started(config, probe) as gateway:
        await probe.wait_topic("iot/speaker/availability")
        command = {"action": "run_scene", "params": {"scene": "morning"}, "id": "m-1"}
        status, result = await post(http, gateway, "gateway", command)
        assert status == 200, result
        assert result["status"] == "ok"
        _, scenes = await get(http, gateway, "/api/scenes")
        assert scenes["scenes"][0]["name"] == "morning"
        (run,) = scenes["runs"]
        assert run["id"] == "m-1"
        assert run["scene"] == "morning"
        assert run["status"] == "ok"
        song, speaker_on = run["steps"]["song"], run["steps"]["speaker_on"]
        assert song["status"] == "ok"
        assert song["started_at"] >= speaker_on["finished_at"]
        _, devices = await get(http, gateway, "/api/devices")
        speaker = next(d for d in devices if d["id"] == "speaker")
        assert speaker["last_command"]["id"] == "m-1/song"
        assert speaker["last_command"]["action"] == "play"
        assert speaker["last_command"]["status"] == "ok"


async def test_the_live_stream_sends_a_snapshot_then_coalesced_updates(
    make_config: Callable[..., Config], probe: Probe, http: aiohttp.ClientSession
) -> None:
    many = [{"id": f"sw{i}", "type": "simulated.switch"} for i in range(200)]
    async with (
        started(make_config(http=HTTP, devices=many), probe) as gateway,
        http.get(base_url(gateway) + "/api/events") as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        async with http.head(base_url(gateway) + "/api/events") as head:
            assert head.status == 405
        stream = Stream(response)
        name, snapshot = await stream.next()
        assert name == "snapshot"
        assert len(snapshot["devices"]) == 200
        await probe.wait_topic("iot/sw199/availability")
        sent = time.monotonic()
        for i in range(200):
            await probe.publish(f"iot/sw{i}/command", {"action": "turn_on", "id": f"on-{i}"})
        updates = 0
        seen: set[str] = set()
        results = 0
        async with asyncio.timeout(10):
            while len(seen) < 200 or results < 200:
                name, update = await stream.next()
                assert name == "update"
                updates += 1
                results += len(update["results"]) + update["results_left_out"]
                seen.update(
                    row["id"] for row in update["devices"] if row["state"] == {"power": "on"}
                )
        # 200 commands and 400 state and result events arrive in a few updates (one per
        # 0.25 s at most), not one message each.
        assert updates <= (time.monotonic() - sent) / 0.25 + 2
        assert updates < 50


async def test_a_page_that_stops_reading_is_dropped_and_commands_are_not_slowed(
    make_config: Callable[..., Config],
    probe: Probe,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("gateway.surfaces.dashboard.api.WRITE_TIMEOUT", 0.5)
    caplog.set_level(logging.INFO, "gateway.surfaces.dashboard.api")
    # A page that stops reading blocks the server's writes once the socket buffers
    # are full: about 3 MB on loopback here, so its writes are made to hang instead.
    write = web.StreamResponse.write

    async def hangs_after_the_snapshot(response: web.StreamResponse, data: bytes) -> None:
        if data.startswith(b"event: update"):
            await asyncio.Event().wait()
        await write(response, data)

    monkeypatch.setattr(web.StreamResponse, "write", hangs_after_the_snapshot)
    async with (
        started(make_config(http=HTTP), probe) as gateway,
        http.get(base_url(gateway) + "/api/events") as response,
    ):
        assert gateway.dashboard is not None
        hub = gateway.dashboard.live
        assert (await Stream(response).next())[0] == "snapshot"
        slowest = 0.0
        async with asyncio.timeout(10):
            while hub.clients or "dropped a dashboard page" not in caplog.text:
                began = time.monotonic()
                assert (await probe.command("hub", {"action": "toggle"}))["status"] == "ok"
                slowest = max(slowest, time.monotonic() - began)
        assert slowest < 1.0  # dispatch never waited for the page
        assert await response.content.read() == b""  # its stream was closed


async def test_control_needs_the_token(
    make_config: Callable[..., Config], probe: Probe, http: aiohttp.ClientSession
) -> None:
    async with started(make_config(http=CONTROL), probe) as gateway:
        await probe.wait_topic("iot/hub/availability")
        toggle = {"action": "toggle"}
        assert (await post(http, gateway, "hub", toggle, headers={}))[0] == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert (await post(http, gateway, "hub", toggle, headers=wrong))[0] == 401
        cross = {**AUTH, "Sec-Fetch-Site": "cross-site"}
        assert (await post(http, gateway, "hub", toggle, headers=cross))[0] == 403
        url = f"{base_url(gateway)}/api/devices/hub/command"
        async with http.post(url, data="toggle", headers=AUTH) as response:  # a form, say
            assert response.status == 415
        assert not probe.on("iot/hub/result")  # nothing ran
        assert (await post(http, gateway, "hub", toggle))[0] == 200


async def test_without_a_token_it_is_read_only_and_every_answer_forbids_framing(
    make_config: Callable[..., Config], probe: Probe, http: aiohttp.ClientSession
) -> None:
    async with started(make_config(http=HTTP), probe) as gateway:
        status, body = await post(http, gateway, "hub", {"action": "toggle"})
        assert status == 403
        assert "read-only" in body["error"]
        for path in ("/", "/api/devices", "/static/app.js", "/api/devices/nope"):
            async with http.get(base_url(gateway) + path) as response:
                assert response.headers["X-Frame-Options"] == "DENY", path
                assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
                assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_bound_beyond_loopback_without_a_token_it_warns(
    broker: Broker,
    write_config: Callable[[dict[str, Any]], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = AdapterRegistry.from_entry_points()
    caplog.set_level(logging.WARNING)
    wide = load_config(write_config(config_data(broker, http={"host": "0.0.0.0"})), registry)  # noqa: S104 - what is tested
    Gateway(wide, registry)
    assert "read-only: set http.token" in caplog.text
    caplog.clear()
    near = load_config(write_config(config_data(broker, http={"host": "127.0.0.1"})), registry)
    Gateway(near, registry)
    assert "read-only" not in caplog.text


def test_the_token_comes_from_a_file_and_a_short_one_is_refused(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    registry = AdapterRegistry.from_entry_points()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = load_config(
        write_config(config_data(broker, http={"token_file": str(token_file)})), registry
    )
    assert config.settings.http is not None
    assert config.settings.http.token is not None
    assert config.settings.http.token.get_secret_value() == TOKEN
    token_file.write_text("short")
    with pytest.raises(ConfigError, match=r"http.token_file: at least 16"):
        load_config(
            write_config(config_data(broker, http={"token_file": str(token_file)})), registry
        )
    with pytest.raises(ConfigError, match=r"http.token"):
        load_config(write_config(config_data(broker, http={"token": "short"})), registry)
