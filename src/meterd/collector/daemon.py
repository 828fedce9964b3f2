"""The daemon: one task per channel, all in one event loop, feeding one batching writer.

Each channel task owns its bus.  Its polls come due on their own intervals; due rounds run one
after another on the bus (a bus carries one request at a time), so rounds never pile up: a round
that overruns its interval makes the next one start late (as soon as it ends), and a tick missed
that way is counted as an overrun, not queued.  Channels run in parallel.  A DTU channel's first
round waits for its DTU's first registration since start (at most one interval; see
``_first_registration``), so after a restart a DTU that dials back in late is read when it does.

Time: the wall clock is read only here, through the ``clock`` passed in; everything below gets
``now`` as an argument.

Collector nodes.  Given an :class:`Ownership` (a cluster node's leases, built by ``meterd.app``
from :mod:`meterd.cluster`), the daemon polls only the channels it is told to: the ownership
starts a channel's task when its lease is taken and stops it (cancelled, link closed) when the
lease is lost, lapses or is handed over.  Every write to a channel's link asks the ownership
first (:class:`LeasedTransport`), so nothing reaches a bus this node no longer holds: not a routine
round, a scheduled task, an on-demand read or a relay command.  A DTU that registers here makes
its channel this node's (``dtu_online``).  MQTT terminals: requests and replies per node (each
node's hub is its own client); pushed readings come through a shared subscription, so the broker
hands each to one node, which takes it whatever channels it holds (see :mod:`meterd.collector.mqtt`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from meterd.clock import Clock, utc_now
from meterd.collector import ondemand
from meterd.collector.channel import LATENCY_BOUNDS, Channel, FailureKind, Timing, TraceHook
from meterd.collector.door import Door
from meterd.collector.dtu import DtuListener, DtuTransport
from meterd.collector.gdw1376 import GdwChannel, GdwListener, gdw_round, password_bytes, read_events, sync_archive
from meterd.collector.modbus import ModbusLink
from meterd.collector.mqtt import MqttHub
from meterd.collector.poll import MeterTarget, RoundResult, link_failed, poll_round
from meterd.collector.ports import ChannelFigures, Observer, Route, Service, TerminalFigures
from meterd.collector.transports import SerialTransport, TcpTransport, Transport
from meterd.config.model import (
    ChannelConfig,
    Config,
    DtuLink,
    GdwLink,
    MeterConfig,
    MqttLink,
    PollConfig,
    SerialLink,
)
from meterd.errors import ConfigError, LinkError, MeterdError, ReadRefusedError
from meterd.plausibility import Implausible
from meterd.protocols import modbus
from meterd.protocols.drivers import LinkKind, get_driver
from meterd.protocols.drivers.base import Reads
from meterd.readings import Reading
from meterd.storage.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.storage.postgres import PostgresStore
from meterd.storage.quality import topology_areas
from meterd.storage.sqlite import Attempt, MeterRecord, SqliteStore
from meterd.storage.writer import BatchWriter
from meterd.supervise import Backoff, Pause, describe, log_task_failure, supervise, wait_or_stop

log = logging.getLogger(__name__)
SERVICE_GRACE = 5.0  # seconds the services (API, prepaid, sync) have to end by themselves at stop

RoundHook = Callable[[RoundResult], None]


Listener = DtuListener | GdwListener


def make_transport(
    cfg: ChannelConfig,
    listeners: Mapping[str, Listener] | None = None,
    hub: MqttHub | None = None,
    units: dict[int, str] | None = None,
) -> Transport:
    link = cfg.link
    if isinstance(link, MqttLink):
        assert hub is not None, "MQTT channels need the daemon's hub"
        return hub.transport(link.terminal, name=cfg.name, units=units or None)
    if isinstance(link, (DtuLink, GdwLink)):
        assert listeners is not None, "DTU and 1376.1 channels need the daemon's listeners"
        return listeners[link.listener].transport(link.terminal, connect_wait=link.connect_wait)
    if isinstance(link, SerialLink):
        return SerialTransport(cfg.name, link.device, baud=link.baud, bytesize=link.bytesize,
                               parity=str(link.parity), stopbits=link.stopbits)
    return TcpTransport(cfg.name, link.host, link.port, connect_timeout=cfg.timeouts.connect)


class Ownership(Protocol):
    """Which channels this node may poll: a collector node's leases (:class:`meterd.cluster.node.ClusterNode`).

    ``allows(channel)`` is asked before every write and every round; ``bind(start, stop)`` hands
    over the daemon's way to start and stop a channel; ``run(stop)`` keeps the leases until stop
    (then stops the channels and gives the leases back); a DTU registering on this node or leaving
    it is reported with ``dtu_online`` / ``dtu_offline``.  ``name``: the node's, unique among live
    nodes (it makes this node's MQTT client id)."""

    @property
    def name(self) -> str: ...

    def allows(self, channel: str) -> bool: ...

    def bind(self, start: Callable[[str], None], stop: Callable[[str], Awaitable[None]]) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    def dtu_online(self, channel: str) -> None: ...

    def dtu_offline(self, channel: str) -> None: ...


class LeasedTransport(Transport):
    """A channel's link that writes only while ``allowed()`` (this node holds the channel's lease):
    otherwise :class:`~meterd.errors.LinkError`, which the channel records as a ``link`` failure.
    Reads, and bytes arriving, go to the link as before."""

    def __init__(self, inner: Transport, allowed: Callable[[], bool]) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.allowed = allowed

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    async def open(self) -> None:
        if not self.allowed():
            raise LinkError("not polled by this node: another collector node holds its lease", channel=self.name)
        await self.inner.open()

    async def write(self, data: bytes) -> None:
        if not self.allowed():
            raise LinkError("not polled by this node: another collector node holds its lease", channel=self.name)
        await self.inner.write(data)

    async def read(self, timeout: float) -> bytes:
        return await self.inner.read(timeout)

    def reset_input(self) -> None:
        self.inner.reset_input()

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"LeasedTransport({self.inner!r})"


def make_channel(
    cfg: ChannelConfig,
    trace: TraceHook | None = None,
    listeners: Mapping[str, Listener] | None = None,
    hub: MqttHub | None = None,
    units: dict[int, str] | None = None,
    meters: Sequence[MeterConfig] = (),
) -> Channel:
    if isinstance(cfg.link, GdwLink):
        return make_gdw_channel(cfg, cfg.link, make_transport(cfg, listeners), trace, meters)
    return Channel(
        cfg.name,
        make_transport(cfg, listeners, hub, units),
        timing=Timing(cfg.timeouts.response, cfg.timeouts.inter_byte),
        retries=cfg.retries,
        preamble=cfg.preamble,
        turnaround=cfg.turnaround,
        trace=trace,
    )


def make_gdw_channel(cfg: ChannelConfig, link: GdwLink, transport: Transport, trace: TraceHook | None,
                     meters: Sequence[MeterConfig]) -> GdwChannel:
    """The channel to a Q/GDW 1376.1 terminal; its password from the secret the config names (a
    secret named but not set, or not 32 hex digits, stops start-up naming the key)."""
    from meterd.collector.gdw1376 import GdwTransport
    from meterd.protocols.gdw1376.frame import parse_terminal_address

    key = f"channels.{cfg.name}.gdw1376.password_secret"
    password = password_bytes(secret(link.password_secret, key), key) if link.password_secret else None
    assert isinstance(transport, GdwTransport)
    return GdwChannel(cfg.name, transport, parse_terminal_address(link.terminal),
                      pns={m.address: m.pn for m in meters if m.pn is not None},
                      timing=Timing(cfg.timeouts.response, cfg.timeouts.inter_byte), retries=cfg.retries,
                      trace=trace, password=password, port=link.port, special=str(link.kind) == "special",
                      turn=link.turn, archive=link.archive)


def push_meters(config: Config) -> dict[str, frozenset[str]]:
    """terminal id -> the meters configured behind it: the only ones it may push readings for."""
    out: dict[str, set[str]] = {}
    for c in config.channels:
        if isinstance(c.link, MqttLink):
            out.setdefault(c.link.terminal, set()).update(m.address for m in config.meters_on(c.name))
    return {t: frozenset(meters) for t, meters in out.items()}


def _allows(ownership: Ownership, channel: str) -> Callable[[], bool]:
    allows = ownership.allows
    return lambda: allows(channel)


def _log_audit(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("writing the audit log failed", exc_info=future.exception())


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("recording implausible readings as anomalies failed", exc_info=future.exception())


def secret(env: str, key: str) -> str:
    """A secret from the environment variable the config names; a missing one stops start-up."""
    from meterd import secrets

    value = secrets.lookup(env)
    if not value:
        raise ConfigError([f"{key}: {secrets.where(env)} (the secret) is not set"])
    return value


def make_sink(config: Config, store: SqliteStore | PostgresStore):
    """Where readings go: the store, or InfluxDB (attempts and state stay in the store)."""
    influx = config.store.influxdb
    if influx is None:
        return store
    from meterd.storage.influx import InfluxStore

    token = secret(influx.token_env, "store.influxdb.token_env")
    return InfluxStore(influx.url, influx.org, influx.bucket, token, influx.spool_dir, timeout=influx.timeout,
                       batch=influx.batch, state=store, tags=meter_places(config),
                       keep_free=influx.spool_keep_free_mb * 1024 * 1024)


def meter_places(config: Config) -> dict[str, dict[str, str]]:
    """Each meter's channel, group, topology area (the first ``[[topology.units]]`` of kind
    ``area`` it is a point of) and role there: the tags its points carry in InfluxDB."""
    areas: dict[str, tuple[str, str]] = {}
    topology = getattr(config.analytics, "topology", None)
    if topology is not None:
        for point in topology.points:
            unit = topology.units.get(point.unit)
            if unit is not None and unit.kind == "area":
                areas.setdefault(point.meter, (point.unit, str(point.role)))
    return {m.address: dict(zip(("area", "role"), areas.get(m.address, ("", "")), strict=True),
                            channel=m.channel, group=m.group) for m in config.meters}


@dataclass(frozen=True, slots=True)
class PlannedPoll:
    poll: PollConfig
    meters: tuple[tuple[MeterTarget, Reads], ...]  # each meter with what it is asked for, in its protocol


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    channel: ChannelConfig
    polls: tuple[PlannedPoll, ...]

    @property
    def has_modbus(self) -> bool:
        return any(t.driver.link is LinkKind.MODBUS for p in self.polls for t, _ in p.meters)


def link_kind(plan: ChannelPlan) -> str:
    """The channel's kind, as ``/metrics`` labels its read latencies: serial, tcp, modbus-tcp
    (Modbus meters framed MBAP), dtu or mqtt."""
    link = plan.channel.link
    if isinstance(link, SerialLink):
        return "serial"
    if isinstance(link, DtuLink):
        return "dtu"
    if isinstance(link, GdwLink):
        return "gdw1376"
    if isinstance(link, MqttLink):
        return "mqtt"
    return "modbus-tcp" if plan.has_modbus and plan.channel.framing == "tcp" else "tcp"


def target(m: MeterConfig) -> MeterTarget:
    return MeterTarget(m.address, m.ct, m.pt, str(m.protocol), m.unit, m.regmap)


def meter_reads(meter: MeterConfig, poll: PollConfig) -> Reads:
    """What ``poll`` asks of ``meter``, in the meter's protocol (the loader has checked it resolves)."""
    driver = get_driver(meter.protocol)
    reads, missing = driver.plan(poll.quantities, driver.explicit_items(poll), meter.regmap)
    if missing or reads is None:
        raise ConfigError([(f"{poll.name}: meter {meter.address} ({driver.describe_meter(meter.regmap)}) has no "
                           f"{driver.missing_noun} for {', '.join(missing)}")])
    return reads


def compile_plan(config: Config) -> tuple[ChannelPlan, ...]:
    """Config -> what each channel polls: the immutable plan the daemon logs at start.

    One pass over each channel's meters per poll (not over every meter per channel); a meter's
    target is made once whatever the number of polls, and what a poll asks is resolved once per
    kind of meter (protocol and register map) and shared by every meter of that kind -- the
    plan is immutable, so 100,000 meters asked the same thing hold one :data:`Reads`, not 100,000.
    """
    targets: dict[int, MeterTarget] = {}
    shared: dict[tuple[str, str, int], Reads] = {}
    plans = []
    for ch in config.channels:
        on_channel = config.meters_on(ch.name)
        polls = []
        for poll in config.polls:
            meters = []
            for m in on_channel:
                if not poll.selects(m):
                    continue
                key = (poll.name, str(m.protocol), id(m.regmap))  # the regmap lives as long as the config
                reads = shared.get(key)
                if reads is None:
                    reads = shared[key] = meter_reads(m, poll)
                t = targets.get(id(m))
                if t is None:
                    t = targets[id(m)] = target(m)
                meters.append((t, reads))
            if meters:
                polls.append(PlannedPoll(poll, tuple(meters)))
        plans.append(ChannelPlan(ch, tuple(polls)))
    return tuple(plans)


def describe_plan(plans: tuple[ChannelPlan, ...]) -> list[str]:
    """The start-up log: per channel, per poll, the requests each kind of meter gets.

    Meters asked the same thing are summarised on one line; a Modbus meter's compiled requests are
    listed block by block (once per register map and poll).
    """
    lines = []
    for plan in plans:
        link = plan.channel.link
        if isinstance(link, SerialLink):
            where = f"serial {link.device} {link.baud} {link.bytesize}{link.parity}{link.stopbits}"
        elif isinstance(link, DtuLink):
            where = f"dtu {link.terminal} via listener {link.listener}"
        elif isinstance(link, MqttLink):
            where = f"mqtt terminal {link.terminal}"
        elif isinstance(link, GdwLink):
            where = f"gdw1376 {link.kind} {link.terminal} via listener {link.listener}"
        else:
            where = f"tcp {link.host}:{link.port}"
        if plan.has_modbus:
            where += f", modbus {plan.channel.framing}"
        lines.append(f"channel {plan.channel.name} ({where})")
        for p in plan.polls:
            lines.append(f"  poll {p.poll.name} every {p.poll.interval:g} s: {len(p.meters)} meter(s)")
            groups: dict[str, list[str]] = {}
            details: dict[str, list[str]] = {}
            described: dict[tuple[int, int], str] = {}  # meters asked alike share one reads object (compile_plan)
            for meter, reads in p.meters:
                key = described.get((id(meter.driver), id(reads)))
                if key is None:
                    key = described[(id(meter.driver), id(reads))] = meter.driver.describe(reads)
                if isinstance(reads, modbus.ReadPlan):  # listed block by block
                    who = f"{meter.address}@{meter.unit}"
                    details.setdefault(key, ["    " + line for line in reads.describe().splitlines()])
                else:
                    who = meter.address
                groups.setdefault(key, []).append(who)
            for key, whom in groups.items():
                shown = ", ".join(whom[:4]) + (f" and {len(whom) - 4} more" if len(whom) > 4 else "")
                lines.append(f"    {key}: {shown}")
                lines.extend(details.get(key, []))
        if not plan.polls:
            lines.append("  (no polls)")
    return lines


@dataclass(slots=True)
class ChannelRunner:
    plan: ChannelPlan
    channel: Channel
    modbus: ModbusLink | None = None
    rounds: int = 0
    overruns: int = 0
    next_due: dict[str, float] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)  # restarts after a round that raised


class Daemon:
    def __init__(
        self,
        config: Config,
        store: SqliteStore | PostgresStore,
        *,
        clock: Clock = utc_now,
        on_round: RoundHook | None = None,
        trace: TraceHook | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.on_round = on_round
        self.ownership = ownership  # None: a single node, every channel is ours
        self._channel_tasks: dict[str, asyncio.Task[None]] = {}
        self.plan = compile_plan(config)
        self.sink = make_sink(config, store)
        self.writer = BatchWriter(self.sink, config.store.batch_size, config.store.flush_interval)
        # Every reading passes the door before anything else sees it: the impossible is flagged.
        self.door = Door(config.meters, record=self._record_implausible, zone=config.site.zone)
        self._anomalies: AnomalyStore | None = None  # opened when the door first has something to record
        # terminal -> its channel: pushes still sent on a terminal's up topic (heard by every node)
        # are taken only where that channel is held
        self._push_channel = {c.link.terminal: c.name for c in config.channels if isinstance(c.link, MqttLink)}
        self.hub: MqttHub | None = None
        if config.mqtt is not None:
            m = config.mqtt
            # among collector nodes each node is its own MQTT client (one client id = one session),
            # and the nodes take pushed readings through one shared subscription
            client_id = m.client_id if ownership is None else f"{m.client_id}.{ownership.name}"
            self.hub = MqttHub(m.host, m.port, client_id=client_id, username=m.username,
                               password=secret(m.password_env, "mqtt.password_env") if m.password_env else None,
                               keepalive=m.keepalive, clock=clock, root=m.root, request_ttl=m.request_ttl,
                               on_readings=self._pushed, push_meters=push_meters(config),
                               shared=ownership is not None,
                               holds=self._holds_terminal if ownership is not None else None,
                               max_payload=m.max_payload_kb * 1024)
        from meterd.storage.quality import OnlineTracker, QualityStore

        self.quality = QualityStore(store, clock=clock, zone=config.site.zone)  # days cut at the site's midnight
        self.online = OnlineTracker(self.quality)
        self.scheduler = None
        if config.tasks:
            from meterd.collector.scheduler import TaskScheduler

            self.scheduler = TaskScheduler(config.tasks, config.meters, self._task_round, store=store, clock=clock,
                                           owns=ownership.allows if ownership is not None else None)
        self.listeners: dict[str, Listener] = {}
        for lc in config.listeners:
            if lc.protocol == "gdw1376":
                gdw_known = {c.link.terminal: c.name for c in config.channels
                             if isinstance(c.link, GdwLink) and c.link.listener == lc.name}
                self.listeners[lc.name] = GdwListener(
                    lc.host, lc.port, known=gdw_known, heartbeat_timeout=lc.heartbeat_timeout,
                    registration_timeout=lc.registration_timeout, clock=clock, name=lc.name,
                    max_waiting=lc.max_waiting)
                continue
            known = {c.link.terminal: c.name for c in config.channels
                     if isinstance(c.link, DtuLink) and c.link.listener == lc.name}
            self.listeners[lc.name] = DtuListener(
                lc.host, lc.port, formats=lc.formats, known=known, heartbeat_timeout=lc.heartbeat_timeout,
                registration_timeout=lc.registration_timeout, clock=clock, name=lc.name, max_waiting=lc.max_waiting)
        self.runners = []
        for p in self.plan:
            on_channel = config.meters_on(p.channel.name)
            units = {m.unit: m.address for m in on_channel if m.unit is not None}
            channel = make_channel(p.channel, trace, self.listeners, self.hub, units, on_channel)
            if ownership is not None:
                channel.transport = LeasedTransport(channel.transport, _allows(ownership, p.channel.name))
            has_modbus = any(get_driver(m.protocol).link is LinkKind.MODBUS for m in on_channel)
            link = ModbusLink(channel, str(p.channel.framing)) if has_modbus else None
            self.runners.append(ChannelRunner(p, channel, link))
        self._by_channel = {r.channel.name: r for r in self.runners}
        if ownership is not None:
            for listener in self.listeners.values():
                listener.on_presence = self._dtu_presence
        for listener in self.listeners.values():
            if isinstance(listener, GdwListener):
                listener.on_login = self._gdw_login
                listener.trace = trace
        self._gdw_tasks: set[asyncio.Task[None]] = set()
        # what the node records terminal-side changes with (the archive downloaded): meterd.app
        # sets it to the audit log's writer; called off the event loop
        self.audit: Callable[[str, str, dict], None] | None = None
        self._meters = {m.address: m for m in config.meters}
        # What the rest of the node plugs in (meterd.app wires it; see collector.ports): observers
        # see every batch of readings (rounds, tasks, pushed); services run beside the channels.
        self._observers: list[Observer] = []
        self._services: list[Service] = []
        self._outcomes: dict[str, dict[str, int]] = {}  # channel -> attempt outcome -> count (/metrics)
        self._running = False  # channels started, not yet stopping (readiness)

    def subscribe(self, observer: Observer) -> None:
        """``observer(readings)`` for every batch that passed the door; one that raises is logged."""
        self._observers.append(observer)

    def add_service(self, service: Service) -> None:
        """``service(stop)`` runs beside the channels from :meth:`run`'s start until stop, supervised
        (logged and restarted with back-off if it ends early).  Add before :meth:`run`."""
        self._services.append(service)

    def route(self, address: str) -> Route | None:
        """How the daemon reaches a configured meter: its channel, target and Modbus link."""
        meter = self._meters.get(address)
        if meter is None:
            return None
        runner = self._by_channel.get(meter.channel)
        if runner is None:
            return None
        return Route(runner.channel, target(meter), runner.modbus)

    async def read_now(self, address: str, quantities: Sequence[str], *,
                       now: datetime) -> tuple[list[Reading], list[Attempt]]:
        """An on-demand read of ``address``, ahead of routine rounds on its bus; stored and seen by
        the observers like a round's.  :class:`~meterd.errors.ReadRefusedError` when the meter is
        not on a channel of this daemon or cannot read a quantity asked for."""
        meter = self._meters.get(address)
        if self.ownership is not None and meter is not None and not self.ownership.allows(meter.channel):
            raise ReadRefusedError(f"meter {address}: its channel {meter.channel} is polled by another collector node "
                                   "now; ask that node")
        readings, attempts = await ondemand.read(self.route(address), address, quantities, now=now)
        self.ingest(readings, attempts)
        return readings, attempts

    async def run(self, stop: asyncio.Event) -> None:
        """Start the listeners, the MQTT hub and the channels, then what can wait until the
        channels poll (the meter archive written, the plan logged, the services started); run
        until ``stop``.  Ready (:meth:`readiness`) once all of it has started."""
        analytics = self.config.analytics  # quality counts meters by their topology area
        self.quality.set_areas(topology_areas(analytics.topology if analytics is not None else None))
        for name, listener in self.listeners.items():
            await listener.start()
            log.info("listener %s: %s connect to port %d", name,
                     "1376.1 terminals" if isinstance(listener, GdwListener) else "DTUs", listener.bound_port)
        if self.hub is not None and not await self.hub.start(timeout=5.0):
            log.warning("mqtt: broker %s:%d not reachable yet; retrying in the background",
                        self.config.mqtt.host, self.config.mqtt.port)  # type: ignore[union-attr]
        self.writer.start()
        self.online.start()
        ownership: asyncio.Task[None] | None = None
        if self.ownership is None:
            tasks = [asyncio.create_task(self._run_channel(r, stop), name=f"channel:{r.channel.name}")
                     for r in self.runners if r.plan.polls]
        else:
            tasks = []
            self.ownership.bind(lambda name: self._start_channel(name, stop), self._stop_channel)
            ownership = asyncio.create_task(self.ownership.run(stop), name="cluster node")
            ownership.add_done_callback(lambda _: stop.set())  # a node that cannot keep leases stops
        # The channels poll from here on (their first requests go out at the next await); what
        # follows does not hold them up: the archive of configured meters is written off the
        # event loop (100,000 rows), the plan logged, then the services that read the archive start.
        services: list[asyncio.Task[None]] = []
        try:
            await asyncio.to_thread(self.store.upsert_meters, [
                MeterRecord(m.address, m.channel, str(m.protocol), m.ct, m.pt, m.name, m.group)
                for m in self.config.meters])
            for line in describe_plan(self.plan):
                log.info("plan: %s", line)
            tasks.append(self._supervised("quality rollup", self._quality_loop, stop))
            if hasattr(self.sink, "replay"):
                tasks.append(self._supervised("spool replay", self._replay_spool, stop))
            services = [self._supervised(f"service {getattr(service, '__qualname__', service)}", service, stop)
                        for service in self._services]
            tasks += services
            for t in tasks:
                t.add_done_callback(log_task_failure)  # whatever slips past the supervisors is said at once
            if self.scheduler is not None:
                for line in self.scheduler.describe(self.clock()):
                    log.info("tasks: %s", line)
                self.scheduler.start()
            self._running = True
            await stop.wait()
        finally:
            self._running = False
            if self.scheduler is not None:
                self.scheduler.shutdown()
            if ownership is not None:  # stops the channels, then gives their leases back
                await asyncio.gather(ownership, return_exceptions=True)
            if services:  # each ends by itself on stop (the API closes its connections); cancelled if not
                await asyncio.wait(services, timeout=SERVICE_GRACE)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for gdw in list(self._gdw_tasks):
                gdw.cancel()
            await asyncio.gather(*self._gdw_tasks, return_exceptions=True)
            for r in self.runners:
                await r.channel.close()
            for listener in self.listeners.values():
                await listener.close()
            if self.hub is not None:
                await self.hub.close()
            await self.writer.close()
            self.online.stop(self.clock())
            await asyncio.to_thread(self.quality.update)
            self.quality.close()
            if self.sink is not self.store:
                await asyncio.to_thread(self.sink.close)
            if self._anomalies is not None:
                self._anomalies.close()
        if ownership is not None and not ownership.cancelled() and (failure := ownership.exception()) is not None:
            raise failure  # the node could not join or keep its leases (a name in use, say): the run failed

    #: How the daemon waits out a back-off (a test passes one that does not sleep).
    pause: Pause = staticmethod(wait_or_stop)

    def _supervised(self, name: str, body: Callable[[asyncio.Event], Awaitable[None]],
                    stop: asyncio.Event) -> asyncio.Task[None]:
        """``body(stop)`` as a task that is logged and restarted with back-off if it ever ends early."""
        return asyncio.create_task(supervise(name, lambda: body(stop), stop, pause=self.pause), name=name)

    def _start_channel(self, name: str, stop: asyncio.Event) -> None:
        """Poll ``name`` from now on (its lease was taken)."""
        runner = self._by_channel.get(name)
        if runner is None or not runner.plan.polls or name in self._channel_tasks:
            return
        task = asyncio.create_task(self._run_channel(runner, stop), name=f"channel:{name}")
        task.add_done_callback(log_task_failure)
        task.add_done_callback(lambda t: self._channel_tasks.pop(name, None) if self._channel_tasks.get(name) is t
                               else None)
        self._channel_tasks[name] = task

    async def _stop_channel(self, name: str) -> None:
        """Stop polling ``name`` (its lease is lost or handed over): the round in flight is
        cancelled and the link closed."""
        task = self._channel_tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        runner = self._by_channel.get(name)
        if runner is not None:
            try:
                await runner.channel.close()
            except Exception:  # closing a link that failed: nothing more to do with it
                log.debug("channel %s: closing the link failed", name, exc_info=True)

    def _dtu_presence(self, channel: str, online: bool) -> None:
        assert self.ownership is not None
        if online:
            self.ownership.dtu_online(channel)
        else:
            self.ownership.dtu_offline(channel)

    async def _run_channel(self, runner: ChannelRunner, stop: asyncio.Event) -> None:
        """Run the channel's polls until ``stop``.

        A round that raises (anything a round does not itself record as a failed attempt: a bug, an
        exception from a hook) does not end the channel: it is logged with its traceback, counted
        as a ``link`` failure in the channel's statistics and as ``link`` attempts for the round's
        meters, the link is closed, and the channel starts again -- the failed poll first -- after
        a back-off (1 s doubling to 60 s; a round that completes resets it).
        """
        start = time.monotonic()
        if await self._first_registration(runner, stop):
            start = time.monotonic()  # the schedule starts with the first round
        for p in runner.plan.polls:
            runner.next_due[p.poll.name] = start
        while not stop.is_set():
            if self.ownership is not None and not self.ownership.allows(runner.channel.name):
                # the lease is not (or no longer) ours: no round; the ownership stops this task
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
                continue
            now_mono = time.monotonic()
            due = [p for p in runner.plan.polls if runner.next_due[p.poll.name] <= now_mono]
            for p in due:
                try:
                    await self.run_round(runner, p)
                except Exception as exc:  # noqa: BLE001 -- a round's fault is counted and the channel restarts
                    delay = await self._round_failed(runner, p, exc)
                    if await self.pause(stop, delay):
                        return
                    break  # start again: the failed poll is still due
                runner.backoff.reset()
                interval = p.poll.interval
                nxt = runner.next_due[p.poll.name] + interval
                after = time.monotonic()
                if nxt <= after:
                    # overran: the ticks that passed are counted, and the next round starts now,
                    # late, rather than idling the bus until the next tick
                    runner.overruns += int((after - nxt) // interval) + 1
                    nxt = after
                runner.next_due[p.poll.name] = nxt
            wait = min(runner.next_due.values()) - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass

    async def _first_registration(self, runner: ChannelRunner, stop: asyncio.Event) -> bool:
        """Hold a DTU channel's first round until its DTU first registers since start, for at most
        the channel's shortest poll interval.  Whether it waited.

        After a restart the DTUs dial back in over a minute or two: a round started before its DTU
        is there would fail as ``link`` (after ``connect_wait``) and its meters would be read one
        interval later -- 15 minutes of missing data per slow DTU in a district.  Held, the round
        runs when the DTU registers; a restart is the master's doing, not a failure of the meters,
        so nothing is recorded for the wait.  A DTU that is still not there after one interval has
        its round run then (``link`` failures recorded, as every round after).  Only the first
        registration since start counts: a DTU that drops and comes back later keeps the normal
        schedule (its reconnects never start rounds)."""
        transport = runner.channel.transport
        if isinstance(transport, LeasedTransport):
            transport = transport.inner
        if not isinstance(transport, DtuTransport) or transport.registered or not runner.plan.polls:
            return False
        limit = min(p.poll.interval for p in runner.plan.polls)
        registered = asyncio.ensure_future(transport.wait_registered(limit))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((registered, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            registered.cancel()
            stopped.cancel()
            await asyncio.gather(registered, stopped, return_exceptions=True)
        return True

    async def _round_failed(self, runner: ChannelRunner, planned: PlannedPoll, exc: Exception) -> float:
        """Log, count and record a round that raised; close the link.  The back-off delay."""
        channel = runner.channel
        delay = runner.backoff.next_delay()
        log.error("channel %s: poll %s failed (%s); restarting the channel in %g s", channel.name,
                  planned.poll.name, describe(exc), delay, exc_info=exc)
        channel.stats.failures[FailureKind.LINK] += 1
        now = self.clock()
        attempts = link_failed(channel.name, planned.meters, now, f"round failed: {describe(exc)}"[:500])
        try:
            self._record_attempts(attempts)
            self.online.observe(channel.name, attempts, now)
            await channel.close()
        except Exception:
            log.exception("channel %s: recording the failed round failed", channel.name)
        return delay

    async def run_round(self, runner: ChannelRunner, planned: PlannedPoll) -> RoundResult:
        channel = runner.channel
        if isinstance(channel, GdwChannel):
            result = await gdw_round(channel, planned.meters, self.clock(), zone=self.config.site.zone)
        else:
            result = await poll_round(channel, planned.meters, None, self.clock(), link=runner.modbus)
        runner.rounds += 1
        self._observed(result)
        if isinstance(channel, GdwChannel) and channel.events_waiting:
            await self._gdw_events(channel)
        return result

    # --- Q/GDW 1376.1 terminals: after a login, and the events they report ---------------------------

    def _gdw_login(self, channel_name: str) -> None:
        """A terminal logged in: its archive checked (and downloaded where it differs), its events read."""
        runner = self._by_channel.get(channel_name)
        if runner is None or not isinstance(runner.channel, GdwChannel):
            return
        if self.ownership is not None and not self.ownership.allows(channel_name):
            return
        task = asyncio.create_task(self._gdw_after_login(runner.channel), name=f"gdw1376 login {channel_name}")
        self._gdw_tasks.add(task)
        task.add_done_callback(self._gdw_tasks.discard)

    async def _gdw_after_login(self, channel: GdwChannel) -> None:
        if channel.archive and channel.pns:
            protocols = {m.address: str(m.protocol) for m in self.config.meters_on(channel.name)}
            audit = self.audit

            def audited(action: str, subject: str, detail: dict) -> None:
                if audit is not None:
                    loop = asyncio.get_running_loop()
                    loop.run_in_executor(None, audit, action, subject, detail).add_done_callback(_log_audit)

            try:
                await sync_archive(channel, protocols, audit=audited)
            except MeterdError as exc:
                log.warning("channel %s: the meter archive of terminal %s was not checked: %s", channel.name,
                            channel.address.key, exc)
        if channel.events_waiting:
            await self._gdw_events(channel)

    async def _gdw_events(self, channel: GdwChannel) -> None:
        try:
            readings = await read_events(channel, self.clock(), zone=self.config.site.zone,
                                         anomalies=self._record_anomalies)
        except MeterdError as exc:
            log.warning("channel %s: events of terminal %s not read: %s", channel.name, channel.address.key, exc)
            return
        if readings:
            self.ingest(readings, [])

    def stats(self) -> dict[str, dict[str, object]]:
        return {
            r.channel.name: {**r.channel.stats.as_dict(), "rounds": r.rounds, "overruns": r.overruns}
            for r in self.runners
        }

    def channel_figures(self) -> list[ChannelFigures]:
        """Every channel's live counters, for ``/metrics``."""
        mono, wall = time.monotonic(), self.clock().timestamp()
        out = []
        for r in self.runners:
            stats = r.channel.stats
            buckets = tuple(zip((*LATENCY_BOUNDS, math.inf), stats.latency_buckets[:], strict=True))
            out.append(ChannelFigures(
                r.channel.name, stats.transactions, stats.successes,
                tuple((str(k), n) for k, n in sorted(stats.failures.items())),
                stats.latency_mean, stats.latency_max, r.channel.waiting, r.rounds, r.overruns,
                link=link_kind(r.plan), latency_buckets=buckets, latency_total=stats.latency_total,
                last_success=wall - (mono - stats.last_success) if stats.last_success else None,
                outcomes=tuple(sorted(self._outcomes.get(r.channel.name, {}).items()))))
        return out

    def terminal_figures(self) -> list[TerminalFigures]:
        """The DTUs, MQTT and Q/GDW 1376.1 terminals this node polls, online or not (``/metrics``)."""
        return [TerminalFigures(link.terminal, r.channel.name, link_kind(r.plan), r.channel.name in self.online.open)
                for r in self.runners if isinstance(link := r.plan.channel.link, (DtuLink, MqttLink, GdwLink))
                and (self.ownership is None or self.ownership.allows(r.channel.name))]

    def readiness(self) -> str | None:
        """Why the collector is not ready (``/readyz``), or None once its channels are started."""
        return None if self._running else "the collector's channels are not started (starting or stopping)"

    def spool_size(self) -> tuple[int, int] | None:
        """(records, bytes) waiting in the store's spool; ``None`` for a store without one."""
        spool = getattr(self.sink, "spool_size", None)
        return spool() if spool is not None else None

    async def _quality_loop(self, stop: asyncio.Event, every: float = 60.0) -> None:
        """Fold new attempts into the daily quality rollup now and then (the CLI also folds on read)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(self.quality.update)
            except Exception:
                log.exception("quality rollup failed")

    def _observed(self, result: RoundResult) -> None:
        result.readings = self.door.screen(result.readings)
        self.writer.add_many(result.readings)
        self._record_attempts(result.attempts)
        self.online.observe(result.channel, result.attempts, result.started)
        self._notify_observers(result.readings)
        if self.on_round is not None:
            self.on_round(result)

    def ingest(self, readings: list, attempts: list) -> None:
        """Readings and attempts made outside a round (an operator's on-demand read): stored and
        seen by the observers like a round's."""
        readings = self.door.screen(readings)
        self.writer.add_many(readings)
        self._record_attempts(attempts)
        self._notify_observers(readings)

    def _record_attempts(self, attempts: list[Attempt]) -> None:
        """Attempts to the store, where collection quality counts them, and to the per-channel
        outcome counters of ``/metrics``: both count the same attempts by the same outcomes."""
        self.writer.add_attempts(attempts)
        for a in attempts:
            counts = self._outcomes.setdefault(a.channel, {})
            counts[a.outcome] = counts.get(a.outcome, 0) + 1

    def _pushed(self, terminal: str, readings: list) -> None:
        """Readings an MQTT terminal pushed on its own schedule (of a meter configured behind it:
        the hub drops the others): through the door to the writer.  Among collector nodes the
        broker gave this push to this node alone, so it is taken whoever holds the channel."""
        readings = self.door.screen(self.door.restamp_ahead(readings, self.clock(), terminal))
        self.writer.add_many(readings)
        self._notify_observers(readings)

    def _holds_terminal(self, terminal: str) -> bool:
        """Whether this node holds ``terminal``'s channel (for pushes still sent on ``up``)."""
        channel = self._push_channel.get(terminal)
        return channel is not None and self.ownership is not None and self.ownership.allows(channel)

    def _record_implausible(self, found: list[Implausible]) -> None:
        """The door's findings as metering anomalies, written off the event loop (rare: a
        thread per batch that has any)."""
        findings = [Finding(f.meter, Kind.IMPLAUSIBLE, Severity.WARNING, f.at, f.describe(self.door.zone),
                            ({"meter": f.meter, "quantity": f.quantity, "timestamp": f.at.isoformat(),
                              "value": str(f.value)[:40]},)) for f in found]
        self._record_anomalies(findings)

    def _record_anomalies(self, findings: list[Finding], ended: list[tuple[str, Kind]] | None = None) -> None:
        """Anomalies met while collecting (the door's, a 1376.1 terminal's events), and the
        (subject, kind) pairs ``ended`` closed after them, written off the event loop."""
        now = self.clock()

        def write() -> None:
            if self._anomalies is None:
                self._anomalies = AnomalyStore(self.config.store.state)
            self._anomalies.record(findings, now)
            if ended:
                self._anomalies.record([], now, resolved=ended)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write()
            return
        future = loop.run_in_executor(None, write)
        future.add_done_callback(_log_failure)

    def _notify_observers(self, readings: list) -> None:
        for observer in self._observers:
            try:
                observer(readings)
            except Exception:  # an extension's bug must not stop collection
                log.exception("reading observer %r failed", observer)

    async def _replay_spool(self, stop: asyncio.Event, every: float = 5.0) -> None:
        """Drain the store's spool while it holds anything (writes drain it too, this is faster)."""
        while not stop.is_set():
            try:
                if self.sink.spool_size()[0]:
                    await asyncio.to_thread(self.sink.replay)
            except Exception:  # the store logs its own outages; never let the loop die
                log.exception("spool replay failed")
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass

    async def _task_round(self, task, meters_by_channel, reads, now):
        """A scheduled task's round on one channel (called by the TaskScheduler)."""
        from meterd.collector.scheduler import MeterNeed, poll_task

        result = None
        for name, meters in meters_by_channel.items():
            runner = self._by_channel[name]
            pairs = [(target(m), reads[m.address]) for m in meters if m.address in reads]
            if isinstance(runner.channel, GdwChannel):  # terminal-kept data where the terminal has it
                needs = [(t, r) for t, r in pairs if isinstance(r, MeterNeed)]
                result = await gdw_round(runner.channel, [(t, r) for t, r in pairs if not isinstance(r, MeterNeed)],
                                         now, zone=self.config.site.zone, curve_points=task.curve_points,
                                         curve_interval=task.curve_interval)
                if needs:  # a re-read's missing records: relayed to the meters
                    extra = await poll_task(runner.channel, task, needs, now)
                    result.readings.extend(extra.readings)
                    result.attempts.extend(extra.attempts)
            else:
                result = await poll_task(runner.channel, task, pairs, now, link=runner.modbus)
            runner.rounds += 1
            self._observed(result)
        return result

    def listener_status(self) -> dict[str, object]:
        return {name: listener.status() for name, listener in self.listeners.items()}
