"""Turn the registers of a read reply into canonical values, and values back into registers.

Register layout (Modbus application protocol 4.2: registers are big-endian 16-bit words)::

    u16/s16        [ AB ]
    u32/s32/f32    [ AB ][ CD ]               word_order = "big"    (most significant first)
                   [ CD ][ AB ]               word_order = "little" (least significant first)
    u64/s64/f64    [ AB ][ CD ][ EF ][ GH ]   big; little is [ GH ][ EF ][ CD ][ AB ]
    bool           one coil / discrete input bit

The byte and word shuffling is pymodbus' own (``ModbusClientMixin.convert_from_registers`` /
``convert_to_registers``), the same code the client would use, so meterd does not carry a second
implementation of IEEE 754 and two's complement.

Numbers become :class:`~decimal.Decimal` and are then multiplied by the entry's ``scale``:

* integers are exact: ``23010`` with scale ``0.01`` is ``Decimal("230.10")``;
* a float register is first turned into the *shortest decimal that reads back as the same float*
  at its own precision (float32: 6 to 9 significant digits; float64: Python's ``repr``), so the
  float32 nearest to 230.1 (230.100006103515625) becomes ``230.1``, not ``230.10000610351562``
  (a float32 holds 6 significant digits safely: a meter's 1234.5678 arrives as ``1234.5677``);
* the multiplication is exact (60-digit context): no rounding is applied anywhere, trailing zeros
  keep the register's resolution.

NaN and infinity (meters send them for "not available") are a ProtocolError naming the quantity
from :func:`decode_value`; :func:`decode_block` returns them as a Decimal NaN or ±Infinity for
that field alone (the collector's door flags it implausible), so one register a meter cannot
fill does not cost the block's other values (SDM630: energy shares a block with ``pf.total``
and ``demand.active.now``).
The inverse (:func:`encode_values`) is for the simulator: a value is divided by the scale and, for
integer types, rounded half-even to the register's resolution.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from typing import Any, Final

from pymodbus.client.mixin import ModbusClientMixin

from meterd.errors import FrameLengthError, ProtocolError
from meterd.protocols.dlt645.catalogue import DecodedValue, Scaling
from meterd.protocols.modbus.plan import ReadBlock
from meterd.protocols.modbus.registermap import DataType, Function, RegisterEntry, RegisterMap, WordOrder

Number = Decimal | int | float | str
RawValues = list[int] | list[bool]

_DT = ModbusClientMixin.DATATYPE
PYMODBUS_TYPES: Final = {
    DataType.U16: _DT.UINT16,
    DataType.S16: _DT.INT16,
    DataType.U32: _DT.UINT32,
    DataType.S32: _DT.INT32,
    DataType.U64: _DT.UINT64,
    DataType.S64: _DT.INT64,
    DataType.FLOAT32: _DT.FLOAT32,
    DataType.FLOAT64: _DT.FLOAT64,
}
_PRECISION: Final = 60  # enough for a 20-digit u64 times any sane scale, exactly
_FLOAT32_DIGITS: Final = 9  # 9 significant digits always identify a float32
_FLOAT32_SAFE_DIGITS: Final = 6  # FLT_DIG: 6 significant digits always survive a float32
_FLOAT32_MIN_NORMAL: Final = 2.0**-126
_PLAIN_DIGITS: Final = 30


# --- decoding ----------------------------------------------------------------------------------


def decode_block(block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> list[DecodedValue]:
    """The registers (or bits) a read of ``block`` returned -> one value per field, in order.

    Bits may come padded to a whole byte (pymodbus returns multiples of 8); registers must be
    exactly ``block.count``.  Integer registers take a compiled fast path (:func:`_block_layout`:
    one ``struct`` unpack per field, checked against :func:`decode_value` by the tests); floats and
    booleans go through :func:`decode_value`.
    """
    if block.function.is_bit:
        if len(data) < block.count:
            raise FrameLengthError(f"{block.function} read at {block.address}: {len(data)} bits, need {block.count}")
        return [decode_value(f.entry, data[f.offset : f.offset + f.entry.size]) for f in block.fields]
    if len(data) != block.count:
        raise FrameLengthError(
            f"{block.function} read at {block.address}: {len(data)} registers, expected {block.count}",
            _as_bytes(data),
        )
    try:
        raw = struct.pack(f">{block.count}H", *data)
    except (struct.error, TypeError):
        raw = None  # a value that is no register: let decode_value name the quantity
    out = []
    for f, fast in zip(block.fields, _block_layout(block)):
        if raw is None or fast is None or any(isinstance(r, bool) for r in data[f.offset : f.offset + f.entry.size]):
            out.append(_decode_field(f.entry, data[f.offset : f.offset + f.entry.size]))
            continue
        unpack, reverse, scaling = fast
        entry = f.entry
        if reverse:
            words = raw[f.offset * 2 : (f.offset + entry.size) * 2]
            chunk = b"".join(words[i : i + 2] for i in range(len(words) - 2, -1, -2))
            (number,) = unpack(chunk)
        else:
            (number,) = unpack(raw[f.offset * 2 : (f.offset + entry.size) * 2])
        out.append(DecodedValue(entry.quantity, _EXACT.multiply(Decimal(number), entry.scale), entry.unit, scaling))
    return out


_EXACT: Final = Context(prec=_PRECISION)


def _decode_field(entry: RegisterEntry, raw: Sequence[int] | Sequence[bool]) -> DecodedValue:
    """:func:`decode_value` for one field of a block, except that a plain float register holding
    NaN or an infinity is that value (a Decimal NaN or ±Infinity, unscaled) instead of an error:
    the door flags it (a metering anomaly naming the meter, the quantity and the value) and the
    block's other fields -- a meter's energy next to a power factor it cannot compute -- are kept."""
    try:
        return decode_value(entry, raw)
    except ProtocolError:
        if not entry.type.is_float or entry.true_value is not None:
            raise
        number = _from_registers(entry, _check_registers(entry.quantity, raw))
        if math.isfinite(number):
            raise
        return DecodedValue(entry.quantity, Decimal(number), entry.unit, entry.scaling)
# (struct unpacker, reverse words?, scaling) of one plain-integer field
_FastField = tuple[Callable[[bytes], tuple[Any, ...]], bool, Scaling]
_STRUCT_OF: Final = {
    DataType.U16: ">H",
    DataType.S16: ">h",
    DataType.U32: ">I",
    DataType.S32: ">i",
    DataType.U64: ">Q",
    DataType.S64: ">q",
}


@lru_cache(maxsize=4096)
def _block_layout(block: ReadBlock) -> tuple[_FastField | None, ...]:
    """Per field: (struct unpacker, reverse words?, scaling) for plain integers, else None."""
    out: list[_FastField | None] = []
    for f in block.fields:
        e = f.entry
        fmt = _STRUCT_OF.get(e.type)
        if fmt is None or e.true_value is not None:
            out.append(None)
        else:
            out.append((struct.Struct(fmt).unpack, e.word_order is WordOrder.LITTLE and e.size > 1, e.scaling))
    return tuple(out)


def decode_value(entry: RegisterEntry, raw: Sequence[int] | Sequence[bool]) -> DecodedValue:
    """One entry's registers (exactly ``entry.size`` of them) or bit -> its canonical value."""
    if len(raw) != entry.size:
        raise FrameLengthError(f"{entry.quantity}: {len(raw)} registers, {entry.type} needs {entry.size}")
    if entry.type is DataType.BOOL:
        bit = raw[0]
        if not isinstance(bit, (bool, int)) or bit not in (0, 1):
            raise ProtocolError(f"{entry.quantity}: a bit must be 0 or 1, got {bit!r}")
        return DecodedValue(entry.quantity, bool(bit) == entry.true_value, entry.unit, entry.scaling)

    registers = _check_registers(entry.quantity, raw)
    number = _from_registers(entry, registers)
    if entry.true_value is not None:
        if number == entry.true_value:
            return DecodedValue(entry.quantity, True, entry.unit, entry.scaling)
        if number == entry.false_value:
            return DecodedValue(entry.quantity, False, entry.unit, entry.scaling)
        raise ProtocolError(
            f"{entry.quantity}: register value {number} is neither {entry.true_value} (true) "
            f"nor {entry.false_value} (false)",
            _as_bytes(registers),
        )
    if isinstance(number, float):
        if not math.isfinite(number):
            raise ProtocolError(f"{entry.quantity}: {entry.type} is {number} (no valid reading)", _as_bytes(registers))
        exact = float_to_decimal(number, entry.type)
    else:
        exact = Decimal(number)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        value = exact * entry.scale
    return DecodedValue(entry.quantity, value, entry.unit, entry.scaling)


def float_to_decimal(number: float, dtype: DataType = DataType.FLOAT64) -> Decimal:
    """The shortest decimal that converts back to the same float32/float64 (see module doc)."""
    if dtype is DataType.FLOAT64:
        return _plain(Decimal(repr(number)))
    target = ModbusClientMixin.convert_to_registers(number, _DT.FLOAT32)
    # A normal float32 is ~1.2e-7 wide (relative), 6-digit decimals are 1e-6..1e-5 apart: at most
    # one of them reads back as this float, and if any shorter decimal does, %.6g (which drops
    # trailing zeros) prints exactly it.  So start at 6 digits; subnormals are wider, so they
    # search from 1 digit.
    first = _FLOAT32_SAFE_DIGITS if abs(number) >= _FLOAT32_MIN_NORMAL else 1
    for digits in range(first, _FLOAT32_DIGITS + 1):
        text = f"{number:.{digits}g}"
        try:
            same = ModbusClientMixin.convert_to_registers(float(text), _DT.FLOAT32) == target
        except OverflowError:  # rounding near the float32 maximum went past it: not this one
            continue
        if same:
            return _plain(Decimal(text))
    raise AssertionError("unreachable: 9 digits identify every float32")  # pragma: no cover


def _plain(number: Decimal) -> Decimal:
    # "%g" writes 1e+07 for ten million: write whole numbers out (10000000), same value.  Beyond
    # 30 digits the exponent form stays, so the exact scale multiplication keeps its headroom.
    if number.as_tuple().exponent > 0 and number.adjusted() < _PLAIN_DIGITS:  # type: ignore[operator]
        return number.quantize(Decimal(1), context=Context(prec=_PRECISION))
    return number


def _from_registers(entry: RegisterEntry, registers: list[int]) -> int | float:
    value = ModbusClientMixin.convert_from_registers(
        registers, PYMODBUS_TYPES[entry.type], word_order=entry.word_order.value
    )
    assert isinstance(value, (int, float))
    return value


def _check_registers(quantity: str, raw: Sequence[int] | Sequence[bool]) -> list[int]:
    registers = list(raw)
    for r in registers:
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 0xFFFF:
            raise ProtocolError(f"{quantity}: a register must be an integer 0..65535, got {r!r}")
    return registers


def _as_bytes(data: Sequence[int] | Sequence[bool]) -> bytes | None:
    try:
        return b"".join(int(r).to_bytes(2, "big") for r in data)
    except (OverflowError, TypeError, ValueError):
        return None


# --- encoding (the simulator's side) -----------------------------------------------------------


def encode_value(entry: RegisterEntry, value: Number | bool) -> RawValues:
    """A value of ``entry.quantity`` -> the registers (or the bit) the meter would hold."""
    if entry.boolean:
        if not isinstance(value, bool):
            raise ProtocolError(f"{entry.quantity} is a boolean, got {value!r}")
        if entry.type is DataType.BOOL:
            return [value == entry.true_value]
        raw = entry.true_value if value else entry.false_value
        assert isinstance(raw, int)
        return _to_registers(entry, raw)
    if isinstance(value, bool):
        raise ProtocolError(f"{entry.quantity} is a number, got {value!r}")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ProtocolError(f"{entry.quantity}: {value!r} is not a number") from exc
    if not number.is_finite():
        raise ProtocolError(f"{entry.quantity}: {value!r} is not a finite number")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        unscaled = number / entry.scale
        if entry.type.is_float:
            return _to_registers(entry, float(unscaled))
        raw = int(unscaled.to_integral_value(rounding=ROUND_HALF_EVEN))
    low, high = entry.type.int_range
    if not low <= raw <= high:
        raise ProtocolError(f"{entry.quantity}={value} is {raw} in the register, outside {entry.type} {low}..{high}")
    return _to_registers(entry, raw)


def _to_registers(entry: RegisterEntry, raw: float) -> list[int]:
    try:
        return ModbusClientMixin.convert_to_registers(
            raw, PYMODBUS_TYPES[entry.type], word_order=entry.word_order.value
        )
    except (OverflowError, struct.error) as exc:  # float too large for float32, int out of range
        raise ProtocolError(f"{entry.quantity}: {raw} does not fit {entry.type}") from exc


def encode_values(
    regmap: RegisterMap, values: Mapping[str, Number | bool | datetime]
) -> dict[tuple[Function, int], RawValues]:
    """Values by quantity -> ``{(function, wire address): registers or [bit]}`` for a simulator.

    Wire addresses include ``workarounds.address_offset``, so a simulated meter shows the same
    quirk as the real one.
    """
    out: dict[tuple[Function, int], RawValues] = {}
    offset = regmap.workarounds.address_offset
    for quantity, value in values.items():
        if quantity not in regmap:
            raise ProtocolError(f"register map {regmap.name} has no {quantity}")
        entry = regmap.entry(quantity)
        if isinstance(value, datetime):  # a model's clock has no register encoding
            raise ProtocolError(f"{entry.quantity}: {value!r} is not a number")
        out[(entry.function, entry.address + offset)] = encode_value(entry, value)
    return out


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A write the master sends: FC05 one coil, FC06 one register, FC16 several registers."""

    function: Function
    address: int  # wire address
    values: tuple[int, ...] | tuple[bool, ...]

    @property
    def write_code(self) -> int:
        if self.function is Function.COIL:
            return 5
        return 6 if len(self.values) == 1 else 16


def relay_command(regmap: RegisterMap, open_relay: bool) -> WriteRequest:
    """The write that trips (``open_relay``) or recloses the meter's relay, from its ``[relay]``."""
    relay = regmap.relay
    if relay is None:
        raise ProtocolError(f"register map {regmap.name} has no [relay]")
    value = relay.open_value if open_relay else relay.close_value
    address = relay.address + regmap.workarounds.address_offset
    if relay.type is DataType.BOOL:
        return WriteRequest(relay.function, address, (bool(value),))
    probe = RegisterEntry("relay.command", relay.function, relay.address, relay.type, relay.word_order)
    return WriteRequest(relay.function, address, tuple(_to_registers(probe, int(value))))
