"""The data formats of Q/GDW 1376.1-2013 appendix A that meterd reads and writes.

Every format is packed BCD, low byte first, as the terminal sends it::

    A.1   6  ss mm hh DD (WW<<5 | MM) YY     date-time with weekday (1 = Monday .. 7 = Sunday, 0 = none)
    A.5   2  S  xxx.x          %             sign in D7 of the high byte, 3 bits of hundreds below it
    A.7   2     xxx.x          V
    A.9   3  S  xx.xxxx        kW, kvar, kVA sign in D7 of the high byte
    A.11  4     xxxxxx.xx      kvarh
    A.12  6     12 digits      a meter or collector address (DL/T 645 byte order)
    A.14  5     xxxxxx.xxxx    kWh           energy register reading (示值)
    A.15  5  mm hh DD MM YY    minute resolution
    A.16  4  ss mm hh DD       (the time label Tp; no month or year)
    A.20  3  DD MM YY          a day (Td_d)
    A.21  2  MM YY             a month (Td_m)
    A.25  3  S  xxx.xxx        A             sign in D7 of the high byte

A value the terminal does not have is sent as ``EE`` in every byte of its field (the standard's
"invalid data"); it decodes to ``None`` and ``None`` encodes back to ``EE``.  Numbers are
:class:`~decimal.Decimal` with the format's resolution (``Decimal("6.7800")`` for A.14), and
encoding refuses a value that does not fit the resolution or the range rather than rounding it.

Times are naive :class:`~datetime.datetime` objects in the terminal's own clock, which keeps the
site's local time (China Standard Time): the standard carries no zone, so the codec does not invent
one.  A caller that needs an instant attaches the site's zone (``meterd.clock``).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Final

from meterd.errors import FrameLengthError, ProtocolError
from meterd.protocols.bcd import from_bcd_byte, from_bcd_le, to_bcd_le
from meterd.protocols.dlt645.frame import address_from_wire, address_to_wire

INVALID: Final = 0xEE
SIGN: Final = 0x80


def is_invalid(raw: bytes) -> bool:
    """Whether a field is the standard's "no data" filler (every byte ``EE``)."""
    return bool(raw) and raw.count(INVALID) == len(raw)


def _need(raw: bytes, size: int, what: str) -> None:
    if len(raw) != size:
        raise FrameLengthError(f"{what} needs {size} bytes, got {len(raw)}", bytes(raw))


# --- numbers --------------------------------------------------------------------------------------


def decode_number(raw: bytes, decimals: int, *, signed: bool = False, what: str = "value") -> Decimal | None:
    """BCD (low byte first) with ``decimals`` digits after the point; a sign in D7 of the last byte."""
    if is_invalid(raw):
        return None
    data = bytes(raw)
    negative = False
    if signed:
        negative = bool(data[-1] & SIGN)
        data = data[:-1] + bytes((data[-1] & 0x7F,))
    try:
        magnitude = from_bcd_le(data)
    except ProtocolError:
        raise ProtocolError(f"{what} is not BCD", bytes(raw)) from None
    # built from its digits so that zero keeps the format's resolution too ("0.0000", not "0E-4")
    return Decimal((int(negative), tuple(int(c) for c in str(magnitude)), -decimals))


def encode_number(value: Decimal | int | None, size: int, decimals: int, *, signed: bool = False,
                  what: str = "value") -> bytes:
    """The inverse of :func:`decode_number`; ``None`` is the ``EE`` filler."""
    if value is None:
        return bytes((INVALID,)) * size
    exact = Decimal(value).scaleb(decimals)
    if exact != exact.to_integral_value():
        raise ProtocolError(f"{what} {value} has more than {decimals} decimal(s)")
    n = int(exact)
    if n < 0 and not signed:
        raise ProtocolError(f"{what} {value} cannot be negative")
    limit = 80 * 100 ** (size - 1) if signed else 100**size  # signed: D7 is the sign, 3 bits of tens left
    if abs(n) >= limit:
        raise ProtocolError(f"{what} {value} does not fit {size} bytes with {decimals} decimal(s)")
    raw = bytearray(to_bcd_le(abs(n), size))
    if signed and exact.is_signed():  # -0 too: a terminal may send the sign bit with a zero value
        raw[-1] |= SIGN
    return bytes(raw)


# name: (bytes, decimals, signed, unit) for the numeric formats
NUMBER_FORMATS: Final[dict[str, tuple[int, int, bool, str]]] = {
    "A.5": (2, 1, True, "%"),
    "A.7": (2, 1, False, "V"),
    "A.9": (3, 4, True, "kW"),
    "A.11": (4, 2, False, "kvarh"),
    "A.14": (5, 4, False, "kWh"),
    "A.25": (3, 3, True, "A"),
}


def decode_format(name: str, raw: bytes) -> Decimal | None:
    size, decimals, signed, _ = NUMBER_FORMATS[name]
    _need(raw, size, name)
    return decode_number(raw, decimals, signed=signed, what=name)


def encode_format(name: str, value: Decimal | int | None) -> bytes:
    size, decimals, signed, _ = NUMBER_FORMATS[name]
    return encode_number(value, size, decimals, signed=signed, what=name)


# --- times ----------------------------------------------------------------------------------------


def _fields(raw: bytes, what: str) -> list[int]:
    try:
        return [from_bcd_byte(b, bytes(raw)) for b in raw]
    except ProtocolError:
        raise ProtocolError(f"{what} is not BCD", bytes(raw)) from None


def _datetime(year: int, month: int, day: int, hour: int, minute: int, second: int, raw: bytes,
              what: str) -> datetime:
    try:
        return datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not a valid time: {exc}", bytes(raw)) from None


def _check_year(when: date, what: str) -> None:
    if not 2000 <= when.year <= 2099:
        raise ProtocolError(f"{what}: {when:%Y-%m-%d} is outside 2000-2099 and has no two-digit year")


def decode_a1(raw: bytes) -> datetime | None:
    """A.1 (ss mm hh DD WW|MM YY) -> naive local datetime; the weekday is not checked (terminals
    that do not keep one send 0)."""
    _need(raw, 6, "A.1 date-time")
    if is_invalid(raw):
        return None
    month_byte = raw[4]
    ss, mm, hh, dd, yy = _fields(bytes((raw[0], raw[1], raw[2], raw[3], raw[5])), "A.1 date-time")
    month = from_bcd_byte(month_byte & 0x1F, bytes(raw))
    return _datetime(yy, month, dd, hh, mm, ss, raw, "A.1 date-time")


def encode_a1(when: datetime | None) -> bytes:
    """A.1 with the weekday of ``when`` (1 = Monday .. 7 = Sunday)."""
    if when is None:
        return bytes((INVALID,)) * 6
    _check_year(when, "A.1 date-time")
    month = to_bcd_le(when.month, 1)[0] | (when.isoweekday() << 5)
    return bytes((*to_bcd_le(when.second, 1), *to_bcd_le(when.minute, 1), *to_bcd_le(when.hour, 1),
                  *to_bcd_le(when.day, 1), month, *to_bcd_le(when.year % 100, 1)))


def decode_a15(raw: bytes) -> datetime | None:
    """A.15 (mm hh DD MM YY) -> naive local datetime."""
    _need(raw, 5, "A.15 time")
    if is_invalid(raw):
        return None
    mm, hh, dd, mo, yy = _fields(raw, "A.15 time")
    return _datetime(yy, mo, dd, hh, mm, 0, raw, "A.15 time")


def encode_a15(when: datetime | None) -> bytes:
    if when is None:
        return bytes((INVALID,)) * 5
    _check_year(when, "A.15 time")
    if when.second or when.microsecond:
        raise ProtocolError(f"A.15 time {when:%Y-%m-%d %H:%M:%S} has seconds; the format keeps minutes")
    return b"".join(to_bcd_le(v, 1) for v in (when.minute, when.hour, when.day, when.month, when.year % 100))


def decode_a20(raw: bytes) -> date | None:
    """A.20 (DD MM YY) -> a calendar day."""
    _need(raw, 3, "A.20 date")
    if is_invalid(raw):
        return None
    dd, mo, yy = _fields(raw, "A.20 date")
    return _datetime(yy, mo, dd, 0, 0, 0, raw, "A.20 date").date()


def encode_a20(day: date | None) -> bytes:
    if day is None:
        return bytes((INVALID,)) * 3
    _check_year(day, "A.20 date")
    return b"".join(to_bcd_le(v, 1) for v in (day.day, day.month, day.year % 100))


def decode_a21(raw: bytes) -> date | None:
    """A.21 (MM YY) -> the first day of that month."""
    _need(raw, 2, "A.21 month")
    if is_invalid(raw):
        return None
    mo, yy = _fields(raw, "A.21 month")
    return _datetime(yy, mo, 1, 0, 0, 0, raw, "A.21 month").date()


def encode_a21(month: date | None) -> bytes:
    if month is None:
        return bytes((INVALID,)) * 2
    _check_year(month, "A.21 month")
    if month.day != 1:
        raise ProtocolError(f"A.21 month {month:%Y-%m-%d}: give the first day of the month")
    return b"".join(to_bcd_le(v, 1) for v in (month.month, month.year % 100))


def decode_a16(raw: bytes) -> tuple[int, int, int, int]:
    """A.16 (ss mm hh DD) -> (day, hour, minute, second), range-checked."""
    _need(raw, 4, "A.16 time")
    ss, mm, hh, dd = _fields(raw, "A.16 time")
    if not (1 <= dd <= 31 and hh < 24 and mm < 60 and ss < 60):
        raise ProtocolError("A.16 time is not a valid day and time of day", bytes(raw))
    return dd, hh, mm, ss


def encode_a16(day: int, hour: int, minute: int, second: int) -> bytes:
    if not (1 <= day <= 31 and 0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60):
        raise ProtocolError(f"A.16 time: day {day} {hour:02}:{minute:02}:{second:02} is out of range")
    return b"".join(to_bcd_le(v, 1) for v in (second, minute, hour, day))


# --- addresses ------------------------------------------------------------------------------------


def decode_a12(raw: bytes) -> str | None:
    """A.12: a meter address as its 12 digits (``AA`` wildcard bytes kept), ``None`` for ``EE``."""
    _need(raw, 6, "A.12 address")
    if is_invalid(raw):
        return None
    return address_from_wire(bytes(raw))


def encode_a12(address: str | None) -> bytes:
    if address is None:
        return bytes((INVALID,)) * 6
    return address_to_wire(address)
