"""The channel to one Q/GDW 1376.1 terminal: requests by AFN, and DL/T 645 frames relayed through
AFN 10 F1 (see the package docstring)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

from meterd.collector.channel import (
    ROUTINE,
    Channel,
    FailureKind,
    Timing,
    TraceHook,
    TransactionError,
)
from meterd.collector.gdw1376.listener import GdwTransport
from meterd.errors import AddressMismatchError, ConfigError, ProtocolError
from meterd.logthrottle import LogThrottle
from meterd.protocols.dlt645.frame import Frame as DltFrame
from meterd.protocols.dlt645.frame import StreamDecoder as DltDecoder
from meterd.protocols.dlt645.frame import encode_frame as dlt_encode
from meterd.protocols.gdw1376.catalogue import (
    ForwardReply,
    ForwardRequest,
)
from meterd.protocols.gdw1376.frame import (
    Afn,
    EventCounter,
    TerminalAddress,
)
from meterd.protocols.gdw1376.frame import Frame as GdwFrame
from meterd.protocols.gdw1376.messages import (
    MAX_PARTS,
    DataUnit,
    Message,
    Reassembler,
    decode_message,
    encode_message,
    request,
    unit,
)

log = logging.getLogger(__name__)

PW_BYTES: Final = 16
ZERO_PW: Final = bytes(PW_BYTES)
GENERAL_EVENTS_EVERY: Final = 900.0  # s: how often the general events' counter is read (AFN 0C F7)
RELAY_CONTROL: Final = 0x1C  # DL/T 645-2007 control code of relay commands (跳闸, 合闸允许, 报警, 保电)
# Bounds of one reply (every frame the terminal sends while a request waits counts).  The largest
# reply the master asks for is 255 event records (AFN 0E, ~66 KB); a terminal that keeps sending
# (FIR then middle frames for ever, or FIR again and again) would otherwise hold the channel, and
# the bytes it sent, as long as each frame comes within the inter-byte timeout.
MAX_REPLY_FRAMES: Final = MAX_PARTS + 16
MAX_REPLY_BYTES: Final = 1 << 20
MAX_REPLY_SECONDS: Final = 60.0


def password_bytes(text: str, where: str) -> bytes:
    """The 16-byte PW from its secret: 32 hex digits (spaces allowed).  ConfigError naming the secret."""
    digits = text.replace(" ", "").strip()
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raw = b""
    if len(raw) != PW_BYTES:
        raise ConfigError([(f"{where}: the terminal password must be {PW_BYTES} bytes as {2 * PW_BYTES} hex "
                            f"digits (got {len(digits)} characters)")])
    return raw



# --- the channel -----------------------------------------------------------------------------------


class TerminalDenied(ProtocolError):
    """The terminal answered AFN 00 F2 (denied) or F3 with errors."""


class _GdwReply:
    """Matcher of one 1376.1 request: the frames from the terminal whose RSEQ is the request's
    (a multi-frame reply joined), or its AFN 00 answer.  The whole message lands in ``message``;
    ``feed`` returns the last frame (what the trace shows)."""

    __slots__ = ("afn", "bytes", "channel", "dropped", "key", "message", "pending", "reassembler", "seq",
                 "since", "started")

    def __init__(self, channel: GdwChannel, afn: int, seq: int) -> None:
        self.channel = channel
        self.key = channel.address.key
        self.afn = afn
        self.seq = seq
        self.reassembler = Reassembler()
        self.message: Message | None = None
        self.dropped = 0
        self.pending = False
        self.since = channel.gdw_transport.received  # the transport's count of frames when this reply began
        self.bytes = 0
        self.started = time.monotonic()  # a link clock: how long this reply has been coming

    def feed(self, data: bytes) -> GdwFrame | None:
        transport = self.channel.gdw_transport
        frames = transport.frames
        self.bytes += len(data)
        while frames:
            frame = frames.popleft()
            self._bounded(frame, data, transport.received - self.since)
            if frame.address.key != self.key:
                raise AddressMismatchError(self.key, frame.address.key)
            if frame.ec is not None:
                self.channel._saw_ec(frame.ec)
            if frame.afn not in (self.afn, Afn.CONFIRM):
                continue
            if frame.fir and frame.seq_number != self.seq:
                continue  # a late reply to an earlier request
            try:
                msg = decode_message(frame)
            except ProtocolError as exc:
                self.dropped += 1
                self.channel._log.log(log, logging.WARNING, f"undecodable AFN {frame.afn:02X}H",
                                      "channel %s: terminal %s: AFN %02XH frame (%s) dropped: %s [%s]",
                                      self.channel.name, self.key, frame.afn, frame.describe_seq(), exc,
                                      bytes(data[:32]).hex(" ").upper())
                if not frame.fir:
                    continue  # a later frame: perhaps of an earlier request's reply
                # the reply to this request (its RSEQ) does not decode: waiting brings nothing better
                raise TransactionError(FailureKind.GARBLED, f"reply to AFN {self.afn:02X}H not decodable: {exc}",
                                       meter=f"terminal {self.key}") from exc
            try:
                whole = self.reassembler.add(msg)
            except ProtocolError:
                self.dropped += 1
                continue
            if whole is None:
                self.pending = True
                continue
            self.message = whole
            return frame
        return None

    def _bounded(self, frame: GdwFrame, data: bytes, count: int) -> None:
        """TransactionError once the terminal has sent more than one reply can be (frames, bytes,
        time) without finishing it: the partial reply is dropped, the request fails (and is retried)."""
        took = time.monotonic() - self.started
        if count <= MAX_REPLY_FRAMES and self.bytes <= MAX_REPLY_BYTES and took <= MAX_REPLY_SECONDS:
            return
        self.reassembler.clear()
        channel = self.channel
        what = (f"sent {count} frames ({self.bytes} bytes, {took:.1f} s) in answer to "
                f"AFN {self.afn:02X}H without finishing the reply (at most {MAX_REPLY_FRAMES} frames, "
                f"{MAX_REPLY_BYTES} bytes, {MAX_REPLY_SECONDS:g} s); the reply is dropped")
        channel._log.log(log, logging.WARNING, "endless reply", "channel %s: terminal %s %s; last frame AFN %02XH, %s [%s]",
                         channel.name, self.key, what, frame.afn, frame.describe_seq(), bytes(data[:32]).hex(" ").upper())
        raise TransactionError(FailureKind.GARBLED, what, meter=f"terminal {self.key}")


class GdwChannel(Channel):
    """The channel to one Q/GDW 1376.1 terminal: see the module docstring."""

    # the reply matcher's own bounds (MAX_REPLY_*) come first, with a message naming the AFN; the
    # channel's only backs them up
    max_reply_bytes = 2 * MAX_REPLY_BYTES
    max_reply_seconds = 2 * MAX_REPLY_SECONDS

    def __init__(self, name: str, transport: GdwTransport, address: TerminalAddress, *,
                 pns: Mapping[str, int], timing: Timing | None = None, retries: int = 1, trace: TraceHook | None = None,
                 password: bytes | None = None, port: int = 2, special: bool = False, turn: int = 1,
                 archive: bool = True, preamble: int = 0) -> None:
        super().__init__(name, transport, timing=timing or Timing(), retries=retries, preamble=preamble, trace=trace)
        self.gdw_transport = transport
        self.address = address
        self.pns = dict(pns)  # meter address -> pn
        self.password = password
        self.port = port
        self.special = special
        self.turn = turn
        self.archive = archive
        self._seq = 0
        self.ec: EventCounter | None = None
        self.event_pointer: int | None = None  # the next important event to read
        self.important_waiting = False  # EC says important events wait (events_waiting)
        self.event_failures = 0  # failed reads of the events from event_pointer (archive.read_events)
        self.general_pointer: int | None = None  # the next general event to read
        self.general_every = GENERAL_EVENTS_EVERY  # s between reads of the event counters (0: never)
        self._general_at: float | None = None  # monotonic time of the last check; None: due now
        self._log = LogThrottle()  # a terminal's absurd replies: once a minute per kind, with a count

    @property
    def relay_timeout_ms(self) -> int:
        """How long the terminal waits for a relayed meter's answer: inside the channel's response
        timeout (the terminal must answer before the master gives up), in the units AFN 10 has."""
        ms = int(self.timing.response * 1000 * 0.75)
        return max(10, min(1270, ms - ms % 10)) if ms < 2000 else min(127, ms // 1000) * 1000

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x0F
        return self._seq

    @property
    def events_waiting(self) -> bool:
        """Events to read: important ones EC announced, or a check of the general ones due."""
        return self.important_waiting or self.general_due()

    @events_waiting.setter
    def events_waiting(self, value: bool) -> None:
        self.important_waiting = value

    def general_due(self) -> bool:
        """Whether the terminal's general events should be looked at (a link clock, not logic time)."""
        if self.general_every <= 0:
            return False
        return self._general_at is None or time.monotonic() - self._general_at >= self.general_every

    def general_checked(self) -> None:
        self._general_at = time.monotonic()

    def _saw_ec(self, ec: EventCounter) -> None:
        if self.ec is None or ec.important != self.ec.important:
            self.events_waiting = self.event_pointer is None or ec.important != self.event_pointer
        self.ec = ec

    async def request(self, afn: int, units: Sequence[DataUnit], *, meter: str = "", priority: int = ROUTINE,
                      pw: bytes | None = None) -> Message:
        """Send one request; return the terminal's (joined) reply.  A denial (AFN 00 F2) raises
        :class:`TerminalDenied`; a failed exchange TransactionError."""
        seq = self._next_seq()
        master = self.gdw_transport.terminal.master
        address = self.address if master == self.address.master else self.address.with_master(master)
        msg = request(address, afn, units, seq=seq, pw=pw)
        frame = encode_message(msg)
        from meterd.protocols.gdw1376.frame import encode_frame

        wire = encode_frame(frame)
        made: list[_GdwReply] = []

        def matcher() -> _GdwReply:
            m = _GdwReply(self, afn, seq)
            made.append(m)
            return m

        await self.exchange(meter or f"terminal {self.address.key}", wire, matcher, request=frame,
                            priority=priority)
        reply = made[-1].message
        assert reply is not None
        if reply.afn == Afn.CONFIRM and afn != Afn.CONFIRM:
            fn = reply.units[0].fns[0] if reply.units and reply.units[0].fns else 0
            if fn == 2:
                raise TerminalDenied(f"terminal {self.address.key} denied AFN {afn:02X}H (AFN 00 F2)")
            if fn == 3:
                results = reply.units[0].values[0]
                if results is not None and not results.all_ok:
                    raise TerminalDenied(f"terminal {self.address.key} denied AFN {afn:02X}H item by item: "
                                         f"{results.items}")
        return reply

    def pw(self, what: str) -> bytes:
        return self.password if self.password is not None else ZERO_PW

    async def transact(self, request: DltFrame, *, expect_reply: bool = True,
                       priority: int = ROUTINE) -> DltFrame | None:
        """A DL/T 645 frame relayed through the terminal (AFN 10 F1) to the meter; the meter's reply."""
        if request.function == RELAY_CONTROL and self.password is None:
            raise TransactionError(FailureKind.ABNORMAL,
                                   f"relay command through terminal {self.address.key} needs its password: set "
                                   f"channels.{self.name}.gdw1376.password_secret (the secret's name)",
                                   meter=request.address)
        payload = dlt_encode(request, preamble=b"\xfe" * 4)
        fwd = ForwardRequest(port=self.port, payload=payload, frame_timeout_ms=self.relay_timeout_ms)
        try:
            reply = await self.request(Afn.FORWARD, [unit(0, 1, fwd)], meter=request.address, priority=priority,
                                       pw=self.pw("AFN 10"))
        except TerminalDenied as exc:
            hint = "" if self.password is not None else " (no password_secret is configured: PW was zeros)"
            raise TransactionError(FailureKind.ABNORMAL, f"{exc}: wrong password (PW)?{hint}",
                                   meter=request.address) from exc
        if not expect_reply:
            return None
        value = next((v for _, fn, v in reply.items() if fn == 1 and isinstance(v, ForwardReply)), None)
        if value is None or not value.payload:
            raise TransactionError(FailureKind.TIMEOUT, f"no answer relayed by terminal {self.address.key} "
                                   f"(port {self.port})", meter=request.address)
        decoder = DltDecoder()
        decoder.feed(value.payload)
        while (frame := decoder.next_frame()) is not None:
            if frame.is_reply:
                if frame.address != request.address and "A" not in request.address:
                    raise TransactionError(FailureKind.WRONG_ADDRESS, f"relayed reply from {frame.address}",
                                           meter=request.address)
                return frame
        raise TransactionError(FailureKind.GARBLED, f"terminal {self.address.key} relayed no DL/T 645 reply: "
                               f"{value.payload[:32].hex(' ').upper()}", meter=request.address)
