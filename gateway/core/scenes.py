"""Gateway commands ``run_scene`` and ``run_steps``, run as a DAG of device commands.

Each step starts the moment every step in its ``after`` has succeeded, and goes
through its device's ordinary queue, so per-device order holds across scenes
and plain commands alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devices import Params
from gateway.core.commands import Command, Result
from gateway.core.dedupe import Interrupted, compact
from gateway.core.device_runner import Job
from gateway.core.errors import CommandError, ErrorCode, validate_params
from gateway.core.events import EventStream, StepChanged
from gateway.core.journal import JournalUnavailableError, durable_start
from gateway.core.lifecycle import Lifecycle
from gateway.core.steps import Scene, Step, StepList, check_steps

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from gateway.core.dedupe import Answered
    from gateway.core.device_runner import DeviceRunner
    from gateway.core.fleet import Fleet
    from gateway.core.gateway_commands import Begin, GatewayCommands
    from gateway.core.journal import Journal

    Recall = Callable[[str, str], Answered | Interrupted | None]
    from gateway.core.registry import AdapterRegistry


class RunScene(Params):
    """``run_scene``: a scene of the configuration, by name."""

    scene: str


class RunSteps(Params):
    """``run_steps``: an ad-hoc step list (at most ``MAX_STEPS`` steps)."""

    steps: StepList


def register(commands: GatewayCommands, runner: SceneRunner) -> None:
    """Add ``run_scene`` and ``run_steps``, run by ``runner``."""
    commands.register("run_scene", RunScene, runner.prepare_scene)
    commands.register("run_steps", RunSteps, runner.prepare_steps)


@dataclass(frozen=True, slots=True)
class _Run:
    """One running scene or step list: its command, and its scene's name if it has one."""

    command: Command
    scene: str | None


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """A validated step, bound to its device runner."""

    step: Step
    runner: DeviceRunner
    params: Params


class SceneRunner:
    """Checks scenes and step lists, runs their steps; owns the running scenes."""

    def __init__(
        self,
        scenes: Mapping[str, Scene],
        fleet: Fleet,
        registry: AdapterRegistry,
        lifecycle: Lifecycle | None = None,
        events: EventStream | None = None,
    ) -> None:
        """Nothing runs until ``run``; ``lifecycle`` says when to take no more.

        ``events`` gets each step's progress (``StepChanged``).
        """
        self._scenes = scenes
        self._fleet = fleet
        self._registry = registry
        self._lifecycle = Lifecycle() if lifecycle is None else lifecycle
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._journal: Journal | None = None
        self._recall: Recall = lambda _device, _id: None
        self._events = EventStream() if events is None else events

    def journal_steps(self, journal: Journal, recall: Recall) -> None:
        """Journal the steps of scenes with ids, as device commands are (contract 10).

        ``recall`` gives what is remembered of a step's id on its device: a step
        that finished before a crash is not run again (its outcome is reused), one
        cut off while it ran is ``interrupted``.
        """
        self._journal, self._recall = journal, recall

    def describe(self) -> list[dict[str, Any]]:
        """The ``gateway/scenes`` list: each scene and its steps."""
        return [
            {"name": name, "steps": [step.model_dump() for step in scene.steps]}
            for name, scene in self._scenes.items()
        ]

    def describe_json(self) -> bytes:
        """``describe`` as the retained ``gateway/scenes`` payload."""
        return json.dumps(self.describe(), separators=(",", ":")).encode()

    def prepare_scene(self, command: Command, params: RunScene) -> Begin:
        """Check a ``run_scene`` command; what it returns runs the scene."""
        scene = self._scenes.get(params.scene)
        if scene is None:
            known = ", ".join(sorted(self._scenes)) or "none"
            raise CommandError(
                ErrorCode.INVALID_PARAMS,
                f"params.scene: unknown scene {params.scene!r} ({known})",
            )
        plan = self.plan(scene.steps, where=f"scenes.{params.scene}.steps")
        return lambda: self.start(command, plan, scene=params.scene)

    def prepare_steps(self, command: Command, params: RunSteps) -> Begin:
        """Check a ``run_steps`` command; what it returns runs its steps."""
        plan = self.plan(params.steps, where="params.steps")
        return lambda: self.start(command, plan)

    def plan(self, steps: Sequence[Step], where: str) -> list[PlannedStep]:
        """Check every step before any runs (``invalid_params``, naming each at ``where``)."""
        devices = {runner.id: runner.config for runner in self._fleet}
        problems = check_steps(steps, devices, self._registry, where=where)
        if problems:
            raise CommandError(ErrorCode.INVALID_PARAMS, "; ".join(problems))
        planned = []
        for step in steps:
            runner = self._fleet.runners[step.device]
            actions = runner.adapter_type.actions_for(runner.config)
            params = validate_params(actions, step.action, step.params)
            planned.append(PlannedStep(step, runner, params))
        return planned

    def start(
        self, command: Command, plan: list[PlannedStep], scene: str | None = None
    ) -> asyncio.Future[Result]:
        """Run a planned command (of ``scene``, if named) in the background.

        The future gets its result.
        """
        if self._tasks is None or not self._lifecycle.accepting:
            raise CommandError(ErrorCode.CANCELLED, "the gateway is shutting down")
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._tasks.create_task(self._run(_Run(command, scene), plan, done))
        return done

    async def run(self) -> None:
        """Own the running scenes until ``stop``; then wait for them to finish."""
        async with asyncio.TaskGroup() as self._tasks:
            await self._stop.wait()

    def stop(self) -> None:
        """``run`` returns once the running scenes have answered (the core is draining)."""
        self._stop.set()

    async def _run(self, run: _Run, plan: list[PlannedStep], done: asyncio.Future[Result]) -> None:
        command = run.command
        started = time.monotonic()
        outcomes: dict[str, asyncio.Future[dict[str, Any]]] = {
            p.step.id: asyncio.get_running_loop().create_future() for p in plan
        }
        async with asyncio.TaskGroup() as tasks:
            for planned in plan:
                tasks.create_task(self._run_step(run, planned, outcomes))
        steps = {step_id: outcome.result() for step_id, outcome in outcomes.items()}
        failed = [step_id for step_id, s in steps.items() if s["status"] != "ok"]
        error = None
        if failed:
            error = CommandError(ErrorCode.STEP_FAILED, f"steps not ok: {', '.join(failed)}")
        done.set_result(
            Result(
                id=command.id,
                device="gateway",
                action=command.action,
                error=error,
                duration_ms=(time.monotonic() - started) * 1000,
                extra={"steps": steps},
            )
        )

    async def _run_step(
        self,
        run: _Run,
        planned: PlannedStep,
        outcomes: Mapping[str, asyncio.Future[dict[str, Any]]],
    ) -> None:
        command, step = run.command, planned.step

        def settle(outcome: dict[str, Any]) -> None:
            outcomes[step.id].set_result(outcome)
            self._step_changed(run, step, outcome["status"], outcome["error"])

        for dep in step.after:
            if (await asyncio.shield(outcomes[dep]))["status"] != "ok":
                settle(self._not_run(f"step {dep!r} did not succeed"))
                return
        job = Job(
            Command(action=step.action, id=f"{command.id}/{step.id}", params=step.params),
            planned.params,
        )
        journal = self._journal if command.given_id else None
        if journal is not None and (earlier := self._recall(planned.runner.id, job.command.id)):
            settle(_recalled(earlier))
            return
        if journal is not None:
            job.before_run = durable_start(
                journal, planned.runner.id, job.command.id, refused="the step did not run"
            )
        try:
            planned.runner.submit(job)
            self._step_changed(run, step, "running", None)
            result = await asyncio.shield(job.done)
        except CommandError as exc:
            settle(_outcome("error", exc.as_json(), 0.0))
            return
        if journal is not None and (result.error is None or result.state is not None):
            # It ran: recorded before the scene's result can be published.
            with contextlib.suppress(JournalUnavailableError):
                await journal.finished(planned.runner.id, job.command.id, compact(result, b"{}"))
        error = None if result.error is None else result.error.as_json()
        settle(_outcome("ok" if error is None else "error", error, result.duration_ms, result))

    def _step_changed(
        self, run: _Run, step: Step, status: str, error: dict[str, str] | None
    ) -> None:
        if self._events.wanted:
            self._events.emit(
                StepChanged(
                    run.command.id, run.scene, step.id, step.device, step.action, status, error
                )
            )

    def _not_run(self, why: str) -> dict[str, Any]:
        if not self._lifecycle.accepting:
            cancelled = CommandError(ErrorCode.CANCELLED, "the gateway shut down before it ran")
            return _outcome("error", cancelled.as_json(), 0.0)
        return _outcome("skipped", {"code": "step_failed", "message": f"skipped: {why}"}, 0.0)


def _recalled(earlier: Answered | Interrupted) -> dict[str, Any]:
    """The outcome of a step remembered from before a restart: not run again."""
    if isinstance(earlier, Interrupted):
        error = CommandError(
            ErrorCode.INTERRUPTED, "the gateway stopped while this step ran; not run again"
        )
        return {**_outcome("error", error.as_json(), 0.0), "duplicate": True}
    _, code, message = earlier
    error_json = None if code is None else {"code": code, "message": message}
    return {**_outcome("ok" if code is None else "error", error_json, 0.0), "duplicate": True}


def _outcome(
    status: str, error: dict[str, str] | None, duration_ms: float, result: Result | None = None
) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "status": status,
        "error": error,
        "duration_ms": round(duration_ms, 1),
    }
    if result is not None and result.started_at is not None:
        outcome["started_at"] = round(result.started_at, 3)
        outcome["finished_at"] = round(result.started_at + result.duration_ms / 1000, 3)
    return outcome
