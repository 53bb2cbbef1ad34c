"""A flood at one slow device: refused with `busy`, memory bounded, others unhurt."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import config_data, gateway_process
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.broker import Broker

# 10,000 in CI; FLOOD_COMMANDS=100000 for the full run (about 4 minutes).
FLOOD = int(os.environ.get("FLOOD_COMMANDS", "10000"))
RATE = 500  # commands per second: well below the gateway's capacity, so no backlog forms
RSS_LIMIT_MB = 250


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def round_trips(probe: Probe, count: int) -> list[float]:
    """Latencies (ms) of ``count`` commands to the fast device, one after another."""
    latencies = []
    for _ in range(count):
        began = time.monotonic()
        await probe.command("fast", {"action": "toggle"})
        latencies.append((time.monotonic() - began) * 1000)
    return latencies


async def flood(port: int, count: int, rate: float) -> None:
    """Publish ``count`` commands to the slow device at ``rate`` per second.

    The load comes from mosquitto_pub in its own process, fed lines at the
    rate, so the test's own event loop measures latency undisturbed.
    """
    publisher = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-p",
        str(port),
        "-q",
        "1",
        "-t",
        "iot/slow/command",
        "-l",
        stdin=asyncio.subprocess.PIPE,
    )
    assert publisher.stdin is not None
    began, batch = time.monotonic(), max(1, int(rate / 500))
    for start in range(0, count, batch):
        lines = "".join(
            json.dumps({"action": "toggle", "id": f"flood-{i}"}) + "\n"
            for i in range(start, min(start + batch, count))
        )
        publisher.stdin.write(lines.encode())
        await publisher.stdin.drain()
        ahead = (start + batch) / rate - (time.monotonic() - began)
        if ahead > 0:
            await asyncio.sleep(ahead)  # pacing the load, not synchronising
    publisher.stdin.close()
    assert await publisher.wait() == 0


@pytest.mark.slow
async def test_flood_is_refused_busy_with_bounded_memory_and_no_harm_to_others(
    broker: Broker, write_config: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    devices = [
        {"id": "slow", "type": "simulated.switch", "latency": 0.1},
        {"id": "fast", "type": "simulated.switch"},
    ]
    data = config_data(broker, devices=devices, logging={"level": "WARNING"})
    results_file = tmp_path / "flood-results.jsonl"
    with gateway_process(write_config(data)) as process, results_file.open("wb") as sink:
        counter = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            "iot/slow/result",
            "-C",
            str(FLOOD),
            stdout=sink,
        )
        async with Probe(broker.port, ["iot/fast/result", "iot/gateway/status"]) as watcher:
            await watcher.wait_for(lambda m: m.payload == b"online")
            unloaded = statistics.median(await round_trips(watcher, 200))
            rss_before = rss_mb(process.popen.pid)
            async with asyncio.TaskGroup() as tasks:
                flooding = tasks.create_task(flood(broker.port, FLOOD, RATE))
                loaded: list[float] = []
                while not flooding.done():
                    loaded += await round_trips(watcher, 5)
            # Every command gets its result (the queued ones after their latency).
            assert await asyncio.wait_for(counter.wait(), 60) == 0
            rss_after = rss_mb(process.popen.pid)
    results = [json.loads(line) for line in results_file.read_text().splitlines()]
    codes = [(r["error"] or {}).get("code", "ok") for r in results]
    busy = codes.count("busy")
    print(  # noqa: T201 - the figures are the point of this test
        f"\nflood {FLOOD} at {RATE}/s: {busy} busy, {codes.count('ok')} ok; "
        f"fast device median {unloaded:.2f} ms unloaded, {statistics.median(loaded):.2f} ms "
        f"loaded ({len(loaded)} samples); RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert len({r["id"] for r in results}) == FLOOD  # every command answered
    assert busy > FLOOD * 0.9
    assert rss_after < RSS_LIMIT_MB
    # The target: another device's latency within 2x of its unloaded latency.
    assert statistics.median(loaded) <= 2 * unloaded
