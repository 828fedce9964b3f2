"""Simulated GPRS/4G DTUs: each dials the master, registers, heart-beats, and carries meter frames
to a simulated bus behind it.

A :class:`DtuSimulator` is the TCP *client* side of a transparent DTU: it connects to the master's
DTU listener, sends its registration packet, sends a heartbeat every ``heartbeat`` seconds, and
feeds whatever the master sends into the bus's stream decoder (the real DL/T 645
:class:`~meterd.protocols.dlt645.frame.StreamDecoder`, or the Modbus bus's own RTU/MBAP decoder);
each whole request goes to the sans-I/O bus (``Dlt645Bus.handle`` / ``ModbusBus.handle_async``)
with the simulated time, and the replies are written back after ``turnaround`` plus any injected
delay.  The bus sees exactly what it would see on a serial server.

Faults of the link itself, on command: :meth:`~DtuSimulator.drop` (coverage lost: the TCP
connection is aborted), :meth:`~DtuSimulator.reconnect`, :meth:`~DtuSimulator.cut_next_reply`
(the next reply stops after a few bytes and the connection drops -- a drop mid-frame),
:meth:`~DtuSimulator.stop_heartbeat` / :meth:`~DtuSimulator.resume_heartbeat`, ``answering =
False`` (the DTU is up but the bus behind it is silent), ``registration=`` (any bytes instead of
the registration packet: garbage, oversized), ``register=False`` plus :meth:`~DtuSimulator.send`
(data before registering).  With ``reconnect_delay`` set, the DTU dials again by itself that many
seconds after losing its connection, like a real DTU.

How the DTU is set up, as on the vendors' configuration pages (``docs/dtu.md``):

* ``register`` -- send the registration when the connection is made ("connect with" / 连接发送);
* ``with_data`` -- put the registration in front of every reply ("with data" / 数据携带; both
  together is the vendors' "both"); ``split_prefix`` writes each such packet in two writes cut
  inside the registration, so the master may get it in two reads; ``reply_packets`` cuts each
  reply into that many packets (a DTU's packing interval shorter than a slow meter's byte gaps),
  each with its own registration, all in one write (TCP merged them: the master gets one read);
* ``heartbeat_is_registration`` -- the heartbeat content is the registration content (a DTU left
  with the same text in both: its first packet registers it, the rest are heartbeats);
* ``heartbeat_with_registration`` -- the first heartbeat goes out in the same write as the
  registration (a DTU that beats at once, or a master that accepted late: one read holds both);
  ``after_registration`` -- any bytes in that same write (meter data behind the registration).

Registration and heartbeat packets: the formats are built here again, from their description in
:mod:`meterd.protocols.terminal.dtu` (on purpose not with that codec, which the master uses: the
simulator and the master cannot share a bug): ``usr-ascii`` registers with the terminal id as
ASCII text and beats ``www.usr.cn``; ``usr-mac`` registers with the six bytes of a MAC written
``aa:bb:cc:dd:ee:ff`` and beats ``www.usr.cn``; ``hex-frame`` sends ``AA 55 type len id sum8``
(type 01 registration, 02 heartbeat).  Any object with ``encode_registration(id)`` and
``encode_heartbeat(id)`` (a :class:`~meterd.protocols.terminal.dtu.DtuFormat` for a custom
model, in a test) is accepted as well.

:func:`run_dtu_fleet` starts many DTUs with a few meters each, sharing one simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from meterd.clock import Clock
from meterd.protocols.dlt645.frame import Frame, StreamDecoder, encode_frame, normalize_address
from meterd.protocols.modbus import get_map
from meterd.simulators.dialler import Backoff, Dialler
from meterd.simulators.dlt645 import Dlt645Bus, Reply
from meterd.simulators.lifecycle import DialInTerminal, Link, TerminalFleet
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock

log = logging.getLogger(__name__)

SimBus = Dlt645Bus | ModbusBus

CUT_LINGER: Final = 0.05  # after a cut reply, let its bytes reach the master before aborting


# --- packet formats (the DTU's side) ----------------------------------------------------------------


class PacketFormat(Protocol):
    def encode_registration(self, terminal_id: str) -> bytes: ...

    def encode_heartbeat(self, terminal_id: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SimDtuFormat:
    """Registration and heartbeat packets of one DTU model, as functions of the terminal id."""

    name: str
    registration: Callable[[str], bytes]
    heartbeat: Callable[[str], bytes]

    def encode_registration(self, terminal_id: str) -> bytes:
        return self.registration(terminal_id)

    def encode_heartbeat(self, terminal_id: str) -> bytes:
        return self.heartbeat(terminal_id)


def _aa55(ptype: int, terminal_id: str) -> bytes:
    ident = terminal_id.encode("ascii")
    body = bytes([ptype, len(ident)]) + ident
    return b"\xaa\x55" + body + bytes([sum(body) % 256])


def mac_id(n: int) -> str:
    """The ``n``-th simulated MAC DTU's id: the locally administered ``02:00:nn:nn:nn:nn``."""
    return f"02:00:{n >> 24 & 255:02x}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"


def _mac(terminal_id: str) -> bytes:
    digits = terminal_id.replace(":", "").replace("-", "")
    raw = bytes.fromhex(digits) if len(digits) == 12 else b""
    if len(raw) != 6:
        raise ValueError(f"a MAC DTU's id is six bytes written aa:bb:cc:dd:ee:ff, not {terminal_id!r}")
    return raw


SIM_FORMATS: Final[dict[str, SimDtuFormat]] = {
    "usr-ascii": SimDtuFormat("usr-ascii", lambda tid: tid.encode("ascii"), lambda tid: b"www.usr.cn"),
    "usr-mac": SimDtuFormat("usr-mac", _mac, lambda tid: b"www.usr.cn"),
    "hex-frame": SimDtuFormat("hex-frame", lambda tid: _aa55(0x01, tid), lambda tid: _aa55(0x02, tid)),
}


def sim_format(fmt: str | PacketFormat) -> PacketFormat:
    if isinstance(fmt, str):
        try:
            return SIM_FORMATS[fmt]
        except KeyError:
            raise ValueError(f"unknown DTU format {fmt!r}; known: {', '.join(SIM_FORMATS)}") from None
    return fmt


# A ticker advances the meters every TICK real seconds so that one nobody reads does not build up a
# long catch-up for its next request (a read advances its meter itself).  Integration is exact
# however the time is cut, so ten seconds only saves work: once a second, a fleet of 10,000 meters
# spent a tenth of a core on it.
TICK: Final = 10.0


# --- one DTU ------------------------------------------------------------------------------------


@dataclass(slots=True)
class DtuSimStats:
    connections: int = 0  # successful connects
    connect_failures: int = 0
    registrations: int = 0  # registration packets sent
    heartbeats: int = 0
    requests: int = 0  # whole frames decoded from the master
    replies: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    drops: int = 0  # connections ended by drop() / cut_next_reply()
    closed_by_master: int = 0  # connections the master ended

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


class _Link(Link):
    """One TCP connection of the simulator, with the tasks serving it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.tasks: list[asyncio.Task[None]] = []


class DtuSimulator(DialInTerminal[_Link]):
    """A transparent DTU with ``bus`` behind it, dialling ``host:port`` (life cycle, ``drop``,
    ``send`` and ``wait_disconnected``: :class:`~meterd.simulators.lifecycle.DialInTerminal`)."""

    def __init__(
        self,
        terminal_id: str,
        bus: SimBus,
        host: str,
        port: int,
        fmt: str | PacketFormat = "usr-ascii",
        *,
        heartbeat: float | None = 30.0,
        clock: Clock | None = None,
        turnaround: float = 0.0,
        registration: bytes | None = None,
        register: bool = True,
        heartbeat_packet: bytes | None = None,
        reconnect_delay: float | None = None,
        tick: float | None = TICK,
        connect_timeout: float = 5.0,
        with_data: bool = False,
        split_prefix: bool = False,
        reply_packets: int = 1,
        heartbeat_is_registration: bool = False,
        heartbeat_with_registration: bool = False,
        after_registration: bytes = b"",
    ) -> None:
        if heartbeat is not None and heartbeat <= 0:
            raise ValueError(f"heartbeat interval {heartbeat} must be > 0 seconds (or None: never)")
        if turnaround < 0:
            raise ValueError(f"turnaround {turnaround} must be >= 0 seconds")
        self.terminal_id = terminal_id
        self.bus = bus
        self.host = host
        self.port = port
        self.fmt = sim_format(fmt)
        self.heartbeat = heartbeat
        self.clock: Clock = clock or SimClock.starting()
        self.turnaround = turnaround
        self.registration = self.fmt.encode_registration(terminal_id) if registration is None else registration
        self.register = register
        if heartbeat_is_registration:
            heartbeat_packet = self.registration
        self.heartbeat_packet = heartbeat_packet
        self.with_data = with_data
        self.split_prefix = split_prefix
        if reply_packets < 1:
            raise ValueError(f"reply_packets {reply_packets} must be >= 1")
        self.reply_packets = reply_packets
        self.heartbeat_with_registration = heartbeat_with_registration
        self.after_registration = bytes(after_registration)
        self.reconnect_delay = reconnect_delay
        self.tick = tick
        self.connect_timeout = connect_timeout
        self.answering = True
        self.heartbeating = True
        self.stats: DtuSimStats = DtuSimStats()
        self._link = None
        self._cut: int | None = None
        self._dialler = Dialler(self, f"DTU {terminal_id}", log)
        self._ticker = None
        self._dialling = None  # dialling again after a lost connection

    def __repr__(self) -> str:
        state = "connected" if self.connected else "down"
        return f"DtuSimulator({self.terminal_id!r} -> {self.host}:{self.port}, {state}, meters={self.bus.addresses})"

    @property
    def meters(self) -> list[str]:
        return self.bus.addresses

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and register (raises LinkError if the master cannot be reached)."""
        self._dialler.closing = False
        if self.tick and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"sim-dtu-tick {self.terminal_id}")
        await self._connect()

    # --- commands --------------------------------------------------------------------------------

    async def reconnect(self) -> None:
        """Drop the connection if there is one, then dial and register again."""
        if self.connected:
            await self.drop()
        if self._dialling is not None:
            self._dialling.cancel()
            self._dialling = None
        await self._connect()

    def stop_heartbeat(self) -> None:
        self.heartbeating = False

    def resume_heartbeat(self) -> None:
        self.heartbeating = True

    def cut_next_reply(self, keep: int) -> None:
        """Send only the first ``keep`` bytes of the next reply, then drop the connection."""
        self._cut = max(0, keep)

    # --- internals ---------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._end(abort=True)
        reader, writer = await self._dialler.open()
        link = _Link(reader, writer)
        self._link = link
        if self.register:
            first = self.registration
            if self.heartbeat_with_registration:
                first += self._heartbeat_packet()
                self.stats.heartbeats += 1
            await self._write(link, first + self.after_registration)
            self.stats.registrations += 1
        link.tasks.append(asyncio.create_task(self._serve(link), name=f"sim-dtu {self.terminal_id}"))
        if self.heartbeat is not None:
            link.tasks.append(asyncio.create_task(self._beat(link), name=f"sim-dtu-hb {self.terminal_id}"))

    async def _end(self, *, abort: bool) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        link.dropped = abort
        current = asyncio.current_task()
        for t in link.tasks:
            if t is not current:
                t.cancel()
        if abort:
            link.writer.transport.abort()
        else:
            link.writer.close()
        for t in link.tasks:
            if t is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.writer.wait_closed(), 1.0)
        link.ended.set()

    def _decoder(self) -> Any:
        return self.bus.decoder() if isinstance(self.bus, ModbusBus) else StreamDecoder()

    async def _answer(self, request: Frame | bytes) -> list[Reply]:
        if not isinstance(self.bus, ModbusBus):
            return self._answer_now(request)
        try:
            assert not isinstance(request, Frame)
            return await self.bus.handle_async(request, self.clock())
        except Exception:  # noqa: BLE001 -- a bus bug is logged; the DTU stays up
            self._bus_failed(request)
            return []

    def _answer_now(self, request: Frame | bytes) -> list[Reply]:
        """A DL/T 645 bus answers synchronously: no coroutine per request."""
        assert isinstance(self.bus, Dlt645Bus)
        try:
            return self.bus.handle(request, self.clock())
        except Exception:  # noqa: BLE001 -- a bus bug is logged; the DTU stays up
            self._bus_failed(request)
            return []

    def _bus_failed(self, request: Frame | bytes) -> None:
        raw = encode_frame(request) if isinstance(request, Frame) else bytes(request)
        log.exception("DTU %s: simulated bus failed on request %s", self.terminal_id, raw.hex(" ").upper())

    async def _serve(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        decoder = self._decoder()
        sync = not isinstance(self.bus, ModbusBus)
        writer = link.writer
        transport = writer.transport
        by_master = False
        try:
            while data := await link.reader.read(4096):
                received = loop.time()
                self.stats.rx_bytes += len(data)
                decoder.feed(data)
                for request in decoder.frames():
                    self.stats.requests += 1
                    if not self.answering:
                        continue
                    for reply in self._answer_now(request) if sync else await self._answer(request):
                        delay = received + self.turnaround + reply.delay - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        data = reply.data
                        if self.with_data:  # the registration in front of every packet
                            data = self._with_registration(data)
                            if self.split_prefix:  # two writes, cut inside the registration
                                cut = max(1, len(self.registration) // 2)
                                await self._write(link, data[:cut])
                                data = data[cut:]
                        if self._cut is not None:
                            keep, self._cut = self._cut, None
                            await self._write(link, data[:keep])
                            await asyncio.sleep(CUT_LINGER)
                            self.stats.drops += 1
                            link.dropped = True
                            transport.abort()
                            return
                        # _write without its drain while the socket takes everything (the usual
                        # case): drain only waits when the kernel is full or the link closing
                        writer.write(data)
                        self.stats.tx_bytes += len(data)
                        if transport.get_write_buffer_size() or transport.is_closing():
                            await writer.drain()
                        self.stats.replies += 1
            by_master = True
        except (ConnectionError, OSError):
            by_master = not link.dropped
        finally:
            self._link_ended(link, by_master)

    def _link_ended(self, link: _Link, by_master: bool) -> None:
        if link.ended.is_set():
            return
        self._dialler.master_closed(by_master, link.dropped)
        for t in link.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        if not link.writer.transport.is_closing():
            link.writer.transport.abort()
        link.ended.set()
        if self._link is link:
            self._link = None
        if self.reconnect_delay is not None and not self._dialler.closing:
            self._dialling = asyncio.create_task(self._dial_again(), name=f"sim-dtu-redial {self.terminal_id}")

    async def _dial_again(self) -> None:
        """After ``reconnect_delay`` seconds, dial until connected, every ``reconnect_delay`` seconds."""
        assert self.reconnect_delay is not None
        backoff = Backoff(self.reconnect_delay, self.reconnect_delay)
        await self._dialler.keep_dialling(self._dial, backoff, first_wait=self.reconnect_delay, until_up=True)

    async def _dial(self) -> bool:
        await self._connect()
        return True

    def _with_registration(self, data: bytes) -> bytes:
        n = min(self.reply_packets, len(data)) or 1
        size = -(-len(data) // n)
        return b"".join(self.registration + data[i:i + size] for i in range(0, len(data), size))

    def _heartbeat_packet(self) -> bytes:
        if self.heartbeat_packet is not None:
            return self.heartbeat_packet
        return self.fmt.encode_heartbeat(self.terminal_id)

    async def _beat(self, link: _Link) -> None:
        assert self.heartbeat is not None
        packet = self._heartbeat_packet()
        try:
            while True:
                await asyncio.sleep(self.heartbeat)
                if self.heartbeating:
                    await self._write(link, packet)
                    self.stats.heartbeats += 1
        except (ConnectionError, OSError):
            pass

    async def _tick(self) -> None:
        assert self.tick
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.bus.advance(self.clock())
            except Exception:
                log.exception("DTU %s: advancing the meters failed", self.terminal_id)


# --- many DTUs ----------------------------------------------------------------------------------


@dataclass(slots=True)
class DtuFleet(TerminalFleet):
    """Running DTU simulators.  ``meters`` maps a terminal id to the addresses behind it; for
    Modbus DTUs ``units`` maps a meter address to its unit id."""

    dtus: list[DtuSimulator]
    clock: SimClock
    protocol: str
    meters: dict[str, list[str]] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)

    @property
    def terminal_ids(self) -> list[str]:
        return [d.terminal_id for d in self.dtus]

    def dtu(self, terminal_id: str) -> DtuSimulator:
        for d in self.dtus:
            if d.terminal_id == terminal_id:
                return d
        raise KeyError(f"no simulated DTU {terminal_id!r}")

    def known(self, channel: str = "{terminal_id}") -> dict[str, str]:
        """terminal id -> channel name (``channel`` formatted with ``terminal_id`` and ``index``, from 1)."""
        return {d.terminal_id: channel.format(terminal_id=d.terminal_id, index=i + 1) for i, d in enumerate(self.dtus)}

    def _members(self) -> list[DtuSimulator]:
        return self.dtus


async def run_dtu_fleet(
    n_dtus: int,
    meters_per_dtu: int,
    host: str,
    port: int,
    *,
    fmt: str | PacketFormat = "usr-ascii",
    protocol: str = "dlt645",
    id_prefix: str = "DTU",
    first_id: int = 1,
    first_address: str | int = "000000000001",
    heartbeat: float | None = 30.0,
    speed: float = 1.0,
    start: datetime | None = None,
    seed: int = 0,
    tick: float | None = TICK,
    turnaround: float = 0.0,
    reconnect_delay: float | None = None,
    modbus_model: str = "generic",
) -> DtuFleet:
    """Start ``n_dtus`` DTUs, each with ``meters_per_dtu`` meters, all registering with ``host:port``.

    Terminal ids are ``{id_prefix}{n:08d}`` from ``first_id`` (``DTU00000001``, ...), or for
    ``fmt="usr-mac"`` the locally administered MACs ``02:00:nn:nn:nn:nn`` (n = first_id, ...); meter
    addresses run on from ``first_address`` across the DTUs, in DTU order.  ``protocol``:
    ``"dlt645"`` (DL/T 645-2007 meters) or ``"modbus"`` (RTU through the DTU, unit ids 1..n, the
    register map ``modbus_model``).  The caller closes the returned :class:`DtuFleet`.
    """
    if n_dtus < 1 or meters_per_dtu < 1:
        raise ValueError("a DTU fleet needs at least one DTU with at least one meter")
    if protocol not in ("dlt645", "modbus"):
        raise ValueError(f"protocol {protocol!r} must be dlt645 or modbus")
    if protocol == "modbus" and meters_per_dtu > 247:
        raise ValueError(f"meters_per_dtu {meters_per_dtu} must be 1..247 on Modbus (unit ids)")
    first = int(normalize_address(first_address))
    if first + n_dtus * meters_per_dtu > 10**12:
        raise ValueError(f"{n_dtus * meters_per_dtu} meters from {first_address} run past 999999999999")
    clock = SimClock.starting(start, speed)
    regmap = get_map(modbus_model) if protocol == "modbus" else None
    fleet = DtuFleet([], clock, protocol)
    for d in range(n_dtus):
        n = first_id + d
        tid = mac_id(n) if fmt == "usr-mac" else f"{id_prefix}{n:08d}"
        addresses = [f"{first + d * meters_per_dtu + i:012d}" for i in range(meters_per_dtu)]
        models = [MeterModel(a, start=clock.start, seed=seed * 1_000_003 + d * meters_per_dtu + i)
                  for i, a in enumerate(addresses)]
        bus: SimBus
        if regmap is not None:
            bus = ModbusBus({u + 1: m for u, m in enumerate(models)}, regmap, framing="rtu", seed=seed * 7919 + d)
            fleet.units.update({a: u + 1 for u, a in enumerate(addresses)})
        else:
            bus = Dlt645Bus(models, seed=seed * 7919 + d)
        fleet.meters[tid] = addresses
        fleet.dtus.append(DtuSimulator(tid, bus, host, port, fmt, heartbeat=heartbeat, clock=clock, tick=tick,
                                       turnaround=turnaround, reconnect_delay=reconnect_delay))
    results = await asyncio.gather(*(d.start() for d in fleet.dtus), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await fleet.close()
        raise failed[0]
    return fleet
