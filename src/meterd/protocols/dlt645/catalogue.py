"""The DL/T 645-2007 data-identifier catalogue: what a DI means, how its bytes decode, its unit.

A DI is four bytes DI3 DI2 DI1 DI0, written high first (``00010000``) and sent low first.  Values
are packed BCD, low byte first; a *signed* value carries its sign in the top bit of its most
significant byte (DL/T 645-2007 appendix A).  Every value decodes to a canonical quantity name
shared with every other protocol meterd speaks, so downstream code never sees a DI:

=====================  =========================================  ===================================
DI pattern             quantity                                   format
=====================  =========================================  ===================================
00 KK RR SS            energy.<kind>.<rate>[.prevS]               XXXXXX.XX kWh/kvarh/kVAh (4 bytes)
01 KK RR SS            demand.<kind>.<rate>[.prevS] and .time     XX.XXXX kW + YYMMDDhhmm (8 bytes)
02 01 0P 00            voltage.a|b|c                              XXX.X V
02 02 0P 00            current.a|b|c                              ±XXX.XXX A
02 03..05 0P 00        power.active|reactive|apparent.total|a|b|c ±XX.XXXX kW/kvar/kVA
02 06 0P 00            pf.total|a|b|c                             ±X.XXX
02 80 00 01/02/04/08   current.n, frequency, demand.active.now,   ...
                       battery.clock
04 00 01 0C / 01 / 02  clock / meter.date / meter.time            YYMMDDWWhhmmss ...
04 00 04 01            meter.address                              12 digits
04 00 05 01..07        status.word1..7 (word 3: relay, see below) 2 bytes, bit field
03 11 00 00            event.power_down.count (掉电总次数)         XXXXXX (3 bytes)
03 11 00 NN            event.power_down.start / .end (NN-th last  YYMMDDhhmmss x 2; an event still
                       power-down, NN 01..0A)                     going on has an end of zeros
05 06 00 NN            frozen.daily.time (NN-th last freeze)      YYMMDDhhmm
05 06 KK NN            frozen.daily.energy.<kind>.total|rateN     block of XXXXXX.XX
05 04 00/01/02 NN      frozen.hourly.time / ... (hourly freeze)
06 10 QQ PP            curve.<quantity> (load-curve records)      N records from a start time
=====================  =========================================  ===================================

KK (energy kind): 00 active.combined (signed), 01 active.import, 02 active.export,
03/04 reactive.combined1/2 (signed), 05..08 reactive.q1..q4, 09/0A apparent.import/export.
RR (rate): 00 total, 01..3F rate N (in China rate1..4 = sharp, peak, flat, valley), FF block of
total + every rate.  SS (settlement): 00 current, 01..0C the N-th previous settlement day,
FF block of current + previous.

Status word 3 (04000503) is decoded as well into ``relay.open`` (bit 4, the actual relay state),
``relay.command_open`` (bit 6, the relay command state), ``alarm.pre_trip`` (bit 7) and
``relay.protected`` (bit 12, 保电).

Load curves (``06 10 ..``, the 2013 amendment's per-quantity curves) are read with the
"N records from a time" request; the reply data is the first record's time (YYMMDDhhmm) followed by
N values, missing points filled with ``FF``.  Records are ``interval`` minutes apart (the meter's
load-record interval, 15 by default).

Scaling says which transformer ratio turns a secondary-side value into primary-side:
energy, demand and power take CT x PT, current CT, voltage PT.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Final

from meterd.errors import FrameLengthError, ProtocolError, UnknownIdentifierError
from meterd.protocols.bcd import decode_datetime, encode_datetime, from_bcd_le, to_bcd_le

Value = Decimal | datetime | int | str | bool


class Scaling(enum.StrEnum):
    NONE = "none"
    CT = "ct"
    PT = "pt"
    CTPT = "ctpt"


class Kind(enum.StrEnum):
    NUMBER = "number"  # packed BCD with decimals, optional sign bit
    DATETIME = "datetime"  # BCD date/time, ``time_format`` names the bytes
    WORD = "word"  # a bit field, returned as int
    ADDRESS = "address"  # 12-digit meter address / number
    TEXT = "text"  # BCD digits returned as text (e.g. hh:mm:ss)


@dataclass(frozen=True, slots=True)
class Field:
    quantity: str
    kind: Kind
    size: int
    decimals: int = 0
    signed: bool = False
    unit: str = ""
    scaling: Scaling = Scaling.NONE
    time_format: str = ""


@dataclass(frozen=True, slots=True)
class DataItem:
    """One data identifier: its fields in wire order.

    ``repeat`` marks a block whose last field repeats as often as the payload allows (a meter
    with 4 or 8 tariff rates answers ``0001FF00`` with 5 or 9 values).  ``records`` marks a
    load-curve identifier read with the N-records form.  ``timestamp_di`` names the identifier
    that carries the time at which these values were frozen.
    """

    di: int
    name: str
    fields: tuple[Field, ...]
    repeat: tuple[Field, ...] = ()
    records: bool = False
    timestamp_di: int | None = None
    # the quantity names, worked out once: the simulator asks for them on every read
    _quantities: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_quantities", tuple(f.quantity for f in self.fields + self.repeat))

    @property
    def size(self) -> int:
        return sum(f.size for f in self.fields)

    @property
    def quantities(self) -> tuple[str, ...]:
        return self._quantities


@dataclass(frozen=True, slots=True)
class DecodedValue:
    quantity: str
    value: Value
    unit: str = ""
    scaling: Scaling = Scaling.NONE


# --- field codecs ------------------------------------------------------------------------------

_SIGN: Final = 0x80


def decode_field(field: Field, raw: bytes) -> Value:
    if field.kind is Kind.NUMBER:
        if field.signed:
            negative = bool(raw[-1] & _SIGN)
            magnitude = from_bcd_le(raw[:-1] + bytes((raw[-1] & 0x7F,)))
            n = -magnitude if negative else magnitude
        else:
            n = from_bcd_le(raw)
        return Decimal(n).scaleb(-field.decimals)
    if field.kind is Kind.DATETIME:
        return decode_datetime(raw, field.time_format)
    if field.kind is Kind.WORD:
        return int.from_bytes(raw, "little")
    if field.kind is Kind.ADDRESS:
        from_bcd_le(raw)  # validates
        return bytes(raw[::-1]).hex()
    if field.kind is Kind.TEXT:
        from_bcd_le(raw)
        digits = bytes(raw[::-1]).hex()
        return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
    raise ProtocolError(f"field kind {field.kind} has no decoder")  # pragma: no cover


def encode_field(field: Field, value: Value) -> bytes:
    if field.kind is Kind.NUMBER:
        number = Decimal(value)  # type: ignore[arg-type]
        scaled = number.scaleb(field.decimals).to_integral_value()
        magnitude = int(abs(scaled))
        limit = 100**field.size
        if field.signed:
            limit = limit * 8 // 10  # top bit of the top byte is the sign: top byte at most 79
        if magnitude >= limit:
            raise ProtocolError(f"{field.quantity}={value} does not fit {field.size} BCD bytes")
        raw = bytearray(to_bcd_le(magnitude, field.size))
        if field.signed and scaled < 0:
            raw[-1] |= _SIGN
        return bytes(raw)
    if field.kind is Kind.DATETIME:
        if not isinstance(value, datetime):
            raise ProtocolError(f"{field.quantity} needs a datetime, got {value!r}")
        return encode_datetime(value, field.time_format)
    if field.kind is Kind.WORD:
        return int(value).to_bytes(field.size, "little")  # type: ignore[arg-type]
    if field.kind in (Kind.ADDRESS, Kind.TEXT):
        digits = str(value).replace(":", "")
        if len(digits) != 2 * field.size or not (digits.isascii() and digits.isdigit()):
            raise ProtocolError(f"{field.quantity}={value!r} must be {2 * field.size} digits")
        return bytes.fromhex(digits)[::-1]
    raise ProtocolError(f"field kind {field.kind} has no encoder")  # pragma: no cover


# --- the catalogue -----------------------------------------------------------------------------

ENERGY_KINDS: Final[dict[int, tuple[str, str, bool]]] = {
    0x00: ("active.combined", "kWh", True),
    0x01: ("active.import", "kWh", False),
    0x02: ("active.export", "kWh", False),
    0x03: ("reactive.combined1", "kvarh", True),
    0x04: ("reactive.combined2", "kvarh", True),
    0x05: ("reactive.q1", "kvarh", False),
    0x06: ("reactive.q2", "kvarh", False),
    0x07: ("reactive.q3", "kvarh", False),
    0x08: ("reactive.q4", "kvarh", False),
    0x09: ("apparent.import", "kVAh", False),
    0x0A: ("apparent.export", "kVAh", False),
}
DEMAND_UNITS: Final = {"kWh": "kW", "kvarh": "kvar", "kVAh": "kVA"}
MAX_RATE: Final = 0x3F
MAX_SETTLEMENT: Final = 0x0C
MAX_FROZEN: Final = 0x3E  # 62 daily freezes are kept
RATE_NAMES: Final = {1: "sharp", 2: "peak", 3: "flat", 4: "valley"}

PHASES: Final = ("a", "b", "c")


def _rate(rr: int) -> str:
    return "total" if rr == 0 else f"rate{rr}"


def _energy_field(quantity: str, unit: str, signed: bool) -> Field:
    return Field(quantity, Kind.NUMBER, 4, 2, signed, unit, Scaling.CTPT)


def _energy_item(di: int) -> DataItem | None:
    kk, rr, ss = (di >> 16) & 0xFF, (di >> 8) & 0xFF, di & 0xFF
    if kk not in ENERGY_KINDS:
        return None
    kind, unit, signed = ENERGY_KINDS[kk]
    if ss == 0xFF and rr != 0xFF:
        base = f"energy.{kind}.{_rate(rr)}"
        first = _energy_field(base, unit, signed)
        rest = tuple(_energy_field(f"{base}.prev{s}", unit, signed) for s in range(1, MAX_SETTLEMENT + 1))
        return DataItem(di, f"{kind} energy {_rate(rr)}, current and previous settlement days", (first,), rest)
    if ss > MAX_SETTLEMENT:
        return None
    suffix = f".prev{ss}" if ss else ""
    if rr == 0xFF:
        fields = (_energy_field(f"energy.{kind}.total{suffix}", unit, signed),)
        rest = tuple(_energy_field(f"energy.{kind}.rate{r}{suffix}", unit, signed) for r in range(1, MAX_RATE + 1))
        return DataItem(di, f"{kind} energy block (total + rates){suffix}", fields, rest)
    if rr > MAX_RATE:
        return None
    q = f"energy.{kind}.{_rate(rr)}{suffix}"
    return DataItem(di, f"{kind} energy {_rate(rr)}{suffix}", (_energy_field(q, unit, signed),))


def _demand_fields(quantity: str, unit: str) -> tuple[Field, Field]:
    return (
        Field(quantity, Kind.NUMBER, 3, 4, False, DEMAND_UNITS[unit], Scaling.CTPT),
        Field(f"{quantity}.time", Kind.DATETIME, 5, time_format="YYMMDDhhmm"),
    )


def _demand_item(di: int) -> DataItem | None:
    kk, rr, ss = (di >> 16) & 0xFF, (di >> 8) & 0xFF, di & 0xFF
    if kk not in ENERGY_KINDS or kk in (0x00,) or ss > MAX_SETTLEMENT:
        return None
    kind, unit, _ = ENERGY_KINDS[kk]
    suffix = f".prev{ss}" if ss else ""
    if rr == 0xFF:
        first = _demand_fields(f"demand.{kind}.total{suffix}", unit)
        rest = tuple(
            f for r in range(1, MAX_RATE + 1) for f in _demand_fields(f"demand.{kind}.rate{r}{suffix}", unit)
        )
        return DataItem(di, f"maximum {kind} demand block with times{suffix}", first, rest)
    if rr > MAX_RATE:
        return None
    q = f"demand.{kind}.{_rate(rr)}{suffix}"
    return DataItem(di, f"maximum {kind} demand {_rate(rr)} with its time{suffix}", _demand_fields(q, unit))


_VariableSpec = tuple[str, int, int, bool, str, Scaling, bool]

_VARIABLES: Final[dict[int, _VariableSpec]] = {
    # DI2: (quantity prefix, size, decimals, signed, unit, scaling, phases incl. total?)
    0x01: ("voltage", 2, 1, False, "V", Scaling.PT, False),
    0x02: ("current", 3, 3, True, "A", Scaling.CT, False),
    0x03: ("power.active", 3, 4, True, "kW", Scaling.CTPT, True),
    0x04: ("power.reactive", 3, 4, True, "kvar", Scaling.CTPT, True),
    0x05: ("power.apparent", 3, 4, True, "kVA", Scaling.CTPT, True),
    0x06: ("pf", 2, 3, True, "", Scaling.NONE, True),
    0x07: ("angle", 2, 1, False, "°", Scaling.NONE, False),
}


def _variable_field(prefix: str, phase: str, spec: _VariableSpec) -> Field:
    _, size, dec, signed, unit, scaling, _ = spec
    return Field(f"{prefix}.{phase}", Kind.NUMBER, size, dec, signed, unit, scaling)


def _variable_item(di: int) -> DataItem | None:
    d2, d1, d0 = (di >> 16) & 0xFF, (di >> 8) & 0xFF, di & 0xFF
    spec = _VARIABLES.get(d2)
    if spec is None or d0 != 0:
        return None
    prefix, has_total = spec[0], spec[6]
    names = (("total",) if has_total else ()) + PHASES
    first = 0 if has_total else 1
    if d1 == 0xFF:
        fields = tuple(_variable_field(prefix, p, spec) for p in names)
        return DataItem(di, f"{prefix} block ({', '.join(names)})", fields)
    if first <= d1 <= 3:
        phase = "total" if d1 == 0 else PHASES[d1 - 1]
        return DataItem(di, f"{prefix} {phase}", (_variable_field(prefix, phase, spec),))
    return None


def _status_word(n: int) -> Field:
    return Field(f"status.word{n}", Kind.WORD, 2)


FROZEN_TIME_FORMAT: Final = "YYMMDDhhmm"


def _frozen_item(di: int) -> DataItem | None:
    d2, kk, nn = (di >> 16) & 0xFF, (di >> 8) & 0xFF, di & 0xFF
    which = {0x06: "daily", 0x04: "hourly"}.get(d2)
    if which is None or not 1 <= nn <= MAX_FROZEN:
        return None
    time_di = 0x05000000 | (d2 << 16) | nn
    if kk == 0x00:
        field = Field(f"frozen.{which}.time", Kind.DATETIME, 5, time_format=FROZEN_TIME_FORMAT)
        return DataItem(di, f"time of the {nn}. last {which} freeze", (field,))
    if kk not in _FROZEN_KINDS:
        return None
    kind, unit, signed = ENERGY_KINDS[_FROZEN_KINDS[kk]]
    base = f"frozen.{which}.energy.{kind}"
    fields = (_energy_field(f"{base}.total", unit, signed),)
    if which == "hourly":
        return DataItem(di, f"{which} frozen {kind} energy total ({nn}. last)", fields, timestamp_di=time_di)
    rest = tuple(_energy_field(f"{base}.rate{r}", unit, signed) for r in range(1, MAX_RATE + 1))
    return DataItem(di, f"{which} frozen {kind} energy, total and rates ({nn}. last)", fields, rest,
                    timestamp_di=time_di)


# 05 06 KK: 01 forward active, 02 reverse active, 03/04 combined reactive 1/2, 05..08 Q1..Q4
_FROZEN_KINDS: Final = {0x01: 0x01, 0x02: 0x02, 0x03: 0x03, 0x04: 0x04, 0x05: 0x05, 0x06: 0x06, 0x07: 0x07, 0x08: 0x08}

_CURVES: Final = {
    # (DI1, DI0) -> field
    **{(0x01, i + 1): Field(f"curve.voltage.{p}", Kind.NUMBER, 2, 1, False, "V", Scaling.PT) for i, p in enumerate(PHASES)},
    **{(0x02, i + 1): Field(f"curve.current.{p}", Kind.NUMBER, 3, 3, True, "A", Scaling.CT) for i, p in enumerate(PHASES)},
    **{(0x03, i): Field(f"curve.power.active.{p}", Kind.NUMBER, 3, 4, True, "kW", Scaling.CTPT)
       for i, p in enumerate(("total",) + PHASES)},
    **{(0x04, i): Field(f"curve.power.reactive.{p}", Kind.NUMBER, 3, 4, True, "kvar", Scaling.CTPT)
       for i, p in enumerate(("total",) + PHASES)},
    **{(0x05, i): Field(f"curve.pf.{p}", Kind.NUMBER, 2, 3, True, "", Scaling.NONE)
       for i, p in enumerate(("total",) + PHASES)},
    (0x06, 0x01): Field("curve.energy.active.import.total", Kind.NUMBER, 4, 2, False, "kWh", Scaling.CTPT),
    (0x06, 0x02): Field("curve.energy.active.export.total", Kind.NUMBER, 4, 2, False, "kWh", Scaling.CTPT),
    (0x06, 0x03): Field("curve.energy.reactive.combined1.total", Kind.NUMBER, 4, 2, True, "kvarh", Scaling.CTPT),
    (0x06, 0x04): Field("curve.energy.reactive.combined2.total", Kind.NUMBER, 4, 2, True, "kvarh", Scaling.CTPT),
    **{(0x07, i + 1): Field(f"curve.energy.reactive.q{i + 1}.total", Kind.NUMBER, 4, 2, False, "kvarh", Scaling.CTPT)
       for i in range(4)},
}


POWER_DOWN_RECORDS: Final = 0x0A  # the meter keeps its last ten power-down events
EVENT_TIME_FORMAT: Final = "YYMMDDhhmmss"


def _event_item(di: int) -> DataItem | None:
    """Power-down events (掉电事件, DL/T 645-2007 appendix A, 03 11): the count and the NN-th last
    event's start and end time."""
    if di == 0x03110000:
        return DataItem(di, "power-down count", (Field("event.power_down.count", Kind.NUMBER, 3),))
    nn = di & 0xFF
    if di >> 8 != 0x031100 or not 1 <= nn <= POWER_DOWN_RECORDS:
        return None
    return DataItem(di, f"{nn}. last power-down: start and end", (
        Field("event.power_down.start", Kind.DATETIME, 6, time_format=EVENT_TIME_FORMAT),
        Field("event.power_down.end", Kind.DATETIME, 6, time_format=EVENT_TIME_FORMAT),
    ))


def _curve_item(di: int) -> DataItem | None:
    if (di >> 16) & 0xFF != 0x10:
        return None
    field = _CURVES.get(((di >> 8) & 0xFF, di & 0xFF))
    if field is None:
        return None
    return DataItem(di, f"load curve of {field.quantity.removeprefix('curve.')}", (field,), records=True)


_FIXED: Final[dict[int, DataItem]] = {
    item.di: item
    for item in (
        DataItem(0x02800001, "neutral current", (Field("current.n", Kind.NUMBER, 3, 3, True, "A", Scaling.CT),)),
        DataItem(0x02800002, "grid frequency", (Field("frequency", Kind.NUMBER, 2, 2, False, "Hz"),)),
        DataItem(0x02800004, "current active demand",
                 (Field("demand.active.now", Kind.NUMBER, 3, 4, True, "kW", Scaling.CTPT),)),
        DataItem(0x02800008, "clock battery voltage", (Field("battery.clock", Kind.NUMBER, 2, 2, False, "V"),)),
        DataItem(0x04000101, "date and weekday",
                 (Field("meter.date", Kind.DATETIME, 4, time_format="YYMMDDWW"),)),
        DataItem(0x04000102, "time of day", (Field("meter.time", Kind.TEXT, 3),)),
        DataItem(0x0400010C, "date, weekday and time",
                 (Field("clock", Kind.DATETIME, 7, time_format="YYMMDDWWhhmmss"),)),
        DataItem(0x04000401, "communication address", (Field("meter.address", Kind.ADDRESS, 6),)),
        DataItem(0x04000402, "meter number", (Field("meter.number", Kind.ADDRESS, 6),)),
        *(DataItem(0x04000500 + n, f"running status word {n}", (_status_word(n),)) for n in range(1, 8)),
        DataItem(0x040005FF, "running status words 1-7", tuple(_status_word(n) for n in range(1, 8))),
    )
}

_PATTERNS: Final[dict[int, Callable[[int], DataItem | None]]] = {
    0x00: _energy_item,
    0x01: _demand_item,
    0x02: _variable_item,
    0x03: _event_item,
    0x06: _curve_item,
}


@lru_cache(maxsize=4096)
def lookup(di: int) -> DataItem:
    """The catalogue entry for ``di``; UnknownIdentifierError if meterd does not know it."""
    item = _FIXED.get(di)
    if item is None:
        d3 = di >> 24
        if d3 == 0x05:
            item = _frozen_item(di)
        elif d3 in _PATTERNS:
            item = _PATTERNS[d3](di)
    if item is None:
        raise UnknownIdentifierError(f"data identifier {di:08X} is not in the catalogue", di=di)
    return item


def is_known(di: int) -> bool:
    try:
        lookup(di)
    except UnknownIdentifierError:
        return False
    return True


# --- status word 3 -----------------------------------------------------------------------------

RELAY_OPEN_BIT: Final = 1 << 4
RELAY_COMMAND_OPEN_BIT: Final = 1 << 6
PRE_TRIP_ALARM_BIT: Final = 1 << 7
PROTECTED_BIT: Final = 1 << 12


def status3_flags(word: int) -> dict[str, bool]:
    return {
        "relay.open": bool(word & RELAY_OPEN_BIT),
        "relay.command_open": bool(word & RELAY_COMMAND_OPEN_BIT),
        "alarm.pre_trip": bool(word & PRE_TRIP_ALARM_BIT),
        "relay.protected": bool(word & PROTECTED_BIT),
    }


def status3_word(*, relay_open: bool, command_open: bool, pre_trip: bool, protected: bool) -> int:
    return (
        (RELAY_OPEN_BIT if relay_open else 0)
        | (RELAY_COMMAND_OPEN_BIT if command_open else 0)
        | (PRE_TRIP_ALARM_BIT if pre_trip else 0)
        | (PROTECTED_BIT if protected else 0)
    )


# --- decoding and encoding payloads ------------------------------------------------------------


def layout(item: DataItem, size: int, digits: int = 8) -> tuple[Field, ...]:
    """The fields a payload of ``size`` bytes carries for ``item`` (a block carries as many groups
    of its repeated part as fit); FrameLengthError naming the identifier (``digits`` wide: 8 in
    2007, 4 in 1997) if the size fits no layout."""
    fixed = item.size
    if not item.repeat:
        if size != fixed:
            raise FrameLengthError(f"{item.di:0{digits}X} ({item.name}) needs {fixed} bytes, got {size}")
        return item.fields
    # the repeated part is made of groups shaped like the first group of fields
    group = len(item.fields)
    group_size = fixed
    extra = size - fixed
    if extra < 0 or extra % group_size:
        raise FrameLengthError(f"{item.di:0{digits}X} ({item.name}): {size} bytes is not a whole number of values")
    count = extra // group_size
    if count * group > len(item.repeat):
        raise FrameLengthError(f"{item.di:0{digits}X} ({item.name}): {size} bytes is more values than exist")
    return item.fields + item.repeat[: count * group]


def decode(di: int, payload: bytes, now: datetime | None = None) -> list[DecodedValue]:
    """The data bytes of a read reply (after the DI) -> decoded values in wire order.

    ``now`` is not needed (every 2007 date carries its year); it is accepted so that both editions'
    decoders have one signature (:mod:`meterd.protocols.drivers.dlt645`)."""
    item = lookup(di)
    if item.records:
        raise ProtocolError(f"{di:08X} is a load curve: use decode_records")
    fields = layout(item, len(payload))
    out: list[DecodedValue] = []
    pos = 0
    for f in fields:
        raw = payload[pos : pos + f.size]
        pos += f.size
        if f.kind is Kind.DATETIME and not any(raw):
            continue  # all zeros: no time recorded (a demand time after a demand reset)
        out.append(DecodedValue(f.quantity, decode_field(f, raw), f.unit, f.scaling))
        if f.quantity == "status.word3":
            word = int.from_bytes(raw, "little")
            out.extend(DecodedValue(q, v) for q, v in status3_flags(word).items())
    return out


def encode(di: int, values: Mapping[str, Value]) -> bytes:
    """Values by quantity -> the data bytes a meter answers with (the simulator's side).

    For blocks, the repeated part is filled as far as ``values`` has every field of a group.
    """
    item = lookup(di)
    if item.records:
        raise ProtocolError(f"{di:08X} is a load curve: use encode_records")
    missing = [f.quantity for f in item.fields if f.quantity not in values]
    if missing:
        raise UnknownIdentifierError(f"no value for {', '.join(missing)} of {di:08X}", di=di)
    out = bytearray()
    for f in item.fields:
        out += encode_field(f, values[f.quantity])
    group = len(item.fields)
    for i in range(0, len(item.repeat), group):
        chunk = item.repeat[i : i + group]
        if not all(f.quantity in values for f in chunk):
            break
        for f in chunk:
            out += encode_field(f, values[f.quantity])
    return bytes(out)


# --- load-curve records ------------------------------------------------------------------------

CURVE_START_FORMAT: Final = "YYMMDDhhmm"
DEFAULT_CURVE_INTERVAL: Final = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class CurvePoint:
    timestamp: datetime
    value: Value | None  # None where the meter has no record (FF fill)


def encode_records(di: int, start: datetime, values: Sequence[Value | None]) -> bytes:
    item = lookup(di)
    if not item.records:
        raise ProtocolError(f"{di:08X} is not a load curve")
    f = item.fields[0]
    out = bytearray(encode_datetime(start, CURVE_START_FORMAT))
    for v in values:
        out += b"\xff" * f.size if v is None else encode_field(f, v)
    return bytes(out)


def decode_records(
    di: int, payload: bytes, interval: timedelta = DEFAULT_CURVE_INTERVAL
) -> tuple[Field, list[CurvePoint]]:
    item = lookup(di)
    if not item.records:
        raise ProtocolError(f"{di:08X} is not a load curve")
    f = item.fields[0]
    if len(payload) < 5 or (len(payload) - 5) % f.size:
        raise FrameLengthError(f"{di:08X}: {len(payload)} bytes is not a start time plus whole records")
    start = decode_datetime(payload[:5], CURVE_START_FORMAT)
    points = []
    for i, pos in enumerate(range(5, len(payload), f.size)):
        raw = payload[pos : pos + f.size]
        value = None if raw == b"\xff" * f.size else decode_field(f, raw)
        points.append(CurvePoint(start + i * interval, value))
    return f, points
