"""The benchmark: the gateway against the aiomqtt ceiling, on a private mosquitto.

Run by hand from the repository root (it takes a few minutes)::

    .venv/bin/python -m bench.run            # everything
    .venv/bin/python -m bench.run --quick    # fewer, smaller runs

It prints a Markdown table. Each system under test and the load generator run
in processes of their own; the same generator drives the ceiling echo, so a
gateway figure below the echo's is the gateway's, not the generator's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import yaml

from tests.broker import Broker

if TYPE_CHECKING:
    from collections.abc import Iterator

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int, key: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadgen(port: int, **options: float) -> dict[str, float]:
    """Run the load generator once and return its figures."""
    args = [sys.executable, "-m", "bench.loadgen", "--port", str(port)]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def start_gateway(
    broker: Broker, workdir: Path, devices: list[dict[str, Any]], journal: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the gateway process on ``devices``, with a journal at ``journal`` or none."""
    config = {
        "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": 1000},
        "gateway": {"queue_size": 1000, "journal": None if journal is None else str(journal)},
        "logging": {"level": "WARNING"},
        "devices": devices,
    }
    path = workdir / f"gateway-{len(devices)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)])


async def wait_online(port: int, devices: int, began: float) -> float:
    """Seconds from ``began`` until every device's availability is ``online``."""
    online: set[str] = set()
    async with aiomqtt.Client("127.0.0.1", port, timeout=60) as client:
        await client.subscribe("iot/+/availability", qos=1)
        async with asyncio.timeout(120):
            async for message in client.messages:
                if message.payload == b"online":
                    online.add(message.topic.value)
                if len(online) == devices:
                    return time.monotonic() - began
    raise AssertionError("unreachable")


def switches(count: int, **fields: float) -> list[dict[str, Any]]:
    """``count`` simulated switches d0, d1, ..."""
    return [{"id": f"d{i}", "type": "simulated.switch", **fields} for i in range(count)]


def throughput(port: int, pid: int, runs: int, count: int, devices: int) -> dict[str, float]:
    """Median/min/max commands per second over ``runs``, and CPU per 1,000 commands."""
    rates, cpu = [], []
    for _ in range(runs):
        before = cpu_seconds(pid)
        figures = loadgen(port, count=count, devices=devices, window=500)
        cpu.append((cpu_seconds(pid) - before) / count * 1000)
        rates.append(figures["per_second"])
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "cpu_per_1000": statistics.median(cpu),
        "generator_cpu_share": figures["generator_cpu_s"] / figures["seconds"],
    }


ECHO = [sys.executable, "-m", "bench.echo"]


@contextlib.contextmanager
def echo_process(broker: Broker, argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """An echo (``argv`` without its ``--port``) answering on ``broker``; killed on exit."""
    echo = subprocess.Popen([*argv, "--port", str(broker.port)], stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        echo.stdout.readline()  # "ready"
        yield echo
    finally:
        echo.kill()
        echo.wait()


def measure_echo(broker: Broker, runs: int, count: int, argv: list[str]) -> dict[str, float]:
    """A ceiling: an echo under the same load."""
    with echo_process(broker, argv) as echo:
        loadgen(broker.port, count=1000, devices=10)  # warm up
        return throughput(broker.port, echo.pid, runs, count, 10)


def measure_gateway(
    broker: Broker, workdir: Path, devices: int, runs: int, count: int
) -> dict[str, float]:
    """Start-up, throughput, CPU and memory of the gateway with ``devices`` devices."""
    began = time.monotonic()
    journal = workdir / f"journal-{devices}-devices.sqlite3"
    gateway = start_gateway(broker, workdir, switches(devices), journal)
    try:
        online = asyncio.run(wait_online(broker.port, devices, began))
        rss_started = memory_mb(gateway.pid, "VmRSS")
        loadgen(broker.port, count=1000, devices=min(devices, 10))  # warm up
        figures = throughput(broker.port, gateway.pid, runs, count, min(devices, 1000))
        figures["online_s"] = online
        figures["rss_started_mb"] = rss_started
        figures["rss_mb"] = memory_mb(gateway.pid, "VmRSS")
        figures["peak_rss_mb"] = memory_mb(gateway.pid)
        return figures
    finally:
        gateway.terminate()
        gateway.wait()


def measure_latency(
    broker: Broker, workdir: Path, rate: float, count: int, journal: Path | None = None
) -> dict[str, float]:
    """p50/p95/p99 at a fixed rate."""
    gateway = start_gateway(broker, workdir, switches(10), journal)
    try:
        asyncio.run(wait_online(broker.port, 10, time.monotonic()))
        loadgen(broker.port, count=1000, devices=10)
        return loadgen(broker.port, count=count, devices=10, rate=rate)
    finally:
        gateway.terminate()
        gateway.wait()


def measure_journal(
    broker: Broker, workdir: Path, runs: int, count: int, rate: float
) -> dict[str, Any]:
    """The journal's cost: throughput and latency with it off and on, alternating.

    Each figure is the median of ``runs`` gateways per setting; the p99 of each
    latency run is kept too, since one 10-second run's p99 rests on its 100
    slowest commands.
    """
    figures: dict[str, Any] = {"off": [], "on": []}
    latencies: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for turn in range(2 * runs):
        setting = "on" if turn % 2 else "off"
        journal = workdir / f"journal-{turn}.sqlite3" if setting == "on" else None
        gateway = start_gateway(broker, workdir, switches(10), journal)
        try:
            asyncio.run(wait_online(broker.port, 10, time.monotonic()))
            loadgen(broker.port, count=1000, devices=10)  # warm up
            figures[setting].append(throughput(broker.port, gateway.pid, 1, count, 10))
        finally:
            gateway.terminate()
            gateway.wait()
    for turn in range(2 * runs):
        setting = "on" if turn % 2 else "off"
        journal = workdir / f"journal-latency-{turn}.sqlite3" if setting == "on" else None
        latencies[setting].append(measure_latency(broker, workdir, rate, count // 2, journal))
    for setting in ("off", "on"):
        rates = [run["median"] for run in figures[setting]]
        cpu = [run["cpu_per_1000"] for run in figures[setting]]
        runs_p99 = [run["p99_ms"] for run in latencies[setting]]
        figures[setting] = {
            "median": statistics.median(rates),
            "cpu_per_1000": statistics.median(cpu),
            "latency": {
                key: statistics.median(run[key] for run in latencies[setting])
                for key in ("p50_ms", "p95_ms", "p99_ms")
            },
            "p99_runs": runs_p99,
        }
    return figures


def measure_journal_size(broker: Broker, workdir: Path, count: int) -> dict[str, float]:
    """The journal file's size after ``count`` commands with ids (all within the window)."""
    journal = workdir / "journal-size.sqlite3"
    gateway = start_gateway(broker, workdir, switches(10), journal)
    try:
        asyncio.run(wait_online(broker.port, 10, time.monotonic()))
        loadgen(broker.port, count=count, devices=10)
    finally:
        gateway.terminate()
        gateway.wait()
    files = [journal, journal.with_name(journal.name + "-wal")]
    size = sum(path.stat().st_size for path in files if path.exists())
    return {"commands": count, "mb": size / 1e6, "kb_per_command": size / 1e3 / count}


def measure_slow_fanout(broker: Broker, workdir: Path, devices: int) -> dict[str, float]:
    """One command each to ``devices`` devices taking 0.1 s: when is the last answered?"""
    journal = workdir / "journal-fanout.sqlite3"
    gateway = start_gateway(broker, workdir, switches(devices, latency=0.1), journal)
    try:
        asyncio.run(wait_online(broker.port, devices, time.monotonic()))
        return loadgen(broker.port, count=devices, devices=devices, window=devices)
    finally:
        gateway.terminate()
        gateway.wait()


def measure_echo_fanout(broker: Broker, devices: int) -> dict[str, float]:
    """The same fanout against the ceiling echo answering each command 0.1 s later."""
    with echo_process(broker, [*ECHO, "--latency", "0.1"]):
        return loadgen(broker.port, count=devices, devices=devices, window=devices)


def report(results: dict[str, Any]) -> None:
    """Print the Markdown table."""
    rows = main_rows(results) if "echo" in results else []
    rows += journal_rows(results)
    print("| figure | value |")  # noqa: T201
    print("|---|---|")  # noqa: T201
    for name, value in rows:
        print(f"| {name} | {value} |")  # noqa: T201


def main_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The ceilings, the gateway at each scale, latency and fanout."""
    echo, gateways = results["echo"], results["gateways"]
    base = gateways[10]
    rows = [
        ("aiomqtt ceiling (echo), commands/s", fmt_rate(echo)),
        ("gateway, 10 devices, commands/s", fmt_rate(base)),
        ("gateway / ceiling", f"{base['median'] / echo['median']:.2f}x"),
        ("ceiling CPU s per 1,000 commands", f"{echo['cpu_per_1000']:.3f}"),
        ("generator CPU share while driving the echo", f"{echo['generator_cpu_share']:.0%}"),
    ]
    direct = results["echo_direct"]
    rows += [
        ("echo beneath aiomqtt's API (paho direct), commands/s", fmt_rate(direct)),
        ("gateway / paho-direct echo", f"{base['median'] / direct['median']:.2f}x"),
        ("paho-direct echo CPU s per 1,000 commands", f"{direct['cpu_per_1000']:.3f}"),
        (
            "generator CPU share while driving the paho-direct echo",
            f"{direct['generator_cpu_share']:.0%}",
        ),
    ]
    if "echo_mqtt5" in results:
        echo5 = results["echo_mqtt5"]
        rows.append(("mqtt5 (aiomqtt 3 core) echo, commands/s", fmt_rate(echo5)))
        rows.append(("mqtt5 echo CPU s per 1,000 commands", f"{echo5['cpu_per_1000']:.3f}"))
    lat = results["latency"]
    rows.append(
        (
            f"latency at {results['rate']:.0f}/s: p50 / p95 / p99 ms",
            f"{lat['p50_ms']:.2f} / {lat['p95_ms']:.2f} / {lat['p99_ms']:.2f}",
        )
    )
    for devices, figures in gateways.items():
        rows.append(
            (
                (
                    f"{devices} devices: start to online s, RSS MB once online / after "
                    f"{results['commands']:,} commands (peak), CPU s / 1,000 cmds, cmds/s"
                ),
                (
                    f"{figures['online_s']:.2f}, {figures['rss_started_mb']:.0f} / "
                    f"{figures['rss_mb']:.0f} ({figures['peak_rss_mb']:.0f}), "
                    f"{figures['cpu_per_1000']:.3f}, {figures['median']:.0f}"
                ),
            )
        )
    fan = results["fanout"]
    rows.append(
        (
            f"{results['fanout_devices']} devices x 0.1 s, one command each: all answered in",
            f"{fan['seconds']:.3f} s (p99 {fan['p99_ms']:.0f} ms)",
        )
    )
    fan = results["echo_fanout"]
    rows.append(
        (
            "the same against the ceiling echo answering after 0.1 s",
            f"{fan['seconds']:.3f} s (p99 {fan['p99_ms']:.0f} ms)",
        )
    )
    return rows


def journal_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The journal's cost (off and on in the same run) and its file size."""
    rows: list[tuple[str, str]] = []
    journal = results["journal"]
    off, on = journal["off"], journal["on"]
    rows += [
        (
            "journal off / on, 10 devices, commands/s (on / off)",
            f"{off['median']:.0f} / {on['median']:.0f} ({on['median'] / off['median']:.2f}x)",
        ),
        (
            "journal off / on, CPU s per 1,000 commands",
            f"{off['cpu_per_1000']:.3f} / {on['cpu_per_1000']:.3f}",
        ),
        (
            f"journal off / on, latency at {results['rate']:.0f}/s: p50 / p95 / p99 ms",
            f"{fmt_latency(off['latency'])} off, {fmt_latency(on['latency'])} on",
        ),
        (
            "journal off / on, p99 ms of each latency run",
            f"{fmt_runs(off['p99_runs'])} off, {fmt_runs(on['p99_runs'])} on",
        ),
    ]
    size = results["journal_size"]
    rows.append(
        (
            f"journal file after {size['commands']:,.0f} commands with ids",
            f"{size['mb']:.1f} MB ({size['kb_per_command']:.2f} KB per command)",
        )
    )
    return rows


def fmt_latency(latency: dict[str, float]) -> str:
    """p50 / p95 / p99."""
    return f"{latency['p50_ms']:.2f} / {latency['p95_ms']:.2f} / {latency['p99_ms']:.2f}"


def fmt_runs(values: list[float]) -> str:
    """Each run's figure, in the order run."""
    return ", ".join(f"{value:.2f}" for value in values)


def fmt_rate(figures: dict[str, float]) -> str:
    """Median (min-max)."""
    return f"{figures['median']:.0f} ({figures['min']:.0f}-{figures['max']:.0f})"


def measure_everything_else(
    broker: Broker,
    workdir: Path,
    results: dict[str, Any],
    mqtt5_python: str | None,
    scales: tuple[int, ...],
) -> None:
    """The ceilings, the gateway at each scale (journal on, as by default), fanout."""
    runs, count = results["runs"], results["count"]
    results["echo"] = measure_echo(broker, runs, count, ECHO)
    results["echo_direct"] = measure_echo(broker, runs, count, [*ECHO, "--direct"])
    if mqtt5_python:
        echo5 = [mqtt5_python, "-m", "bench.echo_mqtt5"]
        results["echo_mqtt5"] = measure_echo(broker, runs, count, echo5)
    results["gateways"] = {n: measure_gateway(broker, workdir, n, runs, count) for n in scales}
    journal = workdir / "journal-latency.sqlite3"
    results["latency"] = measure_latency(broker, workdir, results["rate"], count // 2, journal)
    results["fanout"] = measure_slow_fanout(broker, workdir, results["fanout_devices"])
    results["echo_fanout"] = measure_echo_fanout(broker, results["fanout_devices"])


def main() -> None:
    """Run every measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run each, smaller counts")
    parser.add_argument(
        "--journal-only", action="store_true", help="only the journal's cost and file size"
    )
    parser.add_argument(
        "--mqtt5-python",
        metavar="PYTHON",
        help="a venv's python with the mqtt5 package: also measure the echo on it",
    )
    args = parser.parse_args()
    runs, count = (1, 5000) if args.quick else (3, 20000)
    scales = (10, 1000) if args.quick else (10, 1000, 10000)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir, persistence=False)
        broker.start()
        try:
            results: dict[str, Any] = {
                "rate": 1000.0,
                "fanout_devices": 1000,
                "commands": runs * count + 1000,  # per gateway, the warm-up included
                "runs": runs,
                "count": count,
            }
            if not args.journal_only:
                measure_everything_else(broker, workdir, results, args.mqtt5_python, scales)
            results["journal"] = measure_journal(broker, workdir, runs, count, results["rate"])
            results["journal_size"] = measure_journal_size(broker, workdir, 100_000)
        finally:
            broker.kill()
    print(json.dumps(results, indent=1, default=str), file=sys.stderr)  # noqa: T201
    report(results)


if __name__ == "__main__":
    main()
