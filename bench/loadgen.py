"""Load generator: publishes QoS 1 commands with unique ids and times their results.

Runs in its own process (``python -m bench.loadgen``) so that it competes with
the system under test only for CPU, not for an event loop. Prints one JSON object.

Two modes: ``--window N`` keeps N commands in flight (throughput); ``--rate R``
publishes R commands per second whatever comes back (latency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import time
import uuid
from typing import TYPE_CHECKING

import aiomqtt

from gateway.broker.aiomqtt_transport import WritesInLoop

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class LoadGenerator:
    """Sends commands round-robin to ``devices`` devices and collects results."""

    def __init__(self, client: aiomqtt.Client, devices: int) -> None:
        """Use a connected client."""
        self.client = client
        self.devices = devices
        # Unique across runs too: a repeated id would be answered from the
        # gateway's dedupe window without running, a cheaper path than the real one.
        self.run_id = uuid.uuid4().hex[:8]
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0
        self.window: asyncio.Semaphore | None = None

    def received(self, _paho: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        """Record a result's latency; set ``done`` after the last.

        Called by paho as it reads the message, not through aiomqtt's queue and
        iterator, which cost each result a task wake-up: CPU the generator took
        from the system under test on a small machine.
        """
        command_id = json.loads(message.payload)["id"]
        sent = self.sent_at.pop(command_id, None)
        if sent is None:
            return
        self.latencies.append(time.perf_counter() - sent)
        if self.window is not None:
            self.window.release()
        if len(self.latencies) == self.expected:
            self.done.set()

    def send(self, index: int) -> None:
        """Publish command ``index``.

        Straight through paho, without waiting for the PUBACK: aiomqtt 2.5's
        ``publish`` costs a task and two scans of every pending call per message,
        which made the generator, not the system under test, the bottleneck.
        """
        command_id = f"{self.run_id}-{index}"
        payload = json.dumps({"action": "toggle", "id": command_id})
        self.sent_at[command_id] = time.perf_counter()
        info = self.client._client.publish(  # noqa: SLF001 - see the docstring
            f"iot/d{index % self.devices}/command", payload, qos=1
        )
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")

    async def run_window(self, count: int, window: int) -> None:
        """Keep ``window`` commands in flight until ``count`` are answered."""
        self.window = asyncio.Semaphore(window)
        for index in range(count):
            await self.window.acquire()
            self.send(index)

    async def run_rate(self, count: int, rate: float) -> None:
        """Publish at ``rate`` per second, open loop."""
        began = time.perf_counter()
        for index in range(count):
            delay = index / rate - (time.perf_counter() - began)
            await asyncio.sleep(max(0.0, delay))  # behind or not, let results in
            self.send(index)


async def main(args: argparse.Namespace) -> dict[str, float]:
    """Run one measurement and return its figures."""
    async with aiomqtt.Client(
        "127.0.0.1",
        args.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=65535,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        timeout=60,
    ) as client:
        client.pending_calls_threshold = 1 << 30
        WritesInLoop(client)  # as the gateway sends: no writability watch per burst
        generator = LoadGenerator(client, args.devices)
        generator.expected = args.count
        client._client.on_message = generator.received  # noqa: SLF001 - see ``received``
        # QoS 0 on loopback: the broker still gets every result at QoS 1 from the
        # system under test; the generator skips a PUBACK per result.
        await client.subscribe("iot/+/result", qos=0)
        cpu0 = os.times()
        began = time.perf_counter()
        if args.rate:
            await generator.run_rate(args.count, args.rate)
        else:
            await generator.run_window(args.count, args.window)
        await asyncio.wait_for(generator.done.wait(), args.timeout)
        elapsed = time.perf_counter() - began
        cpu1 = os.times()
    lat = [x * 1000 for x in generator.latencies]
    return {
        "count": args.count,
        "seconds": elapsed,
        "per_second": args.count / elapsed,
        "p50_ms": percentile(lat, 0.50),
        "p95_ms": percentile(lat, 0.95),
        "p99_ms": percentile(lat, 0.99),
        "generator_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "generator_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cli() -> None:
    """Parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--timeout", type=float, default=120)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))  # noqa: T201


if __name__ == "__main__":
    cli()
