"""Packed BCD helpers shared by the DL/T 645 codecs.  Multi-byte values are little-endian
(low byte first), as DL/T 645 sends them.  Errors are ProtocolError with the bytes."""

from __future__ import annotations

from datetime import datetime

from meterd.errors import ProtocolError

_DEC = [-1] * 256
for _hi in range(10):
    for _lo in range(10):
        _DEC[(_hi << 4) | _lo] = _hi * 10 + _lo
_ENC = bytes(((n // 10) << 4) | (n % 10) for n in range(100))


def bcd_byte(value: int) -> int:
    if not 0 <= value <= 99:
        raise ProtocolError(f"{value} does not fit one BCD byte")
    return _ENC[value]


def from_bcd_byte(b: int, raw: bytes | None = None) -> int:
    v = _DEC[b]
    if v < 0:
        raise ProtocolError(f"byte {b:02X} is not BCD", raw)
    return v


def to_bcd_le(value: int, size: int) -> bytes:
    """Unsigned integer -> ``size`` BCD bytes, low byte first."""
    if value < 0 or value >= 100**size:
        raise ProtocolError(f"{value} does not fit {size} BCD bytes")
    out = bytearray(size)
    for i in range(size):
        out[i] = _ENC[value % 100]
        value //= 100
    return bytes(out)


def from_bcd_le(raw: bytes) -> int:
    """BCD bytes, low byte first -> unsigned integer."""
    value = 0
    for b in reversed(raw):
        v = _DEC[b]
        if v < 0:
            raise ProtocolError(f"byte {b:02X} is not BCD", bytes(raw))
        value = value * 100 + v
    return value


def encode_datetime(when: datetime, fields: str) -> bytes:
    """Encode ``when`` as BCD bytes named by ``fields`` high to low, e.g. ``"YYMMDDhhmmss"``.

    The result is low byte first (so ``"YYMMDDhhmm"`` goes out as mm hh DD MM YY).
    ``WW`` is the weekday, 0 = Sunday, as DL/T 645 counts it.  ``YY`` only holds 2000-2099:
    other years are refused rather than sent as a different year.
    """
    if "YY" in fields and not 2000 <= when.year <= 2099:
        raise ProtocolError(f"{when:%Y-%m-%d} is outside 2000-2099 and does not fit a YY field")
    values = {
        "YY": when.year % 100,
        "MM": when.month,
        "DD": when.day,
        "WW": (when.isoweekday() % 7),
        "hh": when.hour,
        "mm": when.minute,
        "ss": when.second,
    }
    parts = [fields[i : i + 2] for i in range(0, len(fields), 2)]
    return bytes(_ENC[values[p]] for p in reversed(parts))


def decode_datetime(raw: bytes, fields: str) -> datetime:
    """Inverse of :func:`encode_datetime` (naive datetime in the meter's local time)."""
    parts = [fields[i : i + 2] for i in range(0, len(fields), 2)]
    if len(raw) != len(parts):
        raise ProtocolError(f"{fields} needs {len(parts)} bytes, got {len(raw)}", bytes(raw))
    values = {p: from_bcd_byte(b, bytes(raw)) for p, b in zip(reversed(parts), raw)}
    try:
        return datetime(
            2000 + values.get("YY", 0),
            values.get("MM", 1),
            values.get("DD", 1),
            values.get("hh", 0),
            values.get("mm", 0),
            values.get("ss", 0),
        )
    except ValueError as exc:
        raise ProtocolError(f"not a valid {fields} date/time: {exc}", bytes(raw)) from None
