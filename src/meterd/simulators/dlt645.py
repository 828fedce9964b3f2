"""A sans-I/O DL/T 645 bus of simulated meters: request frame in, reply bytes out.

Each meter speaks DL/T 645-2007 unless the bus is told (``protocols``) that it speaks
DL/T 645-1997; one bus may mix both, as real RS-485 buses do.  The 2007 part is described first,
the 1997 part under "DL/T 645-1997 meters" below.

Strategy: :meth:`Dlt645Bus.handle` decodes one request with the real codec
(:func:`~meterd.protocols.dlt645.messages.decode_request`), picks the meters it reaches and asks
their :class:`~meterd.simulators.model.MeterModel` for the answer, then encodes the reply with the
real codec and prefixes it with ``FE FE FE FE``.  No sockets, no clocks: the caller passes ``now``
(true time) and sends the returned :class:`Reply` bytes after ``Reply.delay`` plus its own
turnaround.

Who answers (one half-duplex bus, so at most one meter talks):

- an exact address: that meter, if it is on the bus; nobody otherwise;
- ``AA`` wildcards (read address uses ``AAAAAAAAAAAA``): the first matching meter, with its own
  address in the reply;
- broadcast ``999999999999``: time sync (08) and freeze (16) act on every meter, and nobody
  answers; any other broadcast is ignored.

Answers: an identifier the catalogue does not know, or this meter does not have, gets an abnormal
reply with ``NO_DATA``; a refused write or relay command gets the meter's :class:`Refusal` bits; a
function the simulator does not implement gets ``OTHER``.  Load curves (``06 10 ..``) are read
with "N records" or "N records from a time" and answered with
:func:`~meterd.protocols.dlt645.catalogue.encode_records`; frozen data by the ``NN`` in the DI.
A reply whose data field (DI + payload) would exceed :data:`MAX_REPLY_DATA` bytes goes out in
pieces: the first with control ``B1``, the rest on request with ``12`` / ``92``
(DI + piece + SEQ; SEQ 1, 2, ... each follow-up; ``B2`` while more remain).

A meter without supply (:meth:`MeterModel.power_down`) hears nothing: it does not answer, not
even to ``AA`` wildcards, and broadcasts pass it by.  Power-down events are read like frozen data:
``03110000`` the count, ``031100NN`` the NN-th last event.

Faults (:class:`FaultPlan`, per meter) are drawn from one seeded ``random.Random`` per bus, in a
fixed order, only for probabilities strictly between 0 and 1 -- so a run is reproducible from the
seed and the request sequence, and probability 1.0 always fires.  ``no_answer`` drops the request
before the meter sees it (no state change); ``abnormal`` refuses it with ``OTHER`` (no state
change); ``wrong_address``, ``garble`` (one byte flipped so the checksum fails) and ``late`` let the
meter act and spoil only the reply.

DL/T 645-1997 meters
--------------------
Both editions share the link envelope; the control code tells them apart.  A meter only hears
frames of its own edition and stays silent on any other (a real meter does not answer a control
code it does not know): a 2007 meter ignores the 1997-only codes 01 02 04 0A 0C 0F 10 and any
``03`` (2007's security command, not simulated), a 1997 meter ignores 11..1D and an ``03``
carrying data (1997's re-read has none).  With ``AA`` wildcards the first matching meter *of the frame's edition* answers.

A 1997 meter answers (:mod:`meterd.protocols.dlt645.v1997`, replies ``C | 0x80``, refusals
``C | 0xC0`` with :class:`~meterd.protocols.dlt645.v1997.MeterErrorBits1997`):

- 01 read: the DI is looked up with :func:`~meterd.protocols.dlt645.catalogue1997.lookup97`, the
  values come from ``MeterModel.values`` and are packed by
  :func:`~meterd.protocols.dlt645.catalogue1997.encode97` -- 1997 formats are unsigned and
  coarser, so power, current and pf go out as magnitudes (the direction is in status word C020)
  rounded to the 1997 decimals (voltage 1 V, current 0.01 A, reactive power 0.01 kvar).  An
  unknown DI, a value the meter lacks (phase B of a 1-phase meter, a month not yet settled) or a
  read with vendor arguments after the DI is refused with ``DI_ERROR`` (数据标识错), the bit the
  1997 firmware sets when a read finds nothing (hoanghon00/meter-dlt645-1997 ``Data_Trans.c``,
  ``Rcv_DLT645_Data_Proc``) and the same bit position as 2007's ``NO_DATA``.
- Replies whose data field (DI + payload) exceeds :data:`MAX_REPLY_DATA_97` bytes (the 1997
  read limit L <= 200) go out the 1997 way: the first piece with ``A1`` (81 + follow-up bit
  D5), the rest on ``02`` follow-up requests (DI only, no SEQ: the meter keeps the cursor) as
  ``A2`` while more remain and ``82`` for the last.  No 1997 identifier of the catalogue comes
  near the limit (the longest, an energy block of total + 14 rates, is 62 bytes), so the path is
  only reached with ``bus.max_reply_data97`` set lower (tests do).  A ``02`` with nothing pending
  is refused with ``DI_ERROR``.
- 03 re-read: the meter sends its last reply again (faults drawn anew); silent if it has none.
- 04 write: ``C010`` (date, YYMMDDWW) and ``C011`` (time, hhmmss) -- the same bytes as 2007's
  04000101 / 04000102, so :meth:`MeterModel.write` does the work with the password the frame
  carries after the DI (``PA P0 P1 P2``) and no operator code.  A wrong password is refused with
  ``PASSWORD_ERROR``; any other DI with ``DI_ERROR`` (before the password is checked, as the
  firmware looks the item up first); bad data with ``ILLEGAL_DATA``.
- 08 time sync: sets the clock, never answered (addressed or broadcast).
- 0A write address: the meter takes the new address and answers ``8A`` from the old one.
  No password (real meters want a button pressed).  An address already used on this bus is
  refused with ``ILLEGAL_DATA``, so addresses stay unique.  A broadcast 0A is ignored.
- 0C change baud: ``8C Z``; 0F change password: the old password must be the model's, the new
  one replaces it (``8F`` echoes it), else ``PASSWORD_ERROR``; 10 clear demand: password, then
  the current maximum demand is cleared (``90``), else ``PASSWORD_ERROR``.
- A frame of a 1997 function that does not decode (wrong data length, bad BCD, unknown baud
  bits) is refused with ``ILLEGAL_DATA``, as the firmware's ``Check_DLT645_Data_Len`` does.

The broadcast time sync is one frame for both editions: 2007 and 1997 both send ``08`` with
``ss mm hh DD MM YY`` (+33H) to ``999999999999`` and no reply, byte for byte the same
(``encode_request(TimeSyncRequest(t)) == encode_request97(TimeSyncRequest97(t))``), so it sets
the clock of every meter of both kinds.  The broadcast freeze (``16``) is 2007 only: 1997 meters
do not know it and ignore it.

Faults apply to 1997 meters unchanged; the injected ``abnormal`` refusal is the 1997 one with
``ILLEGAL_DATA`` (bit 0, the position of 2007's ``OTHER``).  Refusals from the model (its
:class:`~meterd.simulators.model.Refusal` holds 2007 bits) are carried over bit for bit --
``OTHER``/``NO_DATA``/``UNAUTHORIZED`` become ``ILLEGAL_DATA``/``DI_ERROR``/``PASSWORD_ERROR``;
2007's ``BAUD_NOT_CHANGEABLE`` (a reserved bit in 1997) becomes ``ILLEGAL_DATA``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Final

from meterd.errors import ProtocolError, UnknownIdentifierError
from meterd.protocols.dlt645.catalogue import encode, encode_records, lookup
from meterd.protocols.dlt645.catalogue1997 import encode97, lookup97
from meterd.protocols.dlt645.frame import (
    BROADCAST,
    PREAMBLE,
    Frame,
    Function,
    address_matches,
    decode_frame,
    encode_frame,
    normalize_address,
)
from meterd.protocols.dlt645.messages import (
    AbnormalResponse,
    AckResponse,
    ChangeBaudRequest,
    ChangeBaudResponse,
    FreezeRequest,
    MeterErrorBits,
    ReadAddressRequest,
    ReadAddressResponse,
    ReadFollowUpRequest,
    ReadFollowUpResponse,
    ReadRequest,
    ReadResponse,
    RelayControlRequest,
    Request,
    Response,
    TimeSyncRequest,
    WriteRequest,
    decode_request,
    encode_response,
)
from meterd.protocols.dlt645.v1997 import (
    AbnormalResponse97,
    AckResponse97,
    ChangeAddressRequest97,
    ChangeBaudRequest97,
    ChangeBaudResponse97,
    ChangePasswordRequest97,
    ChangePasswordResponse97,
    ClearDemandRequest97,
    Function97,
    MeterErrorBits1997,
    ReadFollowUpRequest97,
    ReadFollowUpResponse97,
    ReadRequest97,
    ReadResponse97,
    Request97,
    RereadRequest97,
    Response97,
    TimeSyncRequest97,
    WriteRequest97,
    decode_request97,
    encode_response97,
)
from meterd.simulators.faults import FaultProbabilities
from meterd.simulators.model import MeterModel, Refusal

MAX_REPLY_DATA: Final = 200  # data bytes (DI included) a meter puts in one reply frame
_FIRST_PIECE: Final = MAX_REPLY_DATA - 4  # after the DI
_NEXT_PIECE: Final = MAX_REPLY_DATA - 5  # after the DI, before SEQ
FAULT_KINDS: Final = ("no_answer", "late", "garble", "wrong_address", "abnormal")

PROTOCOL_2007: Final = "dlt645-2007"
PROTOCOL_1997: Final = "dlt645-1997"
PROTOCOLS: Final = (PROTOCOL_2007, PROTOCOL_1997)
MAX_REPLY_DATA_97: Final = 200  # DL/T 645-1997: a read reply's data field (DI included) L <= 200
_DI97: Final = 2
# 1997 writable identifiers -> the 2007 identifier with the same data layout the model writes
_WRITABLE_97: Final = {0xC010: 0x04000101, 0xC011: 0x04000102}
_FUNCTIONS_2007: Final = frozenset(int(f) for f in Function)
_FUNCTIONS_1997: Final = frozenset(int(f) for f in Function97)
_DECODED_KEPT: Final = 4096  # request frames a bus remembers the decoding of (bounded: cleared when full)


def fires(rng: random.Random, p: float) -> bool:
    """Whether a fault of probability ``p`` fires: never at 0, always at 1 (no draw for either,
    so a run stays reproducible from the seed), else one draw from the bus's seeded ``rng``."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return rng.random() < p


@dataclass(frozen=True, slots=True)
class FaultPlan(FaultProbabilities):
    """Probabilities (0..1) of each link fault for one meter; ``late_by`` seconds for ``late``.
    One kind: ``FaultPlan.of("garble", 0.3)`` (:class:`~meterd.simulators.faults.FaultProbabilities`)."""

    KINDS: ClassVar[tuple[str, ...]] = FAULT_KINDS
    UNKNOWN_KIND: ClassVar[str] = "unknown fault kind"

    no_answer: float = 0.0
    late: float = 0.0
    late_by: float = 2.0
    garble: float = 0.0
    wrong_address: float = 0.0
    abnormal: float = 0.0

    def merged(self, other: FaultPlan) -> FaultPlan:
        """Both plans' faults (the larger probability of each kind)."""
        kw: dict[str, float] = {k: max(getattr(self, k), getattr(other, k)) for k in FAULT_KINDS}
        kw["late_by"] = other.late_by if other.late else self.late_by
        return FaultPlan(**kw)


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send back and the extra delay (seconds) before sending them; ``faults`` applied."""

    data: bytes
    delay: float = 0.0
    faults: tuple[str, ...] = ()
    meter: str = ""


@dataclass(slots=True)
class BusStats:
    requests: int = 0  # well-formed request frames seen
    ignored: int = 0  # bad bytes, replies, requests for nobody here
    replies: int = 0
    refusals: int = 0  # genuine abnormal replies (not injected)
    faults: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Pending:
    di: int
    pieces: list[bytes]


@dataclass(slots=True)
class _Pending97:
    di: int
    pieces: list[bytes]
    next: int = 1  # 1997 follow-ups carry no SEQ: the meter keeps the cursor


class Dlt645Bus:
    """Meters sharing one RS-485 bus (or one TCP serial server)."""

    def __init__(
        self,
        meters: Iterable[MeterModel],
        faults: dict[str, FaultPlan] | None = None,
        seed: int = 0,
        protocols: Mapping[str, str] | None = None,
    ) -> None:
        """``protocols`` maps a meter address to ``"dlt645-2007"`` or ``"dlt645-1997"``; unlisted: 2007."""
        self.meters: list[MeterModel] = list(meters)
        self._by_address: dict[str, MeterModel] = {}
        for m in self.meters:
            if m.address in self._by_address:
                raise ValueError(f"meter {m.address} is on the bus twice")
            self._by_address[m.address] = m
        self.faults: dict[str, FaultPlan] = dict(faults or {})
        unknown = sorted(set(self.faults) - set(self._by_address))
        if unknown:
            raise ValueError(f"faults given for meters not on the bus: {', '.join(unknown)}")
        self._protocol: dict[MeterModel, str] = {m: PROTOCOL_2007 for m in self.meters}
        self._set_protocols(protocols or {})
        self._rng = random.Random(seed)
        self._pending: dict[str, _Pending] = {}
        self._pending97: dict[MeterModel, _Pending97] = {}
        self._last97: dict[MeterModel, Response97] = {}
        self.max_reply_data97 = MAX_REPLY_DATA_97
        self.stats = BusStats()
        self._frames: dict[bytes, Frame] = {}  # request bytes -> decoded frame
        self._requests: dict[Frame, Request] = {}  # request frame -> decoded 2007 request

    def _set_protocols(self, protocols: Mapping[str, str]) -> None:
        not_here: list[str] = []
        bad: list[str] = []
        for address, protocol in protocols.items():
            try:
                key = normalize_address(address)
            except ProtocolError:
                key = str(address)
            meter = self._by_address.get(key)
            if meter is None:
                not_here.append(str(address))
                continue
            if not isinstance(protocol, str) or protocol not in PROTOCOLS:
                bad.append(f"{address}: {protocol!r}")
                continue
            self._protocol[meter] = str(protocol)
        if not_here:
            raise ValueError(f"protocols given for meters not on the bus: {', '.join(sorted(not_here))}")
        if bad:
            raise ValueError(f"unknown protocol for meter {'; '.join(bad)} (known: {', '.join(PROTOCOLS)})")

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.meters]

    def meter(self, address: str) -> MeterModel:
        try:
            return self._by_address[address]
        except KeyError:
            raise KeyError(f"meter {address} is not on this bus") from None

    def protocol_of(self, address: str) -> str:
        """``"dlt645-2007"`` or ``"dlt645-1997"``; KeyError if no meter has ``address``."""
        return self._protocol[self.meter(address)]

    def _speaks(self, meter: MeterModel, frame: Frame) -> bool:
        """Whether ``meter`` knows the frame's control code (it stays silent on any other)."""
        fn = frame.function
        if self._protocol[meter] == PROTOCOL_1997:
            # 03 with data is 2007's security command; 1997's re-read has no data
            return fn in _FUNCTIONS_1997 and not (fn == Function97.REREAD and frame.data)
        return fn in _FUNCTIONS_2007

    def advance(self, now: datetime) -> None:
        for m in self.meters:
            m.advance(now)

    def press_button(self, address: str, now: datetime) -> bool:
        """The customer presses the button of meter ``address`` (see :meth:`MeterModel.press_button`)."""
        return self.meter(address).press_button(now)

    # --- the request path ----------------------------------------------------------------------

    def handle(self, request: bytes | bytearray | Frame, now: datetime) -> list[Reply]:
        """One request (wire bytes, ``FE`` allowed, or a decoded Frame) -> the replies to send."""
        if isinstance(request, Frame):
            frame = request
        else:
            key = bytes(request)
            cached = self._frames.get(key)
            if cached is None:
                try:
                    cached = decode_frame(key)
                except ProtocolError:
                    self.stats.ignored += 1  # a real meter stays silent on a corrupt frame
                    return []
                if len(self._frames) >= _DECODED_KEPT:
                    self._frames.clear()
                self._frames[key] = cached
            frame = cached
        if frame.is_reply:
            self.stats.ignored += 1
            return []
        if frame.address == BROADCAST:
            return self._broadcast(frame, now)
        pattern = frame.address
        if "A" in pattern:  # AA wildcards
            targets = [m for m in self.meters
                       if m.powered and address_matches(pattern, m.address) and self._speaks(m, frame)]
        else:
            one = self._by_address.get(pattern)
            targets = [one] if one is not None and one.powered and self._speaks(one, frame) else []
        if not targets:
            self.stats.ignored += 1
            return []
        meter = targets[0]
        self.stats.requests += 1
        plan = self.faults.get(meter.address)
        if plan is not None and self._fires(plan.no_answer):
            self.stats.faults["no_answer"] += 1
            return []
        v1997 = self._protocol[meter] == PROTOCOL_1997
        if plan is not None and self._fires(plan.abnormal):
            self.stats.faults["abnormal"] += 1
            if v1997:
                fn97 = Function97(frame.function)
                injected = AbnormalResponse97(meter.address, fn97, MeterErrorBits1997.ILLEGAL_DATA)
                return [self._reply97(meter, injected, plan, ("abnormal",))]
            response: Response = AbnormalResponse(meter.address, Function(frame.function), MeterErrorBits.OTHER)
            return [self._reply(meter, encode_response(response), plan, ("abnormal",))]
        if v1997:
            answer97 = self._answer97(meter, frame, now)
            return [] if answer97 is None else [self._reply97(meter, answer97, plan, ())]
        response_or_none = self._answer(meter, frame, now)
        if response_or_none is None:
            return []
        return [self._reply(meter, encode_response(response_or_none), plan, ())]

    def _fires(self, p: float) -> bool:
        return fires(self._rng, p)

    def _broadcast(self, frame: Frame, now: datetime) -> list[Reply]:
        """Time sync (the same 08 frame in both editions) reaches every meter; freeze (16) the 2007 ones."""
        listeners = [m for m in self.meters if m.powered and self._speaks(m, frame)]
        if frame.function not in (Function.BROADCAST_TIME, Function.FREEZE) or not listeners:
            self.stats.ignored += 1
            return []
        try:
            req = decode_request(frame)
        except ProtocolError:
            self.stats.ignored += 1
            return []
        if isinstance(req, TimeSyncRequest):
            for m in listeners:
                m.set_clock(req.when, now=now)
        elif isinstance(req, FreezeRequest):
            for m in listeners:
                m.freeze(now=now, minute=req.minute, hour=req.hour, day=req.day, month=req.month)
        self.stats.requests += 1
        return []

    def _answer(self, meter: MeterModel, frame: Frame, now: datetime) -> Response | None:
        try:
            req: Request = self._decode_request(frame)
        except ProtocolError:
            fn = _function_of(frame)
            return None if fn is None else self._refuse(meter, fn, MeterErrorBits.OTHER)
        if isinstance(req, ReadRequest):
            return self._read(meter, req, now)
        if isinstance(req, ReadFollowUpRequest):
            return self._follow_up(meter, req)
        if isinstance(req, ReadAddressRequest):
            return ReadAddressResponse(meter.address)
        if isinstance(req, TimeSyncRequest):
            meter.set_clock(req.when, now=now)
            return None  # time sync is never answered
        if isinstance(req, WriteRequest):
            refused = meter.write(req.di, req.data, password=req.password, operator=req.operator, now=now)
            if refused:
                return self._refuse(meter, Function.WRITE_DATA, refused.error)
            return AckResponse(meter.address, Function.WRITE_DATA)
        if isinstance(req, FreezeRequest):
            meter.freeze(now=now, minute=req.minute, hour=req.hour, day=req.day, month=req.month)
            return AckResponse(meter.address, Function.FREEZE)
        if isinstance(req, ChangeBaudRequest):
            meter.baud = req.baud
            return ChangeBaudResponse(meter.address, req.baud)
        if isinstance(req, RelayControlRequest):
            refused = meter.control(
                req.command, password=req.password, operator=req.operator, valid_until=req.valid_until, now=now
            )
            if refused:
                return self._refuse(meter, Function.RELAY_CONTROL, refused.error)
            return AckResponse(meter.address, Function.RELAY_CONTROL)
        return self._refuse(meter, Function(frame.function), MeterErrorBits.OTHER)  # pragma: no cover

    def _decode_request(self, frame: Frame) -> Request:
        """:func:`decode_request`, remembered per frame: a master polls the same few requests
        round after round (decoding is pure, so a repeated frame decodes the same)."""
        req = self._requests.get(frame)
        if req is None:
            req = decode_request(frame)
            if len(self._requests) >= _DECODED_KEPT:
                self._requests.clear()
            self._requests[frame] = req
        return req

    def _refuse(self, meter: MeterModel, fn: Function, error: MeterErrorBits) -> AbnormalResponse:
        self.stats.refusals += 1
        return AbnormalResponse(meter.address, fn, error)

    def _read(self, meter: MeterModel, req: ReadRequest, now: datetime) -> Response:
        self._pending.pop(meter.address, None)
        payload = self._payload(meter, req, now)
        if payload is None:
            return self._refuse(meter, Function.READ_DATA, MeterErrorBits.NO_DATA)
        if len(payload) <= _FIRST_PIECE:
            return ReadResponse(meter.address, req.di, payload)
        pieces = [payload[:_FIRST_PIECE]]
        pieces += [payload[i : i + _NEXT_PIECE] for i in range(_FIRST_PIECE, len(payload), _NEXT_PIECE)]
        self._pending[meter.address] = _Pending(req.di, pieces)
        return ReadResponse(meter.address, req.di, pieces[0], follow_up=True)

    def _follow_up(self, meter: MeterModel, req: ReadFollowUpRequest) -> Response:
        pending = self._pending.get(meter.address)
        if pending is None or pending.di != req.di or not 1 <= req.seq < len(pending.pieces):
            return self._refuse(meter, Function.READ_FOLLOW_UP, MeterErrorBits.NO_DATA)
        more = req.seq + 1 < len(pending.pieces)
        return ReadFollowUpResponse(meter.address, req.di, pending.pieces[req.seq], req.seq, follow_up=more)

    def _payload(self, meter: MeterModel, req: ReadRequest, now: datetime) -> bytes | None:
        try:
            item = lookup(req.di)
        except UnknownIdentifierError:
            return None
        try:
            if item.records:
                meter.advance(now)
                quantity = item.fields[0].quantity
                got = meter.curve(quantity, req.start, req.count or 1)
                return None if got is None else encode_records(req.di, got[0], got[1])
            if req.di >> 24 == 0x05:
                which = "daily" if (req.di >> 16) & 0xFF == 0x06 else "hourly"
                meter.advance(now)
                snapshot = meter.frozen(which, req.di & 0xFF)
                return None if snapshot is None else encode(req.di, snapshot)
            if req.di >> 8 == 0x031100 and req.di & 0xFF:  # the NN-th last power-down event
                meter.advance(now)
                record = meter.power_down_record(req.di & 0xFF)
                return None if record is None else encode(req.di, record)
            return encode(req.di, meter.values(now, item.quantities))
        except UnknownIdentifierError:
            return None  # this meter lacks a value the identifier needs (e.g. phase B of 1-phase)
        except ProtocolError as exc:  # a value that does not fit its register: a simulator bug
            raise ProtocolError(f"meter {meter.address} cannot encode {req.di:08X}: {exc}") from exc

    # --- DL/T 645-1997 meters -------------------------------------------------------------------

    def _answer97(self, meter: MeterModel, frame: Frame, now: datetime) -> Response97 | None:
        fn = Function97(frame.function)
        try:
            req: Request97 = decode_request97(frame)
        except ProtocolError:
            return self._refuse97(meter, fn, MeterErrorBits1997.ILLEGAL_DATA)
        if isinstance(req, ReadRequest97):
            return self._read97(meter, req, now)
        if isinstance(req, ReadFollowUpRequest97):
            return self._follow_up97(meter, req)
        if isinstance(req, RereadRequest97):
            return self._last97.get(meter)  # nothing said yet: nothing to repeat
        if isinstance(req, TimeSyncRequest97):
            meter.set_clock(req.when, now=now)
            return None  # time sync is never answered
        if isinstance(req, WriteRequest97):
            return self._write97(meter, req, now)
        if isinstance(req, ChangeAddressRequest97):
            return self._change_address97(meter, req)
        if isinstance(req, ChangeBaudRequest97):
            meter.baud = req.baud
            return ChangeBaudResponse97(meter.address, req.baud)
        if isinstance(req, ChangePasswordRequest97):
            refused = meter.change_password(req.old, req.new, now=now)
            if refused:
                return self._refuse97(meter, fn, _bits97(refused))
            return ChangePasswordResponse97(meter.address, meter.password)
        if isinstance(req, ClearDemandRequest97):
            refused = meter.clear_demand(password=req.password, now=now)
            if refused:
                return self._refuse97(meter, fn, _bits97(refused))
            return AckResponse97(meter.address, Function97.CLEAR_DEMAND)
        return self._refuse97(meter, fn, MeterErrorBits1997.ILLEGAL_DATA)  # pragma: no cover

    def _refuse97(self, meter: MeterModel, fn: Function97, error: MeterErrorBits1997) -> AbnormalResponse97:
        self.stats.refusals += 1
        return AbnormalResponse97(meter.address, fn, error)

    def _read97(self, meter: MeterModel, req: ReadRequest97, now: datetime) -> Response97:
        self._pending97.pop(meter, None)
        payload = None if req.args else self._payload97(meter, req.di, now)
        if payload is None:
            return self._refuse97(meter, Function97.READ_DATA, MeterErrorBits1997.DI_ERROR)
        piece = self.max_reply_data97 - _DI97
        if piece < 1:
            raise ValueError(f"max_reply_data97={self.max_reply_data97} leaves no room after the DI")
        if len(payload) <= piece:
            return ReadResponse97(meter.address, req.di, payload)
        pieces = [payload[i : i + piece] for i in range(0, len(payload), piece)]
        self._pending97[meter] = _Pending97(req.di, pieces)
        return ReadResponse97(meter.address, req.di, pieces[0], follow_up=True)

    def _follow_up97(self, meter: MeterModel, req: ReadFollowUpRequest97) -> Response97:
        pending = self._pending97.get(meter)
        if pending is None or pending.di != req.di or pending.next >= len(pending.pieces):
            return self._refuse97(meter, Function97.READ_FOLLOW_UP, MeterErrorBits1997.DI_ERROR)
        piece = pending.pieces[pending.next]
        pending.next += 1
        more = pending.next < len(pending.pieces)
        return ReadFollowUpResponse97(meter.address, req.di, piece, follow_up=more)

    def _payload97(self, meter: MeterModel, di: int, now: datetime) -> bytes | None:
        try:
            item = lookup97(di)
        except UnknownIdentifierError:
            return None
        try:
            return encode97(di, meter.values(now, item.quantities))
        except UnknownIdentifierError:
            return None  # this meter lacks a value the identifier needs
        except ProtocolError as exc:  # a value that does not fit its register: a simulator bug
            raise ProtocolError(f"meter {meter.address} cannot encode {di:04X}: {exc}") from exc

    def _write97(self, meter: MeterModel, req: WriteRequest97, now: datetime) -> Response97:
        target = _WRITABLE_97.get(req.di)
        if target is None:
            return self._refuse97(meter, Function97.WRITE_DATA, MeterErrorBits1997.DI_ERROR)
        refused = meter.write(target, req.data, password=req.password, operator=None, now=now)
        if refused:
            return self._refuse97(meter, Function97.WRITE_DATA, _bits97(refused))
        return AckResponse97(meter.address, Function97.WRITE_DATA)

    def _change_address97(self, meter: MeterModel, req: ChangeAddressRequest97) -> Response97:
        old, new = meter.address, req.new_address
        if new != old and new in self._by_address:
            return self._refuse97(meter, Function97.WRITE_ADDRESS, MeterErrorBits1997.ILLEGAL_DATA)
        meter.address = new
        del self._by_address[old]
        self._by_address[new] = meter
        if old in self.faults:
            self.faults[new] = self.faults.pop(old)
        return AckResponse97(old, Function97.WRITE_ADDRESS)  # from the old address, as the firmware does

    def _reply97(
        self, meter: MeterModel, response: Response97, plan: FaultPlan | None, faults: tuple[str, ...]
    ) -> Reply:
        self._last97[meter] = response
        return self._reply(meter, encode_response97(response), plan, faults)

    # --- replies and faults --------------------------------------------------------------------

    def _reply(self, meter: MeterModel, frame: Frame, plan: FaultPlan | None, faults: tuple[str, ...]) -> Reply:
        """An encoded reply (either edition) -> wire bytes, with the link faults ``plan`` draws."""
        delay = 0.0
        applied = list(faults)
        if plan is not None:
            if self._fires(plan.wrong_address):
                frame = Frame(self._other_address(meter.address), frame.control, frame.data)
                applied.append("wrong_address")
            if self._fires(plan.late):
                delay = plan.late_by
                applied.append("late")
        data = encode_frame(frame, preamble=PREAMBLE)
        if plan is not None and self._fires(plan.garble):
            data = self._garble(data, len(frame.data))
            applied.append("garble")
        for kind in applied:
            if kind != "abnormal":  # counted when drawn
                self.stats.faults[kind] += 1
        self.stats.replies += 1
        return Reply(data, delay, tuple(applied), meter.address)

    def _other_address(self, address: str) -> str:
        for m in self.meters:
            if m.address != address:
                return m.address
        n = (int(address) + 1) % 10**12 if address.isdigit() else 1
        return f"{n:012d}"

    def _garble(self, data: bytes, data_len: int) -> bytes:
        """Flip one address, control or data byte: the frame stays framed but its checksum fails."""
        start = len(PREAMBLE)
        positions = [start + i for i in range(1, 7)] + [start + 8]
        positions += [start + 10 + i for i in range(data_len)]
        pos = self._rng.choice(positions)
        out = bytearray(data)
        out[pos] ^= self._rng.randrange(1, 256)
        return bytes(out)


def _function_of(frame: Frame) -> Function | None:
    try:
        return Function(frame.function)
    except ValueError:
        return None


# 2007 ERR bits (what the model's Refusal holds) -> 1997 ERR bits: the same positions, but for D3
_SAME_BITS: Final = 0x77


def _bits97(refusal: Refusal) -> MeterErrorBits1997:
    bits = MeterErrorBits1997(int(refusal.error) & _SAME_BITS)
    if refusal.error & MeterErrorBits.BAUD_NOT_CHANGEABLE or not bits:
        bits |= MeterErrorBits1997.ILLEGAL_DATA
    return bits


__all__ = [
    "FAULT_KINDS",
    "MAX_REPLY_DATA",
    "MAX_REPLY_DATA_97",
    "PROTOCOLS",
    "PROTOCOL_1997",
    "PROTOCOL_2007",
    "BusStats",
    "Dlt645Bus",
    "FaultPlan",
    "Reply",
]  # fmt: skip
