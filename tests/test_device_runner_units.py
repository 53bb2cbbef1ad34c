"""A device's parts without a broker: wake-ups, the command worker, the link, the publisher."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from devices import Adapter, DeviceConfig, DeviceError, NoParams, PreconditionFailedError
from gateway.config import Backoff as RetrySettings
from gateway.config import GatewaySettings
from gateway.core.command_worker import CommandWorker, Job
from gateway.core.commands import Command, Result
from gateway.core.device_link import DeviceLink, Status
from gateway.core.device_runner import DeviceRunner
from gateway.core.errors import CommandError, ErrorCode
from gateway.core.state_publisher import StatePublisher
from gateway.core.topics import Topics
from gateway.core.wakeup import Wakeup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Mapping

    from devices import DeviceEvents, Params
    from gateway.core.messages import Outbound

TOPICS = Topics("iot")


class FakeAdapter(Adapter):
    """A device the test scripts: opens that fail or wait, actions that wait, hang or raise."""

    def __init__(self, config: DeviceConfig, events: DeviceEvents) -> None:
        super().__init__(config, events)
        self.open_failures = 0
        self.open_gate: asyncio.Event | None = None  # open waits for it, when set
        self.opens: list[float] = []  # loop time of each open
        self.closes = 0
        self.ran: list[str] = []
        self.cancelled: list[str] = []
        self.running = 0
        self.most_running = 0
        self.held: set[str] = set()  # actions that wait for ``release``
        self.release = asyncio.Event()
        self.hang: set[str] = set()  # actions that never end by themselves
        self.raises: dict[str, Exception] = {}

    async def open(self) -> None:
        self.opens.append(asyncio.get_running_loop().time())
        if self.open_gate is not None:
            await self.open_gate.wait()
        if self.open_failures:
            self.open_failures -= 1
            raise DeviceError("not there")
        self.update_state(power="off")  # before the link has it open: not published

    async def close(self) -> None:
        self.closes += 1

    async def execute(self, action: str, params: Params) -> None:
        del params
        self.ran.append(action)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.001)  # room for another command to overtake, if it could
            if action in self.held:
                await self.release.wait()
            if action in self.hang:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(action)
            raise
        finally:
            self.running -= 1
        if action in self.raises:
            raise self.raises[action]
        self.update_state(last=action)


class NoEvents:
    """An event sink for an adapter driven by the worker alone."""

    def state_changed(self, state: Mapping[str, Any], *, force: bool = False) -> None:
        del state, force

    def connection_lost(self, reason: str) -> None:
        del reason


class FakeGate:
    """The link as the worker sees it: online, connecting or offline, as the test says."""

    def __init__(self, status: Status = Status.ONLINE) -> None:
        self.changed = Wakeup()
        self.status = status

    def refusal(self) -> CommandError | None:
        if self.status is Status.OFFLINE:
            return CommandError(ErrorCode.DEVICE_UNAVAILABLE, "offline")
        return None

    def connecting(self) -> bool:
        return self.status is Status.CONNECTING

    def set(self, status: Status) -> None:
        self.status = status
        self.changed.fire()


def job(action: str = "go", *, expires_at: float | None = None) -> Job:
    """A job for ``action`` with no params."""
    return Job(Command(action=action, expires_at=expires_at), NoParams())


async def answer(each: Job) -> Result:
    """The job's result; a hang fails the test in 2 s rather than at the suite's timeout."""
    return await asyncio.wait_for(each.done, 2)


def code(result: Result) -> str | None:
    """The result's error code, None for ok."""
    return None if result.error is None else result.error.code.value


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``condition()`` holds.

    It polls, rather than waiting on the code's own wake-ups, so that a wake-up
    missing there fails a test instead of being relied on by it.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling on purpose: see above
            await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def background(coroutine: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coroutine`` as a task for the block; cancel it and wait for it after."""
    task = asyncio.create_task(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])


@contextlib.asynccontextmanager
async def running_worker(
    *, queue_size: int = 10, timeout: float = 2.0, gate: FakeGate | None = None
) -> AsyncIterator[tuple[CommandWorker, FakeAdapter, FakeGate]]:
    """A worker on a fake adapter behind a fake gate, running for the block."""
    gate = gate or FakeGate()
    adapter = FakeAdapter(DeviceConfig(id="dev", type="fake"), NoEvents())
    worker = CommandWorker("dev", adapter, gate, timeout=timeout, queue_size=queue_size)
    async with background(worker.run()):
        yield worker, adapter, gate


# -- Wakeup -------------------------------------------------------------------------


async def test_wakeup_returns_at_once_when_the_condition_holds_else_after_a_fire() -> None:
    wakeup = Wakeup()
    await wakeup.until(lambda: True)
    flag = False
    waiter = asyncio.create_task(wakeup.until(lambda: flag))
    await asyncio.sleep(0.01)
    wakeup.fire()  # nothing changed for it: it waits on
    await asyncio.sleep(0.01)
    assert not waiter.done()
    flag = True
    wakeup.fire()
    await asyncio.wait_for(waiter, 1)


async def test_a_cancelled_waiter_does_not_end_another_ones_wait() -> None:
    wakeup = Wakeup()
    flag = False
    staying = asyncio.create_task(wakeup.until(lambda: flag))
    leaving = asyncio.create_task(wakeup.until(lambda: flag))
    await asyncio.sleep(0.01)
    leaving.cancel()  # cancels the future both wait on
    await asyncio.wait([leaving])
    assert leaving.cancelled()
    await asyncio.sleep(0.01)
    assert not staying.done()
    flag = True
    wakeup.fire()
    await asyncio.wait_for(staying, 1)


# -- CommandWorker --------------------------------------------------------------------


async def test_worker_runs_one_at_a_time_in_arrival_order() -> None:
    async with running_worker() as (worker, adapter, _):
        jobs = [job(f"a{i}") for i in range(8)]
        answered: list[str] = []
        for each in jobs:
            each.done.add_done_callback(lambda done: answered.append(done.result().action or ""))
            worker.submit(each)
        results = [await answer(each) for each in jobs]
    names = [f"a{i}" for i in range(8)]
    assert adapter.ran == names
    assert answered == names
    assert [code(r) for r in results] == [None] * 8
    assert results[-1].state == {"last": "a7"}
    assert adapter.most_running == 1


async def test_worker_answers_busy_once_queue_size_commands_wait() -> None:
    async with running_worker(queue_size=2) as (worker, adapter, _):
        adapter.held.add("first")
        first = job("first")
        worker.submit(first)
        await eventually(lambda: worker.busy)
        waiting = [job("w1"), job("w2")]
        for each in waiting:
            worker.submit(each)  # the running one does not count
        assert worker.queue_depth == 2
        with pytest.raises(CommandError) as refused:
            worker.submit(job("w3"))
        assert refused.value.code is ErrorCode.BUSY
        adapter.release.set()
        assert [code(await answer(each)) for each in [first, *waiting]] == [None] * 3
        assert worker.queue_depth == 0
        assert adapter.ran == ["first", "w1", "w2"]


async def test_worker_refuses_or_answers_expired_commands_without_running_them() -> None:
    async with running_worker() as (worker, adapter, _):
        with pytest.raises(CommandError) as refused:
            worker.submit(job("late", expires_at=time.time() - 1))
        assert refused.value.code is ErrorCode.EXPIRED
        adapter.held.add("first")
        first = job("first")
        worker.submit(first)
        expiring = job("expiring", expires_at=time.time() + 0.05)
        worker.submit(expiring)  # not yet expired: queued
        await asyncio.sleep(0.1)
        adapter.release.set()
        result = await answer(expiring)
        assert code(result) == "expired"
        assert result.state is None
        assert code(await answer(first)) is None
        assert adapter.ran == ["first"]


async def test_worker_timeout_cancels_the_action_and_the_device_stays_usable() -> None:
    async with running_worker(timeout=0.05) as (worker, adapter, _):
        adapter.hang.add("stuck")
        stuck = job("stuck")
        worker.submit(stuck)
        result = await answer(stuck)
        assert code(result) == "timeout"
        assert result.error is not None
        assert "0.05 s timeout" in result.error.message
        assert adapter.cancelled == ["stuck"]
        assert result.state == {}  # the device's state, unchanged
        after = job("after")
        worker.submit(after)
        assert code(await answer(after)) is None
        assert not worker.busy


@pytest.mark.parametrize(
    ("raised", "expected", "message"),
    [
        (PreconditionFailedError("power is off"), "precondition_failed", "power is off"),
        (DeviceError("jammed"), "device_error", "jammed"),
        (DeviceError(), "device_error", "DeviceError"),
        (RuntimeError("a bug"), "device_error", "RuntimeError: a bug"),
        (TimeoutError(), "device_error", "the device timed out"),
    ],
)
async def test_worker_maps_adapter_failures_to_codes(
    raised: Exception, expected: str, message: str
) -> None:
    async with running_worker() as (worker, adapter, _):
        adapter.raises["act"] = raised
        failing = job("act")
        worker.submit(failing)
        result = await answer(failing)
        assert code(result) == expected
        assert result.error is not None
        assert result.error.message == message
        assert result.state == {}


async def test_worker_shutdown_cancels_queued_then_running_after_grace() -> None:
    async with running_worker(timeout=30) as (worker, adapter, _):
        adapter.hang.add("long")
        running = job("long")
        worker.submit(running)
        await eventually(lambda: worker.busy)
        queued = [job("q1"), job("q2")]
        for each in queued:
            worker.submit(each)
        worker.stop()
        assert [code(await answer(each)) for each in queued] == ["cancelled", "cancelled"]
        with pytest.raises(CommandError) as refused:
            worker.submit(job("new"))
        assert refused.value.code is ErrorCode.CANCELLED
        with pytest.raises(TimeoutError):  # the grace period: it keeps running
            async with asyncio.timeout(0.05):
                await worker.until_idle()
        assert worker.busy
        assert not running.done.done()
        worker.cancel_running()
        await asyncio.wait_for(worker.until_idle(), 1)
        result = await answer(running)
        assert result.error is not None
        assert (code(result), result.error.message) == (
            "cancelled",
            "the gateway shut down while it ran",
        )
        assert adapter.ran == ["long"]
        assert adapter.cancelled == ["long"]


async def test_worker_close_answers_a_job_cut_off_by_cancellation() -> None:
    adapter = FakeAdapter(DeviceConfig(id="dev", type="fake"), NoEvents())
    worker = CommandWorker("dev", adapter, FakeGate(), timeout=30, queue_size=10)
    adapter.hang.add("long")
    cut = job("long")
    async with background(worker.run()):
        worker.submit(cut)
        await eventually(lambda: worker.busy)
    assert not cut.done.done()
    worker.close()
    assert code(await answer(cut)) == "cancelled"


async def test_worker_holds_a_command_while_connecting_then_runs_it() -> None:
    async with running_worker(gate=FakeGate(Status.CONNECTING)) as (worker, adapter, gate):
        waiting = job("go")
        worker.submit(waiting)
        await asyncio.sleep(0.02)
        assert not waiting.done.done()
        assert adapter.ran == []
        gate.set(Status.ONLINE)
        assert code(await answer(waiting)) is None
        assert adapter.ran == ["go"]


async def test_worker_answers_unavailable_when_the_connect_fails() -> None:
    async with running_worker(gate=FakeGate(Status.CONNECTING)) as (worker, adapter, gate):
        waiting = job("go")
        worker.submit(waiting)
        await asyncio.sleep(0.02)
        gate.set(Status.OFFLINE)
        assert code(await answer(waiting)) == "device_unavailable"
        with pytest.raises(CommandError) as refused:
            worker.submit(job("again"))
        assert refused.value.code is ErrorCode.DEVICE_UNAVAILABLE
        assert adapter.ran == []


async def test_worker_stop_answers_a_command_waiting_for_the_connect() -> None:
    async with running_worker(gate=FakeGate(Status.CONNECTING)) as (worker, adapter, _):
        waiting = job("go")
        worker.submit(waiting)
        await asyncio.sleep(0.02)
        worker.stop()
        result = await answer(waiting)
        assert result.error is not None
        assert result.error.message == "the gateway shut down before it ran"
        assert adapter.ran == []


# -- DeviceLink -----------------------------------------------------------------------


@dataclass
class Node:
    """A device in the dependency graph, as ``Linked`` asks (the runner in production)."""

    link: DeviceLink
    sent: list[Outbound]
    dependents: list[Node] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)

    @property
    def adapter(self) -> FakeAdapter:
        adapter = self.link.adapter
        assert isinstance(adapter, FakeAdapter)
        return adapter

    def published(self, kind: str) -> list[bytes]:
        """Payloads published on this device's ``availability`` or ``state`` topic."""
        topic = f"iot/{self.link.id}/{kind}"
        return [m.payload for m in self.sent if m.topic == topic]


def node(
    device: str,
    *,
    dependencies: list[Node] | None = None,
    retry: tuple[float, float] = (0.01, 0.04),
) -> Node:
    """A link on a fake adapter, wired like the runner does, with its output recorded."""
    sent: list[Outbound] = []
    dependents: list[Node] = []
    statuses: list[Status] = []
    link = DeviceLink(
        DeviceConfig(id=device, type="fake"),
        FakeAdapter,
        dependencies=dependencies or [],
        dependents=dependents,
        retry=RetrySettings(min_delay=retry[0], max_delay=retry[1]),
        timeout=1,
        publisher=StatePublisher(device, TOPICS, sent.append),
        on_status=lambda: statuses.append(link.status),
    )
    made = Node(link, sent, dependents, statuses)
    for dep in dependencies or []:
        dep.dependents.append(made)
    return made


async def test_link_retries_a_failed_open_with_growing_backoff() -> None:
    device = node("late", retry=(0.02, 0.08))
    device.adapter.open_failures = 4
    async with background(device.link.run()):
        await eventually(lambda: device.link.status is Status.ONLINE)
    gaps = [b - a for a, b in itertools.pairwise(device.adapter.opens)]
    # Attempt k waits between max(min, upper / 2) and upper = min(max, min * 2**k).
    lowest = [0.02, 0.02, 0.04, 0.04]
    assert len(gaps) == len(lowest)
    assert all(gap >= low - 0.002 for gap, low in zip(gaps, lowest, strict=True)), gaps
    assert device.statuses == [Status.OFFLINE] * 4 + [Status.ONLINE]
    assert device.published("availability") == [b"offline", b"online"]
    assert device.published("state")[-1] == b'{"power":"off"}'


async def test_link_backoff_starts_again_after_a_successful_connect() -> None:
    device = node("dev", retry=(0.01, 10))
    device.adapter.open_failures = 5  # without a reset, the next delay would be 0.16 to 0.32 s
    async with background(device.link.run()):
        await eventually(lambda: device.link.status is Status.ONLINE)
        lost_at = asyncio.get_running_loop().time()
        device.link.connection_lost("cable pulled")
        await eventually(lambda: len(device.adapter.opens) == 7)
        assert device.adapter.opens[6] - lost_at < 0.16
        await eventually(lambda: device.link.status is Status.ONLINE)


async def test_link_reopens_a_lost_connection() -> None:
    device = node("dev")
    async with background(device.link.run()):
        await eventually(lambda: device.link.status is Status.ONLINE)
        # The state set while first opening waits for the open; then it is published once.
        assert device.published("state") == [b'{"power":"off"}']
        device.adapter.events.connection_lost("cable pulled")
        await eventually(lambda: len(device.adapter.opens) == 2)
        await eventually(lambda: device.link.status is Status.ONLINE)
        assert device.adapter.closes == 1
    assert device.statuses == [Status.ONLINE, Status.OFFLINE, Status.ONLINE]
    assert device.published("availability") == [b"online", b"offline", b"online"]


async def test_link_connects_only_after_its_dependency_is_online() -> None:
    hub = node("hub")
    light = node("light", dependencies=[hub])
    hub.adapter.open_gate = asyncio.Event()
    async with background(hub.link.run()), background(light.link.run()):
        await asyncio.sleep(0.05)
        assert light.adapter.opens == []
        assert light.link.status is Status.CONNECTING
        assert light.link.connecting()  # commands to it wait
        assert light.link.refusal() is None
        released = asyncio.get_running_loop().time()
        hub.adapter.open_gate.set()
        await eventually(lambda: light.link.available)
        assert light.adapter.opens[0] >= released
        assert not light.link.connecting()


async def test_link_is_unavailable_while_a_dependency_is_offline() -> None:
    hub = node("hub", retry=(0.1, 0.1))
    light = node("light", dependencies=[hub])
    hub.adapter.open_failures = 1
    async with background(hub.link.run()), background(light.link.run()):
        await eventually(lambda: hub.link.status is Status.OFFLINE)
        refusal = light.link.refusal()
        assert refusal is not None
        assert refusal.code is ErrorCode.DEPENDENCY_UNAVAILABLE
        assert light.adapter.opens == []
        assert light.published("availability") == [b"offline"]
        await eventually(lambda: light.link.available)
        # Its dependency drops: the light is still open, but unavailable.
        hub.adapter.open_failures = 1
        hub.link.connection_lost("gone")
        await eventually(lambda: hub.link.status is Status.OFFLINE)
        assert light.link.status is Status.ONLINE
        assert not light.link.available
        assert light.published("availability")[-1] == b"offline"
        await eventually(lambda: light.link.available)
    assert light.published("availability") == [b"offline", b"online", b"offline", b"online"]


# -- StatePublisher -------------------------------------------------------------------


def test_publisher_publishes_state_and_availability_only_when_changed() -> None:
    sent: list[Outbound] = []
    publisher = StatePublisher("lamp", TOPICS, sent.append)
    assert [(m.topic, m.payload) for m in publisher.announcements(available=False)] == [
        ("iot/lamp/availability", b"offline")
    ]
    publisher.availability(available=False)  # announced already
    publisher.state({"power": "off"})
    publisher.state({"power": "off"})
    publisher.state({"power": "off"}, force=True)
    publisher.state({"power": "on"})
    publisher.availability(available=True)
    publisher.availability(available=True)
    publisher.availability(available=True, force=True)
    assert [(m.topic, m.payload) for m in sent] == [
        ("iot/lamp/state", b'{"power":"off"}'),
        ("iot/lamp/state", b'{"power":"off"}'),
        ("iot/lamp/state", b'{"power":"on"}'),
        ("iot/lamp/availability", b"online"),
        ("iot/lamp/availability", b"online"),
    ]
    assert all(m.retain for m in sent)
    announced = publisher.announcements(available=True)
    assert [(m.topic, m.payload, m.retain) for m in announced] == [
        ("iot/lamp/availability", b"online", True),
        ("iot/lamp/state", b'{"power":"on"}', True),
    ]


# -- DeviceRunner: the parts wired together -------------------------------------------


async def test_runner_serves_commands_and_shuts_down_offline() -> None:
    sent: list[Outbound] = []
    settings = GatewaySettings(
        command_timeout=1, queue_size=5, device_retry=RetrySettings(min_delay=0.01, max_delay=0.1)
    )
    runner = DeviceRunner(
        config=DeviceConfig(id="dev", type="fake"),
        adapter_type=FakeAdapter,
        settings=settings,
        topics=TOPICS,
        publish=sent.append,
        dependencies=[],
    )
    assert runner.link.connecting()
    async with background(runner.run()):
        first = job("go")
        runner.submit(first)  # waits for the connect
        result = await answer(first)
        assert code(result) is None
        assert result.state == {"power": "off", "last": "go"}
        assert runner.available
        runner.stop_accepting()
        await runner.until_idle()
    await runner.close()
    assert runner.status is Status.OFFLINE
    assert isinstance(runner.adapter, FakeAdapter)
    assert runner.adapter.closes == 1
    assert [m.payload for m in sent if m.topic == "iot/dev/availability"] == [
        b"online",
        b"offline",
    ]
    assert [m.payload for m in runner.announcements()] == [
        b"offline",
        b'{"power":"off","last":"go"}',
    ]
