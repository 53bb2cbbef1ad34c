"""Adapter types by name, loaded from the ``iot_gateway.adapters`` entry points."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from devices import Adapter

if TYPE_CHECKING:
    from collections.abc import Mapping

ENTRY_POINT_GROUP = "iot_gateway.adapters"
log = logging.getLogger(__name__)


class UnknownAdapterError(LookupError):
    """No adapter is registered under that type name."""


class AdapterRegistry:
    """Maps a device ``type`` (``simulated.light``) to its adapter class."""

    def __init__(self, adapters: Mapping[str, type[Adapter]]) -> None:
        """Use exactly these adapters (tests register their own this way)."""
        self._adapters = dict(adapters)

    @classmethod
    def from_entry_points(cls) -> AdapterRegistry:
        """Load every installed adapter; one that fails to load is logged and skipped."""
        adapters: dict[str, type[Adapter]] = {}
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                adapter = entry.load()
            except Exception:
                log.exception("adapter %r failed to load; skipping it", entry.name)
                continue
            if isinstance(adapter, type) and issubclass(adapter, Adapter):
                adapters[entry.name] = adapter
            else:
                log.error("adapter %r is not an Adapter subclass; skipping it", entry.name)
        return cls(adapters)

    def get(self, type_name: str) -> type[Adapter]:
        """The adapter class for ``type_name``."""
        try:
            return self._adapters[type_name]
        except KeyError:
            known = ", ".join(sorted(self._adapters)) or "none"
            raise UnknownAdapterError(
                f"unknown device type {type_name!r} (known: {known})"
            ) from None

    def names(self) -> list[str]:
        """Every registered type name, sorted."""
        return sorted(self._adapters)
