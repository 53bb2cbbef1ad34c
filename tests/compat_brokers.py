"""The brokers the compatibility checks run against (``tests/test_broker_compat.py``).

Each is a ``Target``: where it listens, the MQTT version the gateway is set
to, the version a test client speaks to it, and how to restart it (None: it
cannot be restarted from here, and the checks that need it are skipped).

- ``mosquitto-5`` and ``mosquitto-3.1.1``: a private Mosquitto per test
  (``tests/broker.py``), with persistence.
- ``aedes``: aedes 1.2 (``brokers/aedes``, installed by ``.ci/test`` with npm)
  on its Redis persistence, a private ``redis-server`` per module.
- any other broker, from the environment: ``COMPAT_BROKER=host:port``,
  ``COMPAT_PROTOCOL`` (``auto``, ``5`` or ``3.1.1``; default ``auto``) and
  ``COMPAT_RESTART`` (a shell command that restarts it and returns once it
  listens again). Then only that broker is checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import parse_host_port
from tests.broker import Broker, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
AEDES_DIR = ROOT / "brokers" / "aedes"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
NODE = shutil.which("node") or "/usr/bin/node"


@dataclass(frozen=True)
class Target:
    """A broker to check: its address, the versions to speak, how to restart it."""

    name: str
    host: str
    port: int
    protocol: str
    """The gateway's ``mqtt.protocol``."""
    client_protocol: str
    """What the test's own client speaks: ``5`` or ``3.1.1``."""
    restart: Callable[[], None] | None
    """Stop and start the broker, keeping what it persists; returns once it listens."""


def wait_listening(host: str, port: int, *, timeout: float = 20) -> None:
    """Return once ``host``:``port`` accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


def external() -> Target | None:
    """The broker named by ``COMPAT_BROKER``, if set."""
    address = os.environ.get("COMPAT_BROKER")
    if not address:
        return None
    host, port = parse_host_port(address)
    protocol = os.environ.get("COMPAT_PROTOCOL", "auto")
    command = os.environ.get("COMPAT_RESTART")

    def restart() -> None:
        subprocess.run(command or "", shell=True, check=True, timeout=120)  # noqa: S602 - the user's own command
        wait_listening(host, port)

    client = "5" if protocol == "5" else "3.1.1"
    return Target(address, host, port, protocol, client, restart if command else None)


@contextlib.contextmanager
def mosquitto(workdir: Path, protocol: str) -> Iterator[Target]:
    """A private Mosquitto with persistence; the gateway speaks ``protocol`` to it."""
    broker = Broker(workdir)
    broker.start()
    try:
        yield Target(
            f"mosquitto-{protocol}", broker.host, broker.port, protocol, protocol, broker.restart
        )
    finally:
        broker.kill()


def aedes_missing() -> str | None:
    """Why aedes cannot run here, or None when it can."""
    if not (AEDES_DIR / "node_modules" / "aedes").is_dir():
        return f"aedes is not installed: npm ci --prefix {AEDES_DIR}"
    if not Path(NODE).exists() or not Path(REDIS).exists():
        return "node or redis-server is missing (.ci/test installs them)"
    return None


class Aedes:
    """aedes on a private Redis; ``restart`` restarts aedes only, as a deploy would."""

    def __init__(self, workdir: Path) -> None:
        """Pick free ports; call ``start``."""
        self.workdir = workdir
        self.port = free_port()
        self.redis_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start Redis (saving to its append-only file), then aedes."""
        options = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        # The append-only file: what aedes wrote survives a Redis restart too.
        options += ["--dir", str(self.workdir), "--appendonly", "yes"]
        self.redis = self._spawn("redis", [REDIS, *options])
        wait_listening("127.0.0.1", self.redis_port)
        self.start_aedes()

    def start_aedes(self) -> None:
        """Start the broker process and wait until it listens."""
        script = str(AEDES_DIR / "server.mjs")
        self.node = self._spawn("aedes", [NODE, script, str(self.port), str(self.redis_port)])
        wait_listening("127.0.0.1", self.port)

    def restart(self) -> None:
        """SIGTERM aedes and start it again; Redis keeps the sessions."""
        _stop(self.node, signal.SIGTERM)
        self.start_aedes()

    def stop(self) -> None:
        """Kill both."""
        _stop(self.node, signal.SIGKILL)
        _stop(self.redis, signal.SIGKILL)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
