"""The adapter interface every device type implements, built-in or third-party."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from devices.capabilities import StateField  # noqa: TC001 - pydantic reads it at run time

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractAsyncContextManager

JsonObject = dict[str, Any]


class DeviceError(Exception):
    """The device failed to carry out an action (answered as ``device_error``)."""


class PreconditionFailedError(DeviceError):
    """The device refuses the action in its current state (``precondition_failed``)."""


class DeviceConfig(BaseModel):
    """Fields every device entry has; adapters subclass it with their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    type: str
    depends_on: tuple[str, ...] = ()
    timeout: float | None = Field(default=None, gt=0)
    name: str | None = Field(default=None, min_length=1)
    """What people call the device (default: its id)."""
    area: str | None = Field(default=None, min_length=1)
    """Where it is (Home Assistant's suggested area)."""
    manufacturer: str | None = Field(default=None, min_length=1)
    """Overrides the adapter's ``manufacturer``."""
    model: str | None = Field(default=None, min_length=1)
    """Overrides the adapter's ``model``."""
    state_fields: dict[str, StateField] = Field(default_factory=dict)
    """Adds to or corrects what the adapter says of its state fields (``capabilities``)."""


class Params(BaseModel):
    """Base for action parameter models: strict types, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoParams(Params):
    """An action that takes no parameters."""


class DeviceEvents(Protocol):
    """What an adapter tells its host about changes it did not cause by a command."""

    def state_changed(self, state: Mapping[str, Any], *, force: bool = False) -> None:
        """The device's state is now ``state``; ``force`` republishes it unchanged."""

    def connection_lost(self, reason: str) -> None:
        """The device dropped its connection; the host reopens it with backoff."""


@dataclass(frozen=True)
class ContractSample:
    """How a contract test exercises an adapter type (see ``Adapter.contract_sample``).

    Configs are a device entry's fields besides ``id`` and ``type``; params are
    what a command would send.

    Attributes:
        config: a device that works: ``open`` succeeds and fills the state.
        broken: a device whose ``open`` raises ``DeviceError`` (it is not there).
        changing: an action and its params that change the state.
        failing: an action and its params that the device refuses (``DeviceError``).
        failing_config: the device for ``failing``, when it is not ``config``.
    """

    config: JsonObject
    broken: JsonObject
    changing: tuple[str, JsonObject]
    failing: tuple[str, JsonObject]
    failing_config: JsonObject | None = None


class Adapter(abc.ABC):
    """One device. The host calls ``open``, then ``execute`` one action at a time.

    Subclasses set ``config_model`` and ``actions`` (action name to its parameter
    model) and keep ``state`` current through ``update_state``. An adapter whose
    actions come from its configuration overrides ``actions_for`` instead. One
    may offer the gateway's contract tests a sample of itself (``contract_sample``).
    """

    config_model: ClassVar[type[DeviceConfig]] = DeviceConfig
    actions: ClassVar[Mapping[str, type[Params]]] = {}
    state_fields: ClassVar[Mapping[str, StateField]] = {}
    """What cannot be derived from ``actions`` about the state (see ``devices.capabilities``)."""
    manufacturer: ClassVar[str | None] = None
    model: ClassVar[str | None] = None
    """Shown in Home Assistant's device page (default: the device's type)."""
    version: ClassVar[str | None] = None
    """The adapter's version (default: its installed package's)."""

    @classmethod
    def actions_for(cls, config: DeviceConfig) -> Mapping[str, type[Params]]:
        """The actions of the device configured by ``config``; ``actions`` by default.

        The host calls it before any instance exists, to check commands and to
        describe the device, so it must be cheap and must not touch the device.
        """
        del config
        return cls.actions

    @classmethod
    def state_fields_for(cls, config: DeviceConfig) -> Mapping[str, StateField]:
        """The declared state fields of the device configured by ``config``.

        ``state_fields`` by default; an adapter whose points come from its
        configuration overrides it. Like ``actions_for``, it must be cheap and
        must not touch the device.
        """
        del config
        return cls.state_fields

    @classmethod
    def contract_sample(cls) -> AbstractAsyncContextManager[ContractSample] | None:
        """A sample for the adapter contract tests, or None (the default) for none.

        The gateway's ``tests/test_adapter_contract.py`` runs its checks (open and
        close twice, close after a failed open, state pushed after an action,
        ``DeviceError`` for a refusal, strict parameter models) on every built-in
        adapter, and on an installed third-party one only if it returns a sample
        here. Return an async context manager that yields the ``ContractSample``;
        it may start a stand-in device on entry and stop it on exit. The tests
        call this to learn whether there is a sample, so calling it must start
        nothing: only entering it may.
        """
        return None

    def __init__(self, config: DeviceConfig, events: DeviceEvents) -> None:
        """Bind the adapter to its validated config and its host's event sink."""
        self.config = config
        self.events = events
        self.state: JsonObject = {}

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect to the device; raise to report that it is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect; must be safe to call more than once and after a failed open."""

    async def background(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Work the device does on its own while online (polling, readings).

        The host runs it after ``open`` and cancels it before ``close``. The
        default has none.
        """

    @abc.abstractmethod
    async def execute(self, action: str, params: Params) -> None:
        """Carry out ``action`` (a key of ``actions``) with validated ``params``."""

    def update_state(self, *, force: bool = False, **changes: Any) -> None:  # noqa: ANN401
        """Merge ``changes`` into ``state`` and tell the host."""
        self.state.update(changes)
        self.events.state_changed(self.state, force=force)
