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

    def __init__(
        self, adapters: Mapping[str, type[Adapter]], versions: Mapping[str, str] | None = None
    ) -> None:
        """Use exactly these adapters (tests register their own this way).

        ``versions`` are the versions of the packages the adapters came from.
        """
        self._adapters = dict(adapters)
        self._versions = dict(versions or {})

    @classmethod
    def from_entry_points(cls) -> AdapterRegistry:
        """Load every installed adapter; one that fails to load is logged and skipped."""
        adapters: dict[str, type[Adapter]] = {}
        versions: dict[str, str] = {}
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                adapter = entry.load()
            except Exception:
                log.exception("adapter %r failed to load; skipping it", entry.name)
                continue
            if isinstance(adapter, type) and issubclass(adapter, Adapter):
                adapters[entry.name] = adapter
                if entry.dist is not None:
                    versions[entry.name] = entry.dist.version
            else:
                log.error("adapter %r is not an Adapter subclass; skipping it", entry.name)
        return cls(adapters, versions)

    def get(self, type_name: str) -> type[Adapter]:
        """The adapter class for ``type_name``."""
        try:
            return self._adapters[type_name]
        except KeyError:
            known = ", ".join(sorted(self._adapters)) or "none"
            raise UnknownAdapterError(
                f"unknown device type {type_name!r} (known: {known})"
            ) from None

    def version(self, type_name: str) -> str | None:
        """The adapter's own ``version``, else its package's; None if neither is known."""
        return self.get(type_name).version or self._versions.get(type_name)

    def names(self) -> list[str]:
        """Every registered type name, sorted."""
        return sorted(self._adapters)
