"""A DL/T 645-2007 read reply decoded in one step: frame, message and value (the polling hot path).

Most frames on a bus are the normal reply (``91``, no follow-up) to a read of one identifier whose
value is a number or a bit word: energy, voltage, current, power, a status word.  The plain path
takes three steps and three objects for it -- :func:`~meterd.protocols.dlt645.frame.decode_frame`
(a :class:`~meterd.protocols.dlt645.frame.Frame`), :func:`~meterd.protocols.dlt645.messages.decode_response`
(a ``ReadResponse``) and :func:`~meterd.protocols.dlt645.catalogue.decode` (walking the item's
fields) -- each checking what the one before already knew.  :func:`decode_read_reply` does the
same checks once, straight on the wire bytes::

    FE.. 68 A0..A5 68 91 L | DI0..DI3 value bytes | CS 16
         `-- address --'      `-- data, +33 each --'
         checksum, end byte, length: as decode_frame; control word 91 exactly;
         the value: the identifier's fields laid out once (:func:`layout_decoder`), BCD checked
         with str.isdigit on the hex digits, Decimal made from those digits

Contract: it returns what the plain path returns -- ``(address, di, fields, values)``: the item's
fields and their values, which :func:`as_decoded` turns into the ``catalogue.decode(di, data)``
list (the collector makes readings from them without that step) -- or ``None`` whenever anything is not that plain case (an abnormal
or follow-up reply, an identifier with dates, text, blocks or records, a bad checksum, a digit that
is not BCD, a short frame): the caller then takes the plain path, which says what is wrong.  It
never raises.  ``tests/unit/test_dlt645_fastpath.py`` holds it to that against the plain path on
golden frames and on arbitrary bytes (Hypothesis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import DecodedValue, Field, Kind, Value
from meterd.protocols.dlt645.frame import _FROM_WIRE, _MINUS33, END, START, address_from_wire

READ_REPLY: Final = 0x91  # DIR_UP | READ_DATA: normal, no follow-up frames
_FE: Final = 0xFE

Values = list[Value]
ValueDecoder = Callable[[bytes], "Values | None"]
Layout = tuple[tuple[Field, ...], ValueDecoder]
_layouts: dict[int, Layout | None] = {}
_WireEntry = tuple[int, tuple[Field, ...], "ValueDecoder", int, int]  # di, fields, decode, size, point
_by_wire: dict[bytes, _WireEntry | None] = {}
LAYOUTS_KEPT: Final = 4096
# the first hex digit of a negative value's top byte (top nibble 8..F) without its sign bit
_SIGNED_FIRST: Final = {n: format(n - 8, "x") for n in range(8, 16)}
#: Numbers of at most 16 digits: far inside Decimal's precision, so the collector may skip
#: multiplying them by a ratio of exactly 1 (every catalogue number has 8 digits at most).
MAX_NUMBER_SIZE: Final = 8


def _number(f: Field, lo: int) -> Callable[[bytes], Decimal | None]:
    """The value of NUMBER field ``f`` at ``lo`` of the data field (DI included), or None if a
    digit is not BCD.  As :func:`catalogue.decode_field`: ``Decimal(n).scaleb(-decimals)``."""
    hi, decimals = lo + f.size, f.decimals
    # lo >= 4 (the DI comes first): data[hi - 1:lo - 1:-1] is the field's bytes high to low
    below = lo - 1
    if f.signed:
        top = hi - 1

        def signed(data: bytes) -> Decimal | None:
            digits = data[top:below:-1].hex()
            head = data[top]
            if head & 0x80:  # the sign bit: the first digit is the top nibble less 8
                digits = _SIGNED_FIRST[head >> 4] + digits[1:]
            if not digits.isdigit():
                return None
            n = int(digits)
            return Decimal(-n if head & 0x80 else n).scaleb(-decimals)

        return signed
    if decimals:
        point = -decimals

        def unsigned(data: bytes) -> Decimal | None:
            digits = data[hi - 1:below:-1].hex()
            if not digits.isdigit():
                return None
            # "00123456" -> Decimal("001234.56"): the digits and exponent of Decimal(123456).scaleb(-2)
            return Decimal(digits[:point] + "." + digits[point:])

        return unsigned

    def whole(data: bytes) -> Decimal | None:
        digits = data[hi - 1:below:-1].hex()
        return Decimal(digits) if digits.isdigit() else None

    return whole


def _single(size: int, decimals: int) -> ValueDecoder:
    """The commonest item in one function: one unsigned number with decimals filling the data
    field after the DI (energy, voltage, current)."""
    point = -decimals

    def single(data: bytes) -> Values | None:
        if len(data) != size:
            return None
        digits = data[:3:-1].hex()
        if not digits.isdigit():
            return None
        return [Decimal(digits[:point] + "." + digits[point:])]

    return single


def _word(lo: int, hi: int) -> Callable[[bytes], int]:
    def word(data: bytes) -> int:
        return int.from_bytes(data[lo:hi], "little")

    return word


def layout(di: int) -> Layout | None:
    """The fields of a read reply of ``di`` and a decoder of its data field (DI included) into
    their values, or None where the plain catalogue decode is the only one: unknown identifiers,
    blocks (``repeat``), load curves, dates and text, status word 3 (it yields flags too)."""
    try:
        item = catalogue.lookup(di)
    except ProtocolError:
        return None
    if item.records or item.repeat or not item.fields:
        return None
    parts: list[Callable[[bytes], Value | None]] = []
    at = 4
    for f in item.fields:
        if f.quantity == "status.word3":
            return None
        if f.kind is Kind.NUMBER:
            if f.size > MAX_NUMBER_SIZE:
                return None
            parts.append(_number(f, at))
        elif f.kind is Kind.WORD:
            parts.append(_word(at, at + f.size))
        else:
            return None
        at += f.size
    size = at

    if len(parts) == 1:
        (f,) = item.fields
        if f.kind is Kind.NUMBER and not f.signed and f.decimals:
            return item.fields, _single(size, f.decimals)
        (part,) = parts

        def one(data: bytes) -> Values | None:
            if len(data) != size:
                return None
            value = part(data)
            return None if value is None else [value]

        return item.fields, one

    def many(data: bytes) -> Values | None:
        if len(data) != size:
            return None
        out = [part(data) for part in parts]
        return None if None in out else out  # type: ignore[return-value]

    return item.fields, many


def layout_of(di: int) -> Layout | None:
    """:func:`layout`, made once per identifier."""
    try:
        return _layouts[di]
    except KeyError:
        pass
    found = layout(di)
    if len(_layouts) >= LAYOUTS_KEPT:
        _layouts.clear()
    _layouts[di] = found
    return found


def _wire_layout(key: bytes) -> _WireEntry | None:
    """:func:`layout_of` keyed by the identifier's four plain bytes, as they come (low first); for
    the commonest item (one unsigned number with decimals) also its size and ``-decimals``, which
    :func:`decode_read_reply` decodes itself (what ``_single`` does, without the call)."""
    if len(key) != 4:
        return None
    di = int.from_bytes(key, "little")
    found = layout_of(di)
    entry: _WireEntry | None = None
    if found is not None:
        fields, decode = found
        (f, *more) = fields
        single = not more and f.kind is Kind.NUMBER and not f.signed and f.decimals
        entry = (di, fields, decode, 4 + f.size, -f.decimals if single else 0)
    if len(_by_wire) >= LAYOUTS_KEPT:
        _by_wire.clear()
    _by_wire[bytes(key)] = entry
    return entry


def as_decoded(fields: Sequence[Field], values: Sequence[Value]) -> list[DecodedValue]:
    """What ``catalogue.decode`` gives for the same reply."""
    return [DecodedValue(f.quantity, v, f.unit, f.scaling) for f, v in zip(fields, values, strict=True)]


ReadValues = tuple[str, int, tuple[Field, ...], Values]
"""What :func:`decode_read_reply` returns: address, identifier, the item's fields, their values."""


def decode_read_reply(raw: bytes) -> ReadValues | None:
    """One whole read reply (leading ``FE`` allowed, nothing after it) -> ``(address, di, fields,
    values)``, or None: not the plain case, take the plain path (see the module docstring)."""
    s = raw.find(START)
    n = len(raw)
    if s < 0 or n - s < 16 or (s and raw.count(_FE, 0, s) != s):
        return None
    if raw[s + 7] != START or raw[s + 8] != READ_REPLY:
        return None
    end = s + 10 + raw[s + 9]
    if n != end + 2 or raw[end + 1] != END or sum(raw[s:end]) & 0xFF != raw[end]:
        return None
    data = raw[s + 10:end].translate(_MINUS33)
    key = data[:4]
    try:
        found = _by_wire[key]
    except KeyError:
        found = _wire_layout(key)
    if found is None:
        return None
    di, fields, decode, size, point = found
    if point:  # one unsigned number with decimals: _single's work, inline
        if len(data) != size:
            return None
        digits = data[:3:-1].hex()
        if not digits.isdigit():
            return None
        values: Values = [Decimal(digits[:point] + "." + digits[point:])]
    else:
        got = decode(data)
        if got is None:
            return None
        values = got
    wire = raw[s + 1:s + 7]
    address = _FROM_WIRE.get(wire)
    if address is None:
        try:
            address = address_from_wire(wire)
        except ProtocolError:
            return None
    return address, di, fields, values
