"""Q/GDW 1376.1 application messages: data units with typed values over :class:`.frame.Frame`.

A :class:`Message` is a frame whose data area is parsed into :class:`DataUnit` s.  A unit mirrors
one DA/DT identifier on the wire: the points (pn) and items (Fn) it names and one value per
(pn, Fn), points outer, items inner, both ascending -- so a frame decodes and encodes back byte for
byte.  ``Message.items()`` flattens them to ``(pn, fn, value)``.  The values are those of
:mod:`.catalogue`; an item meterd does not know stops the decoding with UnknownIdentifierError
(its length is unknown, so the units after it cannot be found).

Building frames for the master side::

    encode_request(address, Afn.CLASS1_DATA, [unit(1, 129)], seq=3)          # read F129 of p1
    encode_request(address, Afn.CONTROL, [unit(1, 1, RemoteTrip())], seq=4, pw=password)
    link_confirm(login_message)                                               # AFN 00 F1 reply

The request's control byte is DIR=0, PRM=1 with the function of :data:`REQUEST_FUNCTION` for its AFN
(overridable); SEQ is a single frame.  :func:`reply` and :func:`confirm` build the answers a
terminal (or the simulator) sends.  :class:`Reassembler` joins multi-frame replies (FIR/FIN, RSEQ
counting up from the first frame's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from meterd.errors import FrameLengthError, ProtocolError, UnknownIdentifierError
from meterd.protocols.gdw1376.catalogue import ItemResult, ItemResults, Reader, lookup
from meterd.protocols.gdw1376.frame import (
    CON,
    FCB_ACD,
    FIN,
    FIR,
    PROTOCOL_1376,
    SEQ_MASK,
    TPV,
    Afn,
    EventCounter,
    Frame,
    PrimaryFunction,
    SecondaryFunction,
    TerminalAddress,
    TimeLabel,
    control_byte,
    decode_frame,
    encode_frame,
    has_pw,
    seq_byte,
)
from meterd.protocols.gdw1376.units import decode_da, decode_dt, encode_da, encode_dt, point_name


@dataclass(frozen=True, slots=True)
class DataUnit:
    """One DA/DT and its data: ``values[i]`` belongs to the i-th (pn, fn) pair, points outer."""

    pns: tuple[int, ...]
    fns: tuple[int, ...]
    values: tuple[Any, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.pns) * len(self.fns)
        if self.values == () and n:
            object.__setattr__(self, "values", (None,) * n)
        elif len(self.values) != n:
            raise ProtocolError(f"a data unit of {len(self.pns)} point(s) x {len(self.fns)} item(s) needs {n} "
                                f"values, got {len(self.values)}")

    def pairs(self) -> Iterator[tuple[int, int, Any]]:
        it = iter(self.values)
        for pn in self.pns:
            for fn in self.fns:
                yield pn, fn, next(it)


def unit(pn: int, fn: int, value: Any = None) -> DataUnit:
    """A data unit of one point and one item."""
    return DataUnit((pn,), (fn,), (value,))


@dataclass(frozen=True, slots=True)
class Message:
    """A frame with its data units decoded.  Link fields as in :class:`.frame.Frame`."""

    address: TerminalAddress
    afn: int
    units: tuple[DataUnit, ...]
    control: int
    seq: int
    pw: bytes | None = None
    ec: EventCounter | None = None
    tp: TimeLabel | None = None
    protocol: int = PROTOCOL_1376

    @property
    def frame(self) -> Frame:
        """The link frame without its data (for the control/SEQ properties and descriptions)."""
        return Frame(self.control, self.address, self.afn, self.seq, b"", self.pw, self.ec, self.tp, self.protocol)

    @property
    def is_uplink(self) -> bool:
        return self.frame.is_uplink

    @property
    def seq_number(self) -> int:
        return self.seq & SEQ_MASK

    @property
    def fir(self) -> bool:
        return bool(self.seq & FIR)

    @property
    def fin(self) -> bool:
        return bool(self.seq & FIN)

    @property
    def con(self) -> bool:
        return bool(self.seq & CON)

    def items(self) -> Iterator[tuple[int, int, Any]]:
        """Every (pn, fn, value) of the message, in frame order."""
        for u in self.units:
            yield from u.pairs()

    def value(self, fn: int, pn: int = 0) -> Any:
        """The value of item ``fn`` of point ``pn``; KeyError when the message has none."""
        for p, f, v in self.items():
            if p == pn and f == fn:
                return v
        raise KeyError(f"no F{fn} of {point_name(pn)} in AFN {self.afn:02X}H")


# --- data units <-> bytes -------------------------------------------------------------------------


def encode_units(afn: int, uplink: bool, units: Iterable[DataUnit]) -> bytes:
    out = bytearray()
    for u in units:
        out += encode_da(u.pns) + encode_dt(u.fns)
        for pn, fn, value in u.pairs():
            item = lookup(afn, fn, uplink)
            if item is None:
                raise UnknownIdentifierError(_unknown(afn, fn, pn, uplink))
            out += item.build(value)
    return bytes(out)


def _unknown(afn: int, fn: int, pn: int, uplink: bool) -> str:
    way = "terminal->master" if uplink else "master->terminal"
    return f"AFN {afn:02X}H F{fn} ({point_name(pn)}, {way}) is not in meterd's catalogue"


@dataclass(frozen=True, slots=True)
class PartialUnits:
    """What :func:`decode_units_partial` made of a data area: the units decoded, and where and why it
    stopped (``error`` None when the whole area decoded)."""

    units: tuple[DataUnit, ...]
    error: ProtocolError | None = None
    rest: bytes = b""


def decode_units_partial(afn: int, uplink: bool, data: bytes) -> PartialUnits:
    """Decode as many units as possible; never raises for malformed data (``meterd decode``)."""
    r = Reader(bytes(data))
    units: list[DataUnit] = []
    while r.remaining:
        start = r.pos
        try:
            da = r.take(2, "DA")
            dt = r.take(2, "DT")
            pns, fns = decode_da(da[0], da[1]), decode_dt(dt[0], dt[1])
            values = []
            for pn in pns:
                for fn in fns:
                    item = lookup(afn, fn, uplink)
                    if item is None:
                        raise UnknownIdentifierError(_unknown(afn, fn, pn, uplink) + ": its length is unknown, so "
                                                     "the data after it cannot be read")
                    values.append(item.parse(r))
        except ProtocolError as exc:
            return PartialUnits(tuple(units), exc, bytes(data[start:]))
        units.append(DataUnit(pns, fns, tuple(values)))
    return PartialUnits(tuple(units))


def decode_units(afn: int, uplink: bool, data: bytes) -> tuple[DataUnit, ...]:
    part = decode_units_partial(afn, uplink, data)
    if part.error is not None:
        raise part.error
    return part.units


# --- messages <-> frames --------------------------------------------------------------------------


def encode_message(msg: Message) -> Frame:
    data = encode_units(msg.afn, bool(msg.control & 0x80), msg.units)
    return Frame(msg.control, msg.address, msg.afn, msg.seq, data, msg.pw, msg.ec, msg.tp, msg.protocol)


def decode_message(frame: Frame) -> Message:
    units = decode_units(frame.afn, frame.is_uplink, frame.data)
    return Message(frame.address, frame.afn, units, frame.control, frame.seq, frame.pw, frame.ec, frame.tp,
                   frame.protocol)


def encode(msg: Message) -> bytes:
    """Message -> wire bytes."""
    return encode_frame(encode_message(msg))


def decode(raw: bytes) -> Message:
    """Exactly one frame's bytes -> Message."""
    return decode_message(decode_frame(raw))


# --- building requests and replies ----------------------------------------------------------------

REQUEST_FUNCTION: Final[dict[int, PrimaryFunction]] = {
    Afn.RESET: PrimaryFunction.RESET,
    Afn.LINK: PrimaryFunction.LINK_TEST,
    Afn.SET_PARAMETERS: PrimaryFunction.REQUEST_CLASS1,
    Afn.CONTROL: PrimaryFunction.REQUEST_CLASS1,
    Afn.AUTHENTICATION: PrimaryFunction.REQUEST_CLASS1,
    Afn.FILE_TRANSFER: PrimaryFunction.REQUEST_CLASS1,
    Afn.FORWARD: PrimaryFunction.REQUEST_CLASS1,
}
"""The function code of a master request by AFN; every other AFN asks with REQUEST_CLASS2 (C = 4BH)."""

CONFIRMED_AFNS: Final = frozenset({Afn.RESET, Afn.SET_PARAMETERS, Afn.CONTROL})
"""Requests sent with CON = 1 by default (the terminal answers them with AFN 00 anyway)."""


def request(address: TerminalAddress, afn: int, units: Iterable[DataUnit], *, seq: int,
            pw: bytes | None = None, tp: TimeLabel | None = None, function: int | None = None,
            con: bool | None = None) -> Message:
    """A master -> terminal request (DIR=0, PRM=1, single frame).  ``pw`` is required exactly for the
    AFNs that carry it (:func:`.frame.has_pw`): 16 bytes, from the secrets."""
    if has_pw(afn, False) and pw is None:
        raise ProtocolError(f"AFN {afn:02X}H carries a password (PW): give the 16 bytes the terminal expects")
    fn = int(REQUEST_FUNCTION.get(afn, PrimaryFunction.REQUEST_CLASS2)) if function is None else function
    confirm = afn in CONFIRMED_AFNS if con is None else con
    return Message(address, afn, tuple(units), control_byte(uplink=False, prm=True, function=fn),
                   seq_byte(seq & SEQ_MASK, tpv=tp is not None, con=confirm), pw, None, tp)


def encode_request(address: TerminalAddress, afn: int, units: Iterable[DataUnit], *, seq: int,
                   pw: bytes | None = None, tp: TimeLabel | None = None, function: int | None = None,
                   con: bool | None = None) -> bytes:
    return encode(request(address, afn, units, seq=seq, pw=pw, tp=tp, function=function, con=con))


def reply(to: Message, units: Iterable[DataUnit], *, afn: int | None = None,
          function: int = SecondaryFunction.USER_DATA, ec: EventCounter | None = None, tp: TimeLabel | None = None,
          fir: bool = True, fin: bool = True, seq: int | None = None, con: bool = False) -> Message:
    """A terminal's answer to ``to`` (DIR=1, PRM=0): same address and AFN unless given, RSEQ = the
    request's PSEQ (or ``seq`` for later frames of a multi-frame reply), ACD set when ``ec`` is."""
    control = control_byte(uplink=True, prm=False, function=function, fcb_acd=ec is not None)
    number = to.seq_number if seq is None else seq
    return Message(to.address, to.afn if afn is None else afn, tuple(units), control,
                   seq_byte(number & SEQ_MASK, tpv=tp is not None, fir=fir, fin=fin, con=con), None, ec, tp)


def confirm(to: Message, *, ok: bool = True, per_item: bool = False, ec: EventCounter | None = None,
            tp: TimeLabel | None = None, master: int | None = None) -> Message:
    """AFN 00 answering ``to``: F1 (all confirmed) or F2 (all denied), or with ``per_item`` F3 naming
    each of ``to``'s data units.  From the master (``to`` came up) the control byte is 0BH for link
    frames (AFN 02) and 00H otherwise; from a terminal 80H (A0H with ``ec``).  ``master`` replaces
    the MSA of the address."""
    if per_item:
        items = tuple(ItemResult(u.pns, u.fns, 0 if ok else 1) for u in to.units)
        units: tuple[DataUnit, ...] = (unit(0, 3, ItemResults(to.afn, items)),)
    else:
        units = (unit(0, 1 if ok else 2),)
    address = to.address if master is None else to.address.with_master(master)
    if to.is_uplink:
        fn = SecondaryFunction.LINK_STATUS if to.afn == Afn.LINK else SecondaryFunction.CONFIRM
        control = control_byte(uplink=False, prm=False, function=fn)
        return Message(address, Afn.CONFIRM, units, control, seq_byte(to.seq_number, tpv=tp is not None), None,
                       None, tp)
    control = control_byte(uplink=True, prm=False, function=SecondaryFunction.CONFIRM, fcb_acd=ec is not None)
    return Message(address, Afn.CONFIRM, units, control, seq_byte(to.seq_number, tpv=tp is not None), None, ec, tp)


def link_confirm(login: Message, *, per_item: bool = False, master: int | None = None) -> bytes:
    """The master's answer to a terminal's login, logout or heartbeat (AFN 02), as bytes."""
    if login.afn != Afn.LINK or not login.is_uplink:
        raise ProtocolError("only a terminal's AFN 02 frame (login, logout, heartbeat) is confirmed so")
    return encode(confirm(login, per_item=per_item, master=master))


# --- multi-frame replies --------------------------------------------------------------------------

MAX_PARTS: Final = 256


class Reassembler:
    """Joins the frames of multi-frame replies (SEQ FIR/FIN) into one message per terminal and AFN.

    ``add`` returns the whole message once its last frame is in, else None.  A single frame passes
    straight through.  A later frame whose RSEQ is not the one after its predecessor's, a middle or
    last frame without a first, or more than ``max_parts`` frames, drops the partial reply and raises
    ProtocolError (the caller asks again).  Frames of other terminals or AFNs interleave freely.
    """

    __slots__ = ("_partial", "max_parts")

    def __init__(self, max_parts: int = MAX_PARTS) -> None:
        self._partial: dict[tuple[str, int], list[Message]] = {}
        self.max_parts = max_parts

    def add(self, msg: Message) -> Message | None:
        key = (msg.address.key, msg.afn)
        if msg.fir:
            self._partial.pop(key, None)
            if msg.fin:
                return msg
            self._partial[key] = [msg]
            return None
        parts = self._partial.get(key)
        if parts is None:
            raise ProtocolError(f"{'last' if msg.fin else 'middle'} frame (RSEQ {msg.seq_number}) of a multi-frame "
                                f"AFN {msg.afn:02X}H reply from {msg.address} without its first frame")
        expected = (parts[-1].seq_number + 1) & SEQ_MASK
        if msg.seq_number != expected:
            del self._partial[key]
            raise ProtocolError(f"multi-frame AFN {msg.afn:02X}H reply from {msg.address}: RSEQ {msg.seq_number} "
                                f"after {parts[-1].seq_number} (expected {expected}); the partial reply is dropped")
        parts.append(msg)
        if len(parts) > self.max_parts:
            del self._partial[key]
            raise FrameLengthError(f"multi-frame AFN {msg.afn:02X}H reply from {msg.address}: more than "
                                   f"{self.max_parts} frames; dropped")
        if not msg.fin:
            return None
        del self._partial[key]
        first, last = parts[0], parts[-1]
        units = tuple(u for p in parts for u in p.units)
        seq = (first.seq & ~(FIN | TPV)) | FIN | (TPV if last.tp is not None else 0)
        control = last.control
        if last.is_uplink:  # ACD goes with the EC the last frame carries
            control = (control & ~FCB_ACD) | (FCB_ACD if last.ec is not None else 0)
        return Message(first.address, first.afn, units, control, seq, None, last.ec, last.tp, first.protocol)

    def pending(self) -> int:
        """How many multi-frame replies are incomplete."""
        return len(self._partial)

    def clear(self) -> None:
        self._partial.clear()
