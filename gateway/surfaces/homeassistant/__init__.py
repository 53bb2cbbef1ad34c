"""Home Assistant MQTT discovery: every device, its entities, and the gateway itself.

``entities`` maps a device's capabilities to Home Assistant entities (pure),
``payloads`` builds the device-based discovery configs (pure), and
``discovery`` publishes them, migrates the per-entity configs of earlier
versions and removes the ones no longer published.
"""

from gateway.surfaces.homeassistant.discovery import Discovery, default_node_id
from gateway.surfaces.homeassistant.payloads import DeviceInfo, Payloads, device_info, http_page

__all__ = ["DeviceInfo", "Discovery", "Payloads", "default_node_id", "device_info", "http_page"]
