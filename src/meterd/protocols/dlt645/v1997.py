"""DL/T 645-1997 application messages: typed requests and replies over :class:`Frame`.

The 1997 edition uses the same link envelope as 2007 (:mod:`.frame`: ``68 A0..A5 68 C L DATA CS 16``,
data +33H, the D7 direction / D6 abnormal / D5 follow-up bits of C), but its own function codes,
2-byte data identifiers and error byte.  Master functions and their data fields::

    01 read data        DI0 DI1 [args...]                  L>=2  (args: vendor load-curve reads)
        reply 81/A1     DI0 DI1 data...                          (A1: follow-up frames exist)
    02 read follow-up   DI0 DI1                            L=2
        reply 82/A2     DI0 DI1 data...
    03 re-read          (nothing)                          L=0   the meter repeats its last reply
    04 write data       DI0 DI1 PA P0 P1 P2 data...        L>=6  reply 84, L=0
    08 time sync        ss mm hh DD MM YY (to 999999999999) L=6   no reply
    0A write address    A0..A5 (the new address)           L=6   reply 8A, L=0, from the OLD address
    0C change baud      Z (bit1 300 .. bit6 9600)          L=1   reply 8C Z (some meters: L=0)
    0F change password  PA P0 P1 P2 (old) PA P0 P1 P2 (new) L=8  reply 8F PA P0 P1 P2 (new)
    10 clear demand     PA P0 P1 P2                        L=4   reply 90, L=0
    abnormal replies    C | 0xC0, L=1, ERR (:class:`MeterErrorBits1997`)

Sources: the function codes are those of bobyuxinyang/dlt645_1997 ``dlt645_api_97.h``
(``E_D97_CTRL_FNC``); the data-field lengths, the reply of each command and the ERR bits are what
the meter firmware hoanghon00/meter-dlt645-1997 ``APP/HUCK/Protocol/C/Data_Trans.c``
(``Check_DLT645_Data_Len``, ``Rcv_DLT645_Data_Proc``, ``Set_PSW_Proc``) accepts and sends; the ERR
bits agree with its ``Data_Trans.h`` and with ``trans_d97_format_stwd_error`` of dlt645_1997.
The baud feature word follows that firmware's ``Channel.c`` (``Get_Baud_Spec``: 02 = 300,
04 = 600, 10 = 2400, 20 = 4800, 40 = 9600); 08 = 1200 fills the one remaining bit.  It differs
from 2007 (where 02 = 600 and 40 = 19200), so the two tables are kept apart.

A data identifier is written DI1DI0 (``"9010"``) and sent low byte first (``10 90``, +33H: ``43 C3``).
Passwords are written ``"PAP2P1P0"`` and sent ``PA P0 P1 P2`` exactly as in :mod:`.messages`.

Telling 1997 from 2007: both share the envelope, so the control code decides.  The 1997 codes
01 02 04 0A 0C 0F 10 are unused in 2007; 03 is 2007's security command (2013 amendment) but a 1997
re-read has no data; 08 is broadcast time in both, laid out identically.  :func:`is_1997_frame`
checks the function code *and* that the data length fits the 1997 layout of that function.

A meter's abnormal reply decodes to :class:`AbnormalResponse97` -- a value, not an exception;
malformed frames raise :class:`~meterd.errors.ProtocolError` subclasses only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from meterd.errors import ProtocolError
from meterd.protocols.bcd import decode_datetime, encode_datetime
from meterd.protocols.dlt645.frame import (
    ABNORMAL,
    BROADCAST,
    DIR_UP,
    FOLLOW_UP,
    Frame,
    address_from_wire,
    address_to_wire,
    identifier_from_wire,
    identifier_to_wire,
    parse_identifier,
)
from meterd.protocols.dlt645.frame import need_data as _need
from meterd.protocols.dlt645.messages import password_from_wire, password_to_wire


class Function97(enum.IntEnum):
    """Function codes (C & 0x1F) of DL/T 645-1997."""

    READ_DATA = 0x01
    READ_FOLLOW_UP = 0x02
    REREAD = 0x03
    WRITE_DATA = 0x04
    BROADCAST_TIME = 0x08
    WRITE_ADDRESS = 0x0A
    CHANGE_BAUD = 0x0C
    CHANGE_PASSWORD = 0x0F
    CLEAR_DEMAND = 0x10


class MeterErrorBits1997(enum.IntFlag):
    """The ERR byte of a 1997 abnormal reply.  D3 and D7 are reserved."""

    ILLEGAL_DATA = 0x01  # 非法数据
    DI_ERROR = 0x02  # 数据标识错
    PASSWORD_ERROR = 0x04  # 密码错
    YEAR_ZONES_EXCEEDED = 0x10  # 年时区数超
    DAY_PERIODS_EXCEEDED = 0x20  # 日时段数超
    RATES_EXCEEDED = 0x40  # 费率数超

    def describe(self) -> str:
        names = [m.name.lower().replace("_", " ") for m in MeterErrorBits1997 if m in self and m.name]
        return ", ".join(names) or f"error byte {int(self):02X}"


BAUD_BITS_1997: Final = {300: 0x02, 600: 0x04, 1200: 0x08, 2400: 0x10, 4800: 0x20, 9600: 0x40}
_BAUD_FROM_BITS: Final = {v: k for k, v in BAUD_BITS_1997.items()}

TIME_FIELDS_1997: Final = "YYMMDDhhmmss"  # sent ss mm hh DD MM YY, as in 2007
DI_SIZE: Final = 2
PASSWORD_SIZE: Final = 4


def di97_to_wire(di: int) -> bytes:
    return identifier_to_wire(di, DI_SIZE)


def di97_from_wire(raw: bytes) -> int:
    return identifier_from_wire(raw, DI_SIZE)


def format_di97(di: int) -> str:
    return f"{di:04X}"


def parse_di97(text: str | int) -> int:
    return parse_identifier(text, DI_SIZE, "9010")


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest97:
    address: str
    di: int
    args: bytes = b""  # bytes after the DI (vendor load-curve reads); empty in the standard


@dataclass(frozen=True, slots=True)
class ReadFollowUpRequest97:
    address: str
    di: int


@dataclass(frozen=True, slots=True)
class RereadRequest97:
    """03: ask the meter to send its last reply again (after a garbled answer)."""

    address: str


@dataclass(frozen=True, slots=True)
class WriteRequest97:
    address: str
    di: int
    password: str  # "PAP2P1P0"
    data: bytes


@dataclass(frozen=True, slots=True)
class TimeSyncRequest97:
    when: datetime
    address: str = BROADCAST


@dataclass(frozen=True, slots=True)
class ChangeAddressRequest97:
    address: str  # where the request goes: the meter's address or 999999999999
    new_address: str


@dataclass(frozen=True, slots=True)
class ChangeBaudRequest97:
    address: str
    baud: int


@dataclass(frozen=True, slots=True)
class ChangePasswordRequest97:
    address: str
    old: str  # "PAP2P1P0"
    new: str  # "PAP2P1P0": its PA is the level being set


@dataclass(frozen=True, slots=True)
class ClearDemandRequest97:
    address: str
    password: str


Request97 = (
    ReadRequest97
    | ReadFollowUpRequest97
    | RereadRequest97
    | WriteRequest97
    | TimeSyncRequest97
    | ChangeAddressRequest97
    | ChangeBaudRequest97
    | ChangePasswordRequest97
    | ClearDemandRequest97
)

# --- responses ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadResponse97:
    address: str
    di: int
    data: bytes
    follow_up: bool = False


@dataclass(frozen=True, slots=True)
class ReadFollowUpResponse97:
    address: str
    di: int
    data: bytes
    follow_up: bool = False


@dataclass(frozen=True, slots=True)
class AckResponse97:
    """A normal reply with no data: write (84), write address (8A), clear demand (90)."""

    address: str
    function: Function97


@dataclass(frozen=True, slots=True)
class ChangeBaudResponse97:
    """8C.  ``baud`` is None where the meter acknowledged without echoing Z (L=0)."""

    address: str
    baud: int | None


@dataclass(frozen=True, slots=True)
class ChangePasswordResponse97:
    address: str
    password: str  # the new "PAP2P1P0" as echoed by the meter


@dataclass(frozen=True, slots=True)
class AbnormalResponse97:
    """The meter refused: ``error`` holds its ERR bits."""

    address: str
    function: Function97
    error: MeterErrorBits1997

    def describe(self) -> str:
        return f"{self.function.name} refused: {self.error.describe()}"


AbnormalResponse1997 = AbnormalResponse97

Response97 = (
    ReadResponse97
    | ReadFollowUpResponse97
    | AckResponse97
    | ChangeBaudResponse97
    | ChangePasswordResponse97
    | AbnormalResponse97
)

# normal replies that carry no data
ACK_FUNCTIONS_97: Final = frozenset({Function97.WRITE_DATA, Function97.WRITE_ADDRESS, Function97.CLEAR_DEMAND})


# --- encoding ----------------------------------------------------------------------------------


def _baud_bits(baud: int) -> int:
    if baud not in BAUD_BITS_1997:
        raise ProtocolError(f"baud rate {baud} is not one of {sorted(BAUD_BITS_1997)} (DL/T 645-1997)")
    return BAUD_BITS_1997[baud]


def encode_request97(req: Request97) -> Frame:
    """A typed 1997 request -> Frame."""
    if isinstance(req, ReadRequest97):
        return Frame(req.address, Function97.READ_DATA, di97_to_wire(req.di) + req.args)
    if isinstance(req, ReadFollowUpRequest97):
        return Frame(req.address, Function97.READ_FOLLOW_UP, di97_to_wire(req.di))
    if isinstance(req, RereadRequest97):
        return Frame(req.address, Function97.REREAD, b"")
    if isinstance(req, WriteRequest97):
        return Frame(req.address, Function97.WRITE_DATA, di97_to_wire(req.di) + password_to_wire(req.password) + req.data)
    if isinstance(req, TimeSyncRequest97):
        return Frame(req.address, Function97.BROADCAST_TIME, encode_datetime(req.when, TIME_FIELDS_1997))
    if isinstance(req, ChangeAddressRequest97):
        new = address_to_wire(req.new_address)
        if b"\xaa" in new or req.new_address == BROADCAST:
            raise ProtocolError(f"{req.new_address!r} cannot be a meter's own address")
        return Frame(req.address, Function97.WRITE_ADDRESS, new)
    if isinstance(req, ChangeBaudRequest97):
        return Frame(req.address, Function97.CHANGE_BAUD, bytes((_baud_bits(req.baud),)))
    if isinstance(req, ChangePasswordRequest97):
        return Frame(req.address, Function97.CHANGE_PASSWORD, password_to_wire(req.old) + password_to_wire(req.new))
    if isinstance(req, ClearDemandRequest97):
        return Frame(req.address, Function97.CLEAR_DEMAND, password_to_wire(req.password))
    raise TypeError(f"not a DL/T 645-1997 request: {req!r}")


def encode_response97(resp: Response97) -> Frame:
    up = DIR_UP
    if isinstance(resp, ReadResponse97):
        ctl = up | Function97.READ_DATA | (FOLLOW_UP if resp.follow_up else 0)
        return Frame(resp.address, ctl, di97_to_wire(resp.di) + resp.data)
    if isinstance(resp, ReadFollowUpResponse97):
        ctl = up | Function97.READ_FOLLOW_UP | (FOLLOW_UP if resp.follow_up else 0)
        return Frame(resp.address, ctl, di97_to_wire(resp.di) + resp.data)
    if isinstance(resp, AckResponse97):
        if resp.function not in ACK_FUNCTIONS_97:
            raise ProtocolError(f"function {int(resp.function):02X} has no data-less normal reply")
        return Frame(resp.address, up | resp.function, b"")
    if isinstance(resp, ChangeBaudResponse97):
        data = b"" if resp.baud is None else bytes((_baud_bits(resp.baud),))
        return Frame(resp.address, up | Function97.CHANGE_BAUD, data)
    if isinstance(resp, ChangePasswordResponse97):
        return Frame(resp.address, up | Function97.CHANGE_PASSWORD, password_to_wire(resp.password))
    if isinstance(resp, AbnormalResponse97):
        return Frame(resp.address, up | ABNORMAL | resp.function, bytes((int(resp.error),)))
    raise TypeError(f"not a DL/T 645-1997 response: {resp!r}")


# --- decoding ----------------------------------------------------------------------------------


def _function(frame: Frame) -> Function97:
    try:
        return Function97(frame.function)
    except ValueError:
        raise ProtocolError(f"function code {frame.function:02X} is not DL/T 645-1997") from None


def decode_request97(frame: Frame) -> Request97:
    """Frame from the master -> typed 1997 request (simulators, ``meterd decode``)."""
    if frame.is_reply:
        raise ProtocolError("frame is a reply, not a request")
    if frame.has_follow_up or frame.is_abnormal:
        raise ProtocolError("a request cannot carry the follow-up or abnormal flag")
    fn = _function(frame)
    d = frame.data
    if fn is Function97.READ_DATA:
        _need(frame, DI_SIZE, "read request", exact=False)
        return ReadRequest97(frame.address, di97_from_wire(d), d[2:])
    if fn is Function97.READ_FOLLOW_UP:
        _need(frame, DI_SIZE, "read follow-up request")
        return ReadFollowUpRequest97(frame.address, di97_from_wire(d))
    if fn is Function97.REREAD:
        _need(frame, 0, "re-read request")
        return RereadRequest97(frame.address)
    if fn is Function97.WRITE_DATA:
        _need(frame, DI_SIZE + PASSWORD_SIZE, "write request", exact=False)
        return WriteRequest97(frame.address, di97_from_wire(d), password_from_wire(d[2:6]), d[6:])
    if fn is Function97.BROADCAST_TIME:
        _need(frame, 6, "time sync")
        return TimeSyncRequest97(decode_datetime(d, TIME_FIELDS_1997), frame.address)
    if fn is Function97.WRITE_ADDRESS:
        _need(frame, 6, "write address request")
        new = address_from_wire(d)
        if b"\xaa" in d or new == BROADCAST:
            raise ProtocolError("a new meter address cannot be broadcast or hold AA wildcards", bytes(d))
        return ChangeAddressRequest97(frame.address, new)
    if fn is Function97.CHANGE_BAUD:
        _need(frame, 1, "change baud request")
        return ChangeBaudRequest97(frame.address, _baud_from(d[0]))
    if fn is Function97.CHANGE_PASSWORD:
        _need(frame, 2 * PASSWORD_SIZE, "change password request")
        return ChangePasswordRequest97(frame.address, password_from_wire(d[0:4]), password_from_wire(d[4:8]))
    _need(frame, PASSWORD_SIZE, "clear demand request")  # CLEAR_DEMAND, the last one
    return ClearDemandRequest97(frame.address, password_from_wire(d))


def _baud_from(z: int) -> int:
    if z not in _BAUD_FROM_BITS:
        raise ProtocolError(f"baud feature word {z:02X} names no single DL/T 645-1997 rate")
    return _BAUD_FROM_BITS[z]


def decode_response97(frame: Frame) -> Response97:
    """Frame from a meter -> typed 1997 reply.  Abnormal replies are values."""
    if not frame.is_reply:
        raise ProtocolError("frame is a request, not a reply")
    fn = _function(frame)
    d = frame.data
    if frame.is_abnormal:
        if frame.has_follow_up:
            raise ProtocolError("an abnormal reply cannot carry the follow-up flag")
        _need(frame, 1, "abnormal reply")
        return AbnormalResponse97(frame.address, fn, MeterErrorBits1997(d[0]))
    if frame.has_follow_up and fn not in (Function97.READ_DATA, Function97.READ_FOLLOW_UP):
        raise ProtocolError(f"{fn.name} reply cannot carry the follow-up flag")
    if fn is Function97.READ_DATA:
        _need(frame, DI_SIZE, "read reply", exact=False)
        return ReadResponse97(frame.address, di97_from_wire(d), d[2:], frame.has_follow_up)
    if fn is Function97.READ_FOLLOW_UP:
        _need(frame, DI_SIZE, "read follow-up reply", exact=False)
        return ReadFollowUpResponse97(frame.address, di97_from_wire(d), d[2:], frame.has_follow_up)
    if fn is Function97.CHANGE_BAUD:
        if not d:
            return ChangeBaudResponse97(frame.address, None)
        _need(frame, 1, "change baud reply")
        return ChangeBaudResponse97(frame.address, _baud_from(d[0]))
    if fn is Function97.CHANGE_PASSWORD:
        _need(frame, PASSWORD_SIZE, "change password reply")
        return ChangePasswordResponse97(frame.address, password_from_wire(d))
    if fn in ACK_FUNCTIONS_97:
        _need(frame, 0, f"{fn.name} reply")
        return AckResponse97(frame.address, fn)
    # 83 and 88: a re-read is answered by repeating the earlier reply, time sync is not answered
    raise ProtocolError(f"DL/T 645-1997 has no normal reply to {fn.name}")


def decode_message97(frame: Frame) -> Request97 | Response97:
    return decode_response97(frame) if frame.is_reply else decode_request97(frame)


# --- which edition is it? ----------------------------------------------------------------------

# data-field lengths each 1997 frame may have: (min, max), by (is_reply, function)
_REQUEST_LENGTHS: Final = {
    Function97.READ_DATA: (2, 255),
    Function97.READ_FOLLOW_UP: (2, 2),
    Function97.REREAD: (0, 0),
    Function97.WRITE_DATA: (6, 255),
    Function97.BROADCAST_TIME: (6, 6),
    Function97.WRITE_ADDRESS: (6, 6),
    Function97.CHANGE_BAUD: (1, 1),
    Function97.CHANGE_PASSWORD: (8, 8),
    Function97.CLEAR_DEMAND: (4, 4),
}
_REPLY_LENGTHS: Final = {
    Function97.READ_DATA: (2, 255),
    Function97.READ_FOLLOW_UP: (2, 255),
    Function97.WRITE_DATA: (0, 0),
    Function97.WRITE_ADDRESS: (0, 0),
    Function97.CHANGE_BAUD: (0, 1),
    Function97.CHANGE_PASSWORD: (4, 4),
    Function97.CLEAR_DEMAND: (0, 0),
}


def is_1997_frame(frame: Frame) -> bool:
    """Whether ``frame`` reads as DL/T 645-1997: a 1997 function code and a data length its layout allows.

    Heuristic, not proof: the envelope is the same in both editions.  What it decides on:

    * function codes 01 02 04 0A 0C 0F 10 exist only in 1997 (2007 uses 08 and 11..1D);
    * 03 is 1997's re-read only with no data (2007's 03 security command always carries some);
    * 08 (broadcast time, 6 bytes) is laid out the same in both, so either decoder gives the same
      answer; it counts as 1997 here;
    * the data length must fit (read: DI of 2 bytes, not 2007's 4 -- a 2007 read never uses 01);
      abnormal replies are 1 byte; D5 (follow-up) appears only on read replies.
    """
    try:
        fn = Function97(frame.function)
    except ValueError:
        return False
    n = len(frame.data)
    if frame.is_reply:
        if frame.is_abnormal:
            return n == 1 and not frame.has_follow_up
        if frame.has_follow_up and fn not in (Function97.READ_DATA, Function97.READ_FOLLOW_UP):
            return False
        bounds = _REPLY_LENGTHS.get(fn)
    else:
        if frame.is_abnormal or frame.has_follow_up:
            return False
        bounds = _REQUEST_LENGTHS.get(fn)
    return bounds is not None and bounds[0] <= n <= bounds[1]


def describe_control97(frame: Frame) -> str:
    """Like :meth:`Frame.describe_control`, with the 1997 function names."""
    try:
        name = Function97(frame.function).name
    except ValueError:
        name = f"function 0x{frame.function:02X}"
    parts = ["reply" if frame.is_reply else "request", name]
    if frame.is_abnormal:
        parts.append("ABNORMAL")
    if frame.has_follow_up:
        parts.append("follow-up")
    return " ".join(parts)
