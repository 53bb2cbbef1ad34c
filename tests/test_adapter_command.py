"""The ``command`` adapter with real programs: arguments verbatim, kills, exit codes."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from devices import DeviceError
from devices.command import CommandConfig, CommandDevice
from tests.conftest import started

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway import Config
    from tests.probe import Probe

PYTHON = sys.executable
PRINT_ARGS = "import json, sys; print(json.dumps({'args': sys.argv[1:]}))"
# Writes its pid and its child's to a file, then waits forever, as a hung program does.
HANG = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['/bin/sleep', '600'])\n"
    "open(sys.argv[1], 'w').write(f'{__import__(\"os\").getpid()} {child.pid}')\n"
    "time.sleep(600)\n"
)


class Recorder:
    """Collects what the adapter tells its host."""

    def state_changed(self, state: Any, *, force: bool = False) -> None:
        del state, force

    def connection_lost(self, reason: str) -> None:
        del reason


def device(**actions: Any) -> CommandDevice:
    config = CommandConfig.model_validate({"id": "cmd", "type": "command", "actions": actions})
    return CommandDevice(config, Recorder())


async def run(adapter: CommandDevice, action: str, **params: Any) -> None:
    model = CommandDevice.actions_for(adapter.config)[action]
    await adapter.execute(action, model.model_validate(params))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


async def until_gone(*pids: int, timeout: float = 5) -> None:
    """Wait for SIGKILLed processes to be gone (the kernel finishes them asynchronously)."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if alive(p)]}"
        await asyncio.sleep(0.01)


async def pids_from(path: Path, timeout: float = 5) -> list[int]:
    """The pids a hanging program wrote, once it wrote them."""
    deadline = time.monotonic() + timeout
    while not (pids := written_pids(path)):
        assert time.monotonic() < deadline, "the program never started"
        await asyncio.sleep(0.01)
    return pids


def written_pids(path: Path) -> list[int]:
    """The two pids in ``path``, or none while it is not fully written."""
    pids = path.read_text().split() if path.exists() else []
    return [int(pid) for pid in pids] if len(pids) == 2 else []


@pytest.mark.parametrize(
    "value",
    [
        "x; touch {marker}",
        "$(touch {marker})",
        "`touch {marker}`",
        "a b | touch {marker} && echo",
        "--output={marker}",
        "\n'\"{marker}",
    ],
)
async def test_a_param_is_one_literal_argument(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "pwned"
    adapter = device(
        show={
            "argv": [PYTHON, "-c", PRINT_ARGS, "{text}", "{count}", "{flag}"],
            "params": {"text": "str", "count": "int", "flag": "bool"},
            "state_from_stdout": True,
        }
    )
    literal = value.format(marker=marker)
    await adapter.open()
    await run(adapter, "show", text=literal, count=3, flag=True)
    assert adapter.state == {"args": [literal, "3", "true"]}
    assert not marker.exists()
    await adapter.close()


async def test_echo_and_a_failing_program(tmp_path: Path) -> None:
    adapter = device(
        echo={"argv": ["/bin/echo", "{{not a param}}", "{word}"], "params": {"word": "str"}},
        fail={
            "argv": [PYTHON, "-c", "import sys; print('x' * 999, file=sys.stderr); sys.exit(3)"]
        },
        not_json={"argv": ["/bin/echo", "hello"], "state_from_stdout": True},
        array={"argv": ["/bin/echo", "[1]"], "state_from_stdout": True},
    )
    await adapter.open()
    await run(adapter, "echo", word="hi")
    with pytest.raises(DeviceError, match=r"exited with status 3: x+$") as caught:
        await run(adapter, "fail")
    assert len(str(caught.value)) < 400  # the tail of stderr, not all of it
    with pytest.raises(DeviceError, match="did not print JSON"):
        await run(adapter, "not_json")
    with pytest.raises(DeviceError, match="not an object"):
        await run(adapter, "array")
    await adapter.close()
    del tmp_path


async def test_own_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    adapter = device(hang={"argv": [PYTHON, "-c", HANG, str(pidfile)], "timeout": 1})
    await adapter.open()
    with pytest.raises(DeviceError, match=r"ran past its 1\.0 s timeout; killed"):
        await run(adapter, "hang")
    await until_gone(*await pids_from(pidfile, timeout=0))


async def test_host_timeout_cancels_and_leaves_no_process(
    make_config: Callable[..., Config], probe: Probe, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    entry = {
        "id": "hung",
        "type": "command",
        "timeout": 1,
        "actions": {"hang": {"argv": [PYTHON, "-c", HANG, str(pidfile)]}},
    }
    async with started(make_config(devices=[entry]), probe):
        result = await probe.command("hung", {"action": "hang"})
        assert result["error"]["code"] == "timeout"
        await until_gone(*await pids_from(pidfile, timeout=0))


async def test_state_program_and_actions_over_mqtt(
    make_config: Callable[..., Config], probe: Probe, tmp_path: Path
) -> None:
    level = tmp_path / "level"
    level.write_text("5")
    read = f"import json; print(json.dumps({{'level': int(open({str(level)!r}).read())}}))"
    write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    entry = {
        "id": "dimmer",
        "type": "command",
        "state": {"argv": [PYTHON, "-c", read.replace("{", "{{").replace("}", "}}")]},
        "poll_interval": 0.05,
        "actions": {
            "set_level": {
                "argv": [PYTHON, "-c", write, str(level), "{level}"],
                "params": {"level": {"type": "int", "min": 0, "max": 10}},
            },
        },
    }
    async with started(make_config(devices=[entry]), probe):
        await probe.wait_for(lambda m: m.topic == "iot/dimmer/state" and m.json == {"level": 5})
        ok = await probe.command("dimmer", {"action": "set_level", "params": {"level": 7}})
        assert ok["status"] == "ok", ok
        await probe.wait_for(lambda m: m.topic == "iot/dimmer/state" and m.json == {"level": 7})
        bad = await probe.command("dimmer", {"action": "set_level", "params": {"level": 11}})
        assert bad["error"]["code"] == "invalid_params"


async def test_missing_program_fails_open() -> None:
    adapter = device(run={"argv": ["/nonexistent/program"]})
    with pytest.raises(DeviceError, match="no such program"):
        await adapter.open()
    await adapter.close()


async def test_gateway_settings_stay_out_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_MQTT__PASSWORD", "secret")
    code = "import json, os; print(json.dumps({'env': sorted(os.environ)}))"
    config = {"id": "e", "type": "command", "env": {"EXTRA": "1"}}
    config["actions"] = {"env": {"argv": [PYTHON, "-c", code], "state_from_stdout": True}}
    adapter = CommandDevice(CommandConfig.model_validate(config), Recorder())
    await run(adapter, "env")
    assert "EXTRA" in adapter.state["env"]
    assert "GATEWAY_MQTT__PASSWORD" not in adapter.state["env"]


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["/bin/echo", "--level={level}"], "must be a whole argument"),
        (["{level}", "x"], "argv[0]) cannot be a parameter"),
        (["/bin/echo", "{other}"], "undeclared parameter(s): other"),
        ([], "at least 1 item"),
    ],
)
def test_config_is_checked(argv: list[str], problem: str) -> None:
    action = {"argv": argv, "params": {"level": "int"}}
    with pytest.raises(ValidationError) as caught:
        CommandConfig.model_validate({"id": "c", "type": "command", "actions": {"a": action}})
    assert problem in str(caught.value)


def test_an_argument_cannot_hold_a_nul() -> None:
    adapter = device(echo={"argv": ["/bin/echo", "{word}"], "params": {"word": "str"}})
    echo = CommandDevice.actions_for(adapter.config)["echo"]
    with pytest.raises(ValidationError) as caught:  # execve would refuse it, or cut it there
        echo.model_validate({"word": "a\0b"})
    [error] = caught.value.errors()
    assert error["loc"] == ("word",)
    assert "must not contain U+0000" in error["msg"]


def test_a_device_needs_an_action_or_a_state_program() -> None:
    with pytest.raises(ValidationError) as caught:
        CommandConfig.model_validate({"id": "c", "type": "command"})
    [error] = caught.value.errors()
    assert error["loc"] == ("actions",)
    assert "a command device needs at least one action or a state program" in error["msg"]
    state = {"argv": ["/bin/echo", "{}"]}  # a device that only reports is fine
    CommandConfig.model_validate({"id": "c", "type": "command", "state": state})
