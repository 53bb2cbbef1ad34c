"""Home Assistant device-based discovery payloads: one per device, and one for the gateway.

Each payload names its device (with ``via_device`` pointing at the gateway's),
the software that made it (``origin``), the availability every entity shares
(the gateway's status and the device's own, both ``online``), and its entities
under ``cmps``. Unique ids are ``<node_id>_<device>_<key>``, as the per-entity
configs of earlier versions had them, so migrated entities keep theirs.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devices.capabilities import device_fields
from gateway.core.errors import ErrorCode
from gateway.surfaces.homeassistant.entities import DIAGNOSTIC, Component, Topics, device_entities

if TYPE_CHECKING:
    from collections.abc import Mapping

    from devices import DeviceConfig, Params, StateField
    from gateway.config import HttpSettings
    from gateway.core.registry import AdapterRegistry
    from gateway.core.topics import Topics as GatewayTopics

GATEWAY = "gateway"
ORIGIN = "iot-gateway"
DISTRIBUTION = "iot-gateway"
PER_MINUTE = "1/min"
# What a device's command may fail with (step_failed is the gateway's own).
DEVICE_ERRORS = tuple(code.value for code in ErrorCode if code is not ErrorCode.STEP_FAILED)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What Home Assistant shows of one device, and what its entities come from."""

    id: str
    device_type: str
    name: str
    area: str | None
    manufacturer: str | None
    model: str
    sw_version: str | None
    fields: Mapping[str, StateField]
    actions: Mapping[str, type[Params]]


def device_info(config: DeviceConfig, registry: AdapterRegistry) -> DeviceInfo:
    """A device's registry entry and capabilities, from its config and its adapter."""
    adapter = registry.get(config.type)
    return DeviceInfo(
        id=config.id,
        device_type=config.type,
        name=config.name or config.id,
        area=config.area,
        manufacturer=config.manufacturer or adapter.manufacturer,
        model=config.model or adapter.model or config.type,
        sw_version=registry.version(config.type),
        fields=device_fields(adapter, config),
        actions=adapter.actions_for(config),
    )


def gateway_version() -> str:
    """This gateway's installed version."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def entity_id_part(text: str) -> str:
    """``text`` as Home Assistant's entity ids spell it: lower case, ``_`` for the rest."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


class Payloads:
    """Builds the discovery payloads of one gateway, known in Home Assistant as ``node_id``."""

    def __init__(
        self,
        node_id: str,
        topics: GatewayTopics,
        *,
        support_url: str | None = None,
        configuration_url: str | None = None,
    ) -> None:
        """Payloads for entities reading and writing under ``topics``."""
        self.node_id = node_id
        self.topics = topics
        self.version = gateway_version()
        self.gateway_id = f"{node_id}_{GATEWAY}"
        self.activity_topic = f"{topics.base}/{GATEWAY}/activity"
        self._origin: dict[str, str] = {"name": ORIGIN, "sw_version": self.version}
        if support_url is not None:
            self._origin["support_url"] = support_url
        self._configuration_url = configuration_url

    def object_id(self, device: str) -> str:
        """The device's part of its discovery topic: ``<node_id>_<device>``."""
        return f"{self.node_id}_{device}"

    def device(self, info: DeviceInfo) -> dict[str, Any]:
        """The discovery payload of one configured device."""
        topics = self.topics
        entity_topics = Topics(
            state=topics.state(info.id),
            command=f"{topics.base}/{info.id}/command",
            result=topics.result(info.id),
        )
        components = device_entities(info.fields, info.actions, entity_topics, DEVICE_ERRORS)
        registry: dict[str, Any] = {
            "identifiers": [self.object_id(info.id)],
            "name": info.name,
            "model": info.model,
            "via_device": self.gateway_id,
        }
        if info.manufacturer is not None:
            registry["manufacturer"] = info.manufacturer
        if info.sw_version is not None:
            registry["sw_version"] = info.sw_version
        if info.area is not None:
            registry["suggested_area"] = info.area
        return {
            "device": registry,
            "origin": self._origin,
            "availability": [
                {"topic": topics.status},
                {"topic": topics.availability(info.id)},
            ],
            "availability_mode": "all",
            "qos": 1,
            "cmps": self._identified(info.id, components),
        }

    def gateway(self) -> dict[str, Any]:
        """The discovery payload of the gateway itself, with its diagnostic entities."""
        registry: dict[str, Any] = {
            "identifiers": [self.gateway_id],
            "name": self.node_id,
            "manufacturer": ORIGIN,
            "model": "MQTT gateway",
            "sw_version": self.version,
        }
        if self._configuration_url is not None:
            registry["configuration_url"] = self._configuration_url
        return {
            "device": registry,
            "origin": self._origin,
            "qos": 1,
            "cmps": self._identified(GATEWAY, self._gateway_entities()),
        }

    def _identified(self, device: str, components: dict[str, Component]) -> dict[str, Component]:
        """Each component with its unique id and the entity id Home Assistant should give it."""
        named = {}
        for key, component in components.items():
            unique_id = f"{self.object_id(device)}_{key}"
            main = component.get("name", "") is None  # named as the device itself
            suffix = device if main else f"{device}_{key}"
            if device == GATEWAY:
                suffix = unique_id
            default = f"{component['platform']}.{entity_id_part(suffix)}"
            named[key] = {**component, "unique_id": unique_id, "default_entity_id": default}
        return named

    def _gateway_entities(self) -> dict[str, Component]:
        online = [{"topic": self.topics.status}]

        def reading(name: str, key: str, **extra: Any) -> Component:  # noqa: ANN401 - JSON
            return {
                "platform": "sensor",
                "name": name,
                "entity_category": DIAGNOSTIC,
                "state_topic": self.activity_topic,
                "value_template": f"{{{{ value_json[{json.dumps(key)}] }}}}",
                "availability": online,
                **extra,
            }

        return {
            "connectivity": {
                "platform": "binary_sensor",
                "name": "Connectivity",
                "device_class": "connectivity",
                "entity_category": DIAGNOSTIC,
                "state_topic": self.topics.status,
                "payload_on": "online",
                "payload_off": "offline",
            },
            "version": reading("Version", "version"),
            "uptime": reading(
                "Uptime", "uptime_s", device_class="duration", unit_of_measurement="s"
            ),
            "commands_per_min": reading(
                "Commands per minute",
                "commands_per_min",
                unit_of_measurement=PER_MINUTE,
                state_class="measurement",
            ),
            "errors_per_min": reading(
                "Errors per minute",
                "errors_per_min",
                unit_of_measurement=PER_MINUTE,
                state_class="measurement",
            ),
            "reconnects": reading("Reconnects", "reconnects", state_class="total_increasing"),
            # Reconnects that found the broker had lost the session: commands may be lost.
            "session_lost": reading(
                "Sessions lost", "session_lost", state_class="total_increasing"
            ),
        }


def http_page(http: HttpSettings | None) -> str | None:
    """The gateway's HTTP page, as another machine would reach it; None without one."""
    if http is None or http.port == 0:
        return None
    host = http.host
    if host in {"", "0.0.0.0", "::"}:  # noqa: S104 - naming the wildcard, not binding it
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}/"
