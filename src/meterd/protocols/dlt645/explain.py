"""What one DL/T 645 frame says, in whichever edition it is: for ``meterd decode`` and frame traces.

The 1997 and 2007 editions share the envelope (:mod:`.frame`), so the function code in C (its
D4..D0) says which edition a frame is.  The codes of the two standards (DL/T 645-1997 clause on the
control code, as :mod:`.v1997` implements it; DL/T 645-2007 clause 4.1.3 and its 2013 amendment)::

    code    DL/T 645-1997                 DL/T 645-2007
    01      read data                     -
    02      read follow-up                -
    03      re-read (no data)             security authentication (with data; not decoded here)
    04      write data                    -
    08      broadcast time                broadcast time -- byte for byte the same frame
    0A      write address                 -
    0C      change baud                   -
    0F      change password               -
    10      clear maximum demand          -
    11..1D  -                             read, follow-up, read address, write, write address,
                                          freeze, change baud, password, clear demand / meter /
                                          events, relay control, output control

So ``01`` (and every 1997-only code) is never 2007, and ``11`` never 1997.  A reply carries its
request's code with D7 set (``81``, ``91``), an abnormal reply D6 as well (``C1``, ``D1``), each
judged by the same table; the ERR byte's bits differ between the editions and are named by each
edition's own table.  A code in neither column, or a frame whose data does not fit its edition's
layout, is not decoded: :attr:`Explained.message_error` says why.

:func:`explain` is sans-I/O: the values it returns are the catalogue's (naive datetimes are the
meter's own clock); turning them into the site's time is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645 import catalogue, catalogue1997, messages, v1997
from meterd.protocols.dlt645.catalogue import CurvePoint, DecodedValue
from meterd.protocols.dlt645.frame import Frame, Function

EDITION_2007: Final = 2007
EDITION_1997: Final = 1997
LABELS: Final = {EDITION_2007: "DL/T 645-2007", EDITION_1997: "DL/T 645-1997"}

ONLY_1997: Final = frozenset(
    int(f) for f in v1997.Function97 if f not in (v1997.Function97.REREAD, v1997.Function97.BROADCAST_TIME)
)
ONLY_2007: Final = frozenset(int(f) for f in Function if f is not Function.BROADCAST_TIME)
SECURITY_2007: Final = 0x03  # 2007's security authentication shares its code with 1997's re-read

# The ERR byte of an abnormal reply, bit by bit, with the standards' own words
ERROR_BITS: Final = {
    EDITION_2007: {  # DL/T 645-2007 table 4 (:class:`.messages.MeterErrorBits`)
        0x01: "other error (其他错误)",
        0x02: "no requested data (无请求数据)",
        0x04: "wrong password / not authorised (密码错/未授权)",
        0x08: "baud rate cannot be changed (通信速率不能更改)",
        0x10: "too many year zones (年时区数超)",
        0x20: "too many day periods (日时段数超)",
        0x40: "too many rates (费率数超)",
    },
    EDITION_1997: {  # DL/T 645-1997 (:class:`.v1997.MeterErrorBits1997`); D3 and D7 reserved
        0x01: "illegal data (非法数据)",
        0x02: "data identifier error (数据标识错)",
        0x04: "password error (密码错)",
        0x10: "too many year zones (年时区数超)",
        0x20: "too many day periods (日时段数超)",
        0x40: "too many rates (费率数超)",
    },
}


def error_bits(edition: int, err: int) -> tuple[str, ...]:
    """The bits set in an ERR byte, named; a bit the edition reserves is named as reserved."""
    names = ERROR_BITS[edition]
    out = tuple(names.get(1 << n, f"reserved bit D{n}") for n in range(8) if err & (1 << n))
    return out or ("no bit set",)


_DI_MESSAGES_2007: Final = (messages.ReadRequest, messages.ReadFollowUpRequest, messages.WriteRequest,
                            messages.ReadResponse, messages.ReadFollowUpResponse)
_DI_MESSAGES_1997: Final = (v1997.ReadRequest97, v1997.ReadFollowUpRequest97, v1997.WriteRequest97,
                            v1997.ReadResponse97, v1997.ReadFollowUpResponse97)


def edition_of(frame: Frame) -> tuple[int | None, str]:
    """(1997, 2007 or None, why) from the frame's function code (see the module docstring)."""
    fn = frame.function
    if fn in ONLY_1997:
        return EDITION_1997, f"function {fn:02X} exists only in DL/T 645-1997"
    if fn in ONLY_2007:
        return EDITION_2007, f"function {fn:02X} exists only in DL/T 645-2007"
    if fn == Function.BROADCAST_TIME:
        return EDITION_2007, "function 08 (broadcast time) is the same frame in DL/T 645-2007 and -1997"
    if fn == SECURITY_2007:
        if not frame.data or (frame.is_abnormal and len(frame.data) == 1):
            return EDITION_1997, "function 03 without data is the DL/T 645-1997 re-read"
        return EDITION_2007, "function 03 with data is the DL/T 645-2007 security authentication"
    return None, f"function {fn:02X} exists in neither DL/T 645-2007 nor DL/T 645-1997"


@dataclass(frozen=True, slots=True)
class Explained:
    """Everything :func:`explain` made of a frame.  Identifiers are text of the edition's width
    (``00010000`` or ``9010``); the values are the catalogue's, times as the meter keeps them."""

    frame: Frame
    edition: int | None
    edition_note: str
    control_meaning: str
    message: Any = None  # the typed request or reply; None where message_error says why not
    message_error: str | None = None
    di: str | None = None
    identifier: str | None = None  # the catalogue's name of the identifier
    identifier_error: str | None = None
    values: tuple[DecodedValue, ...] = ()
    points: tuple[CurvePoint, ...] = ()
    value_unit: str = ""  # the unit of the curve points
    value_error: str | None = None
    value_note: str | None = None  # why a reply's data is shown but not decoded
    refusal: tuple[int, tuple[str, ...]] | None = None  # an abnormal reply: (ERR byte, its bits named)
    fields: dict[str, Any] = field(default_factory=dict)  # the message's fields but address and data

    @property
    def edition_label(self) -> str:
        return LABELS[self.edition] if self.edition is not None else "DL/T 645, edition unknown"

    @property
    def decoded(self) -> bool:
        """The frame decoded fully: its message and, for a read reply, its value."""
        return self.message_error is None and self.value_error is None


def explain(frame: Frame, now: datetime | None = None) -> Explained:
    """``frame`` -> :class:`Explained`; never raises for a frame that :func:`.frame.decode_frame` made.

    ``now`` (the meter's local time, naive) gives 1997 maximum-demand times (MMDDhhmm) their year.
    """
    edition, note = edition_of(frame)
    if edition == EDITION_1997:
        meaning = v1997.describe_control97(frame)
        decode_message: Any = v1997.decode_message97
    else:
        meaning = frame.describe_control()
        decode_message = messages.decode_message
    base: dict[str, Any] = {"frame": frame, "edition": edition, "edition_note": note, "control_meaning": meaning}
    if edition is None:
        return Explained(**base, message_error=note)
    try:
        message = decode_message(frame)
    except ProtocolError as exc:
        return Explained(**base, message_error=f"{LABELS[edition]}: {exc}")
    fields = {k: getattr(message, k) for k in message.__dataclass_fields__ if k not in ("address", "data", "di")}
    out: dict[str, Any] = {"message": message, "fields": fields}
    if isinstance(message, (messages.AbnormalResponse, v1997.AbnormalResponse97)):
        out["refusal"] = (int(message.error), error_bits(edition, int(message.error)))
    if isinstance(message, _DI_MESSAGES_2007 + _DI_MESSAGES_1997):
        out.update(_identifier(edition, message, now))
    return Explained(**base, **out)


def _identifier(edition: int, message: Any, now: datetime | None) -> dict[str, Any]:
    di: int = message.di
    out: dict[str, Any] = {"di": f"{di:0{4 if edition == EDITION_1997 else 8}X}"}
    lookup = catalogue1997.lookup97 if edition == EDITION_1997 else catalogue.lookup
    try:
        item = lookup(di)
    except ProtocolError as exc:
        out["identifier_error"] = str(exc)
        if hasattr(message, "follow_up"):  # a reply: its data cannot be decoded without the identifier
            out["value_error"] = str(exc)
        return out
    out["identifier"] = item.name
    if isinstance(message, (messages.WriteRequest, v1997.WriteRequest97)):
        try:  # the value being written, where the catalogue knows its layout
            if edition == EDITION_1997:
                out["values"] = tuple(catalogue1997.decode97(di, message.data, now=now))
            else:
                out["values"] = tuple(catalogue.decode(di, message.data))
        except ProtocolError as exc:  # a parameter written in a layout of its own: shown as bytes
            out["value_note"] = f"the data written is not decoded: {exc}"
        return out
    if not hasattr(message, "follow_up"):
        return out  # a read request: nothing to decode but the identifier
    try:
        if edition == EDITION_2007:
            if item.records:
                if isinstance(message, messages.ReadResponse):
                    f, points = catalogue.decode_records(di, message.data)
                    out.update(points=tuple(points), value_unit=f.unit)
                else:
                    out["value_note"] = "a piece of a load curve: the pieces joined decode together"
            else:
                out["values"] = tuple(catalogue.decode(di, message.data))
        elif isinstance(message, v1997.ReadFollowUpResponse97):
            out["value_note"] = "a later piece of a longer reply: the pieces joined decode together"
        else:
            out["values"] = tuple(catalogue1997.decode97(di, message.data, now=now))
    except ProtocolError as exc:
        if edition == EDITION_1997 and message.follow_up:  # the first piece of a longer reply
            out["value_note"] = f"the first piece of a longer reply ({exc}): the pieces joined decode together"
        else:
            out["value_error"] = str(exc)
    return out
