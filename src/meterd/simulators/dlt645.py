"""A sans-I/O DL/T 645-2007 bus of simulated meters: request frame in, reply bytes out.

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

Faults (:class:`FaultPlan`, per meter) are drawn from one seeded ``random.Random`` per bus, in a
fixed order, only for probabilities strictly between 0 and 1 -- so a run is reproducible from the
seed and the request sequence, and probability 1.0 always fires.  ``no_answer`` drops the request
before the meter sees it (no state change); ``abnormal`` refuses it with ``OTHER`` (no state
change); ``wrong_address``, ``garble`` (one byte flipped so the checksum fails) and ``late`` let the
meter act and spoil only the reply.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Iterable

from meterd.errors import ProtocolError, UnknownIdentifierError
from meterd.protocols.dlt645.catalogue import encode, encode_records, lookup
from meterd.protocols.dlt645.frame import (
    BROADCAST,
    PREAMBLE,
    Frame,
    Function,
    address_matches,
    decode_frame,
    encode_frame,
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
from meterd.simulators.model import MeterModel

MAX_REPLY_DATA: Final = 200  # data bytes (DI included) a meter puts in one reply frame
_FIRST_PIECE: Final = MAX_REPLY_DATA - 4  # after the DI
_NEXT_PIECE: Final = MAX_REPLY_DATA - 5  # after the DI, before SEQ
FAULT_KINDS: Final = ("no_answer", "late", "garble", "wrong_address", "abnormal")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Probabilities (0..1) of each link fault for one meter; ``late_by`` seconds for ``late``."""

    no_answer: float = 0.0
    late: float = 0.0
    late_by: float = 2.0
    garble: float = 0.0
    wrong_address: float = 0.0
    abnormal: float = 0.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            p = getattr(self, kind)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability {kind}={p} must be within 0..1")
        if self.late_by < 0:
            raise ValueError(f"late_by={self.late_by} must be >= 0 seconds")

    @classmethod
    def of(cls, kind: str, probability: float = 1.0, **extra: float) -> FaultPlan:
        """One fault kind, e.g. ``FaultPlan.of("garble", 0.3)``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        return cls(**{kind: probability, **extra})

    def merged(self, other: FaultPlan) -> FaultPlan:
        """Both plans' faults (the larger probability of each kind)."""
        kw: dict[str, float] = {k: max(getattr(self, k), getattr(other, k)) for k in FAULT_KINDS}
        kw["late_by"] = other.late_by if other.late else self.late_by
        return FaultPlan(**kw)

    @property
    def active(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in FAULT_KINDS if getattr(self, k)}


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


class Dlt645Bus:
    """Meters sharing one RS-485 bus (or one TCP serial server)."""

    def __init__(
        self, meters: Iterable[MeterModel], faults: dict[str, FaultPlan] | None = None, seed: int = 0
    ) -> None:
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
        self._rng = random.Random(seed)
        self._pending: dict[str, _Pending] = {}
        self.stats = BusStats()

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.meters]

    def meter(self, address: str) -> MeterModel:
        try:
            return self._by_address[address]
        except KeyError:
            raise KeyError(f"meter {address} is not on this bus") from None

    def advance(self, now: datetime) -> None:
        for m in self.meters:
            m.advance(now)

    # --- the request path ----------------------------------------------------------------------

    def handle(self, request: bytes | bytearray | Frame, now: datetime) -> list[Reply]:
        """One request (wire bytes, ``FE`` allowed, or a decoded Frame) -> the replies to send."""
        if isinstance(request, Frame):
            frame = request
        else:
            try:
                frame = decode_frame(request)
            except ProtocolError:
                self.stats.ignored += 1  # a real meter stays silent on a corrupt frame
                return []
        if frame.is_reply:
            self.stats.ignored += 1
            return []
        if frame.address == BROADCAST:
            return self._broadcast(frame, now)
        targets = [m for m in self.meters if address_matches(frame.address, m.address)]
        if not targets:
            self.stats.ignored += 1
            return []
        meter = targets[0]
        self.stats.requests += 1
        plan = self.faults.get(meter.address)
        if plan is not None and self._fires(plan.no_answer):
            self.stats.faults["no_answer"] += 1
            return []
        if plan is not None and self._fires(plan.abnormal):
            self.stats.faults["abnormal"] += 1
            fn = _function_of(frame)
            if fn is None:
                return []
            response: Response = AbnormalResponse(meter.address, fn, MeterErrorBits.OTHER)
            return [self._reply(meter, response, plan, ("abnormal",))]
        response_or_none = self._answer(meter, frame, now)
        if response_or_none is None:
            return []
        return [self._reply(meter, response_or_none, plan, ())]

    def _fires(self, p: float) -> bool:
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        return self._rng.random() < p

    def _broadcast(self, frame: Frame, now: datetime) -> list[Reply]:
        try:
            req = decode_request(frame)
        except ProtocolError:
            self.stats.ignored += 1
            return []
        if isinstance(req, TimeSyncRequest):
            for m in self.meters:
                m.set_clock(req.when, now=now)
        elif isinstance(req, FreezeRequest):
            for m in self.meters:
                m.freeze(now=now, minute=req.minute, hour=req.hour, day=req.day, month=req.month)
        else:
            self.stats.ignored += 1
            return []
        self.stats.requests += 1
        return []

    def _answer(self, meter: MeterModel, frame: Frame, now: datetime) -> Response | None:
        try:
            req: Request = decode_request(frame)
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
            return encode(req.di, meter.values(now, item.quantities))
        except UnknownIdentifierError:
            return None  # this meter lacks a value the identifier needs (e.g. phase B of 1-phase)
        except ProtocolError as exc:  # a value that does not fit its register: a simulator bug
            raise ProtocolError(f"meter {meter.address} cannot encode {req.di:08X}: {exc}") from exc

    # --- replies and faults --------------------------------------------------------------------

    def _reply(self, meter: MeterModel, response: Response, plan: FaultPlan | None, faults: tuple[str, ...]) -> Reply:
        frame = encode_response(response)
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


__all__ = ["BusStats", "Dlt645Bus", "FAULT_KINDS", "FaultPlan", "MAX_REPLY_DATA", "Reply"]
