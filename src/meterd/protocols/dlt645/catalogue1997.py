"""The DL/T 645-1997 data-identifier catalogue, in the quantity names of :mod:`.catalogue`.

A 1997 DI is two bytes DI1 DI0, written ``9010`` and sent ``10 90``.  Values are packed BCD, low
byte first, unsigned (the 1997 formats carry no sign bit).  Every value decodes to the *same*
canonical quantity name the 2007 catalogue uses for the same physical value, with the same
:class:`~.catalogue.Field` types and field codecs, so downstream code cannot tell the editions apart:

==========  ===========================================  =====================================
DI          quantity                                     format
==========  ===========================================  =====================================
9MKR        energy.<kind>.<rate>[.prevN]                 XXXXXX.XX kWh / kvarh (4 bytes)
AMKR        demand.<kind>.<rate>[.prevN]                 XX.XXXX kW / kvar (3 bytes)
BMKR        demand.<kind>.<rate>[.prevN].time            MMDDhhmm (4 bytes, no year, see below)
B611..3     voltage.a|b|c                                XXX V (2 bytes)
B621..3     current.a|b|c                                XX.XX A (2 bytes)
B630..3     power.active.total|a|b|c                     XX.XXXX kW (3 bytes)
B640..3     power.reactive.total|a|b|c                   XX.XX kvar (2 bytes)
B650..3     pf.total|a|b|c                               X.XXX (2 bytes)
B61F..B65F  the same as a block, in that order
C010        meter.date                                   YYMMDDWW
C011        meter.time                                   hhmmss -> "hh:mm:ss"
C020        status.word1997 (+ flags, below)             1 byte
C032/3/4    meter.number / meter.user_number /           12 digits (6 bytes)
            meter.device_code
==========  ===========================================  =====================================

M, the month: DI1 low nibble 0/1 current, 4/5 last month (``.prev1``), 8/9 the month before
(``.prev2``) -- the first of each pair is active, the second reactive.  K, the kind (DI0 high
nibble): active 1 forward = ``active.import``, 2 reverse = ``active.export``; reactive
1 forward = ``reactive.combined1``, 2 reverse = ``reactive.combined2``, 3 = ``reactive.q1``,
4 = ``reactive.q4``, 5 = ``reactive.q2``, 6 = ``reactive.q3`` (the 1997 order is Q1 Q4 Q2 Q3).
R, the rate: 0 total, 1..E rate N, F the block of total + every rate the meter has (up to 14).
Data sets ``xxFF`` (several blocks joined by AA separators) are not decoded.

Mapping notes.  1997 "forward / reverse reactive" (正向/反向无功) is what a 2007 meter reports as
combined reactive 1 / 2 with its default mode word (Q1+Q2 / Q3+Q4), and it is the mapping
concentrators use when they translate 1997 identifiers to 2007 ones (coyool/XXOO_000
``GPRS_V1.0/伊朗GPRS_APP_ybz_2014_04_09/platform/plc/dd645_2007.c``: 9110 -> 00030000,
9120 -> 00040000, 9130 -> 00050000 (Q1), 9140 -> 00080000 (Q4), 9150 -> 00060000 (Q2),
9160 -> 00070000 (Q3), A010 -> 01010000, B611 -> 02010100, B630 -> 02030000, C010 -> 04000101,
C011 -> 04000102).  The 1997 value is never negative, the 2007 one may be.  "Last month" is the
1997 settlement period, so it maps to the 2007 "previous settlement day" suffix ``.prev1``.

Formats and lengths: bobyuxinyang/dlt645_1997 ``dlt645_api_97.c`` (``get_d97_ruler_info``: B611
XXX 2 bytes, B621 XX.XX 2, B630 XX.XXXX 3, B640 XX.XX 2, B650 X.XXX 2, B010 MMDDhhmm 4,
C010 YYMMDDWW 4, C011 hhmmss 3, C020 1 byte, C032..C034 6 bytes) agreeing with the table comments
of hoanghon00/meter-dlt645-1997 ``APP/HUCK/Protocol/C/Data_Trans.c`` (``Protocol_Data``).

The demand time has no year.  :func:`decode97` takes ``now`` (the time of the reading, passed in
like every clock in meterd): with it, ``MMDDhhmm`` becomes the canonical ``...time`` datetime, the
latest such moment not after ``now`` (plus :data:`CLOCK_SKEW`, since a meter clock may run ahead);
maximum demand is reset every month, so it is always recent.  Without ``now`` the value is text
``"MM-DD hh:mm"`` under ``...time_noyear`` -- a different name, so a datetime column never gets a
string.  :func:`encode97` takes either and drops the year.

Status word C020 (电表运行状态字) also decodes into ``alarm.battery_low`` (D2, battery under
voltage), ``power.active.reverse`` (D4) and ``power.reactive.reverse`` (D5); D0 (manual reading)
and D1 (block demand) stay in the word.

Scaling as in 2007: energy, demand and power CT x PT, current CT, voltage PT.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final

from meterd.errors import ProtocolError, UnknownIdentifierError
from meterd.protocols.bcd import decode_datetime, encode_datetime
from meterd.protocols.dlt645.catalogue import (
    DEMAND_UNITS,
    PHASES,
    DataItem,
    DecodedValue,
    Field,
    Kind,
    Scaling,
    Value,
    decode_field,
    encode_field,
    layout,
)

MAX_RATE_97: Final = 14
DEMAND_TIME_FORMAT: Final = "MMDDhhmm"
CLOCK_SKEW: Final = timedelta(days=1)
NOYEAR_SUFFIX: Final = "_noyear"

_MONTHS: Final = {0x0: "", 0x4: ".prev1", 0x8: ".prev2"}  # DI1 low nibble & 0xE
ACTIVE_KINDS_97: Final = {0x1: ("active.import", "kWh"), 0x2: ("active.export", "kWh")}
REACTIVE_KINDS_97: Final = {
    0x1: ("reactive.combined1", "kvarh"),  # 正向无功
    0x2: ("reactive.combined2", "kvarh"),  # 反向无功
    0x3: ("reactive.q1", "kvarh"),
    0x4: ("reactive.q4", "kvarh"),
    0x5: ("reactive.q2", "kvarh"),
    0x6: ("reactive.q3", "kvarh"),
}

BATTERY_LOW_BIT: Final = 1 << 2
ACTIVE_REVERSE_BIT: Final = 1 << 4
REACTIVE_REVERSE_BIT: Final = 1 << 5
STATUS_WORD_97: Final = "status.word1997"


def _rate(r: int) -> str:
    return "total" if r == 0 else f"rate{r}"


def _split(di: int) -> tuple[str, str, str, int] | None:
    """(family nibble, kind, unit of energy, rate) of a 9xxx/Axxx/Bxxx DI, or None."""
    month_nibble, kind_nibble, r = (di >> 8) & 0x0F, (di >> 4) & 0x0F, di & 0x0F
    suffix = _MONTHS.get(month_nibble & 0x0E)
    if suffix is None:
        return None
    kinds = REACTIVE_KINDS_97 if month_nibble & 0x01 else ACTIVE_KINDS_97
    if kind_nibble not in kinds:
        return None
    kind, unit = kinds[kind_nibble]
    return kind, unit, suffix, r


def _energy_field(q: str, unit: str) -> Field:
    return Field(q, Kind.NUMBER, 4, 2, False, unit, Scaling.CTPT)


def _demand_field(q: str, unit: str) -> Field:
    return Field(q, Kind.NUMBER, 3, 4, False, DEMAND_UNITS[unit], Scaling.CTPT)


def _demand_time_field(q: str, unit: str) -> Field:
    return Field(f"{q}.time", Kind.DATETIME, 4, time_format=DEMAND_TIME_FORMAT)


_FAMILIES: Final = {
    0x9: ("energy", _energy_field, "energy"),
    0xA: ("demand", _demand_field, "maximum demand"),
    0xB: ("demand", _demand_time_field, "time of maximum demand"),
}


def _metered_item(di: int) -> DataItem | None:
    family = _FAMILIES.get(di >> 12)
    parts = _split(di)
    if family is None or parts is None:
        return None
    prefix, make, what = family
    kind, unit, suffix, r = parts
    if r == 0x0F:
        first = make(f"{prefix}.{kind}.total{suffix}", unit)
        rest = tuple(make(f"{prefix}.{kind}.rate{n}{suffix}", unit) for n in range(1, MAX_RATE_97 + 1))
        return DataItem(di, f"{kind} {what} block (total + rates){suffix}", (first,), rest)
    return DataItem(di, f"{kind} {what} {_rate(r)}{suffix}", (make(f"{prefix}.{kind}.{_rate(r)}{suffix}", unit),))


_VARIABLES_97: Final = {
    # DI0 high nibble: (quantity prefix, size, decimals, unit, scaling, has a total)
    0x1: ("voltage", 2, 0, "V", Scaling.PT, False),
    0x2: ("current", 2, 2, "A", Scaling.CT, False),
    0x3: ("power.active", 3, 4, "kW", Scaling.CTPT, True),
    0x4: ("power.reactive", 2, 2, "kvar", Scaling.CTPT, True),
    0x5: ("pf", 2, 3, "", Scaling.NONE, True),
}


def _variable_item(di: int) -> DataItem | None:
    if di >> 8 != 0xB6:
        return None
    spec = _VARIABLES_97.get((di >> 4) & 0x0F)
    if spec is None:
        return None
    prefix, size, dec, unit, scaling, has_total = spec
    names = (("total",) if has_total else ()) + PHASES
    sub = di & 0x0F

    def field(phase: str) -> Field:
        return Field(f"{prefix}.{phase}", Kind.NUMBER, size, dec, False, unit, scaling)

    if sub == 0x0F:
        return DataItem(di, f"{prefix} block ({', '.join(names)})", tuple(field(p) for p in names))
    first = 0 if has_total else 1
    if first <= sub <= 3:
        phase = "total" if sub == 0 else PHASES[sub - 1]
        return DataItem(di, f"{prefix} {phase}", (field(phase),))
    return None


_FIXED_97: Final[dict[int, DataItem]] = {
    item.di: item
    for item in (
        DataItem(0xC010, "date and weekday", (Field("meter.date", Kind.DATETIME, 4, time_format="YYMMDDWW"),)),
        DataItem(0xC011, "time of day", (Field("meter.time", Kind.TEXT, 3),)),
        DataItem(0xC020, "meter running status word", (Field(STATUS_WORD_97, Kind.WORD, 1),)),
        DataItem(0xC032, "meter number", (Field("meter.number", Kind.ADDRESS, 6),)),
        DataItem(0xC033, "user number", (Field("meter.user_number", Kind.ADDRESS, 6),)),
        DataItem(0xC034, "device code", (Field("meter.device_code", Kind.ADDRESS, 6),)),
    )
}


@lru_cache(maxsize=1024)
def lookup97(di: int) -> DataItem:
    """The 1997 catalogue entry for ``di``; UnknownIdentifierError if meterd does not know it."""
    item = None
    if 0 <= di <= 0xFFFF:
        item = _FIXED_97.get(di) or _variable_item(di) or _metered_item(di)
    if item is None:
        raise UnknownIdentifierError(f"data identifier {di:04X} is not in the DL/T 645-1997 catalogue", di=di)
    return item


def is_known97(di: int) -> bool:
    try:
        lookup97(di)
    except UnknownIdentifierError:
        return False
    return True


def demand_time_di(di: int) -> int:
    """The DI carrying the time of the maximum demand ``di`` (A010 -> B010)."""
    if di >> 12 != 0xA or not is_known97(di):
        raise UnknownIdentifierError(f"{di:04X} is not a 1997 maximum-demand identifier", di=di)
    return di + 0x1000


def status97_flags(word: int) -> dict[str, bool]:
    return {
        "alarm.battery_low": bool(word & BATTERY_LOW_BIT),
        "power.active.reverse": bool(word & ACTIVE_REVERSE_BIT),
        "power.reactive.reverse": bool(word & REACTIVE_REVERSE_BIT),
    }


# --- demand times without a year --------------------------------------------------------------


def resolve_year(month_day: datetime, now: datetime) -> datetime:
    """Give ``month_day`` (its year ignored) the latest year that puts it no later than ``now`` + skew."""
    limit = now + CLOCK_SKEW
    for year in range(now.year + 1, now.year - 9, -1):  # 29 February: the last leap year is within 8
        try:
            candidate = month_day.replace(year=year)
        except ValueError:
            continue
        if candidate <= limit:
            return candidate
    raise ProtocolError(f"no year puts {month_day:%m-%d %H:%M} before {now}")  # pragma: no cover


def _noyear_text(when: datetime) -> str:
    return f"{when:%m-%d %H:%M}"


def _parse_noyear(text: str, quantity: str) -> datetime:
    try:
        return datetime.strptime(f"2000-{text}", "%Y-%m-%d %H:%M")  # 2000: a leap year holds 02-29
    except ValueError:
        raise ProtocolError(f"{quantity}={text!r} is not 'MM-DD hh:mm'") from None


# --- decoding and encoding payloads ------------------------------------------------------------


def decode97(di: int, payload: bytes, *, now: datetime | None = None) -> list[DecodedValue]:
    """The data bytes of a 1997 read reply (after the DI) -> decoded values in wire order.

    ``now`` gives demand times (MMDDhhmm) their year; see the module docstring.
    """
    item = lookup97(di)
    fields = layout(item, len(payload), 4)
    out: list[DecodedValue] = []
    pos = 0
    for f in fields:
        raw = payload[pos : pos + f.size]
        pos += f.size
        if f.time_format == DEMAND_TIME_FORMAT:
            month_day = decode_datetime(raw, DEMAND_TIME_FORMAT)
            if now is None:
                out.append(DecodedValue(f.quantity + NOYEAR_SUFFIX, _noyear_text(month_day)))
            else:
                out.append(DecodedValue(f.quantity, resolve_year(month_day, now)))
            continue
        out.append(DecodedValue(f.quantity, decode_field(f, raw), f.unit, f.scaling))
        if f.quantity == STATUS_WORD_97:
            out.extend(DecodedValue(q, v) for q, v in status97_flags(raw[0]).items())
    return out


def _value_for(f: Field, values: Mapping[str, Value]) -> Value | None:
    if f.quantity in values:
        return values[f.quantity]
    if f.time_format == DEMAND_TIME_FORMAT and f.quantity + NOYEAR_SUFFIX in values:
        return values[f.quantity + NOYEAR_SUFFIX]
    return None


def _encode_one(f: Field, value: Value) -> bytes:
    if f.time_format == DEMAND_TIME_FORMAT:
        if isinstance(value, str):
            value = _parse_noyear(value, f.quantity)
        if not isinstance(value, datetime):
            raise ProtocolError(f"{f.quantity} needs a datetime or 'MM-DD hh:mm', got {value!r}")
        return encode_datetime(value, DEMAND_TIME_FORMAT)
    return encode_field(f, value)


def encode97(di: int, values: Mapping[str, Value]) -> bytes:
    """Values by quantity -> the data bytes a 1997 meter answers with (the simulator's side).

    Blocks carry the total and then as many rates as ``values`` has, in order.
    """
    item = lookup97(di)
    missing = [f.quantity for f in item.fields if _value_for(f, values) is None]
    if missing:
        raise UnknownIdentifierError(f"no value for {', '.join(missing)} of {di:04X}", di=di)
    out = bytearray()
    for f in item.fields:
        out += _encode_one(f, _value_for(f, values))  # type: ignore[arg-type]
    group = len(item.fields)
    for i in range(0, len(item.repeat), group):
        chunk = item.repeat[i : i + group]
        if any(_value_for(f, values) is None for f in chunk):
            break
        for f in chunk:
            out += _encode_one(f, _value_for(f, values))  # type: ignore[arg-type]
    return bytes(out)
