"""The dashboard's routes: the page, its JSON API under ``/api/`` and its live event stream.

A command sent here is handed to the dispatcher as an inbound message on the
device's command topic, exactly as if it had come from the broker: the same
checks, ids, dedupe and per-device queue, and its result is published on MQTT
as well as returned here. docs/dashboard-api.md describes every route.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.core.logs import Throttle
from gateway.core.messages import Inbound
from gateway.core.topics import GATEWAY
from gateway.surfaces.dashboard.guard import ControlRefusedError, Guard, add_security_headers
from gateway.surfaces.dashboard.live import LiveHub, sse

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import HttpSettings
    from gateway.core.events import EventStream
    from gateway.core.fleet import Fleet
    from gateway.core.topics import Topics
    from gateway.surfaces.dashboard.live import LiveClient
    from gateway.surfaces.dashboard.model import DashboardModel

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_PAGES = 20
"""Live event streams at once: each holds a connection of ``http.max_connections``."""
HEARTBEAT = 15.0
"""Seconds between comments on an idle stream, so proxies and dead peers are noticed."""
WRITE_TIMEOUT = 10.0
"""Seconds a page's connection may stay blocked before the page is dropped."""


class Dashboard:
    """The page, the API and the live updates, added to the HTTP server's application."""

    def __init__(  # noqa: PLR0913 - each is a separate collaborator
        self,
        settings: HttpSettings,
        *,
        model: DashboardModel,
        events: EventStream,
        fleet: Fleet,
        topics: Topics,
        submit: Callable[[Inbound], None],
        gateway_actions: Callable[[], dict[str, Any]],
    ) -> None:
        """Wire the routes to the gateway.

        Args:
            settings: The HTTP settings (the token, where it listens).
            model: What the dashboard shows; it must already follow ``events``.
            events: The gateway's event stream, for the live updates.
            fleet: The devices (for their action schemas).
            topics: To make each command's topic.
            submit: Where commands go: the dispatcher's ``on_message``.
            gateway_actions: The gateway's own actions and their params' schemas.
        """
        self.model = model
        self.guard = Guard(settings)
        self.live = LiveHub(events, model)
        self._fleet = fleet
        self._topics = topics
        self._submit = submit
        self._gateway_actions = gateway_actions
        self._drop_log = Throttle()  # a page may come back and stall again, and again

    def install(self, app: web.Application) -> None:
        """Add the routes and the security headers to ``app``."""
        app.on_response_prepare.append(add_security_headers)
        app.router.add_get("/", self._page)
        app.router.add_static("/static/", STATIC)
        get = {
            "/api/gateway": self._gateway,
            "/api/snapshot": self._snapshot,
            "/api/devices": self._devices,
            "/api/devices/{device}": self._device,
            "/api/devices/{device}/results": self._results,
            "/api/scenes": self._scenes,
            "/api/activity": self._activity,
        }
        for path, handler in get.items():
            app.router.add_get(path, handler)
        # No HEAD: it would hold a page's place with a stream no one reads.
        app.router.add_get("/api/events", self._events, allow_head=False)
        app.router.add_post("/api/devices/{device}/command", self._command)

    async def _page(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _gateway(self, _request: web.Request) -> web.Response:
        return web.json_response(self.model.gateway())

    async def _snapshot(self, _request: web.Request) -> web.Response:
        return web.json_response(self.model.snapshot())

    async def _devices(self, _request: web.Request) -> web.Response:
        return web.json_response(self.model.devices())

    async def _device(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        if device == GATEWAY:
            return web.json_response({"id": GATEWAY, "actions": self._gateway_actions()})
        runner = self._fleet.get(device)
        if runner is None:
            return _not_found(device)
        actions = runner.adapter_type.actions_for(runner.config)
        schemas = {name: model.model_json_schema() for name, model in actions.items()}
        return web.json_response(
            {**self.model.row(runner), "actions": schemas, "results": self.model.recent(device)}
        )

    async def _results(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        if device != GATEWAY and self._fleet.get(device) is None:
            return _not_found(device)
        return web.json_response(self.model.recent(device))

    async def _scenes(self, _request: web.Request) -> web.Response:
        return web.json_response({"scenes": self.model.scenes(), "runs": self.model.runs()})

    async def _activity(self, request: web.Request) -> web.Response:
        wanted = {key: request.query.get(key) for key in ("device", "status", "code")}

        def matches(entry: dict[str, Any]) -> bool:
            code = None if entry["error"] is None else entry["error"]["code"]
            found = {"device": entry["device"], "status": entry["status"], "code": code}
            return all(value is None or found[key] == value for key, value in wanted.items())

        return web.json_response([e for e in self.model.activity if matches(e)])

    async def _command(self, request: web.Request) -> web.Response:
        """Run a command as the dispatcher runs one from MQTT; answer its result."""
        try:
            self.guard.check(request)
        except ControlRefusedError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        device = request.match_info["device"]
        topic = f"{self._topics.base}/{device}/command"
        # A segment no MQTT topic could carry (its result topic could not be published).
        if self._topics.command_target(topic) != device or _NOT_IN_TOPICS & set(device):
            return _not_found(device)
        payload = await request.read()
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def reply(result: bytes) -> None:
            if not answered.done():
                answered.set_result(result)

        # Every command message gets exactly one result (contract 3): this waits
        # for it; a client that goes away leaves the command running.
        self._submit(Inbound(topic, payload, reply=reply))
        return web.Response(body=await answered, content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """The live stream: a snapshot, then coalesced updates (and resyncs)."""
        if self.live.clients >= MAX_PAGES:
            return web.json_response({"error": "too many live pages open"}, status=503)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        client = self.live.join()
        try:
            await _send(response, [sse("snapshot", self.model.snapshot())])
            await self._stream(response, client)
        except TimeoutError:
            if (held_back := self._drop_log.allow()) is not None:
                log.info(
                    "HTTP: dropped a dashboard page that stopped reading (it may reconnect)%s",
                    f" ({held_back} more such lines held back)" if held_back else "",
                )
        except ConnectionError:
            pass  # the page went away
        finally:
            self.live.leave(client)
        return response

    async def _stream(self, response: web.StreamResponse, client: LiveClient) -> None:
        while not client.closed:
            try:
                async with asyncio.timeout(HEARTBEAT):
                    updates = await client.next()
            except TimeoutError:
                updates = [b": still here\n\n"]
            if client.resync:
                client.resync = False
                updates = [sse("resync", self.model.snapshot())]
            if updates:
                await _send(response, updates)


async def _send(response: web.StreamResponse, chunks: list[bytes]) -> None:
    """Write to a page; ``TimeoutError`` when its connection stays blocked."""
    async with asyncio.timeout(WRITE_TIMEOUT):
        for chunk in chunks:
            await response.write(chunk)


_NOT_IN_TOPICS = frozenset("+#\0")  # wildcards (MQTT 5 §4.7.1) and NUL (§1.5.4)


def _not_found(device: str) -> web.Response:
    return web.json_response({"error": f"no device {device!r}"}, status=404)
