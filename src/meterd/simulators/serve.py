"""Serving a simulated bus: over a real pseudo-terminal with RS-485 wire timing, or over TCP.

Strategy
--------
A bus is a :class:`~meterd.simulators.dlt645.Dlt645Bus` or a
:class:`~meterd.simulators.modbus.ModbusBus`.  Both links feed received bytes into the bus's
stream decoder -- for DL/T 645 a :class:`~meterd.protocols.dlt645.frame.StreamDecoder` (so ``FE``
preambles, noise and split writes are handled by the real codec), for Modbus the one
``ModbusBus.decoder()`` makes (RTU or MBAP, pymodbus' framer) -- and hand each whole frame to the
bus with the simulated time ``clock()``: ``Dlt645Bus.handle``, or ``await ModbusBus.handle_async``.
On a pty a pause between bytes longer than the inter-frame gap tells an RTU decoder that the
line went idle, so a cut request never swallows the next one.

*Pseudo-terminal* (:func:`serve_pty`): ``os.openpty()``; the slave side is put in raw mode and
its path (``/dev/pts/N``) is what the master opens with pyserial -- to the master it is a real
serial device.  The simulator keeps the slave open for its whole life (so the master side never
sees a hang-up between the master's opens) and reads and writes the master fd with
``loop.add_reader``.  A pty delivers bytes instantly; with ``wire_time=True`` the link puts the
wire back: a byte takes ``1 start + bytesize + parity + stop`` bits at ``baud``.  A request
counts as complete no earlier than its first byte's arrival plus its own wire time; the reply
starts ``turnaround`` (meter processing, 20 ms by default) plus any injected delay after that,
never while an earlier reply is still on the wire, and is written in pieces of about 16 ms of wire
time (:data:`PACE_CHUNK_SECONDS`, as a USB adapter's latency timer hands bytes over), each no
earlier than the moment its last bit would have left a real UART.  The pieces are written from
timer callbacks (:class:`_Pacer`), not a task that sleeps between them, and one task per event
loop keeps every slave parked (:class:`_TermiosGuard`): 256 buses in one process used to be
5,120 task wake-ups a second for the guards alone.  The line settings are the
simulator's own (2400 8E1 by default for DL/T 645, 9600 8N1 for Modbus RTU); what the master sets
on the pty is not checked (a pty has no parity and no baud rate; see :data:`PARKED_SPEED` for why
``stty`` shows 50 baud).

*TCP* (:func:`serve_tcp`): an asyncio server, as a serial server or transparent DTU would be;
every connection reaches the same meters; replies after ``turnaround`` (0 by default) plus any
injected delay; no wire pacing.

Time: ``clock`` returns the simulated time (naive, meter-local).  :class:`SimClock` builds one
from the monotonic clock with a ``speed`` factor (``speed=60``: one real second is a simulated
minute).  A ticker advances every meter once per ``tick`` real seconds so that a meter nobody
reads does not build up a long catch-up for its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import termios
import time
import tty
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Final, Protocol, Self

from meterd.clock import CST, Clock
from meterd.errors import LinkError
from meterd.protocols.dlt645.frame import Frame, StreamDecoder, encode_frame
from meterd.simulators.dlt645 import Dlt645Bus, Reply
from meterd.simulators.modbus import DEFAULT_BAUD as MODBUS_BAUD
from meterd.simulators.modbus import DEFAULT_PARITY as MODBUS_PARITY
from meterd.simulators.modbus import ModbusBus

log = logging.getLogger(__name__)


DEFAULT_PTY_TURNAROUND: Final = 0.020
DLT645_BAUD: Final = 2400  # DL/T 645 pty line: 2400 8E1
DLT645_PARITY: Final = "E"
# a paced reply reaches the master in pieces of about this much wire time, as a USB RS-485 adapter
# hands received bytes over when its latency timer runs out (FTDI's default: 16 ms)
PACE_CHUNK_SECONDS: Final = 0.016
WRITE_STALL_LIMIT: Final = 2.0  # give up on a reply nobody reads (pty buffer full) after this


@dataclass(frozen=True, slots=True)
class SimClock:
    """Simulated time: ``start`` plus real (monotonic) time elapsed since creation x ``speed``."""

    start: datetime
    speed: float = 1.0
    origin: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"clock speed {self.speed} must be > 0")
        if self.start.tzinfo is not None:
            raise ValueError("simulated clock start must be a naive meter-local time")

    @classmethod
    def starting(cls, start: datetime | None = None, speed: float = 1.0) -> SimClock:
        """A clock starting at ``start`` (default: now in China Standard Time, the meters' local
        time, to the second)."""
        if start is None:
            start = datetime.now(CST).replace(tzinfo=None)
        return cls(start.replace(microsecond=0), speed)

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.origin) * self.speed)


@dataclass(frozen=True, slots=True)
class LineSettings:
    """Asynchronous serial character framing."""

    baud: int = 2400
    bytesize: int = 8
    parity: str = "E"
    stopbits: float = 1

    def __post_init__(self) -> None:
        if self.baud <= 0:
            raise ValueError(f"baud {self.baud} must be > 0")
        if self.bytesize not in (5, 6, 7, 8):
            raise ValueError(f"bytesize {self.bytesize} must be 5..8")
        if self.parity not in ("N", "E", "O", "M", "S"):
            raise ValueError(f"parity {self.parity!r} must be one of N E O M S")
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits {self.stopbits} must be 1, 1.5 or 2")

    @property
    def bits_per_byte(self) -> float:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def byte_time(self) -> float:
        return self.bits_per_byte / self.baud

    def wire_time(self, nbytes: int) -> float:
        return nbytes * self.byte_time

    def __str__(self) -> str:
        return f"{self.baud} {self.bytesize}{self.parity}{self.stopbits:g}"


@dataclass(slots=True)
class LinkStats:
    """Counters of one served link.  ``faults`` is the bus's own counter of injected faults."""

    requests: int = 0  # frames decoded from the link
    replies: int = 0  # replies written
    rx_bytes: int = 0
    tx_bytes: int = 0
    dropped: int = 0  # corrupt frames the decoder threw away
    tx_abandoned: int = 0  # reply bytes nobody read (pty buffer stayed full)
    connections: int = 0  # TCP connections accepted so far
    faults: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "replies": self.replies,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "dropped": self.dropped,
            "tx_abandoned": self.tx_abandoned,
            "connections": self.connections,
            "faults": dict(self.faults),
        }


SimBus = Dlt645Bus | ModbusBus
Request = Frame | bytes  # a decoded DL/T 645 frame, or a whole Modbus ADU


class LinkDecoder(Protocol):
    """What a link needs of a bus's stream decoder."""

    dropped: int

    def feed(self, data: bytes) -> None: ...

    def frames(self) -> Iterator[Request]: ...

    @property
    def pending(self) -> bytes: ...


def _decoder(bus: SimBus) -> LinkDecoder:
    """A fresh stream decoder for one link of ``bus``."""
    if isinstance(bus, ModbusBus):
        return bus.decoder()
    return StreamDecoder()  # type: ignore[return-value]


def _line_defaults(bus: SimBus) -> tuple[int, str]:
    return (MODBUS_BAUD, MODBUS_PARITY) if isinstance(bus, ModbusBus) else (DLT645_BAUD, DLT645_PARITY)


class RunningBus:
    """A bus being served.  ``endpoint`` is the pty device path or ``"host:port"``."""

    def __init__(
        self,
        kind: str,
        endpoint: str,
        bus: SimBus,
        stats: LinkStats,
        closer: Callable[[], Awaitable[None]],
        line: LineSettings | None = None,
        wire_time: bool = False,
        turnaround: float = 0.0,
    ) -> None:
        self.kind = kind
        self.endpoint = endpoint
        self.bus = bus
        self.stats = stats
        self.line = line
        self.wire_time = wire_time
        self.turnaround = turnaround
        self._closer: Callable[[], Awaitable[None]] | None = closer

    @property
    def meters(self) -> list[str]:
        return self.bus.addresses

    @property
    def closed(self) -> bool:
        return self._closer is None

    async def close(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None:
            await closer()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"RunningBus({self.kind} {self.endpoint}, meters={self.meters})"


async def _handle(bus: SimBus, request: Request, clock: Clock, endpoint: str) -> list[Reply]:
    """The bus's handler that never takes the link down: a simulator bug is logged with the request."""
    try:
        if isinstance(bus, ModbusBus):
            assert not isinstance(request, Frame)
            return await bus.handle_async(request, clock())
        return bus.handle(request, clock())
    except Exception:
        raw = encode_frame(request) if isinstance(request, Frame) else bytes(request)
        log.exception("simulated bus %s failed on request %s", endpoint, raw.hex(" ").upper())
        return []


async def _ticker(bus: SimBus, clock: Clock, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            bus.advance(clock())
        except Exception:
            log.exception("advancing the meters of %s failed", bus.addresses)


async def _cancel(tasks: Collection[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


# --- pseudo-terminal -----------------------------------------------------------------------------

# A pty keeps no parity: it clears PARENB from every tcsetattr.  When that is the *only* change a
# master asks for -- pyserial reopening a pty at the same 8E1 it set last time -- Linux/glibc answer
# EINVAL (pyserial/pyserial#196), so the second open of the device fails.  The link therefore keeps
# the slave "parked" at an otherwise unused speed: every open then changes the speed too and
# succeeds.  A pty has no UART, so the speed a pty claims changes nothing about its bytes.
PARKED_SPEED: Final = termios.B50
TERMIOS_GUARD_PERIOD: Final = 0.05


def _park(fd: int) -> None:
    try:
        attrs = termios.tcgetattr(fd)
        if attrs[4] != PARKED_SPEED or attrs[5] != PARKED_SPEED:
            attrs[4] = attrs[5] = PARKED_SPEED
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass  # never let the workaround break the link


def _configure_slave(fd: int) -> None:
    """Raw mode (no echo, no CR/LF mapping, no XON/XOFF, no signals), 8 data bits, parked speed."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[2] = (attrs[2] & ~termios.CSIZE) | termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[4] = attrs[5] = PARKED_SPEED
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class _TermiosGuard:
    """Parks every pty slave served on one event loop, each :data:`TERMIOS_GUARD_PERIOD`: one task
    for them all (a task per pty made 256 ptys 5,120 wake-ups a second)."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TermiosGuard]] = (
        weakref.WeakKeyDictionary())

    def __init__(self) -> None:
        self.fds: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def add(cls, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        guard = cls._by_loop.get(loop)
        if guard is None:
            guard = cls._by_loop[loop] = cls()
        guard.fds.add(fd)
        if guard.task is None or guard.task.done():
            guard.task = loop.create_task(guard.run(), name="sim-termios")

    @classmethod
    async def remove(cls, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        guard = cls._by_loop.get(loop)
        if guard is None:
            return
        guard.fds.discard(fd)
        if not guard.fds and guard.task is not None:
            task, guard.task = guard.task, None
            await _cancel([task])

    async def run(self) -> None:
        while self.fds:
            for fd in list(self.fds):
                _park(fd)
            await asyncio.sleep(TERMIOS_GUARD_PERIOD)


class _PtyLink:
    def __init__(
        self,
        bus: SimBus,
        fd: int,
        slave_fd: int,
        line: LineSettings,
        wire_time: bool,
        turnaround: float,
        clock: Clock,
        stats: LinkStats,
    ) -> None:
        self.bus, self.fd, self.slave_fd, self.line, self.wire_time = bus, fd, slave_fd, line, wire_time
        self.name = os.ttyname(slave_fd)
        self.turnaround, self.clock, self.stats = turnaround, clock, stats
        self.loop = asyncio.get_running_loop()
        self.decoder = _decoder(bus)
        self.idle: Callable[[], None] | None = getattr(self.decoder, "idle", None)
        self.queue: asyncio.Queue[tuple[Request, float, int, float]] = asyncio.Queue()
        # a pause longer than this between reads starts a new request (inter-frame gap)
        self.gap = max(0.05, 10 * line.byte_time) if wire_time else 0.05
        self.burst_start = 0.0
        self.burst_bytes = 0
        self.last_rx = float("-inf")
        self.line_free = 0.0

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO while no process has the slave open: nothing to read
            return
        if not data:
            return
        _park(self.slave_fd)  # a master is here and has configured the line: park again at once
        now = self.loop.time()
        if now - self.last_rx > self.gap:
            self.burst_start, self.burst_bytes = now, 0
            if self.idle is not None:
                self.idle()  # RTU: the silence ended whatever frame was buffered
        self.last_rx = now
        self.burst_bytes += len(data)
        self.stats.rx_bytes += len(data)
        self.decoder.feed(data)
        for frame in self.decoder.frames():
            self.queue.put_nowait((frame, self.burst_start, self.burst_bytes, now))
            self.burst_start, self.burst_bytes = now, len(self.decoder.pending)
        self.stats.dropped = self.decoder.dropped

    async def worker(self) -> None:
        while True:
            frame, first_rx, nbytes, last_rx = await self.queue.get()
            self.stats.requests += 1
            replies = await _handle(self.bus, frame, self.clock, self.name)
            request_end = max(last_rx, first_rx + self.line.wire_time(nbytes)) if self.wire_time else last_rx
            for reply in replies:
                begin = max(request_end + self.turnaround + reply.delay, self.line_free)
                await self._transmit(reply.data, begin)
                self.stats.replies += 1

    async def _transmit(self, data: bytes, begin: float) -> None:
        if not self.wire_time:
            await _sleep_until(self.loop, begin)
            await self._write(data)
            self.line_free = self.loop.time()
            return
        bt = self.line.byte_time
        pacer = _Pacer(self, data, begin, max(1, int(PACE_CHUNK_SECONDS / bt)))
        try:
            await pacer.done
        finally:
            pacer.cancel()
        self.line_free = max(self.loop.time(), begin + len(data) * bt)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = self.loop.time() + WRITE_STALL_LIMIT
        while view:
            try:
                n = os.write(self.fd, view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                raise LinkError(f"pty write failed: {exc}") from exc
            self.stats.tx_bytes += n
            view = view[n:]
            if view:
                if self.loop.time() > deadline:
                    self.stats.tx_abandoned += len(view)
                    return
                await asyncio.sleep(0.005)


class _Pacer:
    """One reply written at wire speed from timer callbacks: each piece of ``chunk`` bytes when its
    last bit would have left a real UART (a task woken per piece cost twice the loop's work).  A
    piece the pty does not take (nobody reads the master side) is tried again every 5 ms, and
    abandoned after :data:`WRITE_STALL_LIMIT`."""

    __slots__ = ("begin", "bt", "chunk", "data", "done", "handle", "link", "sent", "stalled")

    def __init__(self, link: _PtyLink, data: bytes, begin: float, chunk: int) -> None:
        self.link, self.data, self.begin, self.chunk = link, data, begin, chunk
        self.bt = link.line.byte_time
        self.sent = 0
        self.stalled = 0.0  # when the pty stopped taking bytes; 0: it takes them
        self.done: asyncio.Future[None] = link.loop.create_future()
        self.handle: asyncio.TimerHandle | None = link.loop.call_at(self._due(), self._step)

    def _due(self) -> float:
        return self.begin + min(len(self.data), self.sent + self.chunk) * self.bt

    def _step(self) -> None:
        self.handle = None
        link = self.link
        end = min(len(self.data), self.sent + self.chunk)
        try:
            n = os.write(link.fd, self.data[self.sent : end])
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            if not self.done.done():
                self.done.set_exception(LinkError(f"pty write failed: {exc}"))
            return
        link.stats.tx_bytes += n
        self.sent += n
        now = link.loop.time()
        if self.sent >= len(self.data):
            if not self.done.done():
                self.done.set_result(None)
        elif self.sent < end:  # the pty's buffer is full
            self.stalled = self.stalled or now
            if now - self.stalled > WRITE_STALL_LIMIT:
                link.stats.tx_abandoned += len(self.data) - self.sent
                if not self.done.done():
                    self.done.set_result(None)
            else:
                self.handle = link.loop.call_later(0.005, self._step)
        else:
            self.stalled = 0.0
            self.handle = link.loop.call_at(self._due(), self._step)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def serve_pty(
    bus: SimBus,
    *,
    baud: int | None = None,
    bytesize: int = 8,
    parity: str | None = None,
    stopbits: float = 1,
    wire_time: bool = True,
    turnaround: float = DEFAULT_PTY_TURNAROUND,
    clock: Clock | None = None,
    tick: float = 1.0,
) -> RunningBus:
    """Serve ``bus`` on a new pseudo-terminal; the master opens ``RunningBus.endpoint``.

    ``baud``/``parity`` default to the bus's usual line: 2400 8E1 for DL/T 645, 9600 8N1 for Modbus.
    """
    default_baud, default_parity = _line_defaults(bus)
    line = LineSettings(
        default_baud if baud is None else baud, bytesize, (default_parity if parity is None else parity).upper(), stopbits
    )
    if turnaround < 0:
        raise ValueError(f"turnaround {turnaround} must be >= 0 seconds")
    clock = clock or SimClock.starting()
    try:
        master_fd, slave_fd = os.openpty()
    except OSError as exc:
        raise LinkError(f"cannot open a pseudo-terminal: {exc}") from exc
    try:
        _configure_slave(slave_fd)
        path = os.ttyname(slave_fd)
        os.set_blocking(master_fd, False)
    except OSError as exc:
        os.close(master_fd)
        os.close(slave_fd)
        raise LinkError(f"cannot configure the pseudo-terminal: {exc}") from exc
    stats = LinkStats(faults=bus.stats.faults)
    link = _PtyLink(bus, master_fd, slave_fd, line, wire_time, turnaround, clock, stats)
    loop = asyncio.get_running_loop()
    loop.add_reader(master_fd, link.on_readable)
    tasks = [
        asyncio.create_task(link.worker(), name=f"sim-pty {path}"),
        asyncio.create_task(_ticker(bus, clock, tick), name=f"sim-tick {path}"),
    ]
    _TermiosGuard.add(loop, slave_fd)

    async def close() -> None:
        loop.remove_reader(master_fd)
        await _TermiosGuard.remove(loop, slave_fd)
        await _cancel(tasks)
        os.close(master_fd)
        os.close(slave_fd)

    return RunningBus("pty", path, bus, stats, close, line=line, wire_time=wire_time, turnaround=turnaround)


# --- TCP -----------------------------------------------------------------------------------------


async def serve_tcp(
    bus: SimBus,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    turnaround: float = 0.0,
    clock: Clock | None = None,
    tick: float = 1.0,
) -> RunningBus:
    """Serve ``bus`` on a TCP port (0 = a free one), like a serial server / transparent DTU.

    A :class:`ModbusBus` speaks its own framing there: Modbus TCP (MBAP) or RTU over TCP.
    """
    if turnaround < 0:
        raise ValueError(f"turnaround {turnaround} must be >= 0 seconds")
    clock = clock or SimClock.starting()
    stats = LinkStats(faults=bus.stats.faults)
    connections: set[asyncio.Task[None]] = set()
    closing = False
    loop = asyncio.get_running_loop()

    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)  # type: ignore[arg-type]
        stats.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = _decoder(bus)
        peer = str(writer.get_extra_info("peername"))
        try:
            while data := await reader.read(4096):
                received = loop.time()
                stats.rx_bytes += len(data)
                decoder.feed(data)
                for frame in decoder.frames():
                    stats.requests += 1
                    for reply in await _handle(bus, frame, clock, peer):
                        await _sleep_until(loop, received + turnaround + reply.delay)
                        writer.write(reply.data)
                        await writer.drain()
                        stats.tx_bytes += len(reply.data)
                        stats.replies += 1
                stats.dropped = decoder.dropped
        except (ConnectionError, OSError):
            pass  # the master went away; that is its business
        except asyncio.CancelledError:
            # close() cancelled us: end normally, as asyncio (3.11) logs a cancelled
            # client_connected_cb task as an error ("Exception in callback ...")
            if not closing:
                raise
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                connections.discard(task)  # type: ignore[arg-type]

    try:
        server = await asyncio.start_server(serve_connection, host, port)
    except OSError as exc:
        raise LinkError(f"cannot listen on {host}:{port}: {exc}") from exc
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    endpoint = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
    ticker = asyncio.create_task(_ticker(bus, clock, tick), name=f"sim-tick {endpoint}")

    async def close() -> None:
        nonlocal closing
        closing = True
        server.close()
        await _cancel([ticker, *connections])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    return RunningBus("tcp", endpoint, bus, stats, close, turnaround=turnaround)
