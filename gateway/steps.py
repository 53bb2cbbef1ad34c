"""Scenes and step lists: their models and the checks made before any step runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import CommandError, validate_params
from gateway.graph import find_cycle
from gateway.registry import UnknownAdapterError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from devices import DeviceConfig
    from gateway.registry import AdapterRegistry


class Step(BaseModel):
    """One step: an action on a device, after the steps it names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    device: str
    action: str
    params: dict[str, Any] = {}
    after: tuple[str, ...] = ()


class Scene(BaseModel):
    """A named list of steps from the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[Step, ...] = Field(min_length=1)


def check_steps(
    steps: Sequence[Step],
    devices: Mapping[str, DeviceConfig],
    registry: AdapterRegistry,
    where: str = "steps",
) -> list[str]:
    """Every problem with a step list, each named by its path; empty when it can run."""
    problems: list[str] = []
    ids = [step.id for step in steps]
    for index, step in enumerate(steps):
        at = f"{where}[{index}]"
        if step.id in ids[:index]:
            problems.append(f"{at}.id: duplicate step id {step.id!r}")
        problems += [f"{at}.after: unknown step {dep!r}" for dep in step.after if dep not in ids]
        problems += _check_action(step, devices, registry, at)
    cycle = find_cycle({step.id: step.after for step in steps})
    if cycle:
        problems.append(f"{where}: cycle {' -> '.join(cycle)}")
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
