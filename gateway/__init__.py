"""iot-gateway: an MQTT gateway that validates, orders and always answers commands."""

from gateway.config import Config, ConfigError, Settings, load_config
from gateway.core.registry import AdapterRegistry
from gateway.supervisor import Gateway, running_gateway

__all__ = [
    "AdapterRegistry",
    "Config",
    "ConfigError",
    "Gateway",
    "Settings",
    "load_config",
    "running_gateway",
]
