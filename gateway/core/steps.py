"""Scenes and step lists: their models and the checks made before any step runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from gateway.core.errors import CommandError, validate_params
from gateway.core.graph import find_cycles
from gateway.core.registry import UnknownAdapterError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from devices import DeviceConfig
    from gateway.core.registry import AdapterRegistry


MAX_STEPS = 256
"""The most steps a scene or ``run_steps`` list may have.

Far beyond any scene a person writes; it bounds the work one command may ask
of the checks and of the event loop before anything is refused.
"""


def _at_most_max_steps(value: object) -> object:
    """Refuse a list that is too long before any of its steps is validated."""
    if isinstance(value, list | tuple) and len(value) > MAX_STEPS:
        raise PydanticCustomError("too_many_steps", f"at most {MAX_STEPS} steps")
    return value


class Step(BaseModel):
    """One step: an action on a device, after the steps it names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    device: str
    action: str
    params: dict[str, Any] = {}
    after: tuple[str, ...] = ()


StepList = Annotated[list[Step], BeforeValidator(_at_most_max_steps)]
"""A ``run_steps`` list: its length is checked first, then each step."""


class Scene(BaseModel):
    """A named list of steps from the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: Annotated[tuple[Step, ...], BeforeValidator(_at_most_max_steps)] = Field(min_length=1)


def check_steps(
    steps: Sequence[Step],
    devices: Mapping[str, DeviceConfig],
    registry: AdapterRegistry,
    where: str = "steps",
) -> list[str]:
    """Every problem with a step list, each named by its path; empty when it can run.

    Linear in steps plus ``after`` entries; a list over ``MAX_STEPS`` is refused
    before anything else is looked at.
    """
    if len(steps) > MAX_STEPS:
        return [f"{where}: at most {MAX_STEPS} steps"]
    problems: list[str] = []
    ids = {step.id for step in steps}
    seen: set[str] = set()
    for index, step in enumerate(steps):
        at = f"{where}[{index}]"
        if step.id in seen:
            problems.append(f"{at}.id: duplicate step id {step.id!r}")
        seen.add(step.id)
        problems += [f"{at}.after: unknown step {dep!r}" for dep in step.after if dep not in ids]
        problems += _check_action(step, devices, registry, at)
    graph = {step.id: step.after for step in steps}
    problems += [f"{where}: cycle {' -> '.join(cycle)}" for cycle in find_cycles(graph)]
    return problems


def _check_action(
    step: Step,
    devices: Mapping[str, DeviceConfig],
    registry: AdapterRegistry,
    at: str,
) -> list[str]:
    device = devices.get(step.device)
    if device is None:
        return [f"{at}.device: unknown device {step.device!r}"]
    try:
        actions = registry.get(device.type).actions_for(device)
        validate_params(actions, step.action, step.params)
    except (CommandError, UnknownAdapterError) as exc:
        return [f"{at}: {exc}"]
    return []
