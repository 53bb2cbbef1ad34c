"""Soak: mixed load for minutes, a fault every N seconds; nothing lost, nothing run twice.

Run from the repository root (it takes the minutes asked for, plus up to a minute)::

    .venv/bin/python -m bench.soak --minutes 10 --fault-every 30 --rate 200

A private mosquitto (persistence on) runs behind a FaultProxy; the gateway is a
process of its own that reaches the broker only through the proxy. The load
generator talks to the broker directly, with a persistent session, and resends
a command (same id) that got no result within 15 s, as the contract allows.
The faults take turns:

- broker restart: SIGTERM, then start again (persistence keeps the sessions);
- connection cut: the proxy drops the gateway's connection or, every other
  time, black-holes it for two keepalives, then heals;
- adapter failure: the far end of ``relay`` (a real ``tcp`` adapter) closes its
  connection and refuses new ones for 2 s, so the adapter reports the connection
  lost and reopens with backoff (commands meanwhile: ``device_unavailable``);
  and a burst of commands to ``flaky`` for an action in its ``fail_on``, each
  to be answered ``device_error``. ``flaky`` also fails its first two opens;
- gateway kill: SIGKILL, then start it again on the same journal. Its queued
  commands wait in its session; one it was running is answered ``interrupted``.

The simulated counters start again at 0 with each gateway process, so a
counter's ``ok`` results (in the order they arrive, which is the order they
ran) must count 1, 2, 3, ... and start again at 1 after a kill: a gap or a
repeat is a command lost or run twice.

Exit status 1 if a command was lost or ran twice, or the gateway did not exit 0.
The work dir printed first keeps gateway.log (its stderr), gateway.yaml,
mosquitto.log and repeats.json (every id answered more than once or resent).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.loadgen import percentile
from bench.run import memory_mb
from tests.broker import Broker, free_port
from tests.faultproxy import FaultProxy
from tests.probe import Probe

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

Json = dict[str, Any]
KEEPALIVE = 5
RESEND_AFTER = 15.0
DRAIN_TIMEOUT = 60.0
BURST = 20  # failing commands per adapter failure
STATUS = "iot/gateway/status"
COUNTERS = [f"counter{i}" for i in range(5)]


def light_command() -> Json:
    """A toggle or a brightness."""
    level = random.randint(0, 100)  # noqa: S311 - a load mix, not cryptography
    brightness = {"action": "set_brightness", "params": {"level": level}}
    return random.choice([{"action": "toggle"}, brightness])  # noqa: S311


# Device, weight, command: 70% counters, the rest spread over the other devices.
MIX: list[tuple[str, int, Callable[[], Json]]] = [
    *((device, 14, lambda: {"action": "increment"}) for device in COUNTERS),
    ("light", 10, light_command),
    ("sensor", 5, lambda: {"action": "read"}),
    ("flaky", 5, lambda: {"action": "toggle"}),
    ("relay", 10, lambda: {"action": "pulse"}),
]


# Through the proxy; short keepalive and retry delays; WARNING logs. Ids are remembered
# for 120 s, not 600: the RSS levels off within a run instead of growing to its end.
CONFIG = string.Template("""\
mqtt: {host: 127.0.0.1, port: $proxy, client_id: soak, keepalive: $keepalive,
       reconnect: {min_delay: 0.1, max_delay: 1}}
gateway: {queue_size: 1000, shutdown_grace: 2, dedupe_window: 120,
          device_retry: {min_delay: 0.1, max_delay: 1}, journal: $journal}
http: {host: 127.0.0.1, port: $http}
logging: {level: WARNING}
devices:
$counters
  - {id: light, type: simulated.light, latency: 0.02}
  - {id: sensor, type: simulated.sensor, interval: 1}
  - {id: flaky, type: simulated.switch, fail_on: [turn_on], open_failures: 2}
  - {id: relay, type: tcp, host: 127.0.0.1, port: $relay, state_regex: 'N=(?P<pulses>\\d+)',
     actions: {pulse: {send: PULSE, expect: '^N='}}}
""")


def start_gateway(workdir: Path, **ports: int) -> subprocess.Popen[bytes]:
    """Write gateway.yaml; run ``python -m gateway run -c`` on it, stderr to gateway.log."""
    counters = "\n".join(f"  - {{id: {c}, type: simulated.counter}}" for c in COUNTERS)
    config = workdir / "gateway.yaml"
    journal = workdir / "journal.sqlite3"
    config.write_text(
        CONFIG.substitute(ports, counters=counters, keepalive=KEEPALIVE, journal=journal)
    )
    command = [sys.executable, "-m", "gateway", "run", "-c", str(config)]
    with (workdir / "gateway.log").open("ab") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


class RelayEnd:
    """The far end of the ``relay`` tcp device: answers every line with ``N=<pulses>``."""

    def __init__(self) -> None:
        """Listen once ``listen`` is awaited."""
        self.port = free_port()
        self.pulses = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> None:
        """Accept connections on ``port``."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def cut(self, refuse_for: float) -> None:
        """Close everything, refuse connections for ``refuse_for`` s, then listen again."""
        self.close()
        await asyncio.sleep(refuse_for)
        await self.listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while await reader.readuntil(b"\r"):
                self.pulses += 1
                writer.write(f"N={self.pulses}\r".encode())
                await writer.drain()
        self._writers.discard(writer)
        writer.close()


@dataclass
class Sent:
    """One command id and every result that came back for it."""

    device: str
    action: str
    body: str
    first: float
    last: float
    results: list[Json] = field(default_factory=list)
    resent: int = 0

    def code(self) -> str:
        """The first result's error code and device, or ``ok``."""
        error = self.results[0]["error"]
        return f"{error['code']}@{self.device}" if error else "ok"


@dataclass
class Load:
    """The load generator's books: every id sent, and what came back for it."""

    probe: Probe
    sent: dict[str, Sent] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    resends: int = 0
    _read: int = 0
    _publishing: set[asyncio.Task[None]] = field(default_factory=set)

    def send(self, device: str, command: Json) -> None:
        """Publish a command with a fresh id."""
        command_id, now = f"s{len(self.sent)}", time.monotonic()
        body = json.dumps(command | {"id": command_id})
        self.sent[command_id] = entry = Sent(device, command["action"], body, now, now)
        self._publish(entry)

    def _publish(self, entry: Sent) -> None:
        """In the background: a broker restart must not slow the load down."""
        task = asyncio.create_task(self._publish_now(entry))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_now(self, entry: Sent) -> None:
        with contextlib.suppress(TimeoutError):  # the broker is down: the resend catches it
            await self.probe.publish(f"iot/{entry.device}/command", entry.body, timeout=10)

    def absorb(self) -> None:
        """Book the results that arrived since the last call."""
        new = self.probe.messages[self._read :]
        self._read += len(new)
        for message in new:
            result = message.json if message.topic != STATUS else {}
            if (entry := self.sent.get(result.get("id", ""))) is not None:
                if not entry.results:
                    self.latencies.append(message.at - entry.first)
                entry.results.append(result)

    def pending(self) -> list[Sent]:
        """Commands with no result yet (once the results that arrived are booked)."""
        self.absorb()
        return [entry for entry in self.sent.values() if not entry.results]

    async def drain(self) -> None:
        """Book results and resend stale commands until none is pending, or ``DRAIN_TIMEOUT``."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and self.pending():
            self.resend_stale()
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # the answers to the last resends (duplicate: true)
        self.absorb()
        for task in self._publishing:
            task.cancel()

    def resend_stale(self) -> None:
        """Resend (same id) each command with no result for ``RESEND_AFTER`` s."""
        for entry in self.pending():
            if time.monotonic() - entry.last > RESEND_AFTER:
                entry.last = time.monotonic()
                entry.resent += 1
                self.resends += 1
                self._publish(entry)


async def generate(load: Load, rate: float, stop: asyncio.Event) -> None:
    """Publish the mix at ``rate`` per second (no catching up after a stall) until ``stop``."""
    choices, weights = [(d, make) for d, _, make in MIX], [w for _, w, _ in MIX]
    next_at = time.monotonic()
    while not stop.is_set():
        [(device, make)] = random.choices(choices, weights)  # noqa: S311
        load.send(device, make())
        next_at = max(next_at + 1 / rate, time.monotonic() - 1)
        await asyncio.sleep(next_at - time.monotonic())


async def keep_books(load: Load, stop: asyncio.Event) -> None:
    """Book results and resend stale commands until ``stop``."""
    while not stop.is_set():
        load.resend_stale()
        await asyncio.sleep(0.5)


@dataclass
class Rig:
    """What the faults act on."""

    broker: Broker
    proxy: FaultProxy
    relay: RelayEnd
    load: Load
    start_gateway: Callable[[], subprocess.Popen[bytes]]
    http_port: int
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    gateway: subprocess.Popen[bytes] | None = None


async def broker_restart(rig: Rig) -> str:
    """SIGTERM the broker and start it again on its port."""
    await asyncio.to_thread(rig.broker.restart)
    return "broker restart"


async def connection_cut(rig: Rig) -> str:
    """Drop the gateway's connection, or every other time black-hole it for a while."""
    if rig.faults["connection drop"] <= rig.faults["connection blackhole"]:
        rig.proxy.drop()
        return "connection drop"
    rig.proxy.blackhole()
    await asyncio.sleep(2 * KEEPALIVE)
    await rig.proxy.heal()
    return "connection blackhole"


async def adapter_failure(rig: Rig) -> str:
    """Cut the relay's connection (refused for 2 s); send ``flaky`` failing commands."""
    for _ in range(BURST):
        rig.load.send("flaky", {"action": "turn_on"})
    await rig.relay.cut(refuse_for=2)
    return "adapter failure"


async def gateway_kill(rig: Rig) -> str:
    """SIGKILL the gateway and start it again; wait until it says ``online``."""
    assert rig.gateway is not None
    rig.gateway.kill()
    await asyncio.to_thread(rig.gateway.wait)
    seen = len(rig.load.probe.messages)
    rig.gateway = rig.start_gateway()
    await rig.load.probe.wait_for(
        lambda m: m.topic == STATUS and m.payload == b"online", since=seen, timeout=60
    )
    return "gateway kill"


FAULTS: list[Callable[[Rig], Awaitable[str]]] = [
    broker_restart,
    connection_cut,
    adapter_failure,
    gateway_kill,
]


async def inject(rig: Rig, every: float, stop: asyncio.Event) -> None:
    """A fault every ``every`` seconds until ``stop``, in turn; print when each struck."""
    for fault in itertools.cycle(FAULTS):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        began = time.strftime("%H:%M:%S")
        name = await fault(rig)
        rig.faults[name] += 1
        rss = memory_mb(rig.gateway.pid, "VmRSS") if rig.gateway else 0.0
        print(f"{began} {name}; gateway RSS {rss:.1f} MB", flush=True)  # noqa: T201


async def run_load(rig: Rig, args: argparse.Namespace) -> float:
    """Load and faults for ``args.minutes``, then drain; return the load's duration."""
    stop, began = asyncio.Event(), time.monotonic()
    tasks = [generate(rig.load, args.rate, stop), keep_books(rig.load, stop)]
    running = [asyncio.create_task(t) for t in [*tasks, inject(rig, args.fault_every, stop)]]
    await asyncio.sleep(args.minutes * 60)
    stop.set()
    await asyncio.gather(*running)
    duration = time.monotonic() - began
    await rig.load.drain()
    return duration


def check_counters(load: Load, final: dict[str, int]) -> tuple[int, list[str]]:
    """Executions counted twice (ids with two counts); per counter, do runs count 1..N?"""
    twice, lines = 0, []
    for device in COUNTERS:
        entries = [entry for entry in load.sent.values() if entry.device == device]
        counts = [
            {r["state"]["count"] for r in e.results if r["status"] == "ok" and not r["duplicate"]}
            for e in entries
        ]
        twice += sum(max(0, len(seen) - 1) for seen in counts)
        runs = counter_runs(load, device)
        exact = all(run == list(range(1, len(run) + 1)) for run in runs)
        exact = exact and sum(map(len, runs)) == sum(map(len, counts))
        exact = exact and final.get(device) == (len(runs[-1]) if runs else 0)
        verdict = "each run 1..N" if exact else "MISMATCH"
        lines.append(
            f"{len(entries)} ids, {sum(map(len, runs))} ok over {len(runs)} gateway runs, "
            f"final count {final.get(device)}, {verdict}"
        )
    return twice, lines


def counter_runs(load: Load, device: str) -> list[list[int]]:
    """A counter's first-run ``ok`` counts in arrival order, split where it starts again.

    A result published again after a lost connection (the same payload: results
    are at-least-once) is the same run of its command: only its first counts.
    """
    runs: list[list[int]] = []
    seen: set[str] = set()
    for message in load.probe.on(f"iot/{device}/result"):
        result = message.json
        if result["status"] != "ok" or result["duplicate"] or result["id"] in seen:
            continue
        seen.add(result["id"])
        count = int(result["state"]["count"])
        if not runs or count <= runs[-1][-1]:
            runs.append([])
        runs[-1].append(count)
    return runs


async def final_counts(port: int) -> dict[str, int]:
    """Each counter's retained state once all is done."""
    async with Probe(port, [f"iot/{device}/state" for device in COUNTERS]) as probe:
        found = await probe.wait_for(lambda m: m.retain, count=len(COUNTERS))
    return {m.topic.split("/")[1]: int(m.json["count"]) for m in found}


def reconnect_metric(http_port: int) -> str:
    """The gateway's own reconnect counter, from /metrics."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        return f"unreadable ({exc})"
    found = re.search(r"^iot_gateway_reconnects_total (\S+)", text, re.MULTILINE)
    return found[1] if found else "?"


def repeats(load: Load, workdir: Path) -> str:
    """Ids answered more than once, how many identically; those and resent ids to repeats.json."""
    wall = time.time() - time.monotonic()
    kept = {
        cid: vars(e) | {"first_sent_at": time.strftime("%H:%M:%S", time.localtime(wall + e.first))}
        for cid, e in load.sent.items()
        if len(e.results) > 1 or e.resent
    }
    (workdir / "repeats.json").write_text(json.dumps(kept, indent=1))
    found = {cid: e.results for cid, e in load.sent.items() if len(e.results) > 1}
    identical = sum(all(r == results[0] for r in results) for results in found.values())
    return f"{len(found)} ({identical} with identical payloads)"


def summary(rig: Rig, figures: Json, final: dict[str, int]) -> tuple[list[tuple[str, Any]], bool]:
    """The table's rows, and whether every check passed."""
    load, entries = rig.load, list(rig.load.sent.values())
    results = [r for entry in entries for r in entry.results]
    answered = [entry for entry in entries if entry.results]
    twice, counter_lines = check_counters(load, final)
    burst = [e for e in entries if e.device == "flaky" and e.action == "turn_on"]
    codes = collections.Counter(e.code() for e in answered)
    relay_ok = sum(e.device == "relay" and e.code() == "ok" for e in answered)
    ms = [x * 1000 for x in load.latencies] or [0.0]
    onlines = sum(m.payload == b"online" and not m.retain for m in load.probe.on(STATUS))
    onlines -= 1 + rig.faults["gateway kill"]  # the starts are not reconnects
    rows: list[tuple[str, Any]] = [
        ("duration of load (s)", f"{figures['duration']:.0f}"),
        *((f"faults: {name}", count) for name, count in sorted(rig.faults.items())),
        ("commands sent (unique ids)", len(entries)),
        ("resends (same id, no result in 15 s)", load.resends),
        ("results received", len(results)),
        ("lost (ids with no result)", len(entries) - len(answered)),
        ("duplicate results (duplicate: true)", sum(bool(r["duplicate"]) for r in results)),
        ("ids answered more than once", figures["repeats"]),
        ("executions counted twice", twice),
        *zip(COUNTERS, counter_lines, strict=True),
        ("result codes (first per id)", dict(codes.most_common())),
        ("flaky fail_on bursts: device_error", f"{codes['device_error@flaky']} of {len(burst)}"),
        ("relay: pulses at the far end / ok results", f"{rig.relay.pulses} / {relay_ok}"),
        ("latency p50 / p99 (ms)", f"{percentile(ms, 0.5):.1f} / {percentile(ms, 0.99):.1f}"),
        ("gateway RSS start / end / peak of the last process (MB)", figures["rss"]),
        ("gateway reconnects: status onlines / metric", f"{onlines} / {figures['metric']}"),
        ("gateway exit code after SIGTERM", figures["exit"]),
    ]
    ok = len(answered) == len(entries) and twice == 0 and figures["exit"] == 0
    return rows, ok and "MISMATCH" not in str(counter_lines)


async def run_gateway(rig: Rig, args: argparse.Namespace) -> Json:
    """Start the gateway, load it, stop it; return the figures measured on the way."""
    rig.gateway = rig.start_gateway()
    try:
        await rig.load.probe.wait_for(lambda m: m.topic == STATUS and m.payload == b"online")
        rss = [memory_mb(rig.gateway.pid, "VmRSS")]
        figures: Json = {"duration": await run_load(rig, args)}
        gateway = rig.gateway  # the last one started
        rss += [memory_mb(gateway.pid, "VmRSS"), memory_mb(gateway.pid)]
        figures["rss"] = " / ".join(f"{mb:.1f}" for mb in rss)
        figures["metric"] = await asyncio.to_thread(reconnect_metric, rig.http_port)
        if (early := gateway.poll()) is None:
            gateway.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(gateway.wait, 30)
        figures["exit"] = code if early is None else f"{code}, ended by itself before SIGTERM"
        return figures
    finally:
        if rig.gateway.poll() is None:
            rig.gateway.kill()


async def soak(args: argparse.Namespace) -> bool:
    """Set everything up, run, print the summary; return whether every check passed."""
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"work dir: {workdir}", flush=True)  # noqa: T201
    broker, relay = Broker(workdir, persistence=True), RelayEnd()
    broker.start()
    await relay.listen()
    probe = Probe(broker.port, ["iot/+/result", STATUS], client_id="soak-load", persistent=True)
    try:
        async with FaultProxy(broker.port) as proxy, probe:
            http = free_port()
            ports = {"proxy": proxy.port, "relay": relay.port, "http": http}
            rig = Rig(
                broker, proxy, relay, Load(probe), lambda: start_gateway(workdir, **ports), http
            )
            figures = await run_gateway(rig, args)
            final = await final_counts(broker.port)
            figures["repeats"] = repeats(rig.load, workdir)
    finally:
        relay.close()
        broker.stop()
    rows, ok = summary(rig, figures, final)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")  # noqa: T201
    print("PASS" if ok else "FAIL: lost or doubled commands, or a bad exit")  # noqa: T201
    return ok


def main() -> None:
    """Parse the options and soak."""
    # The load's client has many publishes in flight through a broker restart: not news.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--fault-every", type=float, default=30, help="seconds")
    parser.add_argument("--rate", type=float, default=200, help="commands per second in all")
    sys.exit(0 if asyncio.run(soak(parser.parse_args())) else 1)


if __name__ == "__main__":
    main()
