"""Simulated terminal fleets: GPRS DTUs and MQTT terminals by the hundred, sharded over processes.

:class:`TerminalSpec` says what to simulate: ``dtus`` DTUs ``DTU00000001``... that dial *in* to
the master's DTU listener, ``mqtt_terminals`` MQTT terminals ``T001``... on a broker, and
``concentrators`` Q/GDW 1376.1 concentrators ``4401-0001``... that dial in and log in to the
master's gdw1376 listener, each with its meters (the layout :func:`~meterd.simulators.dtu.run_dtu_fleet`,
:func:`~meterd.simulators.mqtt_terminal.run_mqtt_fleet` and
:func:`~meterd.simulators.concentrator.concentrator_layout` use).  :func:`serve_fleet` runs them, with
the meter buses of :mod:`meterd.simulators.fleet` if asked, until stopped.

Sharding: paho's network loop uses select(), which cannot watch a descriptor past 1023, and each
MQTT terminal holds three; so the first :data:`MQTT_TERMINALS_PER_PROCESS` terminals run in the
simulator's own process and the rest in forked helper processes (:class:`MqttShard`, one per 250),
sharing the simulated clock (start and origin).  A helper says ``up`` or ``error`` on its pipe,
runs until told ``stop`` (or the pipe closes), then reports its counters.  Fork them
(:func:`fork_shards`) before any thread or event loop exists.

The process's own settings stay with its owner (the ``meterd simulate`` command): it passes the
clock, the forked shards and ``settle`` (its heap policy, see :mod:`meterd.heap`) in; this module
never changes the process's garbage collector.

May import ``meterd.protocols``, ``meterd.simulators``, ``meterd.clock``, ``meterd.errors`` and the
byte pipes of ``meterd.collector.transports`` (never the polling engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final

from meterd.errors import LinkError
from meterd.protocols.modbus import get_map
from meterd.simulators.fleet import Fleet, FleetSpec, run_fleet
from meterd.simulators.serve import SimClock

log = logging.getLogger(__name__)

Settle = Callable[[], None]

DEFAULT_METERS_PER_TERMINAL: Final = 10
DEFAULT_DTU_CONNECT: Final = ("127.0.0.1", 9000)
DEFAULT_MQTT_BROKER: Final = ("127.0.0.1", 1883)
DEFAULT_CONCENTRATOR_CONNECT: Final = ("127.0.0.1", 9001)
DEFAULT_CONCENTRATOR_REGION: Final = "4401"
ZERO_PASSWORD: Final = "00" * 16  # a terminal's PW, 32 hex digits
DTU_ID_PREFIX: Final = "DTU"
PASSWORD: Final = next(f.default for f in fields(FleetSpec) if f.name == "password")  # the meters' default


def _nothing() -> None:
    """The default ``settle``: leave the process's settings alone."""


# --- what to simulate --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TerminalSpec:
    """The DTUs, MQTT terminals and concentrators to start (any count may be 0, not all)."""

    dtus: int = 0
    dtu_meters: int = DEFAULT_METERS_PER_TERMINAL
    dtu_host: str = DEFAULT_DTU_CONNECT[0]
    dtu_port: int = DEFAULT_DTU_CONNECT[1]
    dtu_format: str = "usr-ascii"
    dtu_protocol: str = "dlt645"
    dtu_model: str = "generic"
    dtu_heartbeat: float = 30.0
    dtu_reconnect: float = 1.0
    dtu_first_address: int = 1
    mqtt_terminals: int = 0
    mqtt_meters: int = DEFAULT_METERS_PER_TERMINAL
    mqtt_host: str = DEFAULT_MQTT_BROKER[0]
    mqtt_port: int = DEFAULT_MQTT_BROKER[1]
    mqtt_protocol: str = "dlt645-2007"
    mqtt_model: str = "generic"
    mqtt_root: str = "meterd"
    concentrators: int = 0
    concentrator_meters: int = DEFAULT_METERS_PER_TERMINAL
    concentrator_host: str = DEFAULT_CONCENTRATOR_CONNECT[0]
    concentrator_port: int = DEFAULT_CONCENTRATOR_CONNECT[1]
    concentrator_password: str = ZERO_PASSWORD  # PW as 32 hex digits
    concentrator_kind: str = "concentrator"  # or "special" (special-transformer terminals)
    concentrator_heartbeat: float = 60.0
    concentrator_region: str = DEFAULT_CONCENTRATOR_REGION
    concentrator_collect: float = 900.0  # simulated seconds between collections
    concentrator_first_address: int = 0  # 0: after the DTU meters
    speed: float = 1.0
    start: datetime | None = None
    seed: int = 0
    turnaround: float = 0.0  # seconds, DTU and concentrator replies

    def dtu_ids(self) -> list[str]:
        """The DTUs' terminal ids as :func:`~meterd.simulators.dtu.run_dtu_fleet` gives them."""
        if self.dtu_format == "usr-mac":
            from meterd.simulators.dtu import mac_id

            return [mac_id(i) for i in range(1, self.dtus + 1)]
        return [f"{DTU_ID_PREFIX}{i:08d}" for i in range(1, self.dtus + 1)]

    def dtu_fleet(self) -> dict[str, list[str]]:
        """DTU terminal id -> its meters' addresses (as :func:`~meterd.simulators.dtu.run_dtu_fleet` lays them out)."""
        n, first = self.dtu_meters, self.dtu_first_address
        return {tid: [f"{first + d * n + i:012d}" for i in range(n)] for d, tid in enumerate(self.dtu_ids())}

    def mqtt_fleet(self) -> dict[str, list[str]]:
        from meterd.simulators.mqtt_terminal import meter_address, terminal_id

        return {terminal_id(t): [meter_address(t, m) for m in range(1, self.mqtt_meters + 1)]
                for t in range(1, self.mqtt_terminals + 1)}

    def concentrator_fleet(self) -> dict[str, list[tuple[str, int]]]:
        """``RRRR-TTTT`` -> its meters as (address, pn), addresses on from the DTU meters'."""
        if not self.concentrators:
            return {}
        from meterd.simulators.concentrator import concentrator_layout

        first = self.concentrator_first_address or self.dtu_first_address + self.dtus * self.dtu_meters
        return concentrator_layout(self.concentrators, self.concentrator_meters, first_address=first,
                                   region=self.concentrator_region)

    @property
    def meters(self) -> int:
        return (self.dtus * self.dtu_meters + self.mqtt_terminals * self.mqtt_meters
                + self.concentrators * self.concentrator_meters)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.dtus:
            fleet = self.dtu_fleet()
            doc["dtus"] = {
                "connect": f"{self.dtu_host}:{self.dtu_port}", "host": self.dtu_host, "port": self.dtu_port,
                "format": self.dtu_format, "protocol": self.dtu_protocol, "heartbeat": self.dtu_heartbeat,
                "terminals": fleet,
                "units": {a: u for addresses in fleet.values() for u, a in enumerate(addresses, 1)}
                if self.dtu_protocol == "modbus" else {},
            }
            if self.dtu_protocol == "modbus":
                doc["dtus"]["model"] = self.dtu_model
        if self.mqtt_terminals:
            fleet = self.mqtt_fleet()
            doc["mqtt"] = {
                "broker": f"{self.mqtt_host}:{self.mqtt_port}", "host": self.mqtt_host, "port": self.mqtt_port,
                "root": self.mqtt_root, "protocol": self.mqtt_protocol, "terminals": fleet,
                "units": {a: u for addresses in fleet.values() for u, a in enumerate(addresses, 1)}
                if self.mqtt_protocol == "modbus" else {},
            }
            if self.mqtt_protocol == "modbus":
                doc["mqtt"]["model"] = self.mqtt_model
        if self.concentrators:
            doc["concentrators"] = {
                "connect": f"{self.concentrator_host}:{self.concentrator_port}", "host": self.concentrator_host,
                "port": self.concentrator_port, "protocol": "gdw1376", "kind": self.concentrator_kind,
                "region": self.concentrator_region, "heartbeat": self.concentrator_heartbeat,
                "collect_interval": self.concentrator_collect, "password": self.concentrator_password,
                "meter_protocol": "dlt645-2007",
                "terminals": {key: [{"address": a, "pn": pn} for a, pn in meters]
                              for key, meters in self.concentrator_fleet().items()},
            }
        return doc


# --- running terminals -------------------------------------------------------------------------

# paho's network loop uses select(), which cannot watch a descriptor >= 1024 (FD_SETSIZE), and each
# simulated MQTT terminal holds three (its socket and a wake-up socket pair): past ~330 terminals a
# process's terminals stop connecting.  So terminals beyond this many run in forked helper processes.
MQTT_TERMINALS_PER_PROCESS: Final = 250
_MQTT_COUNTERS: Final = ("requests", "replies", "silent", "expired")


def mqtt_shards(n: int, per_process: int | None = None) -> list[tuple[int, int]]:
    """(first terminal number, count) per process; the first one runs in the simulator itself."""
    per_process = per_process or MQTT_TERMINALS_PER_PROCESS
    return [(first, min(per_process, n - first + 1)) for first in range(1, n + 1, per_process)]


async def start_mqtt(spec: TerminalSpec, first: int, count: int, clock: Callable[[], datetime]) -> Any:
    """Terminals ``first``..``first + count - 1`` of the fleet (laid out as
    :func:`~meterd.simulators.mqtt_terminal.run_mqtt_fleet` does), connected; an ``MqttFleet``.
    ConnectionError (all closed again) if some do not connect."""
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.modbus import ModbusBus
    from meterd.simulators.model import MeterModel
    from meterd.simulators.mqtt_terminal import MqttFleet, MqttTerminal, meter_address, terminal_id

    regmap = get_map(spec.mqtt_model) if spec.mqtt_protocol == "modbus" else None
    begin = clock()
    terminals: dict[str, MqttTerminal] = {}
    units: dict[str, dict[int, str]] = {}
    for t in range(first, first + count):
        tid = terminal_id(t)
        models = [MeterModel(meter_address(t, m), start=begin, seed=spec.seed * 1_000_003 + t * 1000 + m)
                  for m in range(1, spec.mqtt_meters + 1)]
        bus: Any
        if regmap is not None:
            bus = ModbusBus(dict(enumerate(models, 1)), regmap, framing="rtu", seed=spec.seed + t)
            units[tid] = bus.units
        else:
            old = {m.address: "dlt645-1997" for m in models} if spec.mqtt_protocol == "dlt645-1997" else None
            bus = Dlt645Bus(models, seed=spec.seed + t, protocols=old)
        terminals[tid] = MqttTerminal(tid, bus, spec.mqtt_host, spec.mqtt_port, clock=clock, root=spec.mqtt_root)
    fleet = MqttFleet(terminals, clock, spec.mqtt_protocol, units)
    timeout = max(10.0, 0.02 * count)
    up = await asyncio.gather(*(term.start(timeout) for term in terminals.values()))
    if not all(up):
        down = [tid for tid, ok in zip(terminals, up) if not ok]
        await fleet.close()
        raise ConnectionError(f"MQTT terminals not connected to {spec.mqtt_host}:{spec.mqtt_port} within "
                              f"{timeout:g} s: {', '.join(down[:10])}{' ...' if len(down) > 10 else ''}")
    return fleet


def mqtt_counters(fleet: Any) -> dict[str, int]:
    stats = [t.stats for t in fleet.terminals.values()]
    return {k: sum(getattr(s, k) for s in stats) for k in _MQTT_COUNTERS}


def _use_threads_for(n_terminals: int) -> None:
    """Each MQTT terminal's close() runs two blocking calls in a thread: not six at a time."""
    workers = min(128, n_terminals + 4)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="sim"))


class MqttShard:
    """MQTT terminals in a forked helper process.  It says ``("up", None)`` or ``("error", text)``
    on the pipe, runs until told ``"stop"`` (or the pipe closes: the simulator is gone), then
    sends ``("stats", counters)``.  Fork it before the simulator starts threads or an event loop."""

    def __init__(self, spec: TerminalSpec, first: int, count: int, clock: Any, settle: Settle = _nothing) -> None:
        import multiprocessing

        self.first, self.count = first, count
        self.counters: dict[str, int] | None = None
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_shard_main, args=(spec, first, count, clock.start, clock.origin, child, settle),
                                   name=f"meterd-simulate-mqtt-{first}", daemon=True)
        self.process.start()
        child.close()

    async def ready(self, timeout: float) -> None:
        if not await asyncio.to_thread(self.conn.poll, timeout):
            raise ConnectionError(f"MQTT terminals {self.first}..{self.first + self.count - 1}: "
                                  f"no word from their process within {timeout:g} s")
        try:
            kind, detail = self.conn.recv()
        except (EOFError, OSError):
            raise ConnectionError(f"MQTT terminals {self.first}..: their process died "
                                  f"(exit code {self.process.exitcode})") from None
        if kind != "up":
            raise ConnectionError(str(detail))

    async def stop(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send("stop")
        deadline = asyncio.get_running_loop().time() + timeout
        while self.counters is None and asyncio.get_running_loop().time() < deadline:
            try:
                if not await asyncio.to_thread(self.conn.poll, 0.5):
                    if not self.process.is_alive():
                        break
                    continue
                kind, detail = self.conn.recv()
            except (EOFError, OSError, ValueError):
                break
            if kind == "stats":
                self.counters = detail
        await asyncio.to_thread(self.process.join, 5.0)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join)
        self.conn.close()


def _shard_main(spec: TerminalSpec, first: int, count: int, start: datetime, origin: float, conn: Any,
                settle: Settle) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the simulator says stop
    clock = SimClock(start, spec.speed, origin)  # the same simulated time as the simulator's
    try:
        asyncio.run(_shard(spec, first, count, clock, conn, settle))
    except Exception as exc:  # noqa: BLE001 -- told to the simulator
        with contextlib.suppress(OSError):
            conn.send(("error", f"MQTT terminals {first}..: {exc}"))


async def _shard(spec: TerminalSpec, first: int, count: int, clock: Any, conn: Any, settle: Settle) -> None:
    loop = asyncio.get_running_loop()
    _use_threads_for(count)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        fleet = await start_mqtt(spec, first, count, clock)
    except Exception as exc:  # noqa: BLE001
        conn.send(("error", str(exc)))
        return
    settle()
    conn.send(("up", None))

    def readable() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = "stop"
        if message == "stop":
            loop.remove_reader(conn.fileno())
            stop.set()

    loop.add_reader(conn.fileno(), readable)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        await fleet.close()
        with contextlib.suppress(OSError):
            conn.send(("stats", mqtt_counters(fleet)))


@dataclass(slots=True)
class Terminals:
    """Running DTUs, MQTT terminals (the first MQTT shard here, the rest in ``shards``) and
    concentrators."""

    spec: TerminalSpec
    dtus: list[Any] = field(default_factory=list)  # DtuSimulator
    concentrators: list[Any] = field(default_factory=list)  # ConcentratorSimulator
    mqtt: Any = None  # MqttFleet
    shards: list[MqttShard] = field(default_factory=list)
    dialers: list[asyncio.Task[None]] = field(default_factory=list)

    def start_dialling(self) -> None:
        """Each DTU dials the master until it gets through (staggered), then keeps its connection
        up by itself (``reconnect_delay``)."""
        rng = random.Random(self.spec.seed)
        spread = min(1.0, 0.002 * len(self.dtus))
        self.dialers = [asyncio.create_task(_dial(d, rng.random() * spread), name=f"dial {d.terminal_id}")
                        for d in self.dtus]
        spread = min(1.0, 0.002 * len(self.concentrators))
        self.dialers += [asyncio.create_task(c.start(rng.random() * spread), name=f"dial {c.key}")
                         for c in self.concentrators]  # each keeps dialling (and logging in) by itself

    async def close(self) -> None:
        for t in self.dialers:
            t.cancel()
        await asyncio.gather(*self.dialers, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in self.dtus), *(c.close() for c in self.concentrators),
                             *(s.stop() for s in self.shards),
                             *([self.mqtt.close()] if self.mqtt is not None else []), return_exceptions=True)

    def report(self) -> list[str]:
        lines = []
        if self.dtus:
            s = [d.stats for d in self.dtus]
            lines.append(f"dtus: {len(self.dtus)} DTUs, {sum(d.connected for d in self.dtus)} connected at the end, "
                         f"{sum(x.connections for x in s)} connections, {sum(x.connect_failures for x in s)} "
                         f"failed dials, {sum(x.requests for x in s)} requests, {sum(x.replies for x in s)} replies, "
                         f"{sum(x.heartbeats for x in s)} heartbeats")
        if self.mqtt is not None:
            c = mqtt_counters(self.mqtt)
            lost = [shard for shard in self.shards if shard.counters is None]
            for shard in self.shards:
                for k, v in (shard.counters or {}).items():
                    c[k] += v
            lines.append(f"mqtt: {self.spec.mqtt_terminals} terminals in {1 + len(self.shards)} process(es), "
                         f"{c['requests']} requests, {c['replies']} replies, {c['silent']} unanswered, "
                         f"{c['expired']} expired" + (f" (no counts from {len(lost)} process(es))" if lost else ""))
        if self.concentrators:
            cs = [c.stats for c in self.concentrators]
            ts = [c.terminal.stats for c in self.concentrators]
            lines.append(f"concentrators: {len(self.concentrators)} terminals, "
                         f"{sum(c.logged_in for c in self.concentrators)} logged in at the end, "
                         f"{sum(x.connections for x in cs)} connections, {sum(x.logins_confirmed for x in cs)} "
                         f"confirmed logins, {sum(x.requests for x in cs)} requests, {sum(x.replies for x in cs)} "
                         f"replies, {sum(x.heartbeats for x in cs)} heartbeats, {sum(x.collections for x in ts)} "
                         f"collections, {sum(x.relays for x in ts)} relays")
        return lines


async def _dial(dtu: Any, delay: float) -> None:
    await asyncio.sleep(delay)
    while True:
        try:
            await dtu.start()
            return
        except LinkError as exc:
            log.debug("%s; again in %g s", exc, dtu.reconnect_delay)
            await asyncio.sleep(dtu.reconnect_delay)


def build_dtus(spec: TerminalSpec, clock: Callable[[], datetime]) -> list[Any]:
    """The DTU simulators (not started), laid out as :func:`~meterd.simulators.dtu.run_dtu_fleet` does."""
    from meterd.simulators.dlt645 import Dlt645Bus
    from meterd.simulators.dtu import DtuSimulator
    from meterd.simulators.modbus import ModbusBus
    from meterd.simulators.model import MeterModel

    regmap = get_map(spec.dtu_model) if spec.dtu_protocol == "modbus" else None
    begin = clock()
    out = []
    for d, (tid, addresses) in enumerate(spec.dtu_fleet().items()):
        models = [MeterModel(a, start=begin, seed=spec.seed * 1_000_003 + d * spec.dtu_meters + i)
                  for i, a in enumerate(addresses)]
        bus: Any
        if regmap is not None:
            bus = ModbusBus({u: m for u, m in enumerate(models, 1)}, regmap, framing="rtu", seed=spec.seed * 7919 + d)
        else:
            bus = Dlt645Bus(models, seed=spec.seed * 7919 + d)
        out.append(DtuSimulator(tid, bus, spec.dtu_host, spec.dtu_port, spec.dtu_format,
                                heartbeat=spec.dtu_heartbeat, clock=clock, turnaround=spec.turnaround,
                                reconnect_delay=spec.dtu_reconnect))
    return out


def build_concentrator_sims(spec: TerminalSpec, clock: Callable[[], datetime]) -> list[Any]:
    """The concentrator simulators (not started), laid out as :meth:`TerminalSpec.concentrator_fleet`."""
    if not spec.concentrators:
        return []
    from datetime import timedelta

    from meterd.simulators.concentrator import build_concentrators, parse_password

    return build_concentrators(spec.concentrator_fleet(), spec.concentrator_host, spec.concentrator_port, clock=clock,
                               password=parse_password(spec.concentrator_password), kind=spec.concentrator_kind,
                               heartbeat=spec.concentrator_heartbeat,
                               collect_interval=timedelta(seconds=spec.concentrator_collect),
                               reconnect_delay=spec.dtu_reconnect, turnaround=spec.turnaround, seed=spec.seed)


def fork_shards(spec: TerminalSpec, clock: Any, settle: Settle = _nothing) -> list[MqttShard]:
    """Helper processes for the MQTT terminals past the first :data:`MQTT_TERMINALS_PER_PROCESS`
    (call before any thread or event loop exists); each calls ``settle`` once its terminals are up
    (the process owner's heap policy: the helpers are its processes too)."""
    return [MqttShard(spec, first, count, clock, settle) for first, count in mqtt_shards(spec.mqtt_terminals)[1:]]


async def start_terminals(spec: TerminalSpec, clock: Any, shards: list[MqttShard] | None = None) -> Terminals:
    """Build the DTUs (they dial once :meth:`Terminals.start_dialling` is called) and start the
    MQTT terminals: the first shard here, the rest already forked in ``shards`` (ConnectionError
    if the broker cannot be reached)."""
    terms = Terminals(spec, build_dtus(spec, clock), build_concentrator_sims(spec, clock), shards=list(shards or []))
    if spec.mqtt_terminals:
        first, count = mqtt_shards(spec.mqtt_terminals)[0]
        results = await asyncio.gather(start_mqtt(spec, first, count, clock),
                                       *(s.ready(max(30.0, 0.05 * s.count)) for s in terms.shards),
                                       return_exceptions=True)
        if not isinstance(results[0], BaseException):
            terms.mqtt = results[0]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await terms.close()
            raise failed[0]
    return terms


def _raise_fd_limit(wanted: int) -> None:
    """A DTU takes a socket, an MQTT terminal three descriptors: lift the soft limit if need be."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if new < wanted:
                log.warning("open files limited to %d; the terminals may need %d", new, wanted)
    except (ImportError, ValueError, OSError):
        pass


# --- serving ---------------------------------------------------------------------------------


def fleet_document(fleet: Fleet | None, terms: Terminals | None, clock: Any, seed: int = 0) -> dict[str, Any]:
    """Where everything listens and which meters are where: the buses' document
    (:meth:`~meterd.simulators.fleet.Fleet.as_dict`, or its clock fields alone without buses) with
    the terminals' ``dtus`` / ``mqtt`` parts (:meth:`TerminalSpec.as_dict`)."""
    if fleet is not None:
        doc = fleet.as_dict()
    else:
        doc = {"start": clock.start.isoformat(), "speed": clock.speed, "seed": seed, "password": PASSWORD,
               "buses": [], "faults": {}, "stuck_relays": []}
    if terms is not None:
        doc.update(terms.spec.as_dict())
    return doc


async def _wait_for_stop(duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if duration is None:
            await stop.wait()
        else:
            try:
                await asyncio.wait_for(stop.wait(), duration)
            except TimeoutError:
                pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve_fleet(
    buses: FleetSpec | None,
    terminals: TerminalSpec | None,
    *,
    announce: Callable[[dict[str, Any]], None],
    duration: float | None,
    clock: Any = None,
    shards: list[MqttShard] | None = None,
    settle: Settle = _nothing,
) -> tuple[Fleet | None, Terminals | None]:
    """Start the buses and the terminals, hand the fleet's document (:func:`fleet_document`) to
    ``announce``, serve until SIGINT/SIGTERM or ``duration`` seconds, close everything.

    ``clock`` and ``shards`` (MQTT terminals already forked into helper processes, see
    :func:`fork_shards`) come from the process owner, as does ``settle`` (its heap policy, called
    once everything is built, before ``announce``).  DTUs start dialling after ``announce``.
    """
    fleet: Fleet | None = None
    terms: Terminals | None = None
    if terminals is not None and terminals.mqtt_terminals:
        _use_threads_for(min(terminals.mqtt_terminals, MQTT_TERMINALS_PER_PROCESS))
    try:
        if buses is not None:
            fleet = await run_fleet(buses)
            clock = clock or fleet.clock
        if terminals is not None:
            t = terminals
            _raise_fd_limit(t.dtus + t.concentrators + 3 * min(t.mqtt_terminals, MQTT_TERMINALS_PER_PROCESS) + 256)
            if clock is None:
                clock = SimClock.starting(t.start, t.speed)
            terms = await start_terminals(t, clock, shards)
        settle()  # the meters' models live as long as the simulator
        announce(fleet_document(fleet, terms, clock, terminals.seed if terminals is not None else 0))
        if terms is not None:
            terms.start_dialling()
        await _wait_for_stop(duration)
    finally:
        if terms is not None:
            await terms.close()
        elif shards:
            await asyncio.gather(*(s.stop() for s in shards), return_exceptions=True)
        if fleet is not None:
            await fleet.close()
    return fleet, terms


__all__ = [
    "DEFAULT_CONCENTRATOR_CONNECT",
    "DEFAULT_CONCENTRATOR_REGION",
    "DEFAULT_DTU_CONNECT",
    "DEFAULT_METERS_PER_TERMINAL",
    "DEFAULT_MQTT_BROKER",
    "DTU_ID_PREFIX",
    "MQTT_TERMINALS_PER_PROCESS",
    "PASSWORD",
    "ZERO_PASSWORD",
    "MqttShard",
    "Settle",
    "TerminalSpec",
    "Terminals",
    "build_concentrator_sims",
    "build_dtus",
    "fleet_document",
    "fork_shards",
    "mqtt_counters",
    "mqtt_shards",
    "serve_fleet",
    "start_mqtt",
    "start_terminals",
]  # fmt: skip
