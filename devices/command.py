"""The ``command`` adapter: each action runs a program, never through a shell.

A parameter fills a whole argument (``["/usr/bin/prog", "--level", "{level}"]``),
passed to the program verbatim as that one argument: a value cannot add
arguments or reach a shell, whatever it holds. A run that outlives its timeout,
or whose command is cancelled, is killed with everything it started (its own
process group). A non-zero exit is a ``device_error`` quoting the end of stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from typing import TYPE_CHECKING, ClassVar

from pydantic import DirectoryPath, Field, ValidationInfo, field_validator

from devices.base import DeviceConfig, DeviceError, Params
from devices.templates import (
    ActionModels,
    ActionName,
    ConfiguredActionsAdapter,
    ConfiguredActionsConfig,
    ParamSpec,
    ParamSpecs,
    Spec,
    as_text,
    build_params_model,
    check_placeholders,
    declared_params,
    need_something,
    placeholders,
    refuse,
    render,
    whole_placeholder,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

STDERR_TAIL = 300  # characters of stderr quoted in an error
REAP_TIMEOUT = 5.0  # seconds to wait for a killed process to be reaped
_HIDDEN_ENV_PREFIX = "GATEWAY_"  # the gateway's own settings (and secrets) stay private


class Run(Spec):
    """The state program: its arguments (no parameters) and how long it may take."""

    argv: tuple[str, ...] = Field(min_length=1)
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("argv")
    @classmethod
    def _no_parameters(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        if any(placeholders(arg) for arg in argv):
            raise ValueError(
                "the state program takes no parameters ({{ and }} are literal braces)"
            )
        return _checked_argv(argv, {})


class CommandAction(Spec):
    """An action: a program whose arguments may be parameters."""

    params: ParamSpecs = Field(default_factory=dict)  # first: argv is checked on it
    argv: tuple[str, ...] = Field(min_length=1)
    timeout: float | None = Field(default=None, gt=0)
    """Seconds before the program is killed; the host's command timeout applies too."""
    state_from_stdout: bool = False

    @field_validator("argv")
    @classmethod
    def _parameters_fill_whole_arguments(
        cls, argv: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        return _checked_argv(argv, declared_params(info))


def _checked_argv(
    argv: tuple[str, ...], declared: Mapping[str, ParamSpec] | None
) -> tuple[str, ...]:
    """``argv`` if the program is fixed and each parameter fills a whole argument."""
    if placeholders(argv[0]):
        raise ValueError("the program (argv[0]) cannot be a parameter")
    for index, arg in enumerate(argv):
        if placeholders(arg) and whole_placeholder(arg) is None:
            raise ValueError(
                f"argv[{index}] {arg!r}: a parameter must be a whole argument, like '{{name}}'"
            )
    check_placeholders(set().union(*map(placeholders, argv)), declared)
    return argv


class CommandConfig(ConfiguredActionsConfig):
    """Programs run as actions, and optionally one whose output is the state."""

    state: Run | None = None
    """A program whose stdout (a JSON object) is merged into the state."""
    poll_interval: float | None = Field(default=None, gt=0)
    cwd: DirectoryPath | None = None
    env: dict[str, str] = Field(default_factory=dict)
    """Added to the gateway's environment, which the programs get without ``GATEWAY_*``."""
    # Last: it is checked against ``state``, validated before it.
    actions: dict[ActionName, CommandAction] = Field(default_factory=dict, validate_default=True)

    @field_validator("actions")
    @classmethod
    def _does_something(
        cls, actions: dict[str, CommandAction], info: ValidationInfo
    ) -> dict[str, CommandAction]:
        need_something(
            actions, info, "state", "a command device needs at least one action or a state program"
        )
        return actions

    def build_action_models(self) -> ActionModels:
        """A parameter model per action; an argument cannot hold a NUL character."""
        no_nul = (refuse("\0"),)
        return {
            name: build_params_model(
                name, action.params, text_rules=dict.fromkeys(action.params, no_nul)
            )
            for name, action in self.actions.items()
        }


class CommandDevice(ConfiguredActionsAdapter):
    """A device driven by running programs."""

    config_model: ClassVar[type[DeviceConfig]] = CommandConfig
    config: CommandConfig

    async def open(self) -> None:
        """Check every program exists; run the state program, if there is one."""
        programs = [action.argv[0] for action in self.config.actions.values()]
        if self.config.state is not None:
            programs.append(self.config.state.argv[0])
        for program in programs:
            if shutil.which(program) is None:
                raise DeviceError(f"no such program: {program}")
        await self._read_state()

    async def close(self) -> None:
        """Nothing stays open: every run ends before its action does."""

    async def background(self) -> None:
        """Run the state program every ``poll_interval``; a failure means the device is lost."""
        if self.config.state is not None:
            await self.poll(self.config.poll_interval, self._read_state)

    async def execute(self, action: str, params: Params) -> None:
        """Run the action's program with the parameters as arguments."""
        spec = self.config.actions[action]
        argv = _arguments(spec.argv, params.model_dump())
        stdout = await self._run(argv, spec.timeout)
        if spec.state_from_stdout:
            self.merge_state(_json_object(stdout, argv[0]))

    async def _read_state(self) -> None:
        state = self.config.state
        if state is not None:
            stdout = await self._run(_arguments(state.argv, {}), state.timeout)
            self.merge_state(_json_object(stdout, state.argv[0]))

    async def _run(self, argv: Sequence[str], limit: float | None) -> str:
        """Run ``argv`` for up to ``limit`` seconds: stdout, or ``DeviceError`` on any failure."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, to kill all it starts
                cwd=self.config.cwd,
                env=self._environment(),
            )
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            async with asyncio.timeout(limit):
                stdout, stderr = await _communicate(process)
        except TimeoutError:
            raise DeviceError(f"{argv[0]} ran past its {limit} s timeout; killed") from None
        if process.returncode:
            raise DeviceError(f"{argv[0]} {_exit_status(process.returncode)}: {_tail(stderr)}")
        return stdout.decode(errors="replace")

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_HIDDEN_ENV_PREFIX)}
        return env | self.config.env


async def _communicate(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Wait for the output; if cancelled (a timeout), kill the process group first."""
    try:
        return await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):  # bounded, even if the kill is ignored
            async with asyncio.timeout(REAP_TIMEOUT):
                await process.wait()
        raise


def _arguments(argv: Sequence[str], values: Mapping[str, object]) -> list[str]:
    """Each argument: a parameter's value verbatim, or the literal text (``{{`` is ``{``)."""
    return [
        render(arg, values) if (name := whole_placeholder(arg)) is None else as_text(values[name])
        for arg in argv
    ]


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _tail(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    return text[-STDERR_TAIL:] if text else "(no stderr)"


def _json_object(stdout: str, program: str) -> Mapping[str, object]:
    try:
        value = json.loads(stdout)
    except ValueError as exc:
        raise DeviceError(f"{program} did not print JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DeviceError(f"{program} printed JSON that is not an object")
    return value
