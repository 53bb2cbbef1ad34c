"""The ``modbus`` adapter: named coils and registers of a Modbus TCP device.

The configuration maps names to addresses; the state holds every mapped value
and is read on connect, after each write and every ``poll_interval``. Writable
points get actions: ``set_<name>`` (``{"value": ...}``) for coils and holding
registers, and ``turn_on_<name>``/``turn_off_<name>`` for coils.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from devices.base import DeviceConfig, DeviceError, DeviceEvents, NoParams, Params
from devices.capabilities import StateField
from devices.templates import (
    NAME_PATTERN,
    ActionModels,
    ConfiguredActionsAdapter,
    ConfiguredActionsConfig,
    ParamSpec,
    Spec,
    build_params_model,
    need_something,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from pymodbus.pdu import ModbusPDU

PointName = Annotated[str, Field(pattern=NAME_PATTERN)]
_UNSIGNED = (0, 0xFFFF)
_EXCEPTION_CODES: dict[object, str] = {  # the Modbus specification's exception codes
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
_SIGNED = (-0x8000, 0x7FFF)


class Coil(Spec):
    """A bit: a coil, or a read-only discrete input (``input: true``)."""

    address: int = Field(ge=0, le=0xFFFF)
    writable: bool = False
    input: bool = False

    @model_validator(mode="after")
    def _inputs_are_read_only(self) -> Coil:
        if self.writable and self.input:
            raise ValueError("a discrete input cannot be writable")
        return self


class Register(Spec):
    """A 16-bit register: holding, or a read-only input register (``input: true``).

    The value is the raw register times ``scale``; ``min``/``max`` bound writes.
    """

    address: int = Field(ge=0, le=0xFFFF)
    writable: bool = False
    input: bool = False
    signed: bool = False
    scale: float = Field(default=1, gt=0)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Register:
        if self.writable and self.input:
            raise ValueError("an input register cannot be writable")
        low, high = self._bounds()
        if low > high:
            raise ValueError("min and max leave no value in the register's range")
        return self

    def decode(self, raw: int) -> int | float:
        """The value of the raw register."""
        if self.signed and raw > _SIGNED[1]:
            raw -= 0x10000
        return raw if self.scale == 1 else round(raw * self.scale, 6)

    def encode(self, value: float) -> int:
        """The raw register for ``value``, as the 16 bits sent."""
        raw = round(value / self.scale)
        low, high = _SIGNED if self.signed else _UNSIGNED
        if not low <= raw <= high:
            raise DeviceError(f"{value} is out of the register's range")
        return raw & 0xFFFF

    def param(self) -> ParamSpec:
        """The ``value`` parameter of ``set_<name>``: the register's range, within min/max."""
        low, high = self._bounds()
        return ParamSpec(type="int" if self.scale == 1 else "float", min=low, max=high)

    def _bounds(self) -> tuple[int | float, int | float]:
        """The values a write may take: whole numbers unless scaled."""
        low: int | float
        high: int | float
        low, high = _SIGNED if self.signed else _UNSIGNED
        if self.scale != 1:
            low, high = low * self.scale, high * self.scale
        if self.min is not None:
            low = max(low, math.ceil(self.min) if self.scale == 1 else self.min)
        if self.max is not None:
            high = min(high, math.floor(self.max) if self.scale == 1 else self.max)
        return low, high


class ModbusConfig(ConfiguredActionsConfig):
    """A Modbus TCP device: where it is, its unit id, and its named points."""

    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    request_timeout: float = Field(default=3, gt=0)
    poll_interval: float | None = Field(default=None, gt=0)
    coils: dict[PointName, Coil] = Field(default_factory=dict)
    registers: dict[PointName, Register] = Field(default_factory=dict, validate_default=True)

    @field_validator("registers")
    @classmethod
    def _not_coils(
        cls, registers: dict[str, Register], info: ValidationInfo
    ) -> dict[str, Register]:
        both = sorted(set(info.data.get("coils", {})) & set(registers))
        if both:
            raise ValueError(f"{', '.join(both)}: both a coil and a register")
        need_something(
            registers, info, "coils", "a modbus device needs at least one coil or register"
        )
        return registers

    def writes(self) -> dict[str, tuple[str, bool | None]]:
        """Each write action: the point it writes and its fixed value (None: a parameter)."""
        plan: dict[str, tuple[str, bool | None]] = {}
        for name, coil in self.coils.items():
            if coil.writable:
                plan[f"set_{name}"] = (name, None)
                plan[f"turn_on_{name}"] = (name, True)
                plan[f"turn_off_{name}"] = (name, False)
        for name, register in self.registers.items():
            if register.writable:
                plan[f"set_{name}"] = (name, None)
        return plan

    def build_action_models(self) -> ActionModels:
        """``{value: bool}`` for coils, the register's range for registers."""
        models: ActionModels = {}
        for action, (name, fixed) in self.writes().items():
            if fixed is not None:
                models[action] = NoParams
                continue
            spec = (
                self.registers[name].param() if name in self.registers else ParamSpec(type="bool")
            )
            models[action] = build_params_model(action, {"value": spec})
        return models


class ModbusDevice(ConfiguredActionsAdapter):
    """A Modbus TCP device; the host, not pymodbus, reconnects it."""

    config_model: ClassVar[type[DeviceConfig]] = ModbusConfig
    model: ClassVar[str | None] = "Modbus TCP device"
    config: ModbusConfig

    @classmethod
    def state_fields_for(cls, config: DeviceConfig) -> Mapping[str, StateField]:
        """A bool per coil, a number per register; the write actions make them settable."""
        if not isinstance(config, ModbusConfig):
            return {}
        fields = dict.fromkeys(config.coils, StateField(kind="bool"))
        for name, register in config.registers.items():
            step = None if register.scale == 1 else register.scale
            fields[name] = StateField(kind="number", step=step)
        return fields

    def __init__(self, config: DeviceConfig, events: DeviceEvents) -> None:
        """Plan the writes; not connected until ``open``."""
        super().__init__(config, events)
        self._writes = self.config.writes()
        self._client: AsyncModbusTcpClient | None = None

    async def open(self) -> None:
        """Connect and read every point."""
        config = self.config
        self._client = AsyncModbusTcpClient(
            config.host,
            port=config.port,
            timeout=config.request_timeout,
            retries=0,
            reconnect_delay=0,  # no reconnecting behind the host's back
        )
        if not await self._client.connect():
            raise DeviceError(f"cannot connect to {config.host}:{config.port}")
        self.merge_state(await self._read_all())

    async def close(self) -> None:
        """Disconnect (safe to call again, or after a failed open)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def background(self) -> None:
        """Read every point each ``poll_interval``; a failed read means the device is lost."""
        await self.poll(self.config.poll_interval, self._read_and_merge)

    async def _read_and_merge(self) -> None:
        self.merge_state(await self._read_all())

    async def execute(self, action: str, params: Params) -> None:
        """Write the point, then record the value written."""
        name, fixed = self._writes[action]
        value = params.model_dump()["value"] if fixed is None else fixed
        unit = self.config.unit
        if name in self.config.coils:
            address = self.config.coils[name].address
            await self._call(lambda c: c.write_coil(address, bool(value), device_id=unit))
            self.merge_state({name: bool(value)})
            return
        register = self.config.registers[name]
        raw = register.encode(value)
        await self._call(lambda c: c.write_register(register.address, raw, device_id=unit))
        self.merge_state({name: register.decode(raw)})

    async def _read_all(self) -> dict[str, object]:
        values: dict[str, object] = {}
        for name, coil in self.config.coils.items():
            values[name] = bool((await self._read(coil)).bits[0])
        for name, register in self.config.registers.items():
            values[name] = register.decode((await self._read(register)).registers[0])
        return values

    async def _read(self, point: Coil | Register) -> ModbusPDU:
        unit = self.config.unit
        return await self._call(
            lambda client: _reader(client, point)(point.address, count=1, device_id=unit)
        )

    async def _call(
        self, request: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """Send one request; every failure is a ``DeviceError``, a lost link is reported."""
        client = self._client
        if client is None:
            raise DeviceError("not connected")
        try:
            response = await request(client)
        except ModbusException as exc:
            if not client.connected:
                self.events.connection_lost(str(exc))
            raise DeviceError(str(exc)) from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            reason = _EXCEPTION_CODES.get(code, f"exception code {code}")
            raise DeviceError(f"the device refused the request: {reason}")
        return response


def _reader(
    client: AsyncModbusTcpClient, point: Coil | Register
) -> Callable[..., Awaitable[ModbusPDU]]:
    """The client's read function for the table ``point`` is in."""
    if isinstance(point, Coil):
        return client.read_discrete_inputs if point.input else client.read_coils
    return client.read_input_registers if point.input else client.read_holding_registers
