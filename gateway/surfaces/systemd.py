"""The systemd notify protocol (``sd_notify``), spoken directly: no libsystemd needed.

Under ``Type=notify`` systemd passes a datagram socket in ``NOTIFY_SOCKET`` and,
with ``WatchdogSec=``, the interval in ``WATCHDOG_USEC``. The gateway sends
``READY=1`` once it is ready, ``STATUS=`` lines for ``systemctl status``,
``WATCHDOG=1`` from its event loop (so a blocked loop stops the pings and
systemd restarts it), and ``STOPPING=1`` when it starts to shut down. Without
``NOTIFY_SOCKET`` every call is a no-op. See sd_notify(3).

These variables are the service manager's protocol, not configuration, so they
are read here rather than in ``gateway.config``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT = 1.0  # seconds; systemd reads its socket at once, so this is only a bound


def notify_address(value: str | None) -> str | None:
    """The socket address ``NOTIFY_SOCKET`` names, or None when it names none.

    A leading ``@`` means Linux's abstract namespace, whose addresses start with NUL.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None for no watchdog.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for.
    """
    if not environ.get("WATCHDOG_USEC"):
        return None
    try:
        usec = int(environ["WATCHDOG_USEC"])
        owner = int(environ.get("WATCHDOG_PID") or pid)
    except ValueError:
        log.warning("systemd: ignoring unreadable WATCHDOG_USEC or WATCHDOG_PID")
        return None
    if usec <= 0 or owner != pid:
        return None
    return usec / 1_000_000 / 2


class Notifier:
    """Sends notifications in order from one task, and pings the watchdog."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        """Read the protocol's variables; nothing is sent until ``run``.

        Args:
            environ: The environment to read (default: the process's).
            pid: This process's id (default: ``os.getpid()``).
        """
        environ = os.environ if environ is None else environ
        self.address = notify_address(environ.get("NOTIFY_SOCKET"))
        interval = watchdog_interval(environ, os.getpid() if pid is None else pid)
        self.watchdog_interval = interval if self.address else None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._status: str | None = None
        self._ready = False
        self._stopping = False
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (``NOTIFY_SOCKET`` is set)."""
        return self.address is not None

    def notify(self, *assignments: str) -> None:
        """Queue one message of ``KEY=value`` lines (a no-op without systemd)."""
        if self.enabled:
            self._queue.put_nowait("\n".join(assignments).encode())

    def status(self, text: str) -> None:
        """Say what the gateway is doing, for ``systemctl status``; repeats are dropped."""
        if text != self._status:
            self._status = text
            self.notify(f"STATUS={text}")

    def ready(self, text: str) -> None:
        """Startup is complete (sent once)."""
        if not self._ready:
            self._ready = True
            self._status = text
            self.notify("READY=1", f"STATUS={text}")

    def stopping(self, text: str) -> None:
        """Shutdown has begun."""
        self._stopping = True
        self._status = text
        self.notify("STOPPING=1", f"STATUS={text}")

    def close(self) -> None:
        """No more messages: ``run`` returns once the queued ones are sent."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """Send queued messages and ping the watchdog until ``close``."""
        async with asyncio.TaskGroup() as tasks:
            watchdog = None
            if self.watchdog_interval is not None:
                watchdog = tasks.create_task(self._watchdog(self.watchdog_interval))
            while (payload := await self._queue.get()) is not None:
                await self._send(payload)
            if watchdog is not None:
                watchdog.cancel()

    async def _watchdog(self, interval: float) -> None:
        usec = round(interval * 2 * 1_000_000)
        while True:
            if self._ready or self._stopping:
                self.notify("WATCHDOG=1")
            else:
                # Waiting for the broker can outlast TimeoutStartSec; while the loop
                # runs, push the start timeout on, so only a blocked loop hits it.
                self.notify("WATCHDOG=1", f"EXTEND_TIMEOUT_USEC={usec}")
            await asyncio.sleep(interval)

    async def _send(self, payload: bytes) -> None:
        """One datagram, without blocking the loop; a failure is logged, never raised."""
        assert self.address is not None  # noqa: S101 - only queued when enabled
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(0)  # non-blocking, as the loop needs
                    # Connected, a datagram socket waits for room in systemd's queue
                    # instead of failing with EAGAIN.
                    sock.connect(self.address)
                    await loop.sock_sendall(sock, payload)
        except (OSError, TimeoutError) as exc:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "systemd: cannot notify %r: %s", self.address, exc)
