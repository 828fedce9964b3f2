"""Simulated MQTT terminals (gateways / concentrators) in front of simulated meter buses.

A :class:`MqttTerminal` is what :mod:`meterd.collector.mqtt` talks to, over a real broker, in the
topic tree and payloads of :mod:`meterd.protocols.terminal.mqtt` (and in ``docs/mqtt.md``):

* it connects with its last will -- a retained ``offline`` on ``<root>/terminals/<tid>/status`` --
  subscribes to its ``down`` topic and then publishes a retained ``online`` (again after every
  reconnect: a restarted broker without persistence has forgotten it);
* each request's ``frame`` goes to its bus -- :meth:`Dlt645Bus.handle
  <meterd.simulators.dlt645.Dlt645Bus.handle>` or :meth:`ModbusBus.handle_async
  <meterd.simulators.modbus.ModbusBus.handle_async>` at the terminal's simulated ``clock`` -- one
  request at a time, as on one RS-485 port; every reply the bus gives goes back on ``up`` with the
  request's correlation id (after the reply's own ``delay``: the bus's ``late`` fault, plus the
  terminal's ``latency``).  A meter that does not answer gets no reply message.  A request received
  after its ``expires`` is dropped (counted), as is a malformed one;
* :meth:`~MqttTerminal.push_readings` publishes the current values of ``push_quantities`` of every
  meter on its ``push`` topic (one message per meter, values as exact decimal text);
  ``push_every`` seconds runs it on a schedule; ``push_on_up=True`` makes it an older terminal that
  pushes on ``up``, beside its replies;
* :meth:`~MqttTerminal.go_offline` kills the connection without a DISCONNECT (the socket is shut
  down under the client and it never reconnects), so the broker publishes the will;
  :meth:`~MqttTerminal.come_back` connects anew; :meth:`~MqttTerminal.close` leaves cleanly
  (``offline`` published by the terminal itself, then DISCONNECT).

Each terminal is one paho-mqtt client driven by the asyncio loop
(:class:`~meterd.collector.transports.paho_loop.PahoDriver`: no thread per terminal, so hundreds
of them share one process cheaply); its callbacks run in the loop thread, where all terminal state
lives.

:func:`run_mqtt_fleet` starts ``n_terminals`` terminals ``T001``, ``T002``, ... with
``meters_per_terminal`` meters each, all DL/T 645-2007, DL/T 645-1997 or Modbus; meter ``m`` of
terminal ``t`` has the address ``f"{t:06d}{m:06d}"`` (Modbus: unit id ``m``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from meterd.clock import CST, Clock, utc_now
from meterd.collector.transports.paho_loop import PahoDriver, new_client
from meterd.protocols.modbus import get_map
from meterd.protocols.modbus.quantities import known_quantities
from meterd.protocols.readspec import DLT645_1997, DLT645_2007, MODBUS
from meterd.protocols.terminal.mqtt import (
    DEFAULT_ROOT,
    OFFLINE,
    ONLINE,
    QOS,
    PayloadError,
    ReplyMessage,
    RequestMessage,
    Topics,
    check_terminal_id,
    readings_payload,
)
from meterd.readings import Reading
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.lifecycle import Running, TerminalFleet
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import SimClock

log = logging.getLogger(__name__)

SimBus = Dlt645Bus | ModbusBus

DEFAULT_PUSH_QUANTITIES: Final = (
    "energy.active.import.total",
    "energy.active.export.total",
    "power.active.total",
    "voltage.a",
    "current.a",
)
CLOSE_WAIT: Final = 2.0  # seconds close() waits for the broker to take the terminal's "offline"


@dataclass(slots=True)
class TerminalStats:
    connects: int = 0
    requests: int = 0  # well-formed requests received
    replies: int = 0  # reply messages published
    silent: int = 0  # requests the bus gave no answer to
    expired: int = 0  # requests received after their "expires": dropped
    malformed: int = 0  # undecodable requests: dropped
    errors: int = 0  # the bus failed on a request
    pushed_messages: int = 0
    pushed_readings: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class MqttTerminal(Running):
    """One simulated terminal with its bus.  See the module doc."""

    def __init__(
        self,
        terminal_id: str,
        bus: SimBus,
        host: str,
        port: int = 1883,
        *,
        clock: Clock | None = None,
        root: str = DEFAULT_ROOT,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 10,
        latency: float = 0.0,
        push_quantities: Sequence[str] = DEFAULT_PUSH_QUANTITIES,
        push_every: float | None = None,
        meter_tz: tzinfo = CST,
        honour_expiry: bool = True,
        reconnect_min: float = 0.5,
        reconnect_max: float = 5.0,
        wall_clock: Clock = utc_now,
        push_on_up: bool = False,
    ) -> None:
        """``clock`` is the meters' simulated time (naive, meter-local; default a
        :class:`SimClock` from now); ``wall_clock`` (aware) stamps ``replied``/``sent`` and checks
        ``expires``; ``latency`` seconds are added before each reply; ``push_on_up``: push on
        ``up`` (as terminals did before ``push`` existed) instead of ``push``."""
        self.terminal_id = check_terminal_id(terminal_id)
        self.bus = bus
        self.host = host
        self.port = port
        self.clock: Clock = clock or SimClock.starting()
        self.topics = Topics(root)
        self._up_topic = self.topics.up(self.terminal_id)
        self._push_topic = self._up_topic if push_on_up else self.topics.push(self.terminal_id)
        self.client_id = client_id or f"{root}-sim-{terminal_id}"
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.latency = latency
        self.push_quantities = tuple(push_quantities)
        self.push_every = push_every
        self.meter_tz = meter_tz
        self.honour_expiry = honour_expiry
        self.reconnect = (reconnect_min, reconnect_max)
        self.wall_clock = wall_clock
        self.stats = TerminalStats()
        self.connected = False
        self._client: mqtt.Client | None = None
        self._driver: PahoDriver | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # payloads; (request, replies) to finish
        self._busy = False  # the worker is on a request
        self._tasks: list[asyncio.Task[None]] = []
        self._connected_event: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"MqttTerminal({self.terminal_id!r}, meters={self.addresses}, connected={self.connected})"

    @property
    def meters(self) -> list[MeterModel]:
        return list(self.bus.meters)

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.bus.meters]

    @property
    def protocol(self) -> str:
        return MODBUS if isinstance(self.bus, ModbusBus) else DLT645_2007

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, timeout: float | None = 10.0) -> bool:
        """Connect (with the will), subscribe, publish ``online``; start the request worker and the
        push schedule.  Waits up to ``timeout`` s for the connection; whether it is up."""
        if self._client is not None:
            raise RuntimeError(f"terminal {self.terminal_id} is already running")
        self._connected_event = asyncio.Event()
        self._queue = asyncio.Queue()
        self._busy = False
        client = new_client(self.client_id, username=self.username, password=self.password,
                            reconnect=self.reconnect)
        client.will_set(self.topics.status(self.terminal_id), OFFLINE, qos=QOS, retain=True)
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        self._client = client
        self._driver = PahoDriver(client, self.host, self.port, self.keepalive, reconnect=self.reconnect,
                                  on_connect=self._paho_connect)
        self._tasks = [asyncio.create_task(self._worker(), name=f"mqtt-terminal-{self.terminal_id}")]
        if self.push_every:
            self._tasks.append(asyncio.create_task(self._pusher(self.push_every)))
        self._driver.start()
        if timeout is None:
            return self.connected
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        return self.connected

    async def go_offline(self) -> None:
        """Vanish without a DISCONNECT (the broker publishes the will): the socket is shut down
        under the client, which is never let to reconnect.  Queued requests are lost."""
        client, driver = self._detach()
        if client is None or driver is None:
            return
        await driver.stop(abort=True)
        await self._cancel_tasks()

    async def come_back(self, timeout: float | None = 10.0) -> bool:
        """Connect again after :meth:`go_offline` (a fresh client)."""
        return await self.start(timeout)

    async def close(self) -> None:
        """Leave cleanly: ``offline`` (retained) published by the terminal itself, then DISCONNECT."""
        was_connected = self.connected
        client, driver = self._detach()
        await self._cancel_tasks()
        if client is not None and driver is not None:
            if was_connected:
                info = client.publish(self.topics.status(self.terminal_id), OFFLINE, qos=QOS, retain=True)
                deadline = asyncio.get_running_loop().time() + CLOSE_WAIT
                while not info.is_published() and driver.attached and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)  # the PUBACK comes in through the loop
            client.disconnect()
            await driver.stop()
        self.connected = False

    def _detach(self) -> tuple[mqtt.Client | None, PahoDriver | None]:
        client, self._client = self._client, None
        driver, self._driver = self._driver, None
        self.connected = False
        return client, driver

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # --- paho callbacks (in the loop thread) ------------------------------------------------------

    def _paho_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("terminal %s: broker refused the connection: %s", self.terminal_id, reason)
            return
        client.subscribe(self.topics.down(self.terminal_id), QOS)
        client.publish(self.topics.status(self.terminal_id), ONLINE, qos=QOS, retain=True)
        self._on_connected(client)

    def _paho_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._on_disconnected(client)

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_message(client, bytes(message.payload))  # the same object when it is bytes already

    def _on_connected(self, client: mqtt.Client) -> None:
        if client is not self._client:
            return  # a client already killed by go_offline
        self.connected = True
        self.stats.connects += 1
        if self._connected_event is not None:
            self._connected_event.set()

    def _on_disconnected(self, client: mqtt.Client) -> None:
        if client is self._client:
            self.connected = False

    def _on_message(self, client: mqtt.Client, payload: bytes) -> None:
        if client is not self._client:
            return
        if not self._busy and self._queue.empty() and not self.latency and isinstance(self.bus, Dlt645Bus):
            self._answer_now(payload)
        else:
            self._queue.put_nowait(payload)

    # --- requests -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            self._busy = True
            try:
                if isinstance(item, tuple):  # answered at once, but a reply waits out a delay
                    await self._send_replies(*item)
                else:
                    await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.errors += 1
                log.exception("terminal %s: handling a request failed", self.terminal_id)
            finally:
                self._busy = False

    def _answer_now(self, payload: bytes) -> None:
        """The port is idle and the bus answers synchronously: no hop through the worker (the
        reply goes out in the same loop pass as the request's PUBACK).  A reply with a ``delay``
        is left to the worker, and the requests behind it queue as they would."""
        try:
            request = self._accept(payload)
            if request is None:
                return
            replies = self._ask_bus(request)
            if replies is None:
                return
            if any(reply.delay for reply in replies):
                self._queue.put_nowait((request, replies))
                return
            if not replies:
                self.stats.silent += 1
            for reply in replies:
                self._publish_reply(request, reply)
        except Exception:
            self.stats.errors += 1
            log.exception("terminal %s: handling a request failed", self.terminal_id)

    def _accept(self, payload: bytes) -> RequestMessage | None:
        """Parse and count a request; None if it is malformed or expired (dropped, counted)."""
        try:
            request = RequestMessage.parse(payload)
        except PayloadError as exc:
            self.stats.malformed += 1
            log.warning("terminal %s: dropped a malformed request: %s", self.terminal_id, exc)
            return None
        self.stats.requests += 1
        if self.honour_expiry and request.expires is not None and self.wall_clock() > request.expires:
            self.stats.expired += 1
            log.info("terminal %s: request %s expired before it arrived; dropped", self.terminal_id, request.id)
            return None
        return request

    def _ask_bus(self, request: RequestMessage) -> list[Any] | None:
        """A DL/T 645 bus's replies; None if it failed (counted, logged)."""
        assert isinstance(self.bus, Dlt645Bus)
        try:
            return self.bus.handle(request.frame, self.clock())
        except Exception:
            self.stats.errors += 1
            log.exception("terminal %s: the bus failed on %s", self.terminal_id, request.frame.hex(" ").upper())
            return None

    async def _handle(self, payload: bytes) -> None:
        request = self._accept(payload)
        if request is None:
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        bus = self.bus
        if isinstance(bus, ModbusBus):
            try:
                replies = await bus.handle_async(request.frame, self.clock())
            except Exception:
                self.stats.errors += 1
                log.exception("terminal %s: the bus failed on %s", self.terminal_id, request.frame.hex(" ").upper())
                return
        else:
            got = self._ask_bus(request)
            if got is None:
                return
            replies = got
        await self._send_replies(request, replies)

    async def _send_replies(self, request: RequestMessage, replies: list[Any]) -> None:
        if not replies:
            self.stats.silent += 1
        for reply in replies:
            if reply.delay:
                await asyncio.sleep(reply.delay)
            self._publish_reply(request, reply)

    def _publish_reply(self, request: RequestMessage, reply: Any) -> None:
        message = ReplyMessage(request.id, reply.data, self._protocol_of(reply.meter, request.protocol),
                               reply.meter or request.meter, request.sent, self.wall_clock())
        if self._publish(self._up_topic, message.payload()):
            self.stats.replies += 1

    def _protocol_of(self, meter: str, asked: str | None) -> str | None:
        bus = self.bus
        if isinstance(bus, ModbusBus):
            return MODBUS
        try:
            return bus.protocol_of(meter)
        except KeyError:
            return asked

    def _publish(self, topic: str, payload: bytes) -> bool:
        client = self._client
        if client is None:
            return False
        info = client.publish(topic, payload, qos=QOS)
        return info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # NO_CONN: queued

    # --- pushed readings ------------------------------------------------------------------------

    def push_readings(self, now: datetime | None = None, quantities: Sequence[str] | None = None) -> int:
        """Publish the meters' current ``quantities`` (default ``push_quantities``) at ``now``
        (simulated meter-local time, default the clock), one message per meter.  The number of
        readings published (0 while offline)."""
        if self._client is None:
            return 0
        now = self.clock() if now is None else now
        stamp = now.replace(tzinfo=self.meter_tz).astimezone(UTC)
        wanted = tuple(quantities) if quantities is not None else self.push_quantities
        specs = known_quantities()
        sent = 0
        for model in self.bus.meters:
            values = model.values(now, wanted)
            readings = []
            for q in wanted:
                if q not in values:
                    continue
                value = values[q]
                if isinstance(value, datetime) and value.tzinfo is None:
                    value = value.replace(tzinfo=self.meter_tz)
                spec = specs.get(q)
                readings.append(Reading(model.address, q, stamp, value, spec.unit if spec else ""))
            if not readings:
                continue
            if self._publish(self._push_topic, readings_payload(model.address, readings, sent=self.wall_clock())):
                self.stats.pushed_messages += 1
                self.stats.pushed_readings += len(readings)
                sent += len(readings)
        return sent

    async def _pusher(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.connected:
                try:
                    self.push_readings()
                except Exception:
                    log.exception("terminal %s: pushing readings failed", self.terminal_id)


# --- a fleet of terminals ----------------------------------------------------------------------


@dataclass(slots=True)
class MqttFleet(TerminalFleet):
    """Running terminals, by id, sharing one simulated clock."""

    terminals: dict[str, MqttTerminal]
    clock: Clock
    protocol: str
    units: dict[str, dict[int, str]] = field(default_factory=dict)  # Modbus: tid -> unit -> address

    def terminal(self, tid: str) -> MqttTerminal:
        return self.terminals[tid]

    def addresses(self, tid: str) -> list[str]:
        return self.terminals[tid].addresses

    def _members(self) -> Iterable[MqttTerminal]:
        return self.terminals.values()


def terminal_id(n: int) -> str:
    return f"T{n:03d}"


def meter_address(terminal: int, meter: int) -> str:
    return f"{terminal:06d}{meter:06d}"


async def run_mqtt_fleet(
    n_terminals: int,
    meters_per_terminal: int,
    host: str,
    port: int = 1883,
    *,
    protocol: str = DLT645_2007,
    root: str = DEFAULT_ROOT,
    start: datetime | None = None,
    speed: float = 1.0,
    clock: Clock | None = None,
    regmap: str = "generic",
    framing: str = "rtu",
    latency: float = 0.0,
    push_every: float | None = None,
    seed: int = 0,
    keepalive: int = 10,
    reconnect_min: float = 0.5,
    reconnect_max: float = 5.0,
    timeout: float = 10.0,
) -> MqttFleet:
    """Start ``n_terminals`` terminals (``T001``...) of ``meters_per_terminal`` meters each, all
    speaking ``protocol`` (``dlt645-2007``, ``dlt645-1997`` or ``modbus`` through the register map
    ``regmap`` with ``framing``).  Raises ConnectionError (having closed them all) if some terminal
    is not connected within ``timeout`` s.  The caller closes the fleet."""
    if protocol not in (DLT645_2007, DLT645_1997, MODBUS):
        raise ValueError(f"protocol {protocol!r} must be dlt645-2007, dlt645-1997 or modbus")
    if not 1 <= n_terminals <= 999 or not 1 <= meters_per_terminal <= 247:
        raise ValueError("1..999 terminals of 1..247 meters each")
    if clock is None:
        clock = SimClock.starting(start, speed)
    begin = clock()
    regmap_obj = get_map(regmap) if protocol == MODBUS else None
    terminals: dict[str, MqttTerminal] = {}
    units: dict[str, dict[int, str]] = {}
    for t in range(1, n_terminals + 1):
        tid = terminal_id(t)
        models = [MeterModel(meter_address(t, m), start=begin, seed=seed * 1_000_003 + t * 1000 + m)
                  for m in range(1, meters_per_terminal + 1)]
        bus: SimBus
        if protocol == MODBUS:
            assert regmap_obj is not None
            bus = ModbusBus({m: model for m, model in enumerate(models, start=1)}, regmap_obj, framing=framing,
                            seed=seed + t)
            units[tid] = bus.units
        else:
            v1997 = {m.address: DLT645_1997 for m in models} if protocol == DLT645_1997 else None
            bus = Dlt645Bus(models, seed=seed + t, protocols=v1997)
        terminals[tid] = MqttTerminal(tid, bus, host, port, clock=clock, root=root, keepalive=keepalive,
                                      latency=latency, push_every=push_every, reconnect_min=reconnect_min,
                                      reconnect_max=reconnect_max)
    fleet = MqttFleet(terminals, clock, protocol, units)
    up = await asyncio.gather(*(term.start(timeout) for term in terminals.values()))
    if not all(up):
        down = [tid for tid, ok in zip(terminals, up, strict=True) if not ok]
        await fleet.close()
        raise ConnectionError(f"MQTT terminals not connected to {host}:{port} within {timeout} s: {', '.join(down)}")
    return fleet


__all__ = [
    "DEFAULT_PUSH_QUANTITIES", "MqttFleet", "MqttTerminal", "TerminalStats", "meter_address", "run_mqtt_fleet",
    "terminal_id",
]  # fmt: skip
