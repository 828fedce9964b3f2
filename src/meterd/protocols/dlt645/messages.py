"""DL/T 645-2007 application messages: typed requests and replies over :class:`Frame`.

Master functions and their data fields (clause 4.1 and the 2013 amendment for 1C)::

    11 read data        DI0..DI3                              L=4
                        DI0..DI3 N                            L=5   (last N records)
                        DI0..DI3 N mm hh DD MM YY             L=10  (N records from a time)
        reply 91/B1     DI0..DI3 data...                      (B1: follow-up frames exist)
    12 read follow-up   DI0..DI3 SEQ                          L=5
        reply 92/B2     DI0..DI3 data... SEQ
    13 read address     (to AAAAAAAAAAAA)                     L=0
        reply 93        A0..A5                                L=6
    14 write data       DI0..DI3 PA P0 P1 P2 C0..C3 data...   reply 94, L=0
    08 time sync        ss mm hh DD MM YY (broadcast)         no reply
    16 freeze           mm hh DD MM (99 = every)              reply 96, L=0
    17 change baud      Z (bit1 600 .. bit6 19200)            reply 97 Z
    1C relay control    PA P0 P1 P2 C0..C3 N1 N2 ss mm hh DD MM YY (valid until)   reply 9C, L=0
    abnormal replies    C | 0xC0, L=1, ERR (bit flags, :class:`MeterErrorBits`)

All multi-byte fields are low byte first.  A password is written ``"PAP2P1P0"`` as 8 hex digits
(``"02123456"``: level 02, password 123456); an operator code as ``"C3C2C1C0"``.

A meter's abnormal reply decodes to :class:`AbnormalResponse` -- a value, not an exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from meterd.errors import FrameLengthError, ProtocolError
from meterd.protocols.bcd import bcd_byte, decode_datetime, encode_datetime, from_bcd_byte
from meterd.protocols.dlt645.frame import (
    ABNORMAL,
    BROADCAST,
    DIR_UP,
    FOLLOW_UP,
    WILDCARD,
    Frame,
    Function,
    address_from_wire,
    address_to_wire,
    identifier_from_wire,
    identifier_to_wire,
    parse_identifier,
)
from meterd.protocols.dlt645.frame import need_data as _need


class MeterErrorBits(enum.IntFlag):
    """The ERR byte of an abnormal reply (DL/T 645-2007 table 4)."""

    OTHER = 0x01
    NO_DATA = 0x02  # no requested data (unknown DI / not supported)
    UNAUTHORIZED = 0x04  # wrong password or not authorised
    BAUD_NOT_CHANGEABLE = 0x08
    YEAR_ZONES_EXCEEDED = 0x10
    DAY_PERIODS_EXCEEDED = 0x20
    RATES_EXCEEDED = 0x40

    def describe(self) -> str:
        names = [m.name.lower().replace("_", " ") for m in MeterErrorBits if m in self and m.name]
        return ", ".join(names) or f"error byte {int(self):02X}"


class RelayCommand(enum.IntEnum):
    """N1 of the 1C relay-control command (DL/T 645-2007 2013 amendment)."""

    TRIP = 0x1A  # 跳闸
    RECLOSE_ALLOWED = 0x1B  # 合闸允许 (customer presses the button)
    RECLOSE = 0x1C  # 直接合闸
    ALARM = 0x2A  # 报警
    ALARM_RELEASE = 0x2B  # 报警解除
    PROTECT = 0x3A  # 保电
    PROTECT_RELEASE = 0x3B  # 保电解除


BAUD_BITS: Final = {600: 0x02, 1200: 0x04, 2400: 0x08, 4800: 0x10, 9600: 0x20, 19200: 0x40}
_BAUD_FROM_BITS: Final = {v: k for k, v in BAUD_BITS.items()}

TIME_FIELDS: Final = "YYMMDDhhmmss"
RECORD_TIME_FIELDS: Final = "YYMMDDhhmm"


DI_SIZE: Final = 4


def di_to_wire(di: int) -> bytes:
    return identifier_to_wire(di, DI_SIZE)


def di_from_wire(raw: bytes) -> int:
    return identifier_from_wire(raw, DI_SIZE)


def format_di(di: int) -> str:
    return f"{di:08X}"


def parse_di(text: str | int) -> int:
    return parse_identifier(text, DI_SIZE, "00010000")


def _code4(text: str, what: str) -> bytes:
    """``"C3C2C1C0"`` -> C0 C1 C2 C3 (low byte first)."""
    try:
        raw = bytes.fromhex(text) if len(text) == 8 else b""
    except ValueError:
        raw = b""
    if len(raw) != 4:  # fromhex skips spaces: "02 1234 " is 8 characters but 3 bytes
        raise ProtocolError(f"{what} {text!r} must be 8 hex digits")
    return raw[::-1]


def _code4_text(raw: bytes) -> str:
    return bytes(raw[::-1]).hex().upper()


def password_to_wire(text: str) -> bytes:
    """``"PAP2P1P0"`` -> PA P0 P1 P2: the level goes first, then the password low byte first."""
    raw = _code4(text, "password")
    return raw[3:] + raw[:3]


def password_from_wire(raw: bytes) -> str:
    return _code4_text(raw[1:4] + raw[:1])


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    address: str
    di: int
    count: int | None = None  # read the last N records (frozen data, load curves)
    start: datetime | None = None  # ... from this time (minute resolution); needs count


@dataclass(frozen=True, slots=True)
class ReadFollowUpRequest:
    address: str
    di: int
    seq: int


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    address: str = WILDCARD


@dataclass(frozen=True, slots=True)
class WriteRequest:
    address: str
    di: int
    password: str
    operator: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TimeSyncRequest:
    when: datetime
    address: str = BROADCAST


@dataclass(frozen=True, slots=True)
class FreezeRequest:
    """Freeze at minute/hour/day/month; ``None`` is the 99 wildcard (all 99 = freeze now)."""

    address: str
    minute: int | None = None
    hour: int | None = None
    day: int | None = None
    month: int | None = None


@dataclass(frozen=True, slots=True)
class ChangeBaudRequest:
    address: str
    baud: int


@dataclass(frozen=True, slots=True)
class RelayControlRequest:
    address: str
    command: RelayCommand
    password: str
    operator: str
    valid_until: datetime


Request = (
    ReadRequest
    | ReadFollowUpRequest
    | ReadAddressRequest
    | WriteRequest
    | TimeSyncRequest
    | FreezeRequest
    | ChangeBaudRequest
    | RelayControlRequest
)

# --- responses ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadResponse:
    address: str
    di: int
    data: bytes
    follow_up: bool = False


@dataclass(frozen=True, slots=True)
class ReadFollowUpResponse:
    address: str
    di: int
    data: bytes
    seq: int
    follow_up: bool = False


@dataclass(frozen=True, slots=True)
class ReadAddressResponse:
    address: str


@dataclass(frozen=True, slots=True)
class AckResponse:
    """A normal reply with no data: write (94), freeze (96), relay control (9C), ..."""

    address: str
    function: Function


@dataclass(frozen=True, slots=True)
class ChangeBaudResponse:
    address: str
    baud: int


@dataclass(frozen=True, slots=True)
class AbnormalResponse:
    """The meter refused: ``error`` holds its ERR bits."""

    address: str
    function: Function
    error: MeterErrorBits

    def describe(self) -> str:
        return f"{self.function.name} refused: {self.error.describe()}"


Response = (
    ReadResponse
    | ReadFollowUpResponse
    | ReadAddressResponse
    | AckResponse
    | ChangeBaudResponse
    | AbnormalResponse
)


# --- encoding ----------------------------------------------------------------------------------


def _freeze_field(v: int | None) -> int:
    return 0x99 if v is None else bcd_byte(v)


def encode_request(req: Request) -> Frame:
    """A typed request -> Frame (control word and data laid out per clause 4.1)."""
    if isinstance(req, ReadRequest):
        data = di_to_wire(req.di)
        if req.count is not None:
            if not 1 <= req.count <= 0xFF:
                raise ProtocolError(f"record count {req.count} must be 1..255")
            data += bytes((req.count,))
            if req.start is not None:
                data += encode_datetime(req.start, RECORD_TIME_FIELDS)
        elif req.start is not None:
            raise ProtocolError("a start time needs a record count")
        return Frame(req.address, Function.READ_DATA, data)
    if isinstance(req, ReadFollowUpRequest):
        return Frame(req.address, Function.READ_FOLLOW_UP, di_to_wire(req.di) + bytes((req.seq & 0xFF,)))
    if isinstance(req, ReadAddressRequest):
        return Frame(req.address, Function.READ_ADDRESS, b"")
    if isinstance(req, WriteRequest):
        data = di_to_wire(req.di) + password_to_wire(req.password) + _code4(req.operator, "operator code")
        return Frame(req.address, Function.WRITE_DATA, data + req.data)
    if isinstance(req, TimeSyncRequest):
        return Frame(req.address, Function.BROADCAST_TIME, encode_datetime(req.when, TIME_FIELDS))
    if isinstance(req, FreezeRequest):
        data = bytes(_freeze_field(v) for v in (req.minute, req.hour, req.day, req.month))
        return Frame(req.address, Function.FREEZE, data)
    if isinstance(req, ChangeBaudRequest):
        if req.baud not in BAUD_BITS:
            raise ProtocolError(f"baud rate {req.baud} is not one of {sorted(BAUD_BITS)}")
        return Frame(req.address, Function.CHANGE_BAUD, bytes((BAUD_BITS[req.baud],)))
    if isinstance(req, RelayControlRequest):
        data = (
            password_to_wire(req.password)
            + _code4(req.operator, "operator code")
            + bytes((int(req.command), 0x00))
            + encode_datetime(req.valid_until, TIME_FIELDS)
        )
        return Frame(req.address, Function.RELAY_CONTROL, data)
    raise TypeError(f"not a DL/T 645-2007 request: {req!r}")


def encode_response(resp: Response) -> Frame:
    up = DIR_UP
    if isinstance(resp, ReadResponse):
        ctl = up | Function.READ_DATA | (FOLLOW_UP if resp.follow_up else 0)
        return Frame(resp.address, ctl, di_to_wire(resp.di) + resp.data)
    if isinstance(resp, ReadFollowUpResponse):
        ctl = up | Function.READ_FOLLOW_UP | (FOLLOW_UP if resp.follow_up else 0)
        return Frame(resp.address, ctl, di_to_wire(resp.di) + resp.data + bytes((resp.seq & 0xFF,)))
    if isinstance(resp, ReadAddressResponse):
        return Frame(resp.address, up | Function.READ_ADDRESS, address_to_wire(resp.address))
    if isinstance(resp, AckResponse):
        return Frame(resp.address, up | resp.function, b"")
    if isinstance(resp, ChangeBaudResponse):
        if resp.baud not in BAUD_BITS:
            raise ProtocolError(f"baud rate {resp.baud} is not one of {sorted(BAUD_BITS)}")
        return Frame(resp.address, up | Function.CHANGE_BAUD, bytes((BAUD_BITS[resp.baud],)))
    if isinstance(resp, AbnormalResponse):
        return Frame(resp.address, up | ABNORMAL | resp.function, bytes((int(resp.error),)))
    raise TypeError(f"not a DL/T 645-2007 response: {resp!r}")


# --- decoding ----------------------------------------------------------------------------------


_BY_CODE: Final = {int(f): f for f in Function}  # Function(code) is an enum call per frame


def _function(frame: Frame) -> Function:
    fn = _BY_CODE.get(frame.function)
    if fn is None:
        raise ProtocolError(f"unknown function code {frame.function:02X}")
    return fn


def decode_request(frame: Frame) -> Request:
    """Frame from the master -> typed request (used by simulators and ``meterd decode``)."""
    if frame.is_reply:
        raise ProtocolError("frame is a reply, not a request")
    fn = _function(frame)
    d = frame.data
    if fn is Function.READ_DATA:
        if len(d) == 4:
            return ReadRequest(frame.address, di_from_wire(d))
        if len(d) == 5:
            return ReadRequest(frame.address, di_from_wire(d), count=d[4])
        if len(d) == 10:
            return ReadRequest(frame.address, di_from_wire(d), count=d[4],
                               start=decode_datetime(d[5:10], RECORD_TIME_FIELDS))
        raise FrameLengthError(f"read request: data field of {len(d)} bytes, expected 4, 5 or 10")
    if fn is Function.READ_FOLLOW_UP:
        _need(frame, 5, "read follow-up request")
        return ReadFollowUpRequest(frame.address, di_from_wire(d), d[4])
    if fn is Function.READ_ADDRESS:
        _need(frame, 0, "read address request")
        return ReadAddressRequest(frame.address)
    if fn is Function.WRITE_DATA:
        _need(frame, 12, "write request", exact=False)
        return WriteRequest(frame.address, di_from_wire(d), password_from_wire(d[4:8]), _code4_text(d[8:12]), d[12:])
    if fn is Function.BROADCAST_TIME:
        _need(frame, 6, "time sync")
        return TimeSyncRequest(decode_datetime(d, TIME_FIELDS), frame.address)
    if fn is Function.FREEZE:
        _need(frame, 4, "freeze request")
        fields = [None if b == 0x99 else from_bcd_byte(b, d) for b in d]
        return FreezeRequest(frame.address, *fields)
    if fn is Function.CHANGE_BAUD:
        _need(frame, 1, "change baud request")
        if d[0] not in _BAUD_FROM_BITS:
            raise ProtocolError(f"baud feature word {d[0]:02X} names no single rate")
        return ChangeBaudRequest(frame.address, _BAUD_FROM_BITS[d[0]])
    if fn is Function.RELAY_CONTROL:
        _need(frame, 16, "relay control request")
        try:
            command = RelayCommand(d[8])
        except ValueError:
            raise ProtocolError(f"unknown relay control command {d[8]:02X}") from None
        return RelayControlRequest(frame.address, command, password_from_wire(d[0:4]), _code4_text(d[4:8]),
                                   decode_datetime(d[10:16], TIME_FIELDS))
    raise ProtocolError(f"request function {fn.name} is not supported")


def decode_response(frame: Frame) -> Response:
    """Frame from a meter -> typed reply.  Abnormal replies are values."""
    if not frame.is_reply:
        raise ProtocolError("frame is a request, not a reply")
    fn = _function(frame)
    d = frame.data
    if frame.is_abnormal:
        _need(frame, 1, "abnormal reply")
        return AbnormalResponse(frame.address, fn, MeterErrorBits(d[0]))
    if fn is Function.READ_DATA:
        _need(frame, 4, "read reply", exact=False)
        return ReadResponse(frame.address, di_from_wire(d), d[4:], frame.has_follow_up)
    if fn is Function.READ_FOLLOW_UP:
        _need(frame, 5, "read follow-up reply", exact=False)
        return ReadFollowUpResponse(frame.address, di_from_wire(d), d[4:-1], d[-1], frame.has_follow_up)
    if fn is Function.READ_ADDRESS:
        _need(frame, 6, "read address reply")
        return ReadAddressResponse(address_from_wire(d))
    if fn is Function.CHANGE_BAUD:
        _need(frame, 1, "change baud reply")
        if d[0] not in _BAUD_FROM_BITS:
            raise ProtocolError(f"baud feature word {d[0]:02X} names no single rate")
        return ChangeBaudResponse(frame.address, _BAUD_FROM_BITS[d[0]])
    _need(frame, 0, f"{fn.name} reply")
    return AckResponse(frame.address, fn)


def decode_message(frame: Frame) -> Request | Response:
    return decode_response(frame) if frame.is_reply else decode_request(frame)
