"""The HTTP endpoint (contract §8): liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import HttpSettings
    from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# Seconds aiohttp gives requests in progress at shutdown (a scrape takes
# milliseconds), and the bound on the whole cleanup.
REQUEST_GRACE = 1.0
CLEANUP_TIMEOUT = 3.0


class HttpServerError(Exception):
    """The HTTP server could not start: the port is taken, or the address is not ours."""


class HttpServer:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` until stopped."""

    def __init__(
        self,
        settings: HttpSettings,
        not_ready_reason: Callable[[], str | None],
        metrics: Metrics,
    ) -> None:
        """Nothing listens until ``run``.

        Args:
            settings: Where to listen; port 0 takes a free port (see ``port``).
            not_ready_reason: Why the gateway is not ready, or None when it is.
            metrics: What ``/metrics`` exposes.
        """
        self._settings = settings
        self._not_ready_reason = not_ready_reason
        self._metrics = metrics
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
        # No access log: a scrape every few seconds would drown the gateway's own lines.
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=REQUEST_GRACE)
        await runner.setup()
        try:
            await self._listen(runner)
            self.started.set()
            await self._stop.wait()
        finally:
            await _cleanup(runner)

    async def _listen(self, runner: web.AppRunner) -> None:
        host, port = self._settings.host, self._settings.port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise HttpServerError(
                f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self.port = int(runner.addresses[0][1])
        log.info("HTTP: /healthz, /readyz and /metrics on %s port %d", host, self.port)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        """Answered at all only while the event loop runs, which is the point."""
        return web.json_response({"alive": True})

    async def _readyz(self, _request: web.Request) -> web.Response:
        reason = self._not_ready_reason()
        if reason is None:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": reason}, status=503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


async def _cleanup(runner: web.AppRunner) -> None:
    """Close the listener and connections; bounded, and done even when cancelled."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await runner.cleanup()
    except TimeoutError:
        log.warning("HTTP: the server did not close within %g s", CLEANUP_TIMEOUT)
