"""The hot standby's cost: throughput of an active with a standby watching, against one alone.

Run by hand from the repository root (a few minutes)::

    .venv/bin/python -m bench.standby            # 3 pairs of runs
    .venv/bin/python -m bench.standby --pairs 1  # quicker

Alternately: one gateway on its own (no standby section), then a group of two
(``standby.enabled``, instances ``a`` and ``b``), both with 10 simulated
switches and a journal, driven by the load generator of ``bench.run``. In the
group, the standby reads every result into its journal and the active's own
watcher reads them too. Prints a Markdown table: commands/s and the CPU both
instances used per 1,000 commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from bench.run import cpu_seconds, loadgen, switches, wait_online
from tests.broker import Broker

COUNT = 20000
DEVICES = 10


def config(broker: Broker, workdir: Path, instance: str | None) -> Path:
    """A gateway's config file: alone (``instance`` None) or one of a group."""
    name = instance or "alone"
    settings: dict[str, Any] = {
        "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": 1000},
        "gateway": {"queue_size": 1000, "journal": str(workdir / f"journal-{name}.sqlite3")},
        "logging": {"level": "WARNING"},
        "devices": switches(DEVICES),
    }
    if instance is not None:
        settings["gateway"]["instance"] = instance
        settings["standby"] = {"enabled": True, "takeover_delay": 0.5}
    path = workdir / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


async def standing_by(port: int, instance: str) -> None:
    """Until ``instance`` says it is a standby (its retained record)."""
    topic = f"iot/gateway/standby/{instance}"
    async with aiomqtt.Client("127.0.0.1", port, timeout=60) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(60):
            async for message in client.messages:
                if json.loads(message.payload).get("role") == "standby":
                    return


def start(path: Path) -> subprocess.Popen[bytes]:
    """A gateway on the config at ``path``."""
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)])


def measure(broker: Broker, paths: list[Path]) -> dict[str, float]:
    """Commands/s and CPU (all instances) per 1,000 commands, over ``COUNT`` commands.

    The first config's gateway is started and online before the next one starts,
    so it is the active and the others stand by.
    """
    processes = [start(paths[0])]
    try:
        asyncio.run(wait_online(broker.port, DEVICES, time.monotonic()))
        for path in paths[1:]:
            processes.append(start(path))
            asyncio.run(standing_by(broker.port, path.stem.removeprefix("gateway-")))
        loadgen(broker.port, count=1000, devices=DEVICES)  # warm up
        before = sum(cpu_seconds(p.pid) for p in processes)
        figures = loadgen(broker.port, count=COUNT, devices=DEVICES, window=500)
        cpu = sum(cpu_seconds(p.pid) for p in processes) - before
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
    return {"per_second": figures["per_second"], "cpu_per_1000": cpu / COUNT * 1000}


def main() -> None:
    """Alternate alone and pair runs; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "pair": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir, persistence=False)
        broker.start()
        try:
            alone = [config(broker, workdir, None)]
            pair = [config(broker, workdir, "a"), config(broker, workdir, "b")]
            for _ in range(args.pairs):
                runs["alone"].append(measure(broker, alone))
                runs["pair"].append(measure(broker, pair))
        finally:
            broker.kill()
    print("| gateway | commands/s (median) | CPU s per 1,000 commands, all instances |")  # noqa: T201
    print("|---|---|---|")  # noqa: T201
    base = statistics.median(r["per_second"] for r in runs["alone"])
    for name, results in runs.items():
        rate = statistics.median(r["per_second"] for r in results)
        cpu = statistics.median(r["cpu_per_1000"] for r in results)
        print(f"| {name} | {rate:.0f} ({rate / base:.2f}x) | {cpu:.3f} |")  # noqa: T201


if __name__ == "__main__":
    main()
