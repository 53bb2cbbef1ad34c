"""Check device discovery payloads with Home Assistant's own MQTT schemas.

Run by ``tests/test_ha_payloads.py`` under the Python of a Home Assistant
installation (``HA_PYTHON``): Home Assistant 2025.1 needs Python 3.12, so it
cannot be imported into the test's own interpreter. Reads a JSON object (name
to payload) on stdin; prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Any

import voluptuous as vol  # type: ignore[import-not-found, unused-ignore]
from homeassistant.components.mqtt.discovery import (  # type: ignore[import-not-found, unused-ignore]
    MQTTDiscoveryPayload,
    _replace_all_abbreviations,
)
from homeassistant.components.mqtt.schemas import (  # type: ignore[import-not-found, unused-ignore]
    DEVICE_DISCOVERY_SCHEMA,
    SHARED_OPTIONS,
)

# Keys newer than the installed Home Assistant, which it ignores.
NEWER = {"default_entity_id"}


def problems(name: str, payload: dict[str, Any]) -> list[str]:
    """What Home Assistant refuses or drops in one device payload."""
    found = []
    device_payload = MQTTDiscoveryPayload(json.loads(json.dumps(payload)))
    _replace_all_abbreviations(device_payload)
    try:
        DEVICE_DISCOVERY_SCHEMA(device_payload)
    except vol.Invalid as exc:
        return [f"{name}: {exc}"]
    for key, component in payload["cmps"].items():
        # As Home Assistant does: shared options, device and origin into each component.
        config = {k: v for k, v in payload.items() if k in SHARED_OPTIONS or k == "qos"}
        config |= {"device": payload["device"], "origin": payload["origin"], **component}
        platform = config.pop("platform")
        schema = importlib.import_module(f"homeassistant.components.mqtt.{platform}")
        try:
            validated = schema.DISCOVERY_SCHEMA(config)
        except vol.Invalid as exc:
            found.append(f"{name}.{key} ({platform}): {exc}")
            continue
        dropped = set(config) - set(validated) - NEWER
        if dropped:
            found.append(f"{name}.{key} ({platform}): ignored keys {sorted(dropped)}")
    return found


def main() -> int:
    """Check every payload on stdin."""
    logging.disable(logging.WARNING)  # templates made without hass say so at length
    found = [line for name, body in json.load(sys.stdin).items() for line in problems(name, body)]
    print("\n".join(found))  # noqa: T201 - the report
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
