"""``iot-gateway send`` and ``iot-gateway watch``, run as real processes."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from tests.conftest import config_data, started

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from gateway import Config
    from tests.broker import Broker
    from tests.probe import Probe


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``python -m gateway ARGS``; return exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_send_prints_the_result_and_exits_by_its_status(
    broker: Broker,
    probe: Probe,
    make_config: Callable[..., Config],
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    path = write_config(config_data(broker))
    async with started(make_config(), probe):
        code, out, _ = await cli("send", "-c", str(path), "light", "set_brightness", "level=40")
        assert code == 0
        result = json.loads(out)
        assert (result["status"], result["state"]["brightness"]) == ("ok", 40)
        assert result["id"].startswith("cli-")
        code, out, _ = await cli("send", "-c", str(path), "light", "explode")
        assert code == 1
        assert json.loads(out)["error"]["code"] == "unknown_action"
        code, _, err = await cli("send", "-c", str(path), "light", "set_brightness", "level")
        assert code == 1
        assert "key=value" in err


async def test_send_without_a_gateway_exits_69(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    path = write_config(config_data(broker))
    code, _, err = await cli("send", "-c", str(path), "--wait", "0.5", "light", "turn_on")
    assert code == 69
    assert "no result within 0.5 s" in err


async def test_watch_prints_results_state_and_availability(
    broker: Broker,
    probe: Probe,
    make_config: Callable[..., Config],
    write_config: Callable[[dict[str, Any]], Path],
) -> None:
    path = write_config(config_data(broker))
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "watch", "-c", str(path), stdout=asyncio.subprocess.PIPE
    )
    assert watcher.stdout is not None
    try:
        async with started(make_config(), probe):
            lines: list[str] = []
            async with asyncio.timeout(15):
                while not any("gateway" in line and "online" in line for line in lines):
                    lines.append((await watcher.stdout.readline()).decode())
                await probe.publish("iot/hub/command", "turn_on")
                while not any(" hub " in line and "result" in line for line in lines):
                    lines.append((await watcher.stdout.readline()).decode())
            result_line = next(line for line in lines if " hub " in line and "result" in line)
            assert "turn_on -> ok" in result_line
            assert any(" hub " in line and "availability" in line for line in lines)
    finally:
        watcher.kill()
        await watcher.wait()
