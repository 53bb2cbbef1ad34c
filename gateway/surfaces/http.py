"""The HTTP endpoint (contract §8): liveness, readiness, Prometheus metrics and the dashboard.

Built to survive clients it did not ask for: a deadline for request headers, an
idle timeout, a cap on connections below the open-file limit, and logs that
stay short under a flood (``http_guard``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from gateway.surfaces.http_guard import (
    FD_RESERVE,
    Acceptor,
    ServerLog,
    bind,
    raise_fd_limit,
    time_headers,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from gateway.config import HttpSettings
    from gateway.surfaces.dashboard import Dashboard

log = logging.getLogger(__name__)

# Seconds aiohttp gives requests in progress at shutdown (a scrape takes
# milliseconds), and the bound on the whole cleanup.
REQUEST_GRACE = 1.0
CLEANUP_TIMEOUT = 3.0


class HttpServerError(Exception):
    """The HTTP server could not start: the port is taken, or the address is not ours."""


class MetricsSource(Protocol):
    """What ``/metrics`` shows (``gateway.metrics.Metrics``)."""

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The page and its content type for an ``Accept`` header."""
        ...


class HttpServer:
    """Serves ``/healthz``, ``/readyz``, ``/metrics`` and the dashboard until stopped."""

    def __init__(
        self,
        settings: HttpSettings,
        not_ready_reason: Callable[[], str | None],
        metrics: MetricsSource,
        broker: Callable[[], str] | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        """Nothing listens until ``run``.

        Args:
            settings: Where to listen, timeouts and the connection cap; port 0
                takes a free port (see ``port``).
            not_ready_reason: Why the gateway is not ready, or None when it is.
            metrics: What ``/metrics`` exposes.
            broker: The ``host:port`` of the broker in use, for ``/readyz``.
            dashboard: The page at ``/`` and its API under ``/api/``, if any.
        """
        self._settings = settings
        self._not_ready_reason = not_ready_reason
        self._metrics = metrics
        self._broker = broker
        self._dashboard = dashboard
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        self.port: int | None = None
        """The port actually bound, once ``started`` is set."""

    def stop(self) -> None:
        """Make ``run`` close the server and return."""
        self._stop.set()

    async def run(self) -> None:
        """Listen, set ``started``, serve until ``stop``, then close (bounded).

        Raises:
            HttpServerError: The address could not be bound.
        """
        runner = web.AppRunner(
            self._app(),
            access_log=None,  # a scrape every few seconds would drown the gateway's own lines
            shutdown_timeout=REQUEST_GRACE,
            # aiohttp's keep-alive timer runs from connect and from each response
            # until the next request arrives: exactly an idle timeout.
            keepalive_timeout=self._settings.idle_timeout,
            logger=ServerLog(),
        )
        await runner.setup()
        try:
            await self._serve(runner)
        finally:
            await _cleanup(runner)

    async def _serve(self, runner: web.AppRunner) -> None:
        """Accept on every listening socket until ``stop``."""
        if runner.server is None:  # pragma: no cover - setup() always makes one
            raise RuntimeError("the HTTP runner has no server")
        acceptor = Acceptor(runner.server, self._connection_cap(), self._settings.header_timeout)
        listeners = await self._listen()
        try:
            async with asyncio.TaskGroup() as tasks:
                serving = [
                    tasks.create_task(acceptor.serve(listener), name="http-accept")
                    for listener in listeners
                ]
                if self._dashboard is not None:
                    live = self._dashboard.live
                    serving.append(tasks.create_task(live.run(), name="dashboard-live"))
                self.started.set()
                await self._stop.wait()
                if self._dashboard is not None:
                    self._dashboard.live.close_all()  # open event streams end now
                for task in serving:
                    task.cancel()
        finally:
            for listener in listeners:
                listener.close()

    def _connection_cap(self) -> int:
        """``max_connections``, lowered if the open-file limit could not keep the reserve."""
        wanted = self._settings.max_connections
        limit = raise_fd_limit()
        cap = max(1, min(wanted, limit - FD_RESERVE))
        log.debug(
            "HTTP: open-file limit %d, %d kept for the broker and devices; "
            "at most %d connections at once (%d asked for)",
            limit,
            FD_RESERVE,
            cap,
            wanted,
        )
        if cap < wanted:
            log.warning(
                "HTTP: serving at most %d connections, not %d: the open-file limit is %d",
                cap,
                wanted,
                limit,
            )
        return cap

    async def _listen(self) -> list[socket.socket]:
        host, port = self._settings.host, self._settings.port
        try:
            listeners = await bind(host, port)
        except OSError as exc:
            raise HttpServerError(
                f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self.port = int(listeners[0].getsockname()[1])
        log.info(
            "HTTP: /healthz, /readyz, /metrics%s on %s port %d",
            "" if self._dashboard is None else " and the dashboard",
            host,
            self.port,
        )
        return listeners

    def _app(self) -> web.Application:
        # aiohttp reads bodies up to 1 MiB (413 beyond): a command over the gateway's
        # smaller max_payload_bytes is answered payload_too_large, as over MQTT.
        app = web.Application(middlewares=[time_headers])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        if self._dashboard is not None:
            self._dashboard.install(app)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        """Answered at all only while the event loop runs, which is the point."""
        return web.json_response({"alive": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        reason = self._not_ready_reason()
        broker = {} if self._broker is None else {"broker": self._broker()}
        if reason is None:
            return web.json_response({"ready": True, **broker})
        return web.json_response({"ready": False, "reason": reason, **broker}, status=503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


async def _cleanup(runner: web.AppRunner) -> None:
    """Close the open connections; bounded, and done even when cancelled."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await runner.cleanup()
    except TimeoutError:
        log.warning("HTTP: the server did not close within %g s", CLEANUP_TIMEOUT)
