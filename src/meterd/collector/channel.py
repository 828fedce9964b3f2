"""A channel owns one link (a half-duplex RS-485 bus, a serial server, a DTU): one request in flight.

``transact`` is the only way bytes reach a meter.  Per attempt it:

1. waits out the bus turnaround after the previous answer, drops stale input,
2. writes the request (with ``FE`` wake-up bytes),
3. reads until a reply frame for the same function arrives: the first byte must come within the
   response timeout, later bytes within the inter-byte timeout.  Echoed request frames (RS-485
   adapters that hear themselves) are skipped.  Noise and bad-checksum frames are dropped by the
   stream decoder and, if nothing good follows, make the attempt ``garbled`` rather than a timeout.
4. checks the replying address.

Timeouts, garbled replies, wrong addresses and link errors are retried up to ``retries`` times;
a meter's abnormal reply is an answer and is returned, never retried.  Each outcome is counted in
:class:`ChannelStats`.  A dead link is reopened on the next transaction; the channel logs once when
its link goes down and once when it comes back.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from meterd.collector.transports.base import Transport
from meterd.errors import LinkError, LinkTimeoutError, MeterdError
from meterd.protocols.dlt645.frame import (
    BROADCAST,
    PREAMBLE,
    Frame,
    StreamDecoder,
    encode_frame,
)

log = logging.getLogger(__name__)


class FailureKind(enum.StrEnum):
    TIMEOUT = "timeout"
    GARBLED = "garbled"
    WRONG_ADDRESS = "wrong_address"
    ABNORMAL = "abnormal"
    LINK = "link"


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
    frame: Frame | None = None
    note: str = ""
    at: float = 0.0


@dataclass(slots=True)
class ChannelStats:
    transactions: int = 0
    successes: int = 0
    attempts: int = 0
    retries: int = 0
    failures: Counter = field(default_factory=Counter)
    latency_total: float = 0.0
    latency_max: float = 0.0

    def record_success(self, latency: float) -> None:
        self.successes += 1
        self.latency_total += latency
        if latency > self.latency_max:
            self.latency_max = latency

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


class Channel:
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
        self._lock = asyncio.Lock()
        self._last_done = 0.0
        self._link_down = False
        self._decoder = StreamDecoder()

    async def close(self) -> None:
        await self.transport.close()

    async def transact(self, request: Frame, *, expect_reply: bool = True) -> Frame | None:
        """Send ``request``; return the meter's reply frame (normal or abnormal).

        Raises TransactionError once every attempt failed.  With ``expect_reply=False``
        (broadcasts), the request is only written.
        """
        wire = encode_frame(request, preamble=self.preamble)
        async with self._lock:
            self.stats.transactions += 1
            last: TransactionError | None = None
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.retries += 1
                self.stats.attempts += 1
                try:
                    reply = await self._attempt(request, wire, expect_reply)
                except TransactionError as exc:
                    self.stats.failures[exc.kind] += 1
                    last = exc
                    if exc.kind is FailureKind.LINK:
                        await self.transport.close()
                    continue
                finally:
                    self._last_done = time.monotonic()
                return reply
            assert last is not None
            raise last

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
        if self._link_down:
            log.info("channel %s: link is back", self.name)
            self._link_down = False

    async def _attempt(self, request: Frame, wire: bytes, expect_reply: bool) -> Frame | None:
        meter = request.address
        await self._ensure_open(meter)
        if self.turnaround:
            wait = self._last_done + self.turnaround - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        transport = self.transport
        transport.reset_input()
        decoder = self._decoder
        decoder.clear()
        dropped_before = decoder.dropped
        self._emit("tx", wire, request)
        started = time.monotonic()
        try:
            await transport.write(wire)
            if not expect_reply:
                return None
            received = bytearray()
            timeout = self.timing.response
            while True:
                try:
                    chunk = await transport.read(timeout)
                except LinkTimeoutError:
                    kind = FailureKind.GARBLED if decoder.dropped > dropped_before else FailureKind.TIMEOUT
                    if received:
                        self._emit("drop", bytes(received), note=f"{kind}: incomplete or corrupt reply")
                    what = "no valid reply" if received else "no answer"
                    raise TransactionError(kind, f"{what} within {self.timing.response} s",
                                           meter=meter, received=bytes(received)) from None
                received += chunk
                timeout = self.timing.inter_byte
                decoder.feed(chunk)
                while (frame := decoder.next_frame()) is not None:
                    if not frame.is_reply:
                        continue  # our own request echoed by the adapter
                    self._emit("rx", bytes(received), frame)
                    if frame.function != request.function:
                        continue
                    if request.address != BROADCAST and "A" not in request.address and frame.address != meter:
                        raise TransactionError(
                            FailureKind.WRONG_ADDRESS, f"reply came from {frame.address}",
                            meter=meter, received=bytes(received))
                    self.stats.record_success(time.monotonic() - started)
                    return frame
        except LinkError as exc:
            raise TransactionError(FailureKind.LINK, str(exc), meter=meter) from exc

    def _emit(self, direction: str, data: bytes, frame: Frame | None = None, note: str = "") -> None:
        if self.trace is not None:
            self.trace(TraceEvent(self.name, direction, data, frame, note, time.monotonic()))
