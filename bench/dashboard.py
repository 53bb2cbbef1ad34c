"""The dashboard's cost: throughput with a live page connected, against the same run without.

Run by hand from the repository root (a few minutes)::

    .venv/bin/python -m bench.dashboard            # 1,000 devices, 3 pairs of runs
    .venv/bin/python -m bench.dashboard --pairs 1  # quicker

One gateway with ``http`` set and 1,000 simulated switches; the load generator
of ``bench.run`` drives it, alternately with nobody on the dashboard and with
one page's live stream (``/api/events``) read by a client in this process, so
drift of the machine falls on both sides. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bench.run import cpu_seconds, loadgen, switches, wait_online
from tests.broker import Broker, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from subprocess import Popen

DEVICES = 1000
COUNT = 20000


class Page:
    """A dashboard page's live stream, read in a thread; counts what arrives."""

    def __init__(self, port: int) -> None:
        """Connect; the stream is read until ``close``."""
        url = f"http://127.0.0.1:{port}/api/events"
        self._response = urllib.request.urlopen(url, timeout=60)
        self.updates = 0
        self.bytes = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed under it
            for line in self._response:
                self.bytes += len(line)
                if line.startswith(b"event: "):
                    self.updates += 1

    def close(self) -> None:
        """Hang up."""
        self._response.close()


@contextlib.contextmanager
def gateway(broker: Broker, workdir: Path, http: int) -> Iterator[Popen[bytes]]:
    """The gateway with 1,000 switches and the dashboard on port ``http``."""
    import subprocess  # noqa: PLC0415 - only here
    import sys  # noqa: PLC0415 - as above

    config = {
        "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": 1000},
        "gateway": {"queue_size": 1000, "journal": None},
        "http": {"host": "127.0.0.1", "port": http},
        "logging": {"level": "WARNING"},
        "devices": switches(DEVICES),
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)])
    try:
        asyncio.run(wait_online(broker.port, DEVICES, time.monotonic()))
        yield process
    finally:
        process.terminate()
        process.wait()


def run_once(broker: Broker, pid: int, count: int) -> tuple[float, float]:
    """Commands per second and gateway CPU s per 1,000 commands."""
    before = cpu_seconds(pid)
    figures = loadgen(broker.port, count=count, devices=DEVICES, window=500)
    return figures["per_second"], (cpu_seconds(pid) - before) / count * 1000


def main() -> None:
    """Alternate runs without and with a page; print both sides."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=3, help="runs without and with a page")
    parser.add_argument("--count", type=int, default=COUNT, help="commands per run")
    args = parser.parse_args()
    sides: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    updates = received = 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir, persistence=False)
        broker.start()
        http = free_port()
        try:
            with gateway(broker, workdir, http) as process:
                loadgen(broker.port, count=2000, devices=DEVICES)  # warm up
                for _ in range(args.pairs):
                    sides["without"].append(run_once(broker, process.pid, args.count))
                    page = Page(http)
                    sides["with"].append(run_once(broker, process.pid, args.count))
                    page.close()
                    updates, received = updates + page.updates, received + page.bytes
        finally:
            broker.kill()
    report(sides, updates, received, args.pairs)


def report(
    sides: dict[str, list[tuple[float, float]]], updates: int, received: int, pairs: int
) -> None:
    """The Markdown table."""
    rate = {side: statistics.median(r for r, _ in runs) for side, runs in sides.items()}
    cpu = {side: statistics.median(c for _, c in runs) for side, runs in sides.items()}
    runs = {side: ", ".join(f"{r:.0f}" for r, _ in sides[side]) for side in sides}
    lines = [
        f"| {DEVICES:,} devices, {pairs} runs each | without a page | with a page |",
        "|---|---|---|",
        (
            f"| commands/s, median (runs) | {rate['without']:.0f} ({runs['without']}) "
            f"| {rate['with']:.0f} ({runs['with']}) |"
        ),
        f"| gateway CPU s per 1,000 commands | {cpu['without']:.3f} | {cpu['with']:.3f} |",
        f"| with / without | | {rate['with'] / rate['without']:.3f}x |",
        f"| live updates the page got (bytes) | | {updates:,} ({received:,}) |",
    ]
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
