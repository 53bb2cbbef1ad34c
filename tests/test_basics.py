from __future__ import annotations

from typing import TYPE_CHECKING

from tests.conftest import started

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.probe import Probe


async def test_bare_action_turns_light_on(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        await probe.publish("iot/light/command", "turn_on")
        [result] = await probe.wait_topic("iot/light/result")
        body = result.json
        assert body["status"] == "ok"
        assert body["state"] == {"power": "on", "brightness": 100}
        states = await probe.wait_for(
            lambda m: m.topic == "iot/light/state" and m.json["power"] == "on"
        )
        assert states
