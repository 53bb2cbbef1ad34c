"""A private Mosquitto broker for tests: free loopback port, generated config, stopped by PID."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """One mosquitto process; can be stopped, killed and started again on its port."""

    def __init__(self, workdir: Path, *, persistence: bool = True, extra: str = "") -> None:
        """Write a config for a fresh port under ``workdir``; call ``start``."""
        self.port = free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.config_file = workdir / "mosquitto.conf"
        self.log_file = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # As root, mosquitto would drop to user `mosquitto`, who cannot write here.
            f"user {getpass.getuser()}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            # Without it mosquitto's small packets wait on Nagle and delayed ACKs (~40 ms).
            "set_tcp_nodelay true",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            extra,
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start mosquitto and wait until it accepts connections."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_file.read_text()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop by PID (SIGTERM saves persistence; SIGKILL loses what was not saved)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        """SIGTERM and start again on the same port."""
        self.stop()
        self.start()

    def log(self) -> str:
        """What mosquitto logged so far."""
        return self.log_file.read_text(errors="replace")
