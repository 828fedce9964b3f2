"""Simulated Q/GDW 1376.1 concentrators (集中器) and special-transformer terminals that dial in to the
master station over TCP, as real GPRS/4G terminals do.

A :class:`ConcentratorSimulator` is the link side of one :class:`~meterd.simulators.gdw_terminal.
Gdw1376Terminal` (the terminal's state: archive, collections, frozen data, events, control turns;
sans-I/O, see that module).  It is the TCP *client*:

1. it connects to ``host:port`` and logs in -- AFN 02 F1, PRM = 1, function 9, CON = 1, PSEQ
   counting up -- and waits ``response_timeout`` for the master's AFN 00 F1 with that sequence
   number; after ``login_attempts`` logins without one it drops the connection;
2. once logged in it heart-beats every ``heartbeat`` seconds (AFN 02 F3 with its clock, the 2013
   form; ``heartbeat_clock=False`` sends the 2009 form without data); ``heartbeat_misses``
   heartbeats in a row without the master's confirmation and it drops the connection;
3. it answers whatever the master asks (:meth:`Gdw1376Terminal.handle`) with the simulated time,
   after ``turnaround`` plus any injected delay;
4. a dropped connection (by the master, by a fault, by :meth:`~ConcentratorSimulator.drop`) is
   dialled again after ``reconnect_delay`` seconds; failed dials and failed logins back off,
   doubling up to ``reconnect_max``, with a little seeded jitter so a fleet does not dial in step.

A ticker runs the terminal's schedule every ``tick`` real seconds: the collection of its meters
(one meter per step, giving the event loop back in between, and one terminal at a time among those
sharing ``collect_lock`` -- a fleet -- so the fleet's collections at the same quarter hour do not
stall the replies).

Faults (:class:`ConcentratorFaults`; settable at any time: ``sim.faults = ConcentratorFaults(...)``),
each a probability per request, drawn in a fixed order from one seeded ``random.Random`` (0 and 1
draw nothing): ``drop`` (abort the connection instead of answering), ``silent`` (no answer),
``deny`` (AFN 00 F2 to everything, nothing done), ``late`` (the reply ``late_by`` seconds late),
``wrong_seq`` (RSEQ one past the request's PSEQ), ``garble`` (the checksum byte spoilt).  Link
events on command: :meth:`~ConcentratorSimulator.drop`, and the terminal losing its supply:
:meth:`~ConcentratorSimulator.power_down` (the connection dies with it, no dialling) and
:meth:`~ConcentratorSimulator.power_up` (the ERC14 record is written, it dials and logs in again,
and its replies carry ACD / EC until the master reads the event).

:func:`run_concentrator_fleet` starts many, sharing one simulated clock; :func:`concentrator_layout`
says who is who (addresses ``RRRR-TTTT``, meters and their pn) without starting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import ClassVar, Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645.frame import normalize_address
from meterd.protocols.gdw1376.catalogue import Heartbeat
from meterd.protocols.gdw1376.frame import (
    PW_LEN,
    Afn,
    Frame,
    PrimaryFunction,
    StreamDecoder,
    TerminalAddress,
    control_byte,
    encode_frame,
    seq_byte,
)
from meterd.protocols.gdw1376.messages import Message, decode_message, encode_message, unit
from meterd.simulators.dialler import Backoff, Dialler
from meterd.simulators.dlt645 import Dlt645Bus, fires
from meterd.simulators.faults import FaultProbabilities
from meterd.simulators.gdw_terminal import DEFAULT_COLLECT, Gdw1376Terminal
from meterd.simulators.lifecycle import DialInTerminal, Link, TerminalFleet
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock

log = logging.getLogger(__name__)

__all__ = [
    "CONCENTRATOR_FAULT_KINDS",
    "DEFAULT_REGION",
    "ConcentratorFaults",
    "ConcentratorFleet",
    "ConcentratorSimulator",
    "ConcentratorStats",
    "concentrator_layout",
    "parse_password",
    "run_concentrator_fleet",
]  # fmt: skip

CONCENTRATOR_FAULT_KINDS: Final = ("drop", "silent", "deny", "late", "wrong_seq", "garble")
DEFAULT_REGION: Final = "4401"
TICK: Final = 1.0
CUT_LINGER: Final = 0.05


def parse_password(text: str) -> bytes:
    """The terminal password PW from 32 hex digits (spaces allowed); ValueError naming the problem."""
    digits = text.replace(" ", "").strip()
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"password {text!r} is not hex digits (PW is {PW_LEN} bytes: 32 hex digits)") from None
    if len(raw) != PW_LEN:
        raise ValueError(f"password {text!r} is {len(raw)} bytes; PW is {PW_LEN} bytes (32 hex digits)")
    return raw


@dataclass(frozen=True, slots=True)
class ConcentratorFaults(FaultProbabilities):
    """Probabilities (0..1) of each link fault per request; ``late_by`` seconds for ``late``.
    One kind: ``ConcentratorFaults.of("wrong_seq")`` (:class:`~meterd.simulators.faults.FaultProbabilities`)."""

    KINDS: ClassVar[tuple[str, ...]] = CONCENTRATOR_FAULT_KINDS
    UNKNOWN_KIND: ClassVar[str] = "unknown concentrator fault"

    drop: float = 0.0
    silent: float = 0.0
    deny: float = 0.0
    late: float = 0.0
    late_by: float = 2.0
    wrong_seq: float = 0.0
    garble: float = 0.0


@dataclass(slots=True)
class ConcentratorStats:
    connections: int = 0
    connect_failures: int = 0
    logins: int = 0  # AFN 02 F1 sent
    logins_confirmed: int = 0
    login_failures: int = 0  # connections given up for want of a login confirmation
    heartbeats: int = 0
    heartbeats_confirmed: int = 0
    heartbeat_drops: int = 0  # connections given up for unconfirmed heartbeats
    requests: int = 0  # request frames from the master
    undecodable: int = 0  # of them, with a data area the codec cannot read (denied)
    replies: int = 0  # frames written
    rx_bytes: int = 0
    tx_bytes: int = 0
    drops: int = 0  # connections aborted by drop(), a fault or a power loss
    closed_by_master: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: getattr(self, k) for k in self.__slots__ if k != "faults"}  # type: ignore[attr-defined]
        out["faults"] = dict(self.faults)
        return out


class _Link(Link):
    """One TCP connection: the task reading it, the login and the confirmations awaited."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.reader_task: asyncio.Task[None] | None = None
        self.logged_in = asyncio.Event()
        self.waiting: dict[int, asyncio.Future[bool]] = {}  # PSEQ -> the master's confirmation


class ConcentratorSimulator(DialInTerminal[_Link]):
    """One terminal dialling ``host:port``.  See the module doc (life cycle, ``drop``, ``send``
    and ``wait_disconnected``: :class:`~meterd.simulators.lifecycle.DialInTerminal`)."""

    def __init__(
        self,
        terminal: Gdw1376Terminal,
        host: str,
        port: int,
        *,
        clock: Callable[[], datetime],
        heartbeat: float | None = 60.0,
        heartbeat_clock: bool = True,
        response_timeout: float = 5.0,
        login_attempts: int = 3,
        heartbeat_misses: int = 3,
        reconnect_delay: float = 1.0,
        reconnect_max: float = 60.0,
        connect_timeout: float = 5.0,
        tick: float | None = TICK,
        turnaround: float = 0.0,
        faults: ConcentratorFaults | None = None,
        seed: int = 0,
        collect_lock: asyncio.Lock | None = None,
    ) -> None:
        who = f"concentrator {terminal.address}"
        if heartbeat is not None and heartbeat <= 0:
            raise ValueError(f"{who}: heartbeat interval {heartbeat} must be > 0 seconds (or None: never)")
        if response_timeout <= 0 or connect_timeout <= 0:
            raise ValueError(f"{who}: timeouts must be > 0 seconds")
        if login_attempts < 1 or heartbeat_misses < 1:
            raise ValueError(f"{who}: login_attempts and heartbeat_misses must be >= 1")
        if not 0 < reconnect_delay <= reconnect_max:
            raise ValueError(f"{who}: reconnect_delay {reconnect_delay} must be > 0 and <= reconnect_max "
                             f"{reconnect_max}")
        if turnaround < 0:
            raise ValueError(f"{who}: turnaround {turnaround} must be >= 0 seconds")
        self.terminal = terminal
        self.host = host
        self.port = port
        self.clock = clock
        self.heartbeat = heartbeat
        self.heartbeat_clock = heartbeat_clock
        self.response_timeout = response_timeout
        self.login_attempts = login_attempts
        self.heartbeat_misses = heartbeat_misses
        self.reconnect_delay = reconnect_delay
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.tick = tick
        self.turnaround = turnaround
        self.faults = faults or ConcentratorFaults()
        self.stats: ConcentratorStats = ConcentratorStats()
        self._rng = random.Random(seed)
        self._pseq = 0
        self._link = None
        self._dialler = Dialler(self, who, log)
        self._dialling = None  # dialling, logging in and heart-beating, for as long as it runs
        self._ticker = None
        self._powered = asyncio.Event()
        self._powered.set()
        self._first_delay = 0.0
        # one collection at a time among the terminals sharing it (a fleet): 500 terminals stepping
        # through their meters side by side would make every I/O wait for a meter of each
        self._collect_lock = collect_lock or asyncio.Lock()

    def __repr__(self) -> str:
        state = "logged in" if self.logged_in else "connected" if self.connected else "down"
        return f"ConcentratorSimulator({self.key} -> {self.host}:{self.port}, {state})"

    @property
    def address(self) -> TerminalAddress:
        return self.terminal.address

    @property
    def key(self) -> str:
        """``RRRR-TTTT``."""
        return self.terminal.address.key

    @property
    def logged_in(self) -> bool:
        link = self._link
        return link is not None and not link.ended.is_set() and link.logged_in.is_set()

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self, delay: float = 0.0) -> None:
        """Start dialling (after ``delay`` seconds) and the schedule; returns at once (see
        :meth:`wait_logged_in`)."""
        self._dialler.closing = False
        self._first_delay = delay
        if self.tick and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"sim-gdw-tick {self.key}")
        if self._dialling is None:
            self._dialling = asyncio.create_task(self._run(), name=f"sim-gdw {self.key}")

    async def wait_logged_in(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a connection is logged in; whether one is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.logged_in:
            left = deadline - loop.time()
            if left <= 0:
                return False
            link = self._link
            if link is None:
                await asyncio.sleep(min(0.01, left))
                continue
            waiter = asyncio.ensure_future(link.logged_in.wait())
            ender = asyncio.ensure_future(link.ended.wait())
            try:
                await asyncio.wait((waiter, ender), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                ender.cancel()
            if link.ended.is_set():
                await asyncio.sleep(min(0.01, max(0.0, deadline - loop.time())))
        return True

    # --- commands --------------------------------------------------------------------------------

    async def power_down(self, *, meters: bool = True) -> None:
        """The terminal (with ``meters``: its whole area) loses its supply: the connection dies,
        nothing is collected or dialled until :meth:`power_up`."""
        self.terminal.power_down(self.clock(), meters=meters)
        self._powered.clear()
        await self.drop()

    async def power_up(self, *, meters: bool = True) -> None:
        """Supply back: ERC14 written, the terminal dials and logs in again."""
        self.terminal.power_up(self.clock(), meters=meters)
        self._powered.set()

    # --- dialling, login, heartbeat --------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.reconnect_delay, self.reconnect_max, self._rng)
        await self._dialler.keep_dialling(self._dial, backoff, gate=self._powered,
                                          first_wait=self._first_delay if self._first_delay > 0 else None)

    async def _dial(self) -> bool:
        """Connect (LinkError if the master cannot be reached) and hold the session; whether it
        logged in."""
        return await self._session(await self._connect())

    async def _connect(self) -> _Link:
        reader, writer = await self._dialler.open()
        link = _Link(reader, writer)
        self._link = link
        link.reader_task = asyncio.create_task(self._serve(link), name=f"sim-gdw-rx {self.key}")
        return link

    def _next_pseq(self) -> int:
        self._pseq = (self._pseq + 1) & 0x0F
        return self._pseq

    def _link_frame(self, fn: int, value: object = None) -> tuple[int, bytes]:
        """AFN 02 Fn from the terminal (PRM = 1, function 9, CON = 1): (its PSEQ, its bytes)."""
        pseq = self._next_pseq()
        ec = self.terminal.pending_ec
        msg = Message(self.address, Afn.LINK, (unit(0, fn, value),),
                      control_byte(uplink=True, prm=True, function=PrimaryFunction.LINK_TEST, fcb_acd=ec is not None),
                      seq_byte(pseq, con=True), None, ec)
        return pseq, encode_frame(encode_message(msg))

    async def _confirmed(self, link: _Link, fn: int, value: object = None) -> bool:
        """Send AFN 02 Fn and wait for the master's AFN 00 F1 (False: denied, no answer, link gone)."""
        pseq, raw = self._link_frame(fn, value)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        link.waiting[pseq] = waiter
        ender = asyncio.ensure_future(link.ended.wait())
        try:
            await self._write(link, raw)
            await asyncio.wait((waiter, ender), timeout=self.response_timeout, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, OSError):
            return False
        finally:
            ender.cancel()
            link.waiting.pop(pseq, None)
        return waiter.done() and not waiter.cancelled() and waiter.result()

    async def _session(self, link: _Link) -> bool:
        """Log in, then heart-beat until the link ends; whether the login was confirmed."""
        logged = False
        try:
            for _ in range(self.login_attempts):
                self.stats.logins += 1
                if await self._confirmed(link, 1):
                    logged = True
                    break
                if link.ended.is_set():
                    break
            if not logged:
                if not link.ended.is_set():
                    self.stats.login_failures += 1
                    log.debug("concentrator %s: login not confirmed; dropping the connection", self.key)
                return False
            self.stats.logins_confirmed += 1
            link.logged_in.set()
            misses = 0
            while not link.ended.is_set():
                if self.heartbeat is None:
                    await link.ended.wait()
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.ended.wait(), self.heartbeat)
                if link.ended.is_set():
                    break
                self.stats.heartbeats += 1
                clock = self.terminal.clock(self.clock()).replace(microsecond=0)
                if await self._confirmed(link, 3, Heartbeat(clock) if self.heartbeat_clock else None):
                    self.stats.heartbeats_confirmed += 1
                    misses = 0
                elif not link.ended.is_set():
                    misses += 1
                    if misses >= self.heartbeat_misses:
                        self.stats.heartbeat_drops += 1
                        log.debug("concentrator %s: %d heartbeats unconfirmed; dropping the connection", self.key,
                                  misses)
                        break
            return logged
        finally:
            if not link.ended.is_set():
                link.dropped = True
                await self._end(abort=True, link=link)

    async def _end(self, *, abort: bool, link: _Link | None = None) -> None:
        link = link or self._link
        if link is None:
            return
        if self._link is link:
            self._link = None
        link.dropped = link.dropped or abort
        if abort:
            link.writer.transport.abort()
        else:
            link.writer.close()
        task = link.reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.writer.wait_closed(), 1.0)
        for waiter in link.waiting.values():
            if not waiter.done():
                waiter.set_result(False)
        link.ended.set()

    # --- answering -------------------------------------------------------------------------------

    async def _serve(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        decoder = StreamDecoder()
        by_master = False
        try:
            while data := await link.reader.read(4096):
                received = loop.time()
                self.stats.rx_bytes += len(data)
                decoder.feed(data)
                for frame in decoder.frames():
                    if frame.is_uplink or frame.address.key != self.key:
                        continue
                    if not frame.prm:
                        self._confirmation(link, frame)
                        continue
                    if not await self._request(link, frame, received):
                        return
            by_master = True
        except (ConnectionError, OSError):
            by_master = not link.dropped
        finally:
            self._dialler.master_closed(by_master, link.dropped)
            if not link.writer.transport.is_closing():
                link.writer.transport.abort()
            for waiter in link.waiting.values():
                if not waiter.done():
                    waiter.set_result(False)
            if self._link is link:
                self._link = None
            link.ended.set()

    def _confirmation(self, link: _Link, frame: Frame) -> None:
        """The master's AFN 00 answering our login or heartbeat."""
        if frame.afn != Afn.CONFIRM:
            return
        waiter = link.waiting.get(frame.seq_number)
        if waiter is None or waiter.done():
            return
        try:
            fns = {fn for _, fn, _ in decode_message(frame).items()}
        except ProtocolError:
            return
        waiter.set_result(1 in fns)

    async def _request(self, link: _Link, frame: Frame, received: float) -> bool:
        """Answer one request; False when the connection was dropped on purpose."""
        self.stats.requests += 1
        f = self.faults
        if fires(self._rng, f.drop):
            self.stats.faults["drop"] += 1
            self.stats.drops += 1
            link.dropped = True
            link.writer.transport.abort()
            return False
        if fires(self._rng, f.silent):
            self.stats.faults["silent"] += 1
            return True
        try:
            msg = decode_message(frame)
        except ProtocolError:
            self.stats.undecodable += 1
            msg = Message(frame.address, frame.afn, (), frame.control, frame.seq, frame.pw, None, frame.tp,
                          frame.protocol)
            replies = [self.terminal.deny(msg)] if self.terminal.powered else []
        else:
            if fires(self._rng, f.deny):
                self.stats.faults["deny"] += 1
                replies = [self.terminal.deny(msg)] if self.terminal.powered else []
            else:
                try:
                    replies = self.terminal.handle(msg, self.clock())
                except Exception:  # a simulator bug is logged; the terminal stays up
                    log.exception("concentrator %s: failed on request %s", self.key, encode_frame(frame).hex(" "))
                    replies = []
        delay = self.turnaround
        if replies and fires(self._rng, f.late):
            self.stats.faults["late"] += 1
            delay += f.late_by
        wait = received + delay - asyncio.get_running_loop().time()
        if replies and wait > 0:
            await asyncio.sleep(wait)
        for reply in replies:
            if fires(self._rng, f.wrong_seq):
                self.stats.faults["wrong_seq"] += 1
                reply = replace(reply, seq=(reply.seq & 0xF0) | ((reply.seq + 1) & 0x0F))
            raw = encode_frame(reply)
            if fires(self._rng, f.garble):
                self.stats.faults["garble"] += 1
                raw = raw[:-2] + bytes((raw[-2] ^ 0x5A,)) + raw[-1:]
            link.writer.write(raw)
            self.stats.tx_bytes += len(raw)
            self.stats.replies += 1
        transport = link.writer.transport
        if replies and (transport.get_write_buffer_size() or transport.is_closing()):
            await link.writer.drain()
        return True

    async def _tick(self) -> None:
        assert self.tick
        while True:
            await asyncio.sleep(self.tick)
            try:
                async with self._collect_lock:
                    steps = self.terminal.start_collection(self.clock())
                    if steps is not None:
                        for _ in steps:
                            await asyncio.sleep(0)
            except Exception:
                log.exception("concentrator %s: the collection failed", self.key)


# --- fleets -----------------------------------------------------------------------------------------


def concentrator_layout(n: int, meters: int, *, first_address: str | int = "000000000001", region: str = DEFAULT_REGION,
                        first_terminal: int = 1) -> dict[str, list[tuple[str, int]]]:
    """``RRRR-TTTT`` -> its meters as (address, pn): terminal addresses A2 from ``first_terminal``,
    meter addresses on from ``first_address`` across the terminals in order, pn 1..``meters``."""
    if n < 1 or meters < 1:
        raise ValueError("a concentrator fleet needs at least one concentrator with at least one meter")
    if first_terminal < 1 or first_terminal + n - 1 > 0xFFFF:
        raise ValueError(f"{n} concentrators from terminal address {first_terminal} run past FFFF (A2)")
    first = int(normalize_address(first_address))
    if first + n * meters > 10**12:
        raise ValueError(f"{n * meters} meters from {first_address} run past 999999999999")
    out: dict[str, list[tuple[str, int]]] = {}
    for c in range(n):
        key = TerminalAddress(region, first_terminal + c).key
        out[key] = [(f"{first + c * meters + i:012d}", i + 1) for i in range(meters)]
    return out


@dataclass(slots=True)
class ConcentratorFleet(TerminalFleet):
    """Running concentrators; ``meters`` maps ``RRRR-TTTT`` to its meters as (address, pn)."""

    concentrators: list[ConcentratorSimulator]
    clock: Callable[[], datetime]
    meters: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def concentrator(self, key: str) -> ConcentratorSimulator:
        for c in self.concentrators:
            if c.key == key:
                return c
        raise KeyError(f"no simulated concentrator {key!r}")

    async def wait_logged_in(self, timeout: float) -> bool:
        results = await asyncio.gather(*(c.wait_logged_in(timeout) for c in self.concentrators))
        return all(results)

    def _members(self) -> list[ConcentratorSimulator]:
        return self.concentrators


def build_concentrators(
    layout: dict[str, list[tuple[str, int]]],
    host: str,
    port: int,
    *,
    clock: Callable[[], datetime],
    password: bytes = bytes(PW_LEN),
    kind: str = "concentrator",
    heartbeat: float | None = 60.0,
    collect_interval: timedelta = DEFAULT_COLLECT,
    reconnect_delay: float = 1.0,
    turnaround: float = 0.0,
    seed: int = 0,
    tick: float | None = TICK,
) -> list[ConcentratorSimulator]:
    """Simulators (not started) for ``layout`` (:func:`concentrator_layout`), their meters made as
    the DTU fleets make theirs (seeded by position), starting at ``clock()``."""
    begin = clock()
    out = []
    index = 0
    lock = asyncio.Lock()
    for c, (key, meters) in enumerate(layout.items()):
        models = []
        for address, _ in meters:
            models.append(MeterModel(address, start=begin, seed=seed * 1_000_003 + 500_000 + index))
            index += 1
        bus = Dlt645Bus(models, seed=seed * 7919 + 100_000 + c)
        region, a2 = key.split("-")
        terminal = Gdw1376Terminal(TerminalAddress(region, int(a2, 16)), bus, start=begin, kind=kind,
                                   password=password, collect_interval=collect_interval)
        out.append(ConcentratorSimulator(terminal, host, port, clock=clock, heartbeat=heartbeat,
                                         reconnect_delay=reconnect_delay, reconnect_max=max(60.0, reconnect_delay),
                                         turnaround=turnaround, seed=seed * 31 + c, tick=tick, collect_lock=lock))
    return out


async def run_concentrator_fleet(
    n: int,
    meters_per_concentrator: int,
    host: str,
    port: int,
    *,
    region: str = DEFAULT_REGION,
    first_address: str | int = "000000000001",
    password: bytes = bytes(PW_LEN),
    kind: str = "concentrator",
    heartbeat: float | None = 60.0,
    collect_interval: timedelta = DEFAULT_COLLECT,
    speed: float = 1.0,
    start: datetime | None = None,
    seed: int = 0,
    reconnect_delay: float = 1.0,
    tick: float | None = TICK,
) -> ConcentratorFleet:
    """Start ``n`` concentrators with ``meters_per_concentrator`` meters each, dialling ``host:port``
    (they keep dialling until the master answers; see :meth:`ConcentratorFleet.wait_logged_in`).
    The caller closes the returned fleet."""
    layout = concentrator_layout(n, meters_per_concentrator, first_address=first_address, region=region)
    clock = SimClock.starting(start, speed)
    sims = build_concentrators(layout, host, port, clock=clock, password=password, kind=kind, heartbeat=heartbeat,
                               collect_interval=collect_interval, reconnect_delay=reconnect_delay, seed=seed, tick=tick)
    fleet = ConcentratorFleet(sims, clock, layout)
    spread = min(1.0, 0.002 * n)
    rng = random.Random(seed)
    for sim in sims:
        await sim.start(rng.random() * spread)
    return fleet
