"""A channel owns one link (a half-duplex RS-485 bus, a serial server, a DTU): one request in flight.

:meth:`Channel.exchange` is the only way bytes reach a meter, whatever its protocol.  The
protocol supplies the request bytes and a :class:`ReplyMatcher` that is fed what comes back and
says when the awaited reply is complete (DL/T 645 frames through the stream decoder here,
Modbus ADUs through pymodbus' framers in :mod:`meterd.collector.modbus`).  Per attempt the
channel:

1. waits out the bus turnaround after the previous answer, drops stale input,
2. writes the request,
3. reads until the matcher returns the reply: the first byte must come within the response
   timeout, later bytes within the inter-byte timeout.  Echoed requests, noise and corrupt frames
   are the matcher's business; if nothing good follows, the attempt is ``garbled`` (something
   corrupt was dropped), ``incomplete`` (a reply started but stopped short) or ``timeout``
   (nothing),
4. lets the matcher check who replied (``wrong_address``).

Timeouts, garbled and incomplete replies, wrong addresses and link errors are retried up to
``retries`` times; a meter's refusal (DL/T 645 abnormal reply, Modbus exception response) is an
answer and is returned, never retried.  Each outcome is counted in :class:`ChannelStats`.  A dead
link is reopened on the next transaction; the channel logs once when its link goes down and once
when it comes back.  An exception from the link that is none of meterd's (an untranslated
third-party error, a bug) is a ``link`` failure too, logged with its traceback.  :meth:`Channel.transact` is the DL/T 645 (2007 and 1997: one envelope)
shorthand.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import heapq
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, Protocol

from meterd.collector.transports.base import Transport
from meterd.errors import AddressMismatchError, LinkError, LinkTimeoutError, MeterdError, ProtocolError
from meterd.protocols.dlt645.fastpath import ReadValues, decode_read_reply
from meterd.protocols.dlt645.frame import (
    BROADCAST,
    PREAMBLE,
    Frame,
    Function,
    StreamDecoder,
    decode_frame,
    encode_frame,
)
from meterd.supervise import describe

log = logging.getLogger(__name__)


class FailureKind(enum.StrEnum):
    TIMEOUT = "timeout"
    GARBLED = "garbled"
    INCOMPLETE = "incomplete"
    WRONG_ADDRESS = "wrong_address"
    ABNORMAL = "abnormal"
    LINK = "link"


class ReplyMatcher(Protocol):
    """The receive side of one attempt, supplied by the protocol.

    ``feed`` takes the bytes as they come and returns the decoded reply once it is complete
    (``None``: need more); it raises :class:`~meterd.errors.AddressMismatchError` for a reply from someone else.
    ``dropped`` counts corrupt frames it threw away; ``pending`` is whether it holds the start
    of a reply that has not completed.
    """

    @property
    def dropped(self) -> int: ...

    def feed(self, data: bytes) -> Any | None: ...

    @property
    def pending(self) -> bool: ...


class TransactionError(MeterdError):
    """A transaction failed after its retries.  ``kind`` says how; ``received`` holds stray bytes."""

    def __init__(self, kind: FailureKind, message: str, *, meter: str, received: bytes = b"") -> None:
        self.kind = kind
        self.meter = meter
        self.received = received
        super().__init__(f"meter {meter}: {message}")


@dataclass(frozen=True, slots=True)
class Timing:
    response: float = 2.0
    inter_byte: float = 0.5


@dataclass(frozen=True, slots=True)
class TraceEvent:
    channel: str
    direction: str  # "tx", "rx", "drop", "note"
    data: bytes
    frame: Any = None  # the decoded request or reply: a DL/T 645 Frame or a pymodbus PDU
    note: str = ""
    at: float = 0.0


#: Upper bounds (seconds) of the reply-latency histogram each channel keeps for ``/metrics``: a
#: loopback TCP reply takes ~0.2 ms, a 2400-baud DL/T 645 read ~0.2 s, a GPRS DTU seconds.
_SHOWN_BYTES: Final = 1024  # of a babbling attempt's bytes, kept with its error and trace
LATENCY_BOUNDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class ChannelStats:
    transactions: int = 0
    successes: int = 0
    attempts: int = 0
    retries: int = 0
    failures: Counter = field(default_factory=Counter)
    latency_total: float = 0.0
    latency_max: float = 0.0
    # successes per LATENCY_BOUNDS bucket (the last: above them all); plain ints, no lock: only the
    # event loop writes, and a scrape copies them
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    last_success: float = 0.0  # time.monotonic() of the last success; 0: none yet

    def record_success(self, latency: float, at: float = 0.0) -> None:
        self.successes += 1
        self.latency_total += latency
        self.latency_max = max(self.latency_max, latency)
        self.latency_buckets[bisect_left(LATENCY_BOUNDS, latency)] += 1
        self.last_success = at

    @property
    def latency_mean(self) -> float:
        return self.latency_total / self.successes if self.successes else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "transactions": self.transactions,
            "successes": self.successes,
            "attempts": self.attempts,
            "retries": self.retries,
            "failures": {str(k): v for k, v in sorted(self.failures.items())},
            "latency_mean_ms": round(self.latency_mean * 1000, 3),
            "latency_max_ms": round(self.latency_max * 1000, 3),
        }


TraceHook = Callable[[TraceEvent], None]

ROUTINE: Final = 10  # scheduled and round reads
WIRE_FRAMES_KEPT: Final = 4096  # encoded request frames a channel keeps (cleared when full)
URGENT: Final = 0  # relay commands and their read-back, operators' on-demand reads


_scope: contextvars.ContextVar[int] = contextvars.ContextVar("meterd_bus_priority", default=ROUTINE)


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Every transaction made inside (in this task and the tasks it starts) waits for the bus as
    :data:`URGENT`: an operator's on-demand read goes ahead of routine rounds without each layer
    between it and the channel passing a priority along."""
    token = _scope.set(URGENT)
    try:
        yield
    finally:
        _scope.reset(token)


class PriorityLock:
    """A FIFO lock whose waiters with a lower ``priority`` number go first.

    A relay command queued behind a 10,000-meter round is sent at the next transaction boundary,
    not after the round: the bus is handed to the most urgent waiter, oldest first.
    """

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    def locked(self) -> bool:
        return self._locked

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take the lock if it is free and nobody waits (what :meth:`acquire` does first)."""
        if not self._locked and not self._waiters:
            self._locked = True
            return True
        return False

    async def acquire(self, priority: int = ROUTINE) -> None:
        if not self._locked and not self._waiters:
            self._locked = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._waiters, (min(priority, _scope.get()), self._seq, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed the lock as we were cancelled: pass it on
            else:
                self._waiters = [w for w in self._waiters if w[2] is not future]
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # ownership passes straight to the waiter
                return
        self._locked = False


class Channel:
    #: An attempt's bytes may run to this many, or this many seconds after the request, while no
    #: reply is among them; past either it fails as garbled (a babbling meter held the bus for ever).
    #: DL/T 645 and Modbus replies are under 300 bytes; Q/GDW 1376.1 channels allow more.
    max_reply_bytes: int = 16 * 1024
    max_reply_seconds: float = 60.0

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        timing: Timing = Timing(),
        retries: int = 1,
        preamble: int = 4,
        turnaround: float = 0.0,
        trace: TraceHook | None = None,
    ) -> None:
        self.name = name
        self.transport = transport
        self.timing = timing
        self.retries = retries
        self.preamble = PREAMBLE[:preamble]
        self.turnaround = turnaround
        self.trace = trace
        self.stats = ChannelStats()
        self._lock = PriorityLock()
        self._wire: dict[Frame, bytes] = {}  # request frame -> its bytes with this channel's preamble
        self._last_done = 0.0
        self._link_down = False

    @property
    def waiting(self) -> int:
        """Transactions queued for the bus behind the one in flight (for /metrics)."""
        return self._lock.waiting

    async def close(self) -> None:
        await self.transport.close()

    async def transact(self, request: Frame, *, expect_reply: bool = True, priority: int = ROUTINE) -> Frame | None:
        """DL/T 645: send ``request``; return the meter's reply frame (normal or abnormal).

        Raises TransactionError once every attempt failed.  With ``expect_reply=False``
        (broadcasts), the request is only written.
        """
        reply: Frame | None = await self.exchange(request.address, self._wire_of(request), lambda: Dlt645Reply(request),
                                                  request=request, expect_reply=expect_reply, priority=priority)
        return reply

    async def transact_values(self, request: Frame, *, priority: int = ROUTINE) -> Frame | ReadValues:
        """:meth:`transact` of a DL/T 645-2007 read of one identifier that returns the reply
        already decoded, ``(address, di, fields, values)`` of
        :func:`~meterd.protocols.dlt645.fastpath.decode_read_reply`, where the reply is the plain
        case it takes (a normal reply of that identifier from that meter), else the frame; a
        channel with a trace hook always returns the frame (the hook shows it)."""
        values = self.trace is None
        reply: Frame | ReadValues = await self.exchange(
            request.address, self._wire_of(request), lambda: Dlt645Reply(request, values=values),
            request=request, priority=priority)
        return reply

    def _wire_of(self, request: Frame) -> bytes:
        wire = self._wire.get(request)
        if wire is None:  # a round sends the same few requests to the same meters, round after round
            wire = encode_frame(request, preamble=self.preamble)
            if len(self._wire) >= WIRE_FRAMES_KEPT:
                self._wire.clear()
            self._wire[request] = wire
        return wire

    async def exchange(
        self,
        meter: str,
        wire: bytes,
        matcher: Callable[[], ReplyMatcher],
        *,
        request: Any = None,
        expect_reply: bool = True,
        priority: int = ROUTINE,
    ) -> Any:
        """Write ``wire`` to ``meter`` and return what a fresh ``matcher()`` per attempt decodes.

        ``priority`` orders waiting transactions: :data:`URGENT` ones (relay commands) go ahead of
        :data:`ROUTINE` reads still queued on the bus.
        """
        lock = self._lock
        if not lock.try_acquire():  # a free bus is taken without a coroutine (nearly every read)
            await lock.acquire(priority)
        try:
            self.stats.transactions += 1
            last: TransactionError | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.retries += 1
                self.stats.attempts += 1
                try:
                    try:
                        reply = await self._attempt(meter, wire, matcher() if expect_reply else None, request)
                    except (MeterdError, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # nobody translated it: the link is in an unknown state
                        raise self._unexpected(meter, exc) from exc
                except TransactionError as exc:
                    self.stats.failures[exc.kind] += 1
                    last = exc
                    if exc.kind is FailureKind.LINK:
                        await self.transport.close()
                    continue
                finally:
                    self._last_done = time.monotonic()
                if self._link_down:  # a spell of trouble ends with an answer, not with a port that opens
                    log.info("channel %s: link is back", self.name)
                    self._link_down = False
                return reply
            assert last is not None
            raise last
        finally:
            self._lock.release()

    def _unexpected(self, meter: str, exc: Exception) -> TransactionError:
        """An exception from the link (or its matcher) that is none of ours -- an untranslated
        third-party error or a bug -- is a ``link`` failure: counted, retried and reopened like one,
        and logged with its traceback once per spell of trouble."""
        what = describe(exc)
        if not self._link_down:
            log.error("channel %s: link down: unexpected %s", self.name, what, exc_info=exc)
            self._link_down = True
        return TransactionError(FailureKind.LINK, f"unexpected {what}", meter=meter)

    async def _ensure_open(self, meter: str) -> None:
        if self.transport.is_open:
            return
        try:
            await self.transport.open()
        except LinkError as exc:
            if not self._link_down:
                log.warning("channel %s: link down: %s", self.name, exc)
                self._link_down = True
            raise TransactionError(FailureKind.LINK, str(exc), meter=meter) from exc

    async def _attempt(self, meter: str, wire: bytes, matcher: ReplyMatcher | None, request: Any) -> Any:
        if not self.transport.is_open:
            await self._ensure_open(meter)
        if self.turnaround:
            wait = self._last_done + self.turnaround - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        transport = self.transport
        transport.reset_input()
        if self.trace is not None:
            self._emit("tx", wire, request)
        started = time.monotonic()
        try:
            await transport.write(wire)
            if matcher is None:
                return None
            # what came so far, for errors and the trace: the first chunk as it is (nearly every
            # reply is one chunk), a bytearray only once a second one comes
            received: bytes | bytearray = b""
            timeout = self.timing.response
            mismatch: AddressMismatchError | None = None
            while True:
                try:
                    chunk = await transport.read(timeout)
                except LinkTimeoutError:
                    if mismatch is not None:  # only another meter answered
                        raise TransactionError(FailureKind.WRONG_ADDRESS, str(mismatch),
                                               meter=meter, received=bytes(received)) from None
                    if matcher.dropped:
                        kind, what = FailureKind.GARBLED, "no valid reply (corrupt frame dropped)"
                    elif matcher.pending:
                        kind, what = FailureKind.INCOMPLETE, "reply stopped short"
                    else:
                        kind, what = FailureKind.TIMEOUT, "no answer"
                    if received:
                        self._emit("drop", bytes(received), note=f"{kind}: incomplete or corrupt reply")
                    limit = self.timing.inter_byte if received else self.timing.response
                    raise TransactionError(kind, f"{what} within {limit} s",
                                           meter=meter, received=bytes(received)) from None
                if not received:
                    received = chunk if type(chunk) is bytes else bytes(chunk)  # never a transport's own buffer
                else:  # a second chunk or more (not the usual read's path)
                    if type(received) is not bytearray:
                        received = bytearray(received)
                    received += chunk
                    if len(received) > self.max_reply_bytes or time.monotonic() > started + self.max_reply_seconds:
                        self._babbling(meter, received, started)
                timeout = self.timing.inter_byte
                try:
                    reply = matcher.feed(chunk)
                except AddressMismatchError as exc:
                    # Another meter's reply: a late answer to an earlier request (its timeout ran
                    # out while it was on its way) or a meter answering to the wrong address.  Skip
                    # it and keep listening until the response deadline, so one late reply cannot
                    # put every following transaction one reply behind; only if nobody else
                    # answers is the attempt a wrong_address.
                    mismatch = exc
                    reply = self._behind_stray(matcher)
                    if reply is None:
                        self._emit("drop", bytes(received), note=f"skipped: {exc}")
                        received = b""
                        timeout = max(0.0, started + self.timing.response - time.monotonic())
                        continue
                    # the reply came in the same bytes, right behind the other meter's (a DTU's
                    # TCP segment, a read that found both waiting): those bytes hold both
                    self._emit("drop", bytes(received), note=f"skipped: {exc}; the reply followed in these bytes")
                if reply is not None:
                    if self.trace is not None:
                        self._emit("rx", bytes(received), reply)
                    done = time.monotonic()
                    self.stats.record_success(done - started, done)
                    return reply
        except LinkError as exc:
            raise TransactionError(FailureKind.LINK, str(exc), meter=meter) from exc

    def _babbling(self, meter: str, received: bytearray, started: float) -> NoReturn:
        """An attempt whose bytes keep coming, each within the inter-byte timeout, past
        :attr:`max_reply_bytes` or :attr:`max_reply_seconds` with no reply among them (a meter
        babbling on the bus, a DTU echoing noise): without this bound it held the bus for ever
        and kept every byte."""
        took = time.monotonic() - started
        self._emit("drop", bytes(received[:_SHOWN_BYTES]), note="babbling: no reply")
        raise TransactionError(FailureKind.GARBLED, f"{len(received):,} bytes in {took:.1f} s and no reply among them "
                               f"(at most {self.max_reply_bytes:,} bytes or {self.max_reply_seconds:g} s a reply)",
                               meter=meter, received=bytes(received[:_SHOWN_BYTES]))

    @staticmethod
    def _behind_stray(matcher: ReplyMatcher) -> Any | None:
        """The reply among the bytes a matcher already holds behind another meter's reply it
        refused (each refusal consumes that reply), or None: wait for more."""
        while True:
            try:
                return matcher.feed(b"")
            except AddressMismatchError:
                continue  # yet another meter's reply: consumed, look behind it

    def _emit(self, direction: str, data: bytes, frame: Frame | None = None, note: str = "") -> None:
        if self.trace is not None:
            self.trace(TraceEvent(self.name, direction, data, frame, note, time.monotonic()))


class Dlt645Reply:
    """DL/T 645 matcher (2007 and 1997 share the envelope): the first reply frame for the
    request's function; echoed requests and replies to other functions are skipped; a reply from
    another address is an :class:`~meterd.errors.AddressMismatchError` (unless the request was broadcast or wildcarded).

    ``values`` (a DL/T 645-2007 read of one identifier): a whole plain reply of that identifier is
    decoded in one step (:func:`~meterd.protocols.dlt645.fastpath.decode_read_reply`) and returned
    as its values; anything else goes the way above."""

    __slots__ = ("_check_address", "_decoder", "_values_of", "request")

    def __init__(self, request: Frame, *, values: bool = False) -> None:
        self.request = request
        self._decoder: StreamDecoder | None = None  # made when a read is not one whole frame
        self._check_address = request.address != BROADCAST and "A" not in request.address
        # the identifier whose reply may come back as values (a 2007 read of one, nothing more)
        self._values_of = (int.from_bytes(request.data, "little")
                           if values and request.control == Function.READ_DATA and len(request.data) == 4 else None)

    @property
    def decoder(self) -> StreamDecoder:
        if self._decoder is None:
            self._decoder = StreamDecoder()
        return self._decoder

    @property
    def dropped(self) -> int:
        return 0 if self._decoder is None else self._decoder.dropped

    @property
    def pending(self) -> bool:
        return self._decoder is not None and bool(self._decoder.pending)

    def feed(self, data: bytes) -> Frame | ReadValues | None:
        if self._decoder is None:
            # the usual read: the whole reply (after its FE preamble) and nothing else; the stream
            # decoder would find the same frame and be left empty
            if self._values_of is not None:
                got = decode_read_reply(data)
                if got is not None and got[1] == self._values_of:
                    if self._check_address and got[0] != self.request.address:
                        raise AddressMismatchError(self.request.address, got[0])
                    return got
            try:
                frame = decode_frame(data)
            except ProtocolError:
                pass  # anything else: noise, pieces, several frames -- the stream decoder's job
            else:
                return self._match(frame)
        decoder = self.decoder
        decoder.feed(data)
        while (found := decoder.next_frame()) is not None:
            if (reply := self._match(found)) is not None:
                return reply
        return None

    def _match(self, frame: Frame) -> Frame | None:
        if not frame.is_reply or frame.function != self.request.function:
            return None  # our own request echoed by the adapter, or a stray reply
        if self._check_address and frame.address != self.request.address:
            raise AddressMismatchError(self.request.address, frame.address)
        return frame
