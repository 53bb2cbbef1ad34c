"""The core without the daemon: one lifecycle, commands in and results out, no broker."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from gateway import AdapterRegistry, load_config
from gateway.core.events import AvailabilityChanged, EventStream, ResultPublished, StateChanged
from gateway.core.lifecycle import Stage
from gateway.core.messages import Inbound
from gateway.core.runtime import Core
from gateway.core.topics import Topics

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway.core.events import Event
    from gateway.core.messages import Outbound


def core_with(write_config: Callable[[dict[str, Any]], Path], events: EventStream) -> Core:
    devices = [{"id": "slow", "type": "simulated.switch", "latency": 0.3}]
    config = load_config(write_config({"devices": devices}), AdapterRegistry.from_entry_points())
    return Core(config, AdapterRegistry.from_entry_points(), Topics("iot"), events)


def command(action: str, command_id: str) -> Inbound:
    return Inbound("iot/slow/command", json.dumps({"action": action, "id": command_id}).encode())


async def results(core: Core, count: int) -> dict[str, Any]:
    """The next ``count`` results in the outbox, by id (state and availability skipped)."""
    found: dict[str, Any] = {}
    while len(found) < count:
        message: Outbound | None = await asyncio.wait_for(core.outbox.get(), 5)
        assert message is not None
        if message.topic.endswith("/result"):
            body = json.loads(message.payload)
            found[body["id"]] = body
    return found


async def test_the_core_runs_commands_and_drains_through_its_stages(
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    seen: list[Event] = []
    events = EventStream()
    events.subscribe(seen.append)
    core = core_with(write_config, events)
    stages = [core.stage]
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(core.run())
        await asyncio.wait_for(core.fleet.all_started.wait(), 5)
        stages.append(core.stage)
        core.dispatcher.on_message(command("turn_on", "a"))
        core.dispatcher.on_message(command("turn_off", "b"))  # queued behind a
        draining = tasks.create_task(core.drain(grace=5))
        await asyncio.sleep(0)
        stages.append(core.stage)
        core.dispatcher.on_message(command("toggle", "late"))
        await draining
        await running
    stages.append(core.stage)
    assert stages == [Stage.STARTING, Stage.RUNNING, Stage.DRAINING, Stage.STOPPED]
    answered = await results(core, 3)
    assert answered["a"]["status"] == "ok"  # running: finished within the grace
    assert answered["b"]["error"]["code"] == "cancelled"  # waiting: not started
    assert answered["late"]["error"]["code"] == "cancelled"
    published = [e.result.id for e in seen if isinstance(e, ResultPublished)]
    assert sorted(published) == ["a", "b", "late"]


async def test_a_layered_dependency_graph_comes_online_quickly(
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    # 30 layers of 2, each device depending on both below: 2^29 paths from top to
    # bottom. Walking them per question once froze the event loop.
    layers = [[f"d{layer}a", f"d{layer}b"] for layer in range(30)]
    devices = [
        {
            "id": device,
            "type": "simulated.switch",
            "depends_on": layers[index - 1] if index else [],
        }
        for index, layer in enumerate(layers)
        for device in layer
    ]
    config = load_config(write_config({"devices": devices}), AdapterRegistry.from_entry_points())
    core = Core(config, AdapterRegistry.from_entry_points(), Topics("iot"), EventStream())
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(core.run())
        await asyncio.wait_for(core.fleet.all_started.wait(), 10)
        assert all(runner.available for runner in core.fleet)
        top = core.fleet.get("d29a")
        assert top is not None
        assert top.refusal() is None
        await core.drain(grace=1)


async def test_state_and_availability_changes_are_events(
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    seen: list[Event] = []
    events = EventStream()
    events.subscribe(seen.append)
    core = core_with(write_config, events)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(core.run())
        await asyncio.wait_for(core.fleet.all_started.wait(), 5)
        core.dispatcher.on_message(command("turn_on", "on"))
        await results(core, 1)
        await core.drain(grace=1)
    changes = [e for e in seen if isinstance(e, StateChanged | AvailabilityChanged)]
    assert changes == [
        AvailabilityChanged("slow", online=True),
        StateChanged("slow", {"power": "off"}),
        StateChanged("slow", {"power": "on"}),
        AvailabilityChanged("slow", online=False),
    ]
