"""Home Assistant MQTT discovery: one retained config per device, kept in step with the config.

Configs go to ``{prefix}/device/{node_id}_{device}/config`` (and the gateway's
own to ``{node_id}_gateway``). ``node_id`` is ``homeassistant.node_id``; by
default it comes from the base topic, not the client id, so changing the
client id changes nothing in Home Assistant.

Before publishing, the gateway reads what the broker holds under the prefix:
on every connect it publishes a probe to itself after subscribing, and acts
when the probe comes back, once the broker has handed over every retained
message of the subscriptions made before it. Then, and again whenever Home
Assistant says ``online`` on ``{prefix}/status``:

1. each per-entity config of earlier versions
   (``{prefix}/<component>/{node_id}/<object>/config``) whose entity still
   exists gets ``{"migrate_discovery": true}``, which makes Home Assistant let
   go of it while keeping the entity; one whose entity is gone is emptied;
2. every device's config is published: the migrated entities come back under it
   with their unique ids (and so their entity ids, names and history);
3. the migrated per-entity topics are emptied, and so is every device config
   of this gateway that names a device no longer configured (or that an
   earlier ``node_id`` named).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from gateway.core.messages import Inbound, Outbound
from gateway.surfaces.homeassistant.payloads import GATEWAY, Payloads

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config import HomeAssistantSettings
    from gateway.core.topics import Topics
    from gateway.surfaces.homeassistant.payloads import DeviceInfo

log = logging.getLogger(__name__)

MIGRATE = json.dumps({"migrate_discovery": True}).encode()
# How long the probe may take to come back before the configs go out without it
# (an ACL that lets the gateway publish it but not read it, say).
PROBE_TIMEOUT = 5.0
DEFAULT_NODE = "iot-gateway"  # the client id earlier versions keyed discovery on
DEFAULT_BASE = "iot"


def default_node_id(base_topic: str) -> str:
    """``iot-gateway`` for the default base topic, else ``iot-gateway_<base topic>``.

    Two gateways on one broker have different base topics, so they get
    different node ids; one gateway keeps its own across client id changes.
    """
    if base_topic == DEFAULT_BASE:
        return DEFAULT_NODE
    return f"{DEFAULT_NODE}_{re.sub(r'[^A-Za-z0-9_-]', '_', base_topic)}"


class Discovery:
    """Publishes, migrates and removes this gateway's discovery configs."""

    def __init__(
        self,
        settings: HomeAssistantSettings,
        topics: Topics,
        devices: Sequence[DeviceInfo],
        *,
        configuration_url: str | None = None,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        """Describe ``devices`` to Home Assistant."""
        self.prefix = settings.prefix
        self.node_id = settings.node_id or default_node_id(topics.base)
        self.payloads = Payloads(
            self.node_id,
            topics,
            support_url=settings.support_url,
            configuration_url=settings.configuration_url or configuration_url,
        )
        self.sync_topic = f"{topics.base}/{GATEWAY}/discovery_sync"
        self._unique_ids: set[str] = set()  # of every entity published, to migrate by
        self._configs = self._build(devices)
        self._legacy: dict[str, bytes] = {}  # per-entity topics of ours holding something
        self._held: set[str] = set()  # device topics of ours holding a config
        self._probe = 0
        self._synced = False  # the probe came back: the retained configs are all known
        self._probe_sent = asyncio.Event()
        self._probe_timeout = probe_timeout

    def _build(self, devices: Sequence[DeviceInfo]) -> dict[str, bytes]:
        payloads = {self.config_topic(GATEWAY): self.payloads.gateway()}
        for info in devices:
            payloads[self.config_topic(info.id)] = self.payloads.device(info)
        for body in payloads.values():
            self._unique_ids.update(entity["unique_id"] for entity in body["cmps"].values())
        return {topic: json.dumps(body).encode() for topic, body in payloads.items()}

    @property
    def watched(self) -> list[str]:
        """Topic filters to read: HA's status, configs old and new, and the probe."""
        return [self.status_topic, self.legacy_filter, self.device_filter, self.sync_topic]

    @property
    def status_topic(self) -> str:
        """Where Home Assistant says ``online`` when it (re)starts."""
        return f"{self.prefix}/status"

    @property
    def legacy_filter(self) -> str:
        """The per-entity configs earlier versions published."""
        return f"{self.prefix}/+/{self.node_id}/+/config"

    @property
    def device_filter(self) -> str:
        """Every device-based config (this gateway's are told apart by their content)."""
        return f"{self.prefix}/device/+/config"

    def config_topic(self, device: str) -> str:
        """Where one device's config goes."""
        return f"{self.prefix}/device/{self.payloads.object_id(device)}/config"

    def announcements(self) -> list[Outbound]:
        """On every connect: the probe; the configs go out once it comes back."""
        self._probe += 1
        self._synced = False
        self._probe_sent.set()
        return [Outbound(self.sync_topic, str(self._probe).encode())]

    async def run(self, publish: Callable[[Outbound], None]) -> None:
        """Publish the configs anyway when a probe does not come back in time."""
        while True:
            await self._probe_sent.wait()
            self._probe_sent.clear()
            probe = self._probe
            await asyncio.sleep(self._probe_timeout)
            if probe == self._probe and not self._synced:
                log.warning(
                    "Home Assistant discovery: %s did not come back in %.0f s (may the gateway"
                    " read it?); publishing the configs without removing or migrating old ones",
                    self.sync_topic,
                    self._probe_timeout,
                )
                self._synced = True
                self._reconcile(publish)

    def handle(self, message: Inbound, publish: Callable[[Outbound], None]) -> bool:
        """Act on a watched message; False if it is none of ours."""
        topic = message.topic
        if topic == self.sync_topic:
            if message.payload == str(self._probe).encode():
                self._synced = True
                self._reconcile(publish)
        elif topic == self.status_topic:
            if message.payload.strip() == b"online" and self._synced:
                self._reconcile(publish)
        elif self._is_legacy(topic):
            self._note(self._legacy, topic, message.payload)
        elif self._is_ours(topic, message.payload):
            self._held.add(topic)
        elif topic in self._held and not message.payload:
            self._held.discard(topic)
        else:
            return False
        message.settle()
        return True

    def _reconcile(self, publish: Callable[[Outbound], None]) -> None:
        migrated, gone = [], []
        for topic, payload in sorted(self._legacy.items()):
            if payload == MIGRATE or _unique_id(payload) in self._unique_ids:
                migrated.append(topic)
            else:
                gone.append(topic)
        stale = sorted(self._held - set(self._configs))
        if migrated or gone or stale:
            log.info(
                "Home Assistant discovery: migrating %d per-entity configs to device configs,"
                " removing %d per-entity and %d device configs no longer published",
                len(migrated),
                len(gone),
                len(stale),
            )
        for topic in migrated:
            publish(Outbound(topic, MIGRATE, retain=True))
        for topic, payload in self._configs.items():
            publish(Outbound(topic, payload, retain=True))
        for topic in [*migrated, *gone, *stale]:
            publish(Outbound(topic, b"", retain=True))

    def _is_legacy(self, topic: str) -> bool:
        parts = topic.split("/")
        return (
            len(parts) == 5  # noqa: PLR2004 - prefix/component/node/object/config
            and parts[0] == self.prefix
            and parts[1] != "device"  # a device config with a node id: not a per-entity one
            and parts[2] == self.node_id
            and parts[4] == "config"
        )

    def _is_ours(self, topic: str, payload: bytes) -> bool:
        """A device config of this gateway, under this node id or an earlier one.

        Its entities read this gateway's status: as their availability (a
        device), or as the connectivity they show (the gateway itself). No other
        gateway can have them, since no two share a base topic.
        """
        if len(topic.split("/")) != 4 or not payload:  # noqa: PLR2004 - prefix/device/object/config
            return False
        config = _object(payload)
        status = self.payloads.topics.status
        if {"topic": status} in _list(config.get("availability")):
            return True
        components = config.get("cmps")
        return isinstance(components, dict) and any(
            isinstance(c, dict) and c.get("state_topic") == status for c in components.values()
        )

    @staticmethod
    def _note(held: dict[str, bytes], topic: str, payload: bytes) -> None:
        if payload:
            held[topic] = payload
        else:
            held.pop(topic, None)


def _object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _unique_id(payload: bytes) -> object:
    return _object(payload).get("unique_id")
