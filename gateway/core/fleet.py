"""Every device runner: started together, stopped in reverse dependency order."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import TYPE_CHECKING, Any

from devices.capabilities import describe as describe_fields
from devices.capabilities import device_fields
from gateway.core.device_runner import DeviceRunner, Status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pydantic import BaseModel

    from gateway.config import Config
    from gateway.core.events import EventStream
    from gateway.core.messages import Outbound
    from gateway.core.registry import AdapterRegistry
    from gateway.core.topics import Topics

log = logging.getLogger(__name__)


class Fleet:
    """Owns the device runners and their tasks."""

    def __init__(  # noqa: PLR0913 - the fleet's inputs
        self,
        config: Config,
        registry: AdapterRegistry,
        topics: Topics,
        publish: Callable[[Outbound], None],
        *,
        on_status: Callable[[], None] = lambda: None,
        events: EventStream | None = None,
    ) -> None:
        """Build a runner per device, dependencies before dependents.

        ``on_status`` is called whenever a device's status changes; ``events``
        gets every device's state and availability changes.
        """
        self.runners: dict[str, DeviceRunner] = {}
        self._connecting: set[str] = set()  # not yet through their first connect
        self.all_started = asyncio.Event()
        """Set once every device has had its first connect (online or given up)."""
        settings = config.settings.gateway
        for device in _dependency_order(config):
            deps = [self.runners[d] for d in device.depends_on]
            runner = DeviceRunner(
                config=device,
                adapter_type=registry.get(device.type),
                settings=settings,
                topics=topics,
                publish=publish,
                dependencies=deps,
                events=events,
                on_status=functools.partial(self._status_changed, device.id, on_status),
            )
            for dep in deps:
                dep.dependents.append(runner)
            self.runners[device.id] = runner
            self._connecting.add(device.id)
        if not self._connecting:
            self.all_started.set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._description: list[dict[str, Any]] | None = None
        self._description_json: bytes | None = None

    def __iter__(self) -> Iterator[DeviceRunner]:
        """Runners, dependencies first."""
        return iter(self.runners.values())

    def get(self, device_id: str) -> DeviceRunner | None:
        """The runner for ``device_id``, if there is such a device."""
        return self.runners.get(device_id)

    def describe(self) -> list[dict[str, Any]]:
        """The ``gateway/devices`` list: id, type, dependencies, action schemas, state fields.

        Made once (every part of it comes from the configuration) and shared: do
        not change it.
        """
        if self._description is None:
            self._description = self._describe()
        return self._description

    def _describe(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "type": r.config.type,
                "name": r.config.name or r.id,
                "area": r.config.area,
                "depends_on": list(r.config.depends_on),
                "actions": {
                    name: _schema(model)
                    for name, model in r.adapter_type.actions_for(r.config).items()
                },
                "state_fields": describe_fields(device_fields(r.adapter_type, r.config)),
            }
            for r in self
        ]

    def describe_json(self) -> bytes:
        """``describe`` as a payload (made once, like ``describe``)."""
        if self._description_json is None:
            self._description_json = json.dumps(self.describe(), separators=(",", ":")).encode()
        return self._description_json

    @property
    def started(self) -> bool:
        """Every device has had its first connect (online or given up).

        A device waiting on a dependency that gave up counts as started: it
        cannot connect before that dependency does, and readiness must not wait
        for a device that may never come.
        """
        return self.all_started.is_set()

    def still_connecting(self) -> list[str]:
        """The devices that have not yet started, in dependency order."""
        return [device_id for device_id in self.runners if device_id in self._connecting]

    def _status_changed(self, device_id: str, on_status: Callable[[], None]) -> None:
        # Counted here, so asking whether all have started costs nothing at 10,000.
        runner = self.runners[device_id]
        if runner.status is not Status.CONNECTING and self._connecting:
            self._connecting.discard(device_id)
            if runner.status is Status.OFFLINE:
                self._settle_dependents(runner)
            if not self._connecting:
                self.all_started.set()
        on_status()

    def _settle_dependents(self, gave_up: DeviceRunner) -> None:
        """Count every device waiting (directly or not) on ``gave_up`` as started."""
        pending = list(gave_up.dependents)
        while pending:  # iterative: a dependency chain may be long
            runner = pending.pop()
            if runner.id in self._connecting:
                self._connecting.discard(runner.id)
                pending.extend(runner.dependents)

    async def run(self) -> None:
        """Run every device until cancelled; each connects once its dependencies are up."""
        async with asyncio.TaskGroup() as tasks:
            for runner in self:
                self._tasks[runner.id] = tasks.create_task(
                    runner.run(), name=f"device:{runner.id}"
                )

    async def shutdown(self, grace: float) -> None:
        """Cancel queued work, give running actions ``grace`` seconds, close all."""
        for runner in self:
            runner.stop_accepting()
        try:
            async with asyncio.timeout(grace):
                await _until_idle(list(self))
        except TimeoutError:
            busy = [r.id for r in self if r.busy]
            log.warning("shutdown grace of %g s is over; cancelling %s", grace, ", ".join(busy))
            for runner in self:
                runner.cancel_running()
            await _until_idle(list(self))
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._close_in_reverse_order()

    async def _close_in_reverse_order(self) -> None:
        closed = {r.id: asyncio.Event() for r in self}

        async def close(runner: DeviceRunner) -> None:
            for dependent in runner.dependents:
                await closed[dependent.id].wait()
            await runner.close()
            closed[runner.id].set()
            log.info("device %s closed", runner.id)

        async with asyncio.TaskGroup() as tasks:
            for runner in self:
                tasks.create_task(close(runner))


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """A params model's JSON Schema; many devices share a few models."""
    return model.model_json_schema()


async def _until_idle(runners: list[DeviceRunner]) -> None:
    """Wait until no runner has an action running."""
    await asyncio.gather(*(runner.until_idle() for runner in runners))


def _dependency_order(config: Config) -> list[Any]:
    """Devices sorted so each comes after everything it depends on."""
    by_id = {d.id: d for d in config.devices}
    ordered: dict[str, Any] = {}
    for root, device in by_id.items():
        # Depth first without recursion: a chain of devices may be deeper than
        # Python's stack. The config has no cycles (checked when it was loaded).
        stack = [(root, iter(device.depends_on))]
        while stack:
            device_id, deps = stack[-1]
            dep = next((d for d in deps if d not in ordered), None)
            if dep is None:
                stack.pop()
                ordered.setdefault(device_id, by_id[device_id])
            else:
                stack.append((dep, iter(by_id[dep].depends_on)))
    return list(ordered.values())
