"""What every adapter promises its host, checked on each built-in one and on samples offered.

Each built-in type needs a sample here: a config that works (with a stand-in
device started where it needs one), one whose open fails, an action that changes
the state and one the device refuses. A built-in type (one this project's own
distribution registers) without a sample fails a test, so a new adapter cannot
slip in unchecked. An installed third-party type is checked too when it offers
a sample (``Adapter.contract_sample``); one that does not is left alone, since
this suite cannot know how to exercise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from devices import Adapter, ContractSample, DeviceError, Params
from gateway import AdapterRegistry
from gateway.core.registry import ENTRY_POINT_GROUP
from tests.broker import free_port
from tests.fakes import FakePlc, FakePlug, FakeProjector

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

REGISTRY = AdapterRegistry.from_entry_points()
PYTHON = sys.executable
DISTRIBUTION = "iot-gateway"  # pyproject.toml's project name: its entry points are built in

SampleFactory = Callable[[contextlib.AsyncExitStack[bool | None]], Awaitable[ContractSample]]


def simulated(changing: str, params: dict[str, Any] | None = None) -> SampleFactory:
    async def make(stack: contextlib.AsyncExitStack[bool | None]) -> ContractSample:
        del stack
        return ContractSample(
            config={},
            broken={"open_failures": 1},
            changing=(changing, params or {}),
            failing=(changing, params or {}),
            failing_config={"fail_on": [changing]},
        )

    return make


async def http_sample(stack: contextlib.AsyncExitStack[bool | None]) -> ContractSample:
    plug = await stack.enter_async_context(FakePlug())
    state = {"path": "/rpc/Switch.GetStatus?id=0"}
    return ContractSample(
        config={
            "base_url": plug.url,
            "state": state,
            "actions": {
                "turn_on": {"path": "/rpc/Switch.Set", "body": {"id": 0, "on": True}},
                "missing": {"method": "GET", "path": "/rpc/No.Such"},
            },
        },
        broken={"base_url": f"http://127.0.0.1:{free_port()}", "state": state, "retries": 0},
        changing=("turn_on", {}),
        failing=("missing", {}),
    )


async def tcp_sample(stack: contextlib.AsyncExitStack[bool | None]) -> ContractSample:
    projector = await stack.enter_async_context(FakeProjector())
    config = {
        "host": "127.0.0.1",
        "port": projector.port,
        "query": "PWR?",
        "state_regex": "PWR=(?P<power>ON|OFF)",
        "actions": {
            "volume": {"send": "VOL {level}", "params": {"level": "int"}, "expect": "^VOL="},
            "turn_on": {"send": "PWR ON", "expect": "^PWR=ON$"},
            "garble": {"send": "XYZ", "expect": "^OK$"},
        },
    }
    return ContractSample(
        config=config,
        broken={**config, "port": free_port()},
        changing=("turn_on", {}),
        failing=("garble", {}),
    )


async def command_sample(stack: contextlib.AsyncExitStack[bool | None]) -> ContractSample:
    del stack
    report = "import json, sys; print(json.dumps({'level': int(sys.argv[1])}))"
    return ContractSample(
        config={
            "state": {"argv": [PYTHON, "-c", "print('{\"level\": 0}')"]},
            "actions": {
                "set_level": {
                    "argv": [PYTHON, "-c", report, "{level}"],
                    "params": {"level": {"type": "int", "min": 0, "max": 100}},
                    "state_from_stdout": True,
                },
                "fail": {"argv": [PYTHON, "-c", "import sys; sys.exit('no luck')"]},
            },
        },
        broken={"actions": {"run": {"argv": ["/nonexistent/program"]}}},
        changing=("set_level", {"level": 42}),
        failing=("fail", {}),
    )


async def modbus_sample(stack: contextlib.AsyncExitStack[bool | None]) -> ContractSample:
    plc = await stack.enter_async_context(FakePlc())
    config = {
        "host": "127.0.0.1",
        "port": plc.port,
        "coils": {"pump": {"address": 1, "writable": True}},
        "registers": {"locked": {"address": 15, "writable": True}},
    }
    return ContractSample(
        config=config,
        broken={**config, "port": free_port()},
        changing=("turn_on_pump", {}),
        failing=("set_locked", {"value": 1}),
    )


SAMPLES: Mapping[str, SampleFactory] = {
    "simulated.switch": simulated("turn_on"),
    "simulated.light": simulated("set_brightness", {"level": 40}),
    "simulated.speaker": simulated("set_volume", {"level": 30}),
    "simulated.sensor": simulated("read"),
    "simulated.counter": simulated("increment"),
    "http": http_sample,
    "tcp": tcp_sample,
    "command": command_sample,
    "modbus": modbus_sample,
}


class Recorder:
    """A host's event sink that remembers what it was told."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.lost: list[str] = []

    def state_changed(self, state: Mapping[str, Any], *, force: bool = False) -> None:
        del force
        self.states.append(json.loads(json.dumps(state)))  # the host publishes it as JSON

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


@dataclass
class Case:
    """An adapter type with its sample, ready to build adapters."""

    name: str
    adapter_type: type[Adapter]
    sample: ContractSample

    def make(self, fields: dict[str, Any] | None = None) -> tuple[Adapter, Recorder]:
        data = {
            "id": "dev",
            "type": self.name,
            **(self.sample.config if fields is None else fields),
        }
        events = Recorder()
        return self.adapter_type(
            self.adapter_type.config_model.model_validate(data), events
        ), events

    def params(self, adapter: Adapter, action: str, values: dict[str, Any]) -> Params:
        return self.adapter_type.actions_for(adapter.config)[action].model_validate(values)


def built_in_types() -> set[str]:
    """The types this project's own distribution registers."""
    return {
        entry.name
        for entry in entry_points(group=ENTRY_POINT_GROUP)
        if entry.dist is not None and entry.dist.name == DISTRIBUTION
    }


def contract_types(registry: AdapterRegistry) -> list[str]:
    """The types to check: built-in ones by name, third-party ones that offer a sample."""
    return [
        name
        for name in registry.names()
        if name in SAMPLES or registry.get(name).contract_sample() is not None
    ]


@contextlib.asynccontextmanager
async def contract_case(registry: AdapterRegistry, name: str) -> AsyncIterator[Case]:
    """``name``'s case, its stand-in device (if any) running until the block ends."""
    adapter_type = registry.get(name)
    async with contextlib.AsyncExitStack() as stack:
        factory = SAMPLES.get(name)
        if factory is not None:
            sample = await factory(stack)
        else:
            offered = adapter_type.contract_sample()
            assert offered is not None, f"{name!r} offers no sample"
            sample = await stack.enter_async_context(offered)
        yield Case(name, adapter_type, sample)


@pytest.fixture(params=contract_types(REGISTRY))
async def case(request: pytest.FixtureRequest) -> AsyncIterator[Case]:
    async with contract_case(REGISTRY, request.param) as built:
        yield built


@contextlib.asynccontextmanager
async def hosted(adapter: Adapter) -> AsyncIterator[None]:
    """Open, run ``background`` beside the caller, then cancel it and close: as the host does."""
    async with asyncio.timeout(10):
        await adapter.open()
    try:
        async with asyncio.TaskGroup() as tasks:
            background = tasks.create_task(adapter.background())
            yield
            background.cancel()
    finally:
        await adapter.close()


def test_every_sample_names_a_registered_type() -> None:
    assert set(SAMPLES) <= set(REGISTRY.names())


def test_every_built_in_type_has_a_sample() -> None:
    assert built_in_types() >= {"simulated.switch", "http", "tcp", "command", "modbus"}
    missing = built_in_types() - set(SAMPLES)
    assert not missing, f"built-in adapter types without a sample in {__name__}.SAMPLES"


async def test_actions_are_strict_models_with_json_schemas(case: Case) -> None:
    adapter, _ = case.make()
    actions = case.adapter_type.actions_for(adapter.config)
    assert actions
    assert case.sample.changing[0] in actions
    assert case.sample.failing[0] in actions
    for name, model in actions.items():
        assert issubclass(model, Params), name
        schema = model.model_json_schema()
        json.dumps(schema)
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        with pytest.raises(ValidationError) as caught:
            model.model_validate({"surely_not_a_param": 1})
        assert "extra_forbidden" in {e["type"] for e in caught.value.errors()}


async def test_open_and_close_are_idempotent(case: Case) -> None:
    adapter, _ = case.make()
    await adapter.close()  # before any open
    async with hosted(adapter):
        pass
    await adapter.close()
    async with hosted(adapter):  # and it opens again after a close
        pass


async def test_close_after_failed_open(case: Case) -> None:
    adapter, _ = case.make(case.sample.broken)
    with pytest.raises(DeviceError):
        async with asyncio.timeout(10):
            await adapter.open()
    await adapter.close()
    await adapter.close()


async def test_a_refused_action_raises_device_error(case: Case) -> None:
    adapter, _ = case.make(case.sample.failing_config)
    action, values = case.sample.failing
    async with hosted(adapter):
        with pytest.raises(DeviceError):
            await adapter.execute(action, case.params(adapter, action, values))


async def test_state_is_pushed_after_open_and_execute(case: Case) -> None:
    adapter, events = case.make()
    action, values = case.sample.changing
    async with hosted(adapter):
        assert adapter.state, "no state after open"  # the host publishes it as is
        json.dumps(adapter.state)
        before = dict(adapter.state)
        pushed = len(events.states)
        await adapter.execute(action, case.params(adapter, action, values))
        assert len(events.states) > pushed, "no state_changed after an action that changed it"
        assert events.states[-1] == adapter.state
        assert adapter.state != before or case.name == "simulated.sensor"


CONTRACT_CHECKS = (
    test_actions_are_strict_models_with_json_schemas,
    test_open_and_close_are_idempotent,
    test_close_after_failed_open,
    test_a_refused_action_raises_device_error,
    test_state_is_pushed_after_open_and_execute,
)
"""Every check above, for a test that runs them on a case of its own."""
