"""The checks on a configuration's devices and scenes, and how problems are worded.

Pure: ``gateway.config`` reads the file and the environment and calls these.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from devices.capabilities import device_fields, field_problems, unknown_actions
from gateway.core.errors import format_path
from gateway.core.graph import depths, find_cycles
from gateway.core.registry import UnknownAdapterError
from gateway.core.steps import check_steps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from devices import DeviceConfig
    from gateway.core.registry import AdapterRegistry
    from gateway.core.steps import Scene

DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
RESERVED_IDS = frozenset({"gateway"})
MAX_DEPENDENCY_DEPTH = 64
"""The longest chain of ``depends_on`` links below a device.

Devices connect one link after another, and each link is a step in every
availability check: 64 is far beyond a real hub, bridge and device chain.
"""


def describe_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic errors into ``path: message`` lines, never echoing secrets."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        path = prefix + format_path(error["loc"])
        problems.append(f"{path}: {error['msg']}" if path else error["msg"])
    return problems


def validate_devices(
    entries: Sequence[Any], registry: AdapterRegistry
) -> tuple[dict[str, DeviceConfig], list[str]]:
    """Validate each entry with its adapter's model; return the valid ones by id."""
    devices: dict[str, DeviceConfig] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"devices[{index}]"
        if not isinstance(entry, dict):
            continue  # reported by the settings' own validation
        device_id = entry.get("id")
        if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
            problems.append(f"{where}.id: must match {DEVICE_ID.pattern}, got {device_id!r}")
            continue
        if device_id in RESERVED_IDS:
            problems.append(f"{where}.id: {device_id!r} is reserved")
            continue
        if device_id in seen:
            problems.append(f"{where}.id: duplicate device id {device_id!r}")
            continue
        seen.add(device_id)
        try:
            adapter = registry.get(str(entry.get("type")))
            devices[device_id] = config = adapter.config_model.model_validate(entry)
            problems += [
                f"{where}.state_fields.{problem}"
                for problem in unknown_actions(config.state_fields, adapter.actions_for(config))
                or field_problems(device_fields(adapter, config))
            ]
        except UnknownAdapterError as exc:
            problems.append(f"{where}.type: {exc}")
        except ValidationError as exc:
            problems += describe_errors(exc, prefix=f"{where}.")
    return devices, problems


def check_device_graph(devices: Mapping[str, DeviceConfig], entries: Sequence[Any]) -> list[str]:
    """Unknown dependencies, every dependency cycle, and chains that are too deep."""
    mappings = [entry if isinstance(entry, dict) else {} for entry in entries]
    known = {entry.get("id") for entry in mappings if isinstance(entry.get("id"), str)}
    problems = []
    for index, entry in enumerate(mappings):
        depends_on = entry.get("depends_on")
        if not isinstance(depends_on, list):
            continue  # the entry's own validation reports it
        problems += [
            f"devices[{index}].depends_on: unknown device {dep!r}"
            for dep in depends_on
            if isinstance(dep, str) and dep not in known
        ]
    graph = {device.id: device.depends_on for device in devices.values()}
    problems += [f"devices: dependency cycle {' -> '.join(c)}" for c in find_cycles(graph)]
    return problems + _too_deep(graph, mappings)


def _too_deep(
    graph: Mapping[str, Sequence[str]], entries: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Each device where a chain of dependencies first goes past ``MAX_DEPENDENCY_DEPTH``.

    Devices above it are deeper still, but reported through it: one line per
    place to cut, not one per device.
    """
    depth = depths(graph)
    too_deep = {d for d, links in depth.items() if links == MAX_DEPENDENCY_DEPTH + 1}
    found = []
    for index, entry in enumerate(entries):
        device_id = entry.get("id")
        if isinstance(device_id, str) and device_id in too_deep:  # an id may be any YAML
            too_deep.discard(device_id)  # a duplicate id is reported as such, not here
            bottom = device_id
            while depth[bottom]:  # down the longest chain, to a device with no dependency
                bottom = next(d for d in graph[bottom] if depth.get(d) == depth[bottom] - 1)
            found.append(
                f"devices[{index}].depends_on: a chain of dependencies deeper than"
                f" {MAX_DEPENDENCY_DEPTH} ({device_id} -> ... -> {bottom})"
            )
    return found


def check_scenes(
    scenes: Mapping[str, Scene],
    devices: Mapping[str, DeviceConfig],
    registry: AdapterRegistry,
) -> list[str]:
    """Every scene's steps must name real devices, actions and step ids."""
    problems = []
    for name, scene in scenes.items():
        problems += check_steps(scene.steps, devices, registry, where=f"scenes.{name}.steps")
    return problems


TOPIC_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_standby(*, enabled: bool, instance: str) -> list[str]:
    """In a standby group, the instance name is a topic segment (its role record's)."""
    if not enabled or TOPIC_SEGMENT.match(instance):
        return []
    problem = (
        f"gateway.instance: {instance!r} cannot name a standby group's instance: use "
        "letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
    )
    return [problem]
