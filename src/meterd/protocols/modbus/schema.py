"""The shape of a register map: data tables, value types, entries, workarounds, relay.

Frozen dataclasses and StrEnums only; :mod:`.validate` builds them from TOML and
:mod:`.registermap` documents the file format.  Sizes and limits are the Modbus application
protocol's (v1.1b3): a register is 16 bits, a read asks for 1..125 registers or 1..2000 bits.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from meterd.protocols.dlt645.catalogue import Scaling

MAX_ADDRESS: Final = 0xFFFF
MAX_READ_REGISTERS: Final = 125  # Modbus application protocol v1.1b3, 6.3/6.4: 1..125 (0x7D)
MAX_READ_BITS: Final = 2000  # 6.1/6.2: 1..2000 (0x7D0)
MAX_ADDRESS_OFFSET: Final = 1

RELAY_QUANTITY: Final = "relay.open"


class Function(enum.StrEnum):
    """The four Modbus data tables, named as in the spec's data model."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def read_code(self) -> int:
        return _READ_CODES[self]

    @property
    def is_bit(self) -> bool:
        return self in (Function.COIL, Function.DISCRETE)

    @property
    def limit(self) -> int:
        """Most registers (bits) one read request may ask for."""
        return MAX_READ_BITS if self.is_bit else MAX_READ_REGISTERS


_READ_CODES: Final = {Function.COIL: 1, Function.DISCRETE: 2, Function.HOLDING: 3, Function.INPUT: 4}


class DataType(enum.StrEnum):
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"
    S64 = "s64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"  # one coil / discrete input

    @property
    def size(self) -> int:
        """Registers (or bits, for BOOL) the value occupies."""
        return _SIZES[self]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def int_range(self) -> tuple[int, int]:
        bits = 16 * self.size
        if self in (DataType.S16, DataType.S32, DataType.S64):
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1


_SIZES: Final = {
    DataType.U16: 1, DataType.S16: 1, DataType.U32: 2, DataType.S32: 2, DataType.U64: 4,
    DataType.S64: 4, DataType.FLOAT32: 2, DataType.FLOAT64: 4, DataType.BOOL: 1,
}


class WordOrder(enum.StrEnum):
    BIG = "big"  # most significant register first (ABCD)
    LITTLE = "little"  # least significant register first (CDAB)


@dataclass(frozen=True, slots=True)
class RegisterEntry:
    """Where one quantity lives and how to turn its registers into a value.

    ``true_value``/``false_value`` make a boolean quantity out of a register (e.g. relay state
    0x0001 = open, 0x0000 = closed) or say which bit level means True for a coil or discrete input.
    """

    quantity: str
    function: Function
    address: int
    type: DataType
    word_order: WordOrder = WordOrder.BIG
    scale: Decimal = Decimal(1)
    unit: str = ""
    primary: bool = True
    true_value: int | bool | None = None
    false_value: int | bool | None = None
    base_scaling: Scaling = Scaling.NONE

    @property
    def size(self) -> int:
        return self.type.size

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.type.size

    @property
    def boolean(self) -> bool:
        return self.type is DataType.BOOL or self.true_value is not None

    @property
    def scaling(self) -> Scaling:
        """What the collector must still multiply by: nothing for primary-side values."""
        return Scaling.NONE if self.primary else self.base_scaling


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    manufacturer: str
    source: str
    description: str = ""
    checked_against: tuple[str, ...] = ()
    notes: str = ""


@dataclass(frozen=True, slots=True)
class Workarounds:
    """Device quirks, after Telegraf's ``[inputs.modbus.workarounds]``."""

    max_registers: int = MAX_READ_REGISTERS
    max_bits: int = MAX_READ_BITS
    max_gap: int | None = None  # None: the planner's default applies
    pause_between_requests: float = 0.0  # seconds
    one_request_per_quantity: bool = False
    address_offset: int = 0

    def limit(self, function: Function) -> int:
        return min(function.limit, self.max_bits if function.is_bit else self.max_registers)


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """How to trip (open) and reclose the meter's relay, and where to read its state back.

    Commands are written to ``function``/``address`` (a coil: FC05; a holding register:
    FC06/FC16) with ``open_value`` or ``close_value``.  ``state`` is the ``relay.open`` entry the
    poller reads to confirm the command (write-then-verify); it is also part of the map's entries.
    """

    function: Function
    address: int
    type: DataType
    word_order: WordOrder
    open_value: int | bool
    close_value: int | bool
    state: RegisterEntry


@dataclass(frozen=True, slots=True)
class RegisterMap:
    model: ModelInfo
    entries: tuple[RegisterEntry, ...]
    workarounds: Workarounds = Workarounds()
    relay: RelaySpec | None = None
    source_file: str = ""
    _by_quantity: dict[str, RegisterEntry] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_quantity.update((e.quantity, e) for e in self.entries)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(e.quantity for e in self.entries)

    def entry(self, quantity: str) -> RegisterEntry:
        try:
            return self._by_quantity[quantity]
        except KeyError:
            raise KeyError(f"register map {self.name} has no {quantity}") from None

    def __contains__(self, quantity: object) -> bool:
        return quantity in self._by_quantity

    def __iter__(self) -> Iterator[RegisterEntry]:
        return iter(self.entries)
