"""Malformed and special command payloads against a real broker: exactly one result each."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import started
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Received

# A command each demo device accepts, to show the gateway still serves it.
GOOD = {"light": "toggle", "hub": "toggle", "speaker": "turn_on"}


def command_topic(device: str) -> str:
    return f"iot/{device}/command"


def result_topic(device: str) -> str:
    return f"iot/{device}/result"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def result_ids(probe: Probe, device: str) -> list[Any]:
    return [m.json.get("id") for m in probe.on(result_topic(device))]


async def assert_serves(probe: Probe, device: str = "light") -> Any:
    """A good command with an id to ``device`` gets ``ok``; return its result."""
    command_id = new_id("good")
    result = await probe.command(device, {"action": GOOD[device], "id": command_id})
    assert result["status"] == "ok", result
    assert result["id"] == command_id
    assert result["error"] is None
    return result


async def follow_up(probe: Probe, device: str) -> str:
    """Send a command with an id to ``device`` and wait for its result; return the id.

    Results for one device come in order, so once this one is in, every result
    of an earlier command to ``device`` is in too.
    """
    if device in GOOD:
        return str((await assert_serves(probe, device))["id"])
    marker = new_id("marker")
    await probe.publish(command_topic(device), {"action": "no_such_action", "id": marker})
    await probe.result(device, marker)
    await assert_serves(probe)
    return marker


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A malformed payload and the one error result it must get."""

    name: str
    payload: bytes
    code: str
    device: str = "light"
    command_id: str | None = None  # the command's own id, when it is readable
    action: str | None = None  # the result's action, when the payload was read
    mentions: tuple[str, ...] = ()  # what the error message must name
    gateway: dict[str, Any] = field(default_factory=dict)  # gateway config overrides


SMALL = {"max_payload_bytes": 64}
TOO_BIG = as_json({"action": "set_brightness", "params": {"level": 50}, "id": "big-" + "x" * 30})
assert len(TOO_BIG) > 64

CASES = [
    # payload_too_large comes first: before the payload is even decoded.
    Bad("too_large", TOO_BIG, "payload_too_large", mentions=("64",), gateway=SMALL),
    Bad("too_large_beats_non_utf8", b"\xff" * 65, "payload_too_large", gateway=SMALL),
    Bad("too_large_unknown_device", TOO_BIG, "payload_too_large", device="nope", gateway=SMALL),
    # invalid_json
    Bad("non_utf8", b"\xff\xfe\xfd", "invalid_json", mentions=("UTF-8",)),
    Bad("non_utf8_in_json", b'{"action": "turn_on", "id": "\xff"}', "invalid_json"),
    Bad("garbage", b"{not json", "invalid_json"),
    Bad("truncated_json", b'{"action": "turn_on"', "invalid_json"),
    Bad("empty", b"", "invalid_json"),
    Bad("white_space", b"  \n", "invalid_json"),
    Bad("not_a_bare_name", b"Turn On", "invalid_json"),
    Bad("non_utf8_gateway", b"\xc3\x28", "invalid_json", device="gateway"),
    Bad("garbage_unknown_device", b"turn on", "invalid_json", device="nope"),
    # invalid_command
    Bad("json_string", b'"turn_on"', "invalid_command"),
    Bad("json_number", b"42", "invalid_command"),
    Bad("json_array", b'[{"action": "turn_on"}]', "invalid_command"),
    Bad("json_null", b"null", "invalid_command"),
    Bad("json_true", b"true", "invalid_command"),
    Bad("array_unknown_device", b"[1]", "invalid_command", device="nope"),
    Bad("no_action", as_json({"id": "no-action-1"}), "invalid_command", command_id="no-action-1"),
    Bad(
        "params_array",
        as_json({"action": "set_brightness", "params": [50], "id": "params-1"}),
        "invalid_command",
        command_id="params-1",
        mentions=("params",),
    ),
    Bad(
        "params_string",
        as_json({"action": "set_brightness", "params": "level=50", "id": "params-2"}),
        "invalid_command",
        command_id="params-2",
        mentions=("params",),
    ),
    Bad("empty_id", as_json({"action": "turn_on", "id": ""}), "invalid_command", mentions=("id",)),
    Bad(
        "long_id",
        as_json({"action": "turn_on", "id": "x" * 129}),
        "invalid_command",
        mentions=("id",),
    ),
    Bad(
        "number_id", as_json({"action": "turn_on", "id": 17}), "invalid_command", mentions=("id",)
    ),
    Bad(
        "expires_at_string",
        as_json({"action": "turn_on", "id": "exp-1", "expires_at": "tomorrow"}),
        "invalid_command",
        command_id="exp-1",
        mentions=("expires_at",),
    ),
    Bad(
        "expires_at_bool",
        as_json({"action": "turn_on", "id": "exp-2", "expires_at": True}),
        "invalid_command",
        command_id="exp-2",
        mentions=("expires_at",),
    ),
    Bad(
        "params_string_gateway",
        as_json({"action": "run_scene", "params": "morning", "id": "gw-cmd-1"}),
        "invalid_command",
        device="gateway",
        command_id="gw-cmd-1",
        mentions=("params",),
    ),
    # unknown_device
    Bad(
        "unknown_device",
        as_json({"action": "turn_on", "id": "nope-1"}),
        "unknown_device",
        device="nope",
        command_id="nope-1",
        action="turn_on",
        mentions=("nope",),
    ),
    Bad("unknown_device_bare", b"turn_on\n", "unknown_device", device="nope", action="turn_on"),
    # unknown_action
    Bad(
        "unknown_action",
        as_json({"action": "dance", "id": "dance-1"}),
        "unknown_action",
        command_id="dance-1",
        action="dance",
        mentions=("dance",),
    ),
    Bad("unknown_action_bare", b" dance\r\n", "unknown_action", action="dance"),
    Bad(
        "unknown_action_other_device",
        as_json({"action": "set_brightness", "params": {"level": 5}, "id": "hub-1"}),
        "unknown_action",
        device="hub",
        command_id="hub-1",
        action="set_brightness",
    ),
    Bad(
        "unknown_action_gateway",
        as_json({"action": "dance", "id": "gw-cmd-2"}),
        "unknown_action",
        device="gateway",
        command_id="gw-cmd-2",
        action="dance",
    ),
    # invalid_params: the message names the field
    Bad(
        "missing_field",
        as_json({"action": "set_brightness", "id": "p-missing"}),
        "invalid_params",
        command_id="p-missing",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "missing_field_bare",
        b"set_brightness",
        "invalid_params",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "extra_field",
        as_json({"action": "turn_on", "params": {"colour": "red"}, "id": "p-extra"}),
        "invalid_params",
        command_id="p-extra",
        action="turn_on",
        mentions=("colour",),
    ),
    Bad(
        "extra_field_beside_a_good_one",
        as_json({"action": "set_brightness", "params": {"level": 5, "fade": 2}}),
        "invalid_params",
        action="set_brightness",
        mentions=("fade",),
    ),
    Bad(
        "ill_typed_string",
        as_json({"action": "set_brightness", "params": {"level": "50"}, "id": "p-type"}),
        "invalid_params",
        command_id="p-type",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "ill_typed_bool",
        as_json({"action": "set_brightness", "params": {"level": True}}),
        "invalid_params",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "ill_typed_fraction",
        as_json({"action": "set_brightness", "params": {"level": 50.5}}),
        "invalid_params",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "level_above_range",
        as_json({"action": "set_brightness", "params": {"level": 101}, "id": "p-high"}),
        "invalid_params",
        command_id="p-high",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "level_below_range",
        as_json({"action": "set_brightness", "params": {"level": -1}}),
        "invalid_params",
        action="set_brightness",
        mentions=("level",),
    ),
    Bad(
        "speaker_missing_song",
        as_json({"action": "play", "params": {}, "id": "p-song"}),
        "invalid_params",
        device="speaker",
        command_id="p-song",
        action="play",
        mentions=("song",),
    ),
    Bad(
        "speaker_volume_out_of_range",
        as_json({"action": "set_volume", "params": {"level": 1000}}),
        "invalid_params",
        device="speaker",
        action="set_volume",
        mentions=("level",),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
async def test_malformed_payload_gets_exactly_one_error_result(
    case: Bad, make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(gateway=case.gateway), probe):
        await probe.publish(command_topic(case.device), case.payload)
        [first] = await probe.wait_topic(result_topic(case.device))
        body = first.json
        marker = await follow_up(probe, case.device)

        assert body["status"] == "error", body
        assert body["error"]["code"] == case.code, body
        for word in case.mentions:
            assert word in body["error"]["message"], body
        assert body["device"] == case.device
        assert body["action"] == case.action
        assert body["state"] is None, "refused before it reached the device"
        assert body["duplicate"] is False
        assert isinstance(body["id"], str)
        assert body["id"]
        if case.command_id is not None:
            assert body["id"] == case.command_id
        assert body["id"] != marker
        # Exactly one result for the bad payload, then the follow-up's: nothing else.
        assert result_ids(probe, case.device) == [body["id"], marker]


# -- ids, sizes, response topics -----------------------------------------------------------


async def test_result_carries_the_commands_own_id(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    command_id = "c-" + "7" * 126  # the longest id allowed
    async with started(make_config(), probe):
        result = await probe.command("light", {"action": "turn_on", "id": command_id})
        assert result["id"] == command_id
        assert result["status"] == "ok"
        assert result["state"] == {"power": "on", "brightness": 100}
        assert result["duplicate"] is False
        assert result["action"] == "turn_on"
        assert result["device"] == "light"


async def test_payload_of_exactly_max_payload_bytes_is_accepted(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    command: dict[str, Any] = {"action": "set_brightness", "params": {"level": 42}, "id": ""}
    command["id"] = "x" * (64 - len(as_json(command)))
    payload = as_json(command)
    assert len(payload) == 64
    async with started(make_config(gateway=SMALL), probe):
        await probe.publish(command_topic("light"), payload)
        result = await probe.result("light", command["id"])
        assert result["status"] == "ok", result
        assert result["state"]["brightness"] == 42


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (as_json({"action": "set_brightness", "params": {"level": 30}}), None),
        (b"\xff not json", "invalid_json"),
        (as_json({"action": "set_brightness", "params": {"level": 300}}), "invalid_params"),
    ],
    ids=["ok", "invalid_json", "invalid_params"],
)
async def test_result_also_goes_to_the_response_topic_with_correlation_data(
    payload: bytes,
    code: str | None,
    broker: Broker,
    make_config: Callable[..., Config],
    probe: Probe,
) -> None:
    correlation = b"\x00\x01corr-\xff"
    response_topic = f"replies/{uuid.uuid4().hex[:8]}"
    async with (
        Probe(broker.port, ["replies/#"]) as replies,
        started(make_config(), probe),
    ):
        await probe.publish(
            command_topic("light"),
            payload,
            response_topic=response_topic,
            correlation_data=correlation,
        )
        [on_result] = await probe.wait_topic(result_topic("light"))
        [on_response] = await replies.wait_topic(response_topic)
        marker = await follow_up(probe, "light")

        assert on_response.payload == on_result.payload
        assert on_response.correlation_data == correlation
        assert on_result.correlation_data is None
        body = on_result.json
        if code is None:
            assert body["status"] == "ok", body
            assert body["state"]["brightness"] == 30
        else:
            assert body["error"]["code"] == code, body
        assert result_ids(probe, "light") == [body["id"], marker]
        assert len(replies.on(response_topic)) == 1
        assert replies.messages == [on_response], "nothing else on the response topic"


async def test_response_topic_without_correlation_data(
    broker: Broker, make_config: Callable[..., Config]
) -> None:
    response_topic = "replies/client-7/x"
    async with Probe(broker.port, ["#"]) as probe, started(make_config(), probe):
        await probe.publish(
            command_topic("speaker"),
            {"action": "set_volume", "params": {"level": 10}, "id": "rt-1"},
            response_topic=response_topic,
        )
        [on_response] = await probe.wait_topic(response_topic)
        result = await probe.result("speaker", "rt-1")
        assert on_response.json == result
        assert on_response.correlation_data is None
        assert result["state"]["volume"] == 10


@pytest.mark.parametrize("base", ["iot", "site/iot"])
async def test_response_topics_under_the_base_or_outside_the_prefix_are_refused(
    broker: Broker, make_config: Callable[..., Config], base: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = [
        f"{base}/hub/command",  # would run a command on another device
        f"{base}/hub/result",  # would forge another device's result
        f"{base}/x/y/z",
        base,
        "elsewhere/x",  # outside mqtt.response_prefix
    ]
    config = make_config(mqtt={"base_topic": base, "response_prefix": "replies/"})
    async with Probe(broker.port, ["#"]) as watcher, started(config, watcher):
        for index, topic in enumerate(refused):
            await watcher.publish(
                f"{base}/light/command",
                {"action": "toggle", "id": f"rt-{index}"},
                response_topic=topic,
            )
        await watcher.publish(
            f"{base}/light/command", {"action": "toggle", "id": "ok"}, response_topic="replies/a/b"
        )
        await watcher.wait_topic("replies/a/b")
        results = await watcher.wait_for(
            lambda m: m.topic == f"{base}/light/result", count=len(refused) + 1
        )
        # Each still answered on its result topic, in order.
        assert [r.json["id"] for r in results] == [f"rt-{i}" for i in range(len(refused))] + ["ok"]
        for topic in refused:
            assert not [m for m in watcher.messages if m.topic == topic and b'"id"' in m.payload]
        assert not watcher.on(f"{base}/hub/result")
        hub_states = [m.json for m in watcher.on(f"{base}/hub/state")]
        assert hub_states
        assert all(state == {"power": "off"} for state in hub_states)
    lines = [
        r.getMessage()
        for r in caplog.records
        if "not answering on response topic" in r.getMessage()
    ]
    assert len(lines) == 5, lines  # one per refusal, below the rate limit


async def test_refused_response_topics_are_logged_shortened_and_rate_limited(
    make_config: Callable[..., Config], probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    long_topic = "iot/" + "x" * 60_000
    async with started(make_config(), probe):
        for index in range(200):
            await probe.publish(
                command_topic("hub"),
                {"action": "toggle", "id": f"r{index}"},
                response_topic=long_topic,
            )
        await probe.result("hub", "r199")
    lines = [r.getMessage() for r in caplog.records if "response topic" in r.getMessage()]
    assert 1 <= len(lines) <= 10, len(lines)
    assert all(len(line) < 400 for line in lines), [len(line) for line in lines]


# -- expiry ------------------------------------------------------------------------------


async def test_expires_at_in_the_past_is_expired_and_not_remembered(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        late = {"action": "turn_on", "id": "exp-1", "expires_at": time.time() - 5}
        result = await probe.command("light", late)
        assert result["status"] == "error"
        assert result["error"]["code"] == "expired", result
        assert result["id"] == "exp-1"
        assert result["action"] == "turn_on"

        # Refused before it was queued: not run, not remembered, so it may be resent.
        fresh = {"action": "turn_on", "id": "exp-1", "expires_at": time.time() + 60}
        await probe.publish(command_topic("light"), fresh)
        [_, second] = await probe.wait_for(
            lambda m: m.topic == result_topic("light") and m.json["id"] == "exp-1", count=2
        )
        assert second.json["status"] == "ok", second.json
        assert second.json["duplicate"] is False
        assert second.json["state"]["power"] == "on"


async def test_command_that_expires_while_queued_is_expired(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [{"id": "light", "type": "simulated.light", "latency": 1.5}]
    async with started(make_config(devices=devices), probe):
        await probe.publish(command_topic("light"), {"action": "turn_on", "id": "slow"})
        queued = {"action": "turn_off", "id": "queued", "expires_at": time.time() + 0.5}
        await probe.publish(command_topic("light"), queued)
        first = await probe.result("light", "slow")
        second = await probe.result("light", "queued")
        assert first["status"] == "ok"
        assert second["error"]["code"] == "expired", second
        assert result_ids(probe, "light") == ["slow", "queued"]
        dim = await probe.command("light", {"action": "set_brightness", "params": {"level": 1}})
        assert dim["state"] == {"power": "on", "brightness": 1}, "the expired turn_off did not run"


# -- idempotency -------------------------------------------------------------------------


async def test_repeated_id_is_answered_but_not_run_again(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        first = await probe.command("hub", {"action": "toggle", "id": "once"})
        assert first["status"] == "ok"
        assert first["duplicate"] is False
        assert first["state"] == {"power": "on"}

        await probe.publish(command_topic("hub"), {"action": "toggle", "id": "once"})
        [_, again] = await probe.wait_for(
            lambda m: m.topic == result_topic("hub") and m.json["id"] == "once", count=2
        )
        second = again.json
        assert second["duplicate"] is True
        assert second["status"] == "ok"
        assert second["state"] == {"power": "on"}
        assert {k: v for k, v in second.items() if k != "duplicate"} == {
            k: v for k, v in first.items() if k != "duplicate"
        }

        # Toggled once: one more toggle turns it off.
        third = await probe.command("hub", {"action": "toggle", "id": "twice"})
        assert third["state"] == {"power": "off"}
        assert result_ids(probe, "hub") == ["once", "once", "twice"]


async def test_repeated_id_of_a_failed_command_gets_the_same_error(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [{"id": "counter", "type": "simulated.counter", "fail_on": ["reset"]}]
    async with started(make_config(devices=devices), probe):
        first = await probe.command("counter", {"action": "reset", "id": "boom"})
        second = await probe.command("counter", {"action": "reset", "id": "boom"})
    assert first["error"]["code"] == "device_error"
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert {**first, "duplicate": True} == second


async def test_dedupe_memory_is_bounded_by_forgetting_the_oldest_ids(
    make_config: Callable[..., Config], probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(make_config(gateway={"dedupe_max_ids": 2}), probe):
        for command_id in ("a", "b", "c"):  # "a" is pushed out by "c"
            await probe.command("hub", {"action": "toggle", "id": command_id})
        again_b = await probe.command("hub", {"action": "toggle", "id": "b"})
        again_a = await probe.command("hub", {"action": "toggle", "id": "a"})
    assert again_b["duplicate"] is True
    assert again_a["duplicate"] is False, "a forgotten id runs again"
    assert again_a["state"] == {"power": "off"}  # toggled by a, b, c and a again
    logged = [r.getMessage() for r in caplog.records]
    warnings = [line for line in logged if "gateway.dedupe_max_ids" in line]
    assert len(warnings) == 1, warnings


async def test_repeated_id_while_the_first_runs_waits_for_its_result(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [{"id": "hub", "type": "simulated.switch", "latency": 0.3}]
    async with started(make_config(devices=devices), probe):
        await probe.publish(command_topic("hub"), {"action": "toggle", "id": "same"})
        await probe.publish(command_topic("hub"), {"action": "toggle", "id": "same"})
        found = await probe.wait_for(
            lambda m: m.topic == result_topic("hub") and m.json["id"] == "same", count=2
        )
        bodies = [m.json for m in found]
        assert sorted(b["duplicate"] for b in bodies) == [False, True]
        assert [b["state"] for b in bodies] == [{"power": "on"}] * 2
        third = await probe.command("hub", {"action": "toggle"})
        assert third["state"] == {"power": "off"}, "the repeat must not have run"
        assert len(result_ids(probe, "hub")) == 3


async def test_same_id_for_another_device_is_not_a_duplicate(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        hub = await probe.command("hub", {"action": "toggle", "id": "shared"})
        speaker = await probe.command("speaker", {"action": "turn_on", "id": "shared"})
        assert hub["duplicate"] is False
        assert speaker["duplicate"] is False
        assert speaker["state"]["power"] == "on"


async def test_refused_command_is_not_remembered(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        bad = {"action": "set_brightness", "params": {"level": 101}, "id": "retry-me"}
        result = await probe.command("light", bad)
        assert result["error"]["code"] == "invalid_params"

        good = {"action": "set_brightness", "params": {"level": 60}, "id": "retry-me"}
        await probe.publish(command_topic("light"), good)
        [_, retried] = await probe.wait_for(
            lambda m: m.topic == result_topic("light") and m.json["id"] == "retry-me", count=2
        )
        assert retried.json["status"] == "ok", retried.json
        assert retried.json["duplicate"] is False
        assert retried.json["state"]["brightness"] == 60


# -- what the device says ------------------------------------------------------------------


async def test_play_while_off_is_precondition_failed_then_works_once_on(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        play = {"action": "play", "params": {"song": "Imagine"}}
        refused = await probe.command("speaker", dict(play))
        assert refused["status"] == "error"
        assert refused["error"]["code"] == "precondition_failed", refused
        assert refused["state"] == {"power": "off", "volume": 50, "playing": None}

        on = await probe.command("speaker", {"action": "turn_on"})
        assert on["status"] == "ok"
        played = await probe.command("speaker", dict(play))
        assert played["status"] == "ok", played
        assert played["state"] == {"power": "on", "volume": 50, "playing": "Imagine"}
        await probe.wait_for(
            lambda m: m.topic == "iot/speaker/state" and m.json.get("playing") == "Imagine"
        )


async def test_device_error_is_answered_and_the_gateway_keeps_serving(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "hub", "type": "simulated.switch"},
        {"id": "light", "type": "simulated.light", "fail_on": ["turn_on"], "depends_on": ["hub"]},
    ]
    async with started(make_config(devices=devices), probe):
        failed = await probe.command("light", {"action": "turn_on", "id": "boom"})
        assert failed["status"] == "error"
        assert failed["error"]["code"] == "device_error", failed
        assert "turn_on" in failed["error"]["message"]
        assert failed["id"] == "boom"
        assert failed["state"] == {"power": "off", "brightness": 100}

        dimmed = await probe.command(
            "light", {"action": "set_brightness", "params": {"level": 20}}
        )
        assert dimmed["status"] == "ok"
        assert dimmed["state"] == {"power": "off", "brightness": 20}
        toggled = await assert_serves(probe, "light")
        assert toggled["state"]["power"] == "on"
        await assert_serves(probe, "hub")
        assert result_ids(probe, "light").count("boom") == 1


# -- retained commands ---------------------------------------------------------------------


def state_messages(probe: Probe, device: str) -> list[Received]:
    return probe.on(f"iot/{device}/state")


async def test_retained_command_over_mqtt_311_is_answered_but_not_run(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    stale = {"action": "turn_on", "id": "stale-311"}
    await probe.publish(command_topic("light"), stale, retain=True)
    async with started(make_config(mqtt={"protocol": "3.1.1"}), probe):
        result = await probe.result("light", "stale-311")
        assert result["status"] == "error"
        assert result["error"]["code"] == "retained_command", result
        assert result["state"] is None

        after = await probe.command(
            "light", {"action": "set_brightness", "params": {"level": 70}, "id": "after"}
        )
        assert after["state"] == {"power": "off", "brightness": 70}, "turn_on must not run"
        assert result_ids(probe, "light") == ["stale-311", "after"]
        assert all(m.json["power"] == "off" for m in state_messages(probe, "light"))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_command_retained_while_connected_is_refused_and_its_clearing_ignored(
    make_config: Callable[..., Config], probe: Probe, protocol: str
) -> None:
    async with started(make_config(mqtt={"protocol": protocol}), probe):
        await probe.publish(command_topic("hub"), {"action": "toggle", "id": "live"}, retain=True)
        result = await probe.result("hub", "live")
        if protocol == "5":  # Retain As Published: the flag arrives, so it is refused
            assert result["error"]["code"] == "retained_command", result
        else:  # MQTT 3.1.1 §3.3.1.3 clears the flag on live delivery: it runs
            assert result["status"] == "ok", result
        # Clearing it (an empty retained message) is not a command: no answer at all
        # with MQTT 5; 3.1.1 delivers it without the flag, an empty non-command.
        await probe.publish(command_topic("hub"), b"", retain=True)
        after = await probe.command("hub", {"action": "turn_off", "id": "after"})
        assert after["status"] == "ok"
        results = [m.json for m in probe.on(result_topic("hub"))]
        if protocol == "5":
            assert [r["id"] for r in results] == ["live", "after"]
        else:
            assert [r["error"] and r["error"]["code"] for r in results[1:]] == [
                "invalid_json",
                None,
            ]


async def test_retained_command_over_mqtt_5_is_not_delivered(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    stale = {"action": "toggle", "id": "stale-5"}
    await probe.publish(command_topic("hub"), stale, retain=True)
    async with started(make_config(), probe):
        after = await probe.command("hub", {"action": "toggle", "id": "after"})
        assert after["status"] == "ok"
        assert after["state"] == {"power": "on"}, "the retained toggle must not run"
        assert result_ids(probe, "hub") == ["after"]
        states = [m.json for m in state_messages(probe, "hub")]
        assert states[0] == {"power": "off"}
        assert states[-1] == {"power": "on"}


# -- a bug of ours -----------------------------------------------------------------


async def test_a_bug_while_handling_a_command_still_answers_it(
    make_config: Callable[..., Config], probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with started(make_config(), probe) as gateway:
        hub = gateway.fleet.get("hub")
        assert hub is not None

        def broken(config: object) -> None:
            raise RuntimeError(f"a bug reading {config!r}")

        with monkeypatch.context() as patch:
            patch.setattr(hub, "adapter_type", type("Broken", (), {"actions_for": broken}))
            result = await probe.command("hub", {"action": "toggle", "id": "bug-1"})
        assert result["status"] == "error"
        assert result["error"]["code"] == "device_error"
        assert "failed to handle" in result["error"]["message"]
        assert result["id"] == "bug-1"
        assert (await probe.command("hub", {"action": "toggle"}))["status"] == "ok"
