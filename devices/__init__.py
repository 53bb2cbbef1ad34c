"""Device adapters for iot-gateway.

This package never imports ``gateway``: an adapter depends only on the interface
defined here, so third-party adapters can be written against it alone.
"""

from devices.base import (
    Adapter,
    ContractSample,
    DeviceConfig,
    DeviceError,
    DeviceEvents,
    JsonObject,
    NoParams,
    Params,
    PreconditionFailedError,
)
from devices.capabilities import StateField, capabilities

__all__ = [
    "Adapter",
    "ContractSample",
    "DeviceConfig",
    "DeviceError",
    "DeviceEvents",
    "JsonObject",
    "NoParams",
    "Params",
    "PreconditionFailedError",
    "StateField",
    "capabilities",
]
