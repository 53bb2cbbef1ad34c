"""Scenes and step lists (contract section 6): DAG scheduling, failure, validation."""

from __future__ import annotations

import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.conftest import config_data, gateway_process, started

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Probe

MORNING = {
    "steps": [
        {"id": "lights", "device": "light", "action": "turn_on"},
        {"id": "speaker_on", "device": "speaker", "action": "turn_on"},
        {
            "id": "song",
            "device": "speaker",
            "action": "play",
            "params": {"song": "Imagine"},
            "after": ["speaker_on"],
        },
    ]
}


def step(step_id: str, device: str, action: str = "turn_on", *after: str) -> dict[str, Any]:
    """A step dict."""
    return {"id": step_id, "device": device, "action": action, "after": list(after)}


async def run_steps(probe: Probe, steps: list[dict[str, Any]], timeout: float = 10) -> Any:
    """Publish a run_steps command and return its result."""
    return await probe.command(
        "gateway", {"action": "run_steps", "params": {"steps": steps}}, timeout=timeout
    )


def slow_switches(*specs: tuple[str, float]) -> list[dict[str, Any]]:
    """Switches with the given latencies."""
    return [{"id": i, "type": "simulated.switch", "latency": lat} for i, lat in specs]


async def test_morning_scene_overlaps_and_orders(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "light", "type": "simulated.light", "latency": 0.5},
        {"id": "speaker", "type": "simulated.speaker", "latency": 0.5},
    ]
    async with started(make_config(devices=devices, scenes={"morning": MORNING}), probe):
        [listing] = await probe.wait_topic("iot/gateway/scenes")
        assert listing.json[0]["name"] == "morning"
        assert [s["id"] for s in listing.json[0]["steps"]] == ["lights", "speaker_on", "song"]
        result = await probe.command(
            "gateway", {"action": "run_scene", "params": {"scene": "morning"}}
        )
        assert result["status"] == "ok", result
        steps = result["steps"]
        assert {s["status"] for s in steps.values()} == {"ok"}
        lights, speaker_on, song = steps["lights"], steps["speaker_on"], steps["song"]
        # lights and speaker_on run at the same time ...
        assert lights["started_at"] < speaker_on["finished_at"]
        assert speaker_on["started_at"] < lights["finished_at"]
        # ... and the song starts only once the speaker is on.
        assert song["started_at"] >= speaker_on["finished_at"] - 0.01
        assert 0.9 < result["duration_ms"] / 1000 < 1.6  # two latencies, not three
        [state] = [m for m in probe.on("iot/speaker/state") if m.json["playing"] == "Imagine"]
        assert state.json["power"] == "on"


async def test_diamond_and_fast_branch_does_not_wait_for_slow_sibling(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = slow_switches(
        ("a", 0.1),
        ("b", 0.1),
        ("c", 0.1),
        ("d", 0.1),
        ("slow", 1.5),
        ("fast", 0.1),
        ("after_fast", 0.1),
    )
    async with started(make_config(devices=devices), probe):
        diamond = [
            step("a", "a"),
            step("b", "b", "turn_on", "a"),
            step("c", "c", "turn_on", "a"),
            step("d", "d", "turn_on", "b", "c"),
        ]
        chain = [
            step("slow", "slow"),
            step("fast", "fast"),
            step("after_fast", "after_fast", "turn_on", "fast"),
        ]
        result = await run_steps(probe, diamond + chain)
        assert result["status"] == "ok", result
        s = result["steps"]
        assert s["b"]["started_at"] >= s["a"]["finished_at"] - 0.01
        assert s["c"]["started_at"] >= s["a"]["finished_at"] - 0.01
        assert s["b"]["started_at"] < s["c"]["finished_at"]  # b and c overlap
        assert s["d"]["started_at"] >= max(s["b"]["finished_at"], s["c"]["finished_at"]) - 0.01
        # after_fast sits at the depth of nothing slow: it does not wait for `slow`.
        assert s["after_fast"]["finished_at"] < s["slow"]["finished_at"] - 0.5


async def test_fan_out_to_100_devices_in_well_under_a_second(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = slow_switches(*((f"d{i}", 0.1) for i in range(100)))
    async with started(make_config(devices=devices), probe):
        began = time.monotonic()
        result = await run_steps(probe, [step(f"s{i}", f"d{i}") for i in range(100)])
        elapsed = time.monotonic() - began
        assert result["status"] == "ok"
        assert len(result["steps"]) == 100
        assert elapsed < 0.8, elapsed


async def test_failure_skips_dependents_through_two_levels(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "bad", "type": "simulated.switch", "fail_on": ["turn_on"]},
        *slow_switches(("x", 0), ("y", 0), ("z", 0.2), ("w", 0)),
    ]
    async with started(make_config(devices=devices), probe):
        steps = [
            step("bad", "bad"),
            step("x", "x", "turn_on", "bad"),
            step("y", "y", "turn_on", "x"),
            step("z", "z"),
            step("w", "w", "turn_on", "z"),
        ]
        result = await run_steps(probe, steps)
        assert result["status"] == "error"
        assert result["error"]["code"] == "step_failed"
        s = result["steps"]
        assert s["bad"]["status"] == "error"
        assert s["bad"]["error"]["code"] == "device_error"
        assert (s["x"]["status"], s["y"]["status"]) == ("skipped", "skipped")
        assert (s["z"]["status"], s["w"]["status"]) == ("ok", "ok")
        assert "bad" in result["error"]["message"]


async def test_timed_out_step_skips_its_dependents(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [
        {"id": "hang", "type": "simulated.switch", "latency": 60, "timeout": 0.3},
        {"id": "next", "type": "simulated.switch"},
    ]
    async with started(make_config(devices=devices), probe):
        result = await run_steps(
            probe, [step("hang", "hang"), step("next", "next", "turn_on", "hang")]
        )
        assert result["steps"]["hang"]["error"]["code"] == "timeout"
        assert result["steps"]["next"]["status"] == "skipped"


async def assert_rejected(probe: Probe, steps: list[dict[str, Any]], *words: str) -> None:
    result = await run_steps(probe, steps)
    assert result["status"] == "error"
    assert result["error"]["code"] == "invalid_params", result
    for word in words:
        assert word in result["error"]["message"], result["error"]["message"]


async def test_bad_step_lists_are_rejected_before_anything_runs(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = slow_switches(("a", 0), ("b", 0))
    async with started(make_config(devices=devices), probe):
        ok_first = step("first", "a")
        await assert_rejected(
            probe,
            [ok_first, step("x", "b", "turn_on", "y"), step("y", "b", "turn_on", "x")],
            "cycle",
            "x -> y -> x",
        )
        await assert_rejected(
            probe, [ok_first, step("x", "b", "turn_on", "nope")], "unknown step 'nope'"
        )
        await assert_rejected(
            probe, [ok_first, {**step("x", "b"), "params": {"level": 5}}], "params"
        )
        await assert_rejected(probe, [ok_first, step("x", "ghost")], "unknown device 'ghost'")
        await assert_rejected(
            probe, [ok_first, step("x", "b", "explode")], "unknown action 'explode'"
        )
        await assert_rejected(probe, [ok_first, step("first", "b")], "duplicate step id 'first'")
        await assert_rejected(
            probe, [ok_first, {"id": "x", "device": "b"}], "params.steps[1].action"
        )
        unknown = await probe.command(
            "gateway", {"action": "run_scene", "params": {"scene": "nope"}}
        )
        assert unknown["error"]["code"] == "invalid_params"
        assert "params.scene: unknown scene 'nope'" in unknown["error"]["message"]
        for params, field in [
            ({}, "params.scene"),
            ({"scene": 5}, "params.scene"),
            ({"scene": "morning", "at": 7}, "params.at"),
        ]:
            bad = await probe.command("gateway", {"action": "run_scene", "params": params})
            assert bad["error"]["code"] == "invalid_params", bad
            assert field in bad["error"]["message"], bad
        await assert_rejected(probe, [ok_first] * 257, "params.steps: at most 256 steps")
        extra = await probe.command(
            "gateway", {"action": "run_steps", "params": {"steps": [ok_first], "dry": True}}
        )
        assert "params.dry" in extra["error"]["message"], extra
        other = await probe.command("gateway", {"action": "reboot"})
        assert other["error"]["code"] == "unknown_action"
        # Nothing ran: the first (valid) step of each list never switched `a` on.
        for device in ("a", "b"):
            assert all(m.json["power"] == "off" for m in probe.on(f"iot/{device}/state"))


async def test_scenes_sharing_a_device_keep_its_order(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = [{"id": "light", "type": "simulated.light", "latency": 0.05}]
    async with started(make_config(devices=devices), probe):

        def levels(start: int) -> list[dict[str, Any]]:
            steps = []
            for i in range(5):
                s = {**step(f"l{i}", "light", "set_brightness"), "params": {"level": start + i}}
                s["after"] = [f"l{i - 1}"] if i else []
                steps.append(s)
            return steps

        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        await probe.publish(
            "iot/gateway/command",
            {"id": first, "action": "run_steps", "params": {"steps": levels(10)}},
        )
        await probe.publish(
            "iot/gateway/command",
            {"id": second, "action": "run_steps", "params": {"steps": levels(20)}},
        )
        one = await probe.result("gateway", first)
        two = await probe.result("gateway", second)
        assert one["status"] == two["status"] == "ok"
        seen = [m.json["brightness"] for m in probe.on("iot/light/state")][1:]
        assert [v for v in seen if v < 20] == [10, 11, 12, 13, 14]
        assert [v for v in seen if v >= 20] == [20, 21, 22, 23, 24]


async def test_sigterm_during_a_scene_still_answers_it(
    broker: Broker, probe: Probe, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    devices = [
        {"id": "first", "type": "simulated.switch"},
        {"id": "slow", "type": "simulated.switch", "latency": 30},
        {"id": "later", "type": "simulated.switch"},
    ]
    data = config_data(broker, devices=devices, gateway={"shutdown_grace": 0.5})
    with gateway_process(write_config(data)) as process:
        await probe.wait_for(
            lambda m: m.topic == "iot/later/availability" and m.payload == b"online"
        )
        steps = [
            step("first", "first"),
            step("slow", "slow", "turn_on", "first"),
            step("later", "later", "turn_on", "slow"),
        ]
        await probe.publish(
            "iot/gateway/command",
            {"id": "scene-1", "action": "run_steps", "params": {"steps": steps}},
        )
        # Once `first` has switched on, the scene runs and `slow` is starting.
        await probe.wait_for(lambda m: m.topic == "iot/first/state" and m.json["power"] == "on")
        process.send_signal(signal.SIGTERM)
        result = await probe.result("gateway", "scene-1")
        assert await process.wait(10) == 0
        assert result["error"]["code"] == "step_failed"
        assert result["steps"]["first"]["status"] == "ok"
        assert result["steps"]["slow"]["error"]["code"] == "cancelled"
        assert result["steps"]["later"]["error"]["code"] == "cancelled"


async def test_huge_step_lists_are_answered_quickly_without_stalling_others(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    devices = slow_switches(("a", 0), ("b", 0))
    # 1,000 steps in a chain listed last step first, and a 1,000-step cycle: each
    # once hit Python's recursion limit (no answer at all) after ~44 ms of work.
    chain = [
        {"id": f"s{i}", "device": "a", "action": "turn_on", "after": [f"s{i - 1}"]}
        for i in range(999, 0, -1)
    ]
    chain.append({"id": "s0", "device": "a", "action": "turn_on"})
    cycle = [
        {"id": f"s{i}", "device": "a", "action": "turn_on", "after": [f"s{(i + 1) % 1000}"]}
        for i in range(1000)
    ]
    config = make_config(devices=devices, gateway={"max_payload_bytes": 200_000})
    async with started(config, probe):
        began = time.monotonic()
        for index in range(100):
            steps = chain if index % 2 else cycle
            await probe.publish(
                "iot/gateway/command",
                {"action": "run_steps", "params": {"steps": steps}, "id": f"huge-{index}"},
            )
        other = await probe.command("b", {"action": "toggle"}, timeout=10)
        assert other["status"] == "ok"
        for index in range(100):
            result = await probe.result("gateway", f"huge-{index}")
            assert result["error"]["code"] == "invalid_params", result
            assert "at most 256 steps" in result["error"]["message"]
        assert time.monotonic() - began < 10
