"""The gateway's own commands: the registry, ``describe``, and a command added by a test."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import Field

from devices import Params
from gateway.core.commands import Command, Result
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.gateway_commands import GatewayCommands
from gateway.core.topics import GATEWAY
from tests.conftest import started
from tests.probe import Probe
from tests.test_scenes import MORNING

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from gateway.core.gateway_commands import Begin
    from tests.broker import Broker


class Echo(Params):
    """A test-local gateway command's params."""

    text: str = Field(max_length=8)
    times: int = 1


def register_echo(commands: GatewayCommands, calls: list[str]) -> None:
    """A whole gateway command: its model above and this registration."""

    def prepare(command: Command, params: Echo) -> Begin:
        if params.text == "no":  # a check of its own, beyond the model's
            raise CommandError(ErrorCode.INVALID_PARAMS, "params.text: 'no' is refused")

        def begin() -> Result:
            calls.append(params.text)
            return Result(
                id=command.id,
                device=GATEWAY,
                action=command.action,
                extra={"echo": params.text * params.times},
            )

        return begin

    commands.register("echo", Echo, prepare)


# -- the registry, without a broker ------------------------------------------------------


def refusal(commands: GatewayCommands, command: Command) -> CommandError:
    with pytest.raises(CommandError) as caught:
        commands.prepare(command)
    return caught.value


async def test_a_registered_command_is_checked_then_run() -> None:
    commands, calls = GatewayCommands(), list[str]()
    register_echo(commands, calls)
    start = commands.prepare(Command("echo", id="e-1", params={"text": "hi", "times": 2}))
    assert calls == []  # checked, not yet run: the dispatcher answers repeats in between
    result = await start()
    assert calls == ["hi"]
    assert (result.id, result.device, result.action) == ("e-1", "gateway", "echo")
    assert result.ok
    assert result.extra == {"echo": "hihi"}


async def test_a_handler_may_return_a_future_it_completes_later() -> None:
    commands = GatewayCommands()
    later: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
    commands.register("wait", Params, lambda _command, _params: lambda: later)
    done = commands.prepare(Command("wait"))()
    assert done is later
    assert not done.done()


def test_unknown_actions_list_every_registered_one() -> None:
    commands = GatewayCommands()
    register_echo(commands, [])
    commands.register("alpha", Params, lambda _c, _p: lambda: Result("x", GATEWAY, "alpha"))
    error = refusal(commands, Command("reboot"))
    assert error.code is ErrorCode.UNKNOWN_ACTION
    assert error.message == "the gateway has no action 'reboot' (alpha, echo)"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params.text"),
        ({"text": 5}, "params.text"),
        ({"text": "much too long"}, "params.text"),
        ({"text": "hi", "times": "2"}, "params.times"),  # strict, as device actions are
        ({"text": "hi", "colour": "red"}, "params.colour"),
        ({"text": "no"}, "params.text: 'no' is refused"),  # the handler's own check
    ],
)
def test_bad_params_are_invalid_params_naming_the_field(
    params: dict[str, Any], field: str
) -> None:
    commands, calls = GatewayCommands(), list[str]()
    register_echo(commands, calls)
    error = refusal(commands, Command("echo", params=params))
    assert error.code is ErrorCode.INVALID_PARAMS
    assert field in error.message, error.message
    assert calls == []


async def test_a_command_past_its_expires_at_is_expired_and_not_run() -> None:
    commands, calls = GatewayCommands(), list[str]()
    register_echo(commands, calls)
    late = commands.prepare(Command("echo", params={"text": "hi"}, expires_at=time.time() - 1))
    with pytest.raises(CommandError) as caught:
        late()
    assert caught.value.code is ErrorCode.EXPIRED
    assert calls == []
    soon = commands.prepare(Command("echo", params={"text": "hi"}, expires_at=time.time() + 60))
    assert (await soon()).ok
    assert calls == ["hi"]


def test_names_and_schemas_are_listed_like_device_actions() -> None:
    commands = GatewayCommands()
    register_echo(commands, [])
    commands.register("alpha", Params, lambda _c, _p: lambda: Result("x", GATEWAY, "alpha"))
    assert commands.names() == ["alpha", "echo"]
    schemas = commands.schemas()
    assert list(schemas) == ["alpha", "echo"]
    assert schemas["echo"] == Echo.model_json_schema()
    assert schemas["echo"]["required"] == ["text"]
    assert schemas["echo"]["additionalProperties"] is False


@pytest.mark.parametrize("name", ["echo", "Echo", "re boot", "", "run-scene"])
def test_a_taken_or_unsendable_name_is_refused_at_registration(name: str) -> None:
    commands = GatewayCommands()
    register_echo(commands, [])
    with pytest.raises(ValueError, match="gateway action"):
        commands.register(name, Params, lambda _c, _p: lambda: Result("x", GATEWAY, name))
    assert commands.names() == ["echo"]


# -- through a real broker ---------------------------------------------------------------


async def retained(broker: Broker, *topics: str) -> dict[str, Any]:
    """What a client subscribing now gets as retained messages on ``topics``."""
    async with Probe(broker.port, list(topics)) as late:
        found = await late.wait_for(lambda m: m.retain, count=len(topics))
    return {m.topic: m.json for m in found}


async def test_describe_says_what_the_retained_lists_say(
    make_config: Callable[..., Config], probe: Probe, broker: Broker
) -> None:
    async with started(make_config(scenes={"morning": MORNING}), probe):
        await probe.wait_topic("iot/gateway/scenes")  # published after devices: both are kept
        lists = await retained(broker, "iot/gateway/devices", "iot/gateway/scenes")
        result = await probe.command("gateway", {"action": "describe"})
        assert result["status"] == "ok", result
        assert (result["device"], result["action"]) == ("gateway", "describe")
        assert (result["error"], result["state"], result["duplicate"]) == (None, None, False)
        assert result["devices"] == lists["iot/gateway/devices"]
        assert result["scenes"] == lists["iot/gateway/scenes"]
        assert [d["id"] for d in result["devices"]] == ["hub", "light", "speaker", "sensor"]
        assert result["devices"][1]["actions"]["set_brightness"]["required"] == ["level"]
        assert [s["name"] for s in result["scenes"]] == ["morning"]
        actions = result["gateway_actions"]
        assert sorted(actions) == ["describe", "run_scene", "run_steps"]
        assert actions["run_scene"]["properties"]["scene"]["type"] == "string"
        assert actions["run_steps"]["required"] == ["steps"]
        assert actions["describe"]["properties"] == {}


async def test_describe_as_a_bare_name_and_with_bad_params(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(devices=[{"id": "hub", "type": "simulated.switch"}]), probe):
        await probe.publish("iot/gateway/command", "describe\n")
        [bare] = await probe.wait_topic("iot/gateway/result")
        assert bare.json["status"] == "ok", bare.json
        assert [d["id"] for d in bare.json["devices"]] == ["hub"]
        assert bare.json["scenes"] == []
        wrong = await probe.command("gateway", {"action": "describe", "params": {"verbose": 1}})
        assert wrong["error"]["code"] == "invalid_params"
        assert "params.verbose" in wrong["error"]["message"]
        assert "devices" not in wrong


async def test_unknown_gateway_action_lists_describe_too(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe):
        result = await probe.command("gateway", {"action": "reboot"})
        assert result["error"] == {
            "code": "unknown_action",
            "message": "the gateway has no action 'reboot' (describe, run_scene, run_steps)",
        }


async def test_a_command_registered_by_a_test_is_answered_and_described(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(), probe) as gateway:
        calls: list[str] = []
        register_echo(gateway.dispatcher.gateway_commands, calls)
        result = await probe.command(
            "gateway", {"action": "echo", "params": {"text": "ab", "times": 3}}
        )
        assert result["status"] == "ok", result
        assert result["echo"] == "ababab"
        refused = await probe.command("gateway", {"action": "echo", "params": {"text": "no"}})
        assert refused["error"]["code"] == "invalid_params"
        repeat = await probe.command(
            "gateway", {"action": "echo", "params": {"text": "x"}, "id": result["id"]}
        )
        assert repeat["duplicate"] is True  # the dispatcher's dedupe holds for it too
        assert repeat["echo"] == "ababab"
        assert calls == ["ab"]
        described = await probe.command("gateway", {"action": "describe"})
        assert described["gateway_actions"]["echo"] == Echo.model_json_schema()
        unknown = await probe.command("gateway", {"action": "reboot"})
        assert "describe, echo, run_scene" in unknown["error"]["message"]


async def test_an_expired_gateway_command_is_not_run_and_not_remembered(
    make_config: Callable[..., Config], probe: Probe
) -> None:
    async with started(make_config(devices=[{"id": "a", "type": "simulated.switch"}]), probe):
        await probe.wait_topic("iot/a/state")
        steps = [{"id": "on", "device": "a", "action": "turn_on"}]
        late = {"action": "run_steps", "params": {"steps": steps}, "id": "late"}
        result = await probe.command("gateway", {**late, "expires_at": time.time() - 5})
        assert result["error"]["code"] == "expired", result
        assert "steps" not in result
        assert all(m.json["power"] == "off" for m in probe.on("iot/a/state"))
        again = await probe.command("gateway", {**late, "expires_at": time.time() + 60})
        assert again["status"] == "ok", again
        assert again["duplicate"] is False
        assert again["steps"]["on"]["status"] == "ok"
