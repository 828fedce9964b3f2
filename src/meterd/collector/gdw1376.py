"""Q/GDW 1376.1 terminals (concentrators 集中器, special-transformer terminals 专变终端): the master side.

A terminal dials in over GPRS/4G, logs in (AFN 02 F1), heart-beats (AFN 02 F3) and answers the
master's requests; it reads its meters itself and keeps what it read.  Three parts here:

* :class:`GdwListener` -- the TCP server terminals log in to.  The rules are the DTU listener's
  (:mod:`meterd.collector.dtu`): a login from a terminal address that no channel names is refused
  (``unknown_id``) and the connection closed; frames before a login are dropped
  (``unregistered_data``, counted once per connection); no login within ``registration_timeout``
  closes the connection; a second login of a terminal that is online replaces the first connection
  (``replaced``; the terminal stays online); silence past ``heartbeat_timeout`` takes it offline.
  The master confirms every login, heartbeat and logout (AFN 00 F1, C = 0BH) and any other
  terminal-initiated frame that asks for it (CON); the terminal's replies (PRM = 0) go to its
  channel.  Statistics have the DTU listener's shape, so ``/metrics`` and ``meterd status`` show
  both alike.

* :class:`GdwTransport` -- the byte pipe to one terminal, bound to its current connection; it also
  queues the decoded frames beside their bytes so nothing is decoded twice.

* :class:`GdwChannel` -- a :class:`~meterd.collector.channel.Channel` that speaks 1376.1 to its
  terminal: :meth:`GdwChannel.request` sends one AFN with its data units and returns the (joined)
  reply, one request in flight, with the channel's timeouts, retries, statistics and trace.  Its
  :meth:`GdwChannel.transact` carries a DL/T 645 frame to a meter behind the terminal inside AFN 10
  F1 and returns the meter's reply frame, so everything meterd does with DL/T 645 meters -- reads
  of any identifier, relay commands and their read-back, on-demand reads -- works through a
  concentrator unchanged.  Frames that carry PW (AFN 04, 05, 10) get the password from the
  secrets (``password_secret``); without one PW is zeros, and relay commands are refused.

Polling (:func:`gdw_round`) reads terminal-kept data where the terminal has it and relays the rest:

===========================================  ==========================================================
what a poll asks (DL/T 645 identifier)       read from the terminal
===========================================  ==========================================================
forward active energy, total / rates         AFN 0C F129 (by pn, 8 meters per data unit)
reactive combined 1, quadrant I / IV         AFN 0C F33
voltage, current, power, power factor        AFN 0C F25
daily frozen forward active energy           AFN 0D F161 for the terminal's date (its clock: F2),
                                             stamped that date 00:00 site time
anything else                                AFN 10 F1: the DL/T 645 read relayed to the meter
===========================================  ==========================================================

Values are the meters' own (secondary) and get the meter's CT x PT like a direct read; present
values are stamped with the time the terminal read the meter (never later than the round).
Events: a reply whose EC says important events are waiting (ACD) makes the channel read them by
pointer (AFN 0E F1); ERC14 (terminal power off / on) becomes ``event.power_down.start`` /
``.end`` readings of every meter behind the terminal, which outage detection takes as power-down
reports.  At login the terminal's meter archive (AFN 0A F10) is compared with the config and the
differences downloaded (AFN 04 F10), logged and audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from time import monotonic as time_monotonic
from typing import Any, Final, NoReturn, Self

from meterd.clock import CST, Clock, utc_now
from meterd.collector.channel import (
    ROUTINE,
    URGENT,
    Channel,
    FailureKind,
    Timing,
    TraceEvent,
    TraceHook,
    TransactionError,
)
from meterd.collector.poll import MeterTarget, RoundResult, _Attempts, poll_meter
from meterd.collector.transports.base import Transport
from meterd.errors import AddressMismatchError, ConfigError, LinkClosedError, LinkError, ProtocolError
from meterd.logthrottle import LogThrottle
from meterd.protocols.dlt645.catalogue import Scaling
from meterd.protocols.dlt645.catalogue import lookup as dlt645_lookup
from meterd.protocols.dlt645.frame import Frame as DltFrame
from meterd.protocols.dlt645.frame import StreamDecoder as DltDecoder
from meterd.protocols.dlt645.frame import encode_frame as dlt_encode
from meterd.protocols.gdw1376.catalogue import (
    PROTOCOL_645_1997,
    PROTOCOL_645_2007,
    ArchiveQuery,
    EnergyReading,
    EventLog,
    EventPointers,
    ForwardEnergy,
    ForwardReply,
    ForwardRequest,
    FrozenEnergy,
    MeterArchive,
    MeterEntry,
    PowerOnOff,
    PresentPower,
)
from meterd.protocols.gdw1376.frame import (
    Afn,
    EventCounter,
    TerminalAddress,
    decode_frame,
    parse_terminal_address,
    scan_frames,
)
from meterd.protocols.gdw1376.frame import Frame as GdwFrame
from meterd.protocols.gdw1376.messages import (
    DataUnit,
    Message,
    Reassembler,
    decode_message,
    encode,
    encode_message,
    link_confirm,
    request,
    unit,
)
from meterd.protocols.gdw1376.messages import confirm as confirm_message
from meterd.protocols.readspec import DLT645_1997, ReadSpec
from meterd.readings import Quality, Reading

log = logging.getLogger(__name__)

UNKNOWN_ID: Final = "unknown_id"
UNREGISTERED_DATA: Final = "unregistered_data"
REGISTRATION_TIMEOUT: Final = "registration_timeout"
OVERSIZED: Final = "oversized"
REJECT_REASONS: Final = (UNKNOWN_ID, UNREGISTERED_DATA, REGISTRATION_TIMEOUT, OVERSIZED)
COUNTERS: Final = ("logins", "replaced", "heartbeats", "heartbeat_timeouts", "logouts", "disconnects",
                   "rx_bytes", "tx_bytes", "unsolicited_frames")
MAX_PENDING: Final = 4096  # bytes kept of an incomplete frame; a terminal's frames are far smaller
MAX_UNKNOWN_IDS: Final = 100
PW_BYTES: Final = 16
ZERO_PW: Final = bytes(PW_BYTES)
FROZEN_STAMP: Final = time(0, 0)
LINK_LOGIN, LINK_LOGOUT, LINK_HEARTBEAT = 1, 2, 3
RELAY_CONTROL: Final = 0x1C  # DL/T 645-2007 control code of relay commands (跳闸, 合闸允许, 报警, 保电)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


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


# --- the listener ---------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    def __init__(self, listener: GdwListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.terminal: _Terminal | None = None
        self.closed = False
        self.close_reason: str | None = None
        self.saw_unregistered = False
        self.deadline: asyncio.TimerHandle | None = None
        self.last_rx = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.listener._accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = self.loop.time()
        self.listener._data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.listener._connection_lost(self, exc)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def shut(self, reason: str, *, abort: bool = False) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.transport is not None and not self.closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True


@dataclass(eq=False)
class _Terminal:
    key: str  # RRRR-TTTT
    channel: str
    session: _Connection | None = None
    transport: GdwTransport | None = None
    online_event: asyncio.Event = field(default_factory=asyncio.Event)
    peer: str | None = None
    master: int = 0  # the MSA the terminal logged in with (echoed in our requests)
    connected_since: datetime | None = None
    online_since: datetime | None = None
    online_total: float = 0.0
    last_seen: datetime | None = None
    last_heartbeat: datetime | None = None
    last_offline: datetime | None = None
    offline_reason: str = ""
    clock: datetime | None = None  # the terminal's clock as its last 2013 heartbeat said
    counters: Counter[str] = field(default_factory=Counter)

    def online_seconds(self, now: datetime) -> float:
        running = (now - self.online_since).total_seconds() if self.online_since is not None else 0.0
        return self.online_total + max(running, 0.0)


class GdwListener:
    """The TCP server Q/GDW 1376.1 terminals log in to.  ``known``: terminal address
    (``RRRR-TTTT``) -> channel name.  ``on_login(channel)`` is called (in the loop) after each
    login (a replacement's too); ``on_presence(channel, online)`` when a terminal comes online or
    goes offline."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0, *, known: Mapping[str, str],
                 heartbeat_timeout: float = 120.0, registration_timeout: float = 10.0, clock: Clock = utc_now,
                 name: str = "gdw1376", check_interval: float | None = None) -> None:
        problems = []
        terminals: dict[str, _Terminal] = {}
        for text, channel in known.items():
            try:
                key = parse_terminal_address(text).key
            except ProtocolError as exc:
                problems.append(f"listener {name}: channel {channel}: {exc}")
                continue
            terminals[key] = _Terminal(key, channel)
        if heartbeat_timeout <= 0:
            problems.append(f"listener {name}: heartbeat_timeout {heartbeat_timeout} must be > 0 seconds")
        if registration_timeout <= 0:
            problems.append(f"listener {name}: registration_timeout {registration_timeout} must be > 0 seconds")
        if problems:
            raise ConfigError(problems)
        self.name = name
        self.host = host
        self.port = port
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.registration_timeout = float(registration_timeout)
        self.check_interval = check_interval or min(1.0, self.heartbeat_timeout / 5)
        self.clock = clock
        self._terminals = terminals
        self._pending: set[_Connection] = set()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._bound: tuple[str, int] | None = None
        self.started: datetime | None = None
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.unknown_ids: Counter[str] = Counter()
        self._log = LogThrottle()
        self.on_presence: Callable[[str, bool], None] | None = None
        self.on_login: Callable[[str], None] | None = None
        # the technician's frame trace: logins, heartbeats and the master's confirmations, as the
        # channels trace their requests (``meterd.cli.frametext.trace_line`` prints both)
        self.trace: TraceHook | None = None

    # --- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        except OSError as exc:
            raise LinkError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                            channel=self.name) from exc
        self._bound = self._server.sockets[0].getsockname()[:2]
        self.started = self.clock()
        self._watchdog = asyncio.create_task(self._watch(), name=f"gdw1376-watchdog {self.name}")
        log.info("gdw1376 listener %s: listening on %s:%s for %d terminal(s)", self.name, self._bound[0],
                 self._bound[1], len(self._terminals))

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watchdog
            self._watchdog = None
        for term in self._terminals.values():
            if term.session is not None:
                conn = term.session
                self._offline(term, conn, "listener closed")
                conn.shut("listener closed", abort=True)
        for conn in list(self._connections):
            conn.shut("listener closed", abort=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def bound_port(self) -> int:
        if self._bound is None:
            raise RuntimeError(f"gdw1376 listener {self.name} is not started")
        return int(self._bound[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- what channels use ---------------------------------------------------------------------------

    def transport(self, terminal: str, *, connect_wait: float = 0.0) -> GdwTransport:
        term = self._terminal(terminal)
        if term.transport is None:
            term.transport = GdwTransport(self, term.key, term.channel, connect_wait=connect_wait)
        else:
            term.transport.connect_wait = connect_wait
        return term.transport

    def is_online(self, terminal: str) -> bool:
        return self._terminal(terminal).session is not None

    async def wait_online(self, terminal: str, timeout: float) -> bool:
        term = self._terminal(terminal)
        if term.session is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), timeout)
        return term.session is not None

    @property
    def terminal_ids(self) -> list[str]:
        return list(self._terminals)

    def _terminal(self, terminal: str) -> _Terminal:
        try:
            return self._terminals[parse_terminal_address(terminal).key]
        except (KeyError, ProtocolError):
            raise KeyError(f"gdw1376 listener {self.name}: terminal {terminal!r} is not configured") from None

    # --- statistics ----------------------------------------------------------------------------------

    def terminal_status(self, terminal: str) -> dict[str, Any]:
        term = self._terminal(terminal)
        now = self.clock()
        online = term.online_seconds(now)
        observed = (now - self.started).total_seconds() if self.started is not None else 0.0
        doc: dict[str, Any] = {
            "channel": term.channel,
            "state": "online" if term.session is not None else "offline",
            "peer": term.peer if term.session is not None else None,
            "format": "gdw1376",
            "connected_since": _iso(term.connected_since) if term.session is not None else None,
            "last_seen": _iso(term.last_seen),
            "last_heartbeat": _iso(term.last_heartbeat),
            "last_offline": _iso(term.last_offline),
            "offline_reason": term.offline_reason or None,
            "online_seconds": round(online, 3),
            "online_rate": round(min(online / observed, 1.0), 4) if observed > 0 else None,
            "terminal_clock": term.clock.isoformat() if term.clock is not None else None,
        }
        doc.update({k: term.counters[k] for k in COUNTERS})
        return doc

    def status(self) -> dict[str, Any]:
        terminals = {key: self.terminal_status(key) for key in self._terminals}
        return {
            "name": self.name,
            "protocol": "gdw1376",
            "host": self._bound[0] if self._bound else self.host,
            "port": self._bound[1] if self._bound else self.port,
            "formats": ["gdw1376"],
            "started": _iso(self.started),
            "heartbeat_timeout": self.heartbeat_timeout,
            "registration_timeout": self.registration_timeout,
            "accepted": self.accepted,
            "pending": len(self._pending),
            "known": len(self._terminals),
            "online": sum(1 for t in terminals.values() if t["state"] == "online"),
            "rejected": {r: self.rejected[r] for r in REJECT_REASONS},
            "unknown_ids": dict(self.unknown_ids),
            "terminals": terminals,
        }

    # --- connection events ----------------------------------------------------------------------------

    def _accepted(self, conn: _Connection) -> None:
        if self._server is None:
            conn.shut("listener closed", abort=True)
            return
        self.accepted += 1
        self._connections.add(conn)
        self._pending.add(conn)
        conn.deadline = conn.loop.call_later(self.registration_timeout, self._login_deadline, conn)

    def _reject(self, conn: _Connection, reason: str, detail: str, data: bytes = b"") -> None:
        self.rejected[reason] += 1
        shown = f" [{data[:32].hex(' ').upper()}]" if data else ""
        self._log.log(log, logging.WARNING, f"gdw1376 listener {self.name}: connections rejected ({reason})",
                      "gdw1376 listener %s: connection from %s rejected (%s): %s%s", self.name, conn.peer, reason,
                      detail, shown)
        self._pending.discard(conn)
        conn.shut(reason)

    def _login_deadline(self, conn: _Connection) -> None:
        conn.deadline = None
        if conn.terminal is None and not conn.closed:
            self._reject(conn, REGISTRATION_TIMEOUT, f"no login (AFN 02 F1) within {self.registration_timeout:g} s")

    def _data(self, conn: _Connection, data: bytes) -> None:
        conn.buf += data
        found = scan_frames(conn.buf)
        if found:
            end = found[-1][1]
            raw_buf = bytes(conn.buf)
            del conn.buf[:end]
        elif len(conn.buf) > MAX_PENDING:
            dropped = bytes(conn.buf[:32])
            conn.buf.clear()
            if conn.terminal is None:
                self._reject(conn, OVERSIZED, f"more than {MAX_PENDING} bytes without a Q/GDW 1376.1 frame", dropped)
            return
        term = conn.terminal
        if term is not None and term.session is conn:
            term.counters["rx_bytes"] += len(data)
            term.last_seen = self.clock()
        for start, stop, frame in found:
            if conn.closed:
                return
            self._frame(conn, frame, raw_buf[start:stop])

    def _frame(self, conn: _Connection, frame: GdwFrame, raw: bytes) -> None:
        if not frame.is_uplink:
            return  # our own frame echoed, or another master's
        term = conn.terminal
        if frame.afn == Afn.LINK and frame.prm:
            if self.trace is not None:
                self._trace(term.channel if term is not None else self.name, "rx", raw, frame)
            try:
                msg = decode_message(frame)
            except ProtocolError:
                return
            fn = msg.units[0].fns[0] if msg.units and msg.units[0].fns else 0
            if fn == LINK_LOGIN:
                self._login(conn, msg)
            elif term is None or term.session is not conn:
                self._unregistered(conn, raw)
            elif fn == LINK_HEARTBEAT:
                term.counters["heartbeats"] += 1
                term.last_heartbeat = self.clock()
                beat = msg.units[0].values[0] if msg.units[0].values else None
                if beat is not None and getattr(beat, "clock", None) is not None:
                    term.clock = beat.clock
                self._send(term, conn, link_confirm(msg))
            elif fn == LINK_LOGOUT:
                term.counters["logouts"] += 1
                self._send(term, conn, link_confirm(msg))
                self._offline(term, conn, "logged out (AFN 02 F2)")
                conn.shut("logged out")
            return
        if term is None or term.session is not conn:
            self._unregistered(conn, raw)
            return
        if frame.prm:  # the terminal's own report (events, data it pushes): confirmed when asked
            term.counters["unsolicited_frames"] += 1
            if frame.con:
                with contextlib.suppress(ProtocolError):
                    self._send(term, conn, encode(confirm_message(decode_message(frame))))
            return
        transport = term.transport
        if transport is not None and transport._session is conn:
            transport._frame(frame, raw)
        else:
            term.counters["unsolicited_frames"] += 1

    def _send(self, term: _Terminal, conn: _Connection, data: bytes) -> None:
        conn.write(data)
        term.counters["tx_bytes"] += len(data)
        if self.trace is not None:
            self._trace(term.channel, "tx", data, decode_frame(data))

    def _trace(self, channel: str, direction: str, data: bytes, frame: GdwFrame) -> None:
        assert self.trace is not None
        try:
            self.trace(TraceEvent(channel, direction, data, frame, "", time_monotonic()))
        except Exception:  # a trace printer's trouble is not the link's
            log.exception("gdw1376 listener %s: trace hook failed", self.name)

    def _unregistered(self, conn: _Connection, raw: bytes) -> None:
        if conn.saw_unregistered:
            return
        conn.saw_unregistered = True
        self.rejected[UNREGISTERED_DATA] += 1
        self._log.log(log, logging.WARNING, f"gdw1376 listener {self.name}: frames before a login",
                      "gdw1376 listener %s: %s sent a frame before logging in (dropped) [%s]", self.name,
                      conn.peer, raw[:32].hex(" ").upper())

    def _login(self, conn: _Connection, msg: Message) -> None:
        key = msg.address.key
        term = self._terminals.get(key)
        if term is None:
            if key in self.unknown_ids or len(self.unknown_ids) < MAX_UNKNOWN_IDS:
                first = key not in self.unknown_ids
                self.unknown_ids[key] += 1
            else:
                first = False
            self.rejected[UNKNOWN_ID] += 1
            (log.warning if first else log.debug)("gdw1376 listener %s: unknown terminal %s from %s refused",
                                                  self.name, key, conn.peer)
            self._pending.discard(conn)
            conn.shut(UNKNOWN_ID)
            return
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        self._pending.discard(conn)
        now = self.clock()
        old = term.session
        conn.terminal = term
        term.session = conn
        term.master = msg.address.master
        if old is not None and old is not conn:
            term.counters["replaced"] += 1
            log.warning("gdw1376 listener %s: terminal %s logged in again from %s; dropping its connection from %s",
                        self.name, key, conn.peer, old.peer)
            self._detach(term, old, f"replaced by a new connection from {conn.peer}")
            old.shut("replaced", abort=True)
        elif old is None:
            term.online_since = now
            term.online_event.set()
            log.info("gdw1376 listener %s: terminal %s (channel %s) logged in from %s", self.name, key, term.channel,
                     conn.peer)
            self._presence(term.channel, True)
        term.counters["logins"] += 1
        term.connected_since = term.last_seen = now
        term.peer = conn.peer
        self._send(term, conn, link_confirm(msg))
        if self.on_login is not None:
            try:
                self.on_login(term.channel)
            except Exception:
                log.exception("gdw1376 listener %s: login hook for channel %s failed", self.name, term.channel)

    def _connection_lost(self, conn: _Connection, exc: Exception | None) -> None:
        self._connections.discard(conn)
        self._pending.discard(conn)
        term = conn.terminal
        if term is not None and term.session is conn:
            if conn.close_reason is None:
                term.counters["disconnects"] += 1
                reason = f"connection lost: {exc}" if exc else "the terminal closed the connection"
            else:
                reason = conn.close_reason
            self._offline(term, conn, reason)

    def _offline(self, term: _Terminal, conn: _Connection, reason: str) -> None:
        if term.session is not conn:
            return
        now = self.clock()
        term.session = None
        term.online_total = term.online_seconds(now)
        term.online_since = None
        term.online_event.clear()
        term.last_offline, term.offline_reason = now, reason
        self._detach(term, conn, reason)
        log.warning("gdw1376 listener %s: terminal %s (channel %s) offline: %s", self.name, term.key, term.channel,
                    reason)
        self._presence(term.channel, False)

    def _presence(self, channel: str, online: bool) -> None:
        if self.on_presence is not None:
            try:
                self.on_presence(channel, online)
            except Exception:
                log.exception("gdw1376 listener %s: presence callback for channel %s failed", self.name, channel)

    def _detach(self, term: _Terminal, conn: _Connection, reason: str) -> None:
        transport = term.transport
        if transport is not None and transport._session is conn:
            transport._session_lost(LinkClosedError(f"terminal {term.key}: {reason}"))

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_interval)
            now = loop.time()
            for term in self._terminals.values():
                conn = term.session
                if conn is not None and now - conn.last_rx > self.heartbeat_timeout:
                    term.counters["heartbeat_timeouts"] += 1
                    reason = f"no heartbeat for {self.heartbeat_timeout:g} s"
                    conn.close_reason = reason
                    try:
                        self._offline(term, conn, reason)
                        conn.shut(reason, abort=True)
                    except Exception:
                        log.exception("gdw1376 listener %s: taking terminal %s offline failed", self.name, term.key)


# --- the transport ----------------------------------------------------------------------------------


class GdwTransport(Transport):
    """The pipe to one terminal, bound to its current connection at ``open()`` (the DTU
    transport's rules: LinkError at once while the terminal is offline).  Beside the bytes, the
    frames the listener decoded wait in :attr:`frames` for the channel's matcher."""

    def __init__(self, listener: GdwListener, key: str, name: str, *, connect_wait: float = 0.0) -> None:
        super().__init__(name)
        self.listener = listener
        self.key = key
        self.connect_wait = connect_wait
        self._session: _Connection | None = None
        self.frames: deque[GdwFrame] = deque(maxlen=64)

    @property
    def terminal(self) -> _Terminal:
        return self.listener._terminals[self.key]

    @property
    def is_open(self) -> bool:
        s = self._session
        return s is not None and self._closed_exc is None and not s.closed and self.terminal.session is s

    async def open(self) -> None:
        term = self.terminal
        if term.session is None and self.connect_wait > 0 and self.listener.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), self.connect_wait)
        s = term.session
        if s is None or s.closed:
            if not self.listener.running:
                raise LinkError(f"terminal {self.key} offline (gdw1376 listener {self.listener.name} is not running)",
                                channel=self.name)
            since = ""
            if term.last_offline is not None:
                since = f" since {term.last_offline.isoformat(timespec='seconds')}: {term.offline_reason}"
            elif term.counters["logins"] == 0:
                since = " (never logged in)"
            raise LinkError(f"terminal {self.key} offline{since}", channel=self.name)
        self.reset_input()
        self._closed_exc = None
        self._session = s

    def reset_input(self) -> None:
        self._buffer.clear()
        self.frames.clear()

    async def write(self, data: bytes) -> None:
        if not self.is_open:
            raise LinkClosedError(f"terminal {self.key} is not connected", channel=self.name)
        assert self._session is not None
        self._session.write(data)
        self.terminal.counters["tx_bytes"] += len(data)

    async def close(self) -> None:
        if self._session is not None:
            self._session = None
            self._lost(LinkClosedError(f"terminal {self.key}: transport closed"))

    def _frame(self, frame: GdwFrame, raw: bytes) -> None:
        self.frames.append(frame)
        self._received(raw)

    def _session_lost(self, exc: LinkClosedError) -> None:
        self._session = None
        self._lost(exc)

    def __repr__(self) -> str:
        return f"GdwTransport({self.name!r}, terminal {self.key})"


# --- the channel -----------------------------------------------------------------------------------


class TerminalDenied(ProtocolError):
    """The terminal answered AFN 00 F2 (denied) or F3 with errors."""


class _GdwReply:
    """Matcher of one 1376.1 request: the frames from the terminal whose RSEQ is the request's
    (a multi-frame reply joined), or its AFN 00 answer.  The whole message lands in ``message``;
    ``feed`` returns the last frame (what the trace shows)."""

    __slots__ = ("afn", "channel", "dropped", "key", "message", "pending", "reassembler", "seq")

    def __init__(self, channel: GdwChannel, afn: int, seq: int) -> None:
        self.channel = channel
        self.key = channel.address.key
        self.afn = afn
        self.seq = seq
        self.reassembler = Reassembler()
        self.message: Message | None = None
        self.dropped = 0
        self.pending = False

    def feed(self, data: bytes) -> GdwFrame | None:
        frames = self.channel.gdw_transport.frames
        while frames:
            frame = frames.popleft()
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


class GdwChannel(Channel):
    """The channel to one Q/GDW 1376.1 terminal: see the module docstring."""

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
        self.events_waiting = False

    @property
    def relay_timeout_ms(self) -> int:
        """How long the terminal waits for a relayed meter's answer: inside the channel's response
        timeout (the terminal must answer before the master gives up), in the units AFN 10 has."""
        ms = int(self.timing.response * 1000 * 0.75)
        return max(10, min(1270, ms - ms % 10)) if ms < 2000 else min(127, ms // 1000) * 1000

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x0F
        return self._seq

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


# --- polling ---------------------------------------------------------------------------------------

_ENERGY_BLOCK_2007 = 0x0001FF00
# DL/T 645-2007 identifiers the terminal keeps: di -> (afn, fn)
_F129_DIS = frozenset({_ENERGY_BLOCK_2007, *(0x00010000 | (r << 8) for r in range(5))})
_F33_DIS = frozenset({0x0003FF00, 0x0005FF00, 0x0008FF00, *(k << 16 | r << 8 for k in (3, 5, 8) for r in range(5))})
_F25_DIS = frozenset({0x0201FF00, 0x0202FF00, 0x0203FF00, 0x0204FF00, 0x0205FF00, 0x0206FF00,
                      *(0x02000000 | d << 16 | p << 8 for d in (1, 2) for p in (1, 2, 3)),
                      *(0x02000000 | d << 16 | p << 8 for d in (3, 4, 5, 6) for p in (0, 1, 2, 3))})
_F161_DIS = frozenset({0x05060101, 0x05060100})
_FN_OF: Final = {**{d: 129 for d in _F129_DIS}, **{d: 33 for d in _F33_DIS}, **{d: 25 for d in _F25_DIS}}
RATES_PER_FN: Final = 4


def _rated(prefix: str, values: tuple[Decimal | None, ...]) -> list[tuple[str, Decimal | None]]:
    return [(f"{prefix}.{'total' if i == 0 else f'rate{i}'}", v) for i, v in enumerate(values)]


def _phased(prefix: str, values: tuple[Decimal | None, ...], total: bool) -> list[tuple[str, Decimal | None]]:
    names = (("total",) if total else ()) + ("a", "b", "c")
    return [(f"{prefix}.{n}", v) for n, v in zip(names, values, strict=False)]


_UNIT_SCALING: Final = {"kWh": Scaling.CTPT, "kvarh": Scaling.CTPT, "kW": Scaling.CTPT, "kvar": Scaling.CTPT,
                        "kVA": Scaling.CTPT, "A": Scaling.CT, "V": Scaling.PT, "": Scaling.NONE}


def terminal_values(fn: int, value: Any) -> tuple[datetime | None, list[tuple[str, Decimal | None, str]]]:
    """A terminal-kept value as (when the terminal read the meter, [(quantity, value, unit)])."""
    if isinstance(value, EnergyReading):
        return value.read_at, [(q, v, "kWh") for q, v in _rated("energy.active.import", value.values)]
    if isinstance(value, ForwardEnergy):
        out = [(q, v, "kWh") for q, v in _rated("energy.active.import", value.active)]
        out += [(q, v, "kvarh") for q, v in _rated("energy.reactive.combined1", value.reactive)]
        out += [(q, v, "kvarh") for q, v in _rated("energy.reactive.q1", value.quadrant1)]
        out += [(q, v, "kvarh") for q, v in _rated("energy.reactive.q4", value.quadrant4)]
        return value.read_at, out
    if isinstance(value, PresentPower):
        out = [(q, v, "kW") for q, v in _phased("power.active", value.active, True)]
        out += [(q, v, "kvar") for q, v in _phased("power.reactive", value.reactive, True)]
        out += [(q, v, "kVA") for q, v in _phased("power.apparent", value.apparent, True)]
        # 1376.1 A.5 is a percentage; meterd's pf is a fraction (DL/T 645's X.XXX)
        out += [(q, v / 100 if v is not None else None, "") for q, v in _phased("pf", value.power_factor, True)]
        out += [(q, v, "V") for q, v in _phased("voltage", value.voltage, False)]
        out += [(q, v, "A") for q, v in _phased("current", value.current, False)]
        return value.read_at, out
    return None, []


def _local(naive: datetime | None, zone: tzinfo) -> datetime | None:
    return naive.replace(tzinfo=zone).astimezone(UTC) if naive is not None else None


def _wanted(spec: ReadSpec, dis: Sequence[int], quantity: str) -> bool:
    """Whether a quantity the terminal sent is one the poll asked for: carried by one of the
    identifiers it maps from, and kept by the poll."""
    for di in dis:
        if quantity in _carried(di) and spec.wanted(di, quantity):
            return True
    return False


_CARRIED: dict[int, frozenset[str]] = {}


def _carried(di: int) -> frozenset[str]:
    found = _CARRIED.get(di)
    if found is None:
        found = _CARRIED[di] = frozenset(dlt645_lookup(di).quantities)
    return found


@dataclass(slots=True)
class _MeterPlan:
    target: MeterTarget
    pn: int
    spec: ReadSpec
    fns: dict[int, list[int]] = field(default_factory=dict)  # fn -> the dis it answers
    frozen: list[int] = field(default_factory=list)  # F161 dis
    relayed: list[int] = field(default_factory=list)


def _plan_meter(target: MeterTarget, pn: int, reads: Any) -> _MeterPlan:
    spec = reads if isinstance(reads, ReadSpec) else ReadSpec(tuple(reads))
    plan = _MeterPlan(target, pn, spec)
    for di in spec.items:
        fn = _FN_OF.get(di) if target.protocol != DLT645_1997 else None
        if fn is not None:
            plan.fns.setdefault(fn, []).append(di)
        elif di in _F161_DIS and target.protocol != DLT645_1997:
            plan.frozen.append(di)
        else:
            plan.relayed.append(di)
    return plan


def _units(afn: int, pns: Sequence[int], fns: Sequence[int], value: Any = None) -> list[DataUnit]:
    """Data units naming ``pns`` x ``fns``: one per (DA group of 8 points, DT group of 8 items)."""
    by_da: dict[int, list[int]] = {}
    for pn in sorted(set(pns)):
        by_da.setdefault((pn - 1) // 8, []).append(pn)
    by_dt: dict[int, list[int]] = {}
    for fn in sorted(set(fns)):
        by_dt.setdefault((fn - 1) // 8, []).append(fn)
    out = []
    for points in by_da.values():
        for items in by_dt.values():
            out.append(DataUnit(tuple(points), tuple(items), (value,) * (len(points) * len(items))))
    return out


MAX_UNITS_PER_REQUEST: Final = 4  # 4 x 8 meters x F129 (~31 bytes each) ~ 1 KB: one GPRS frame


async def gdw_round(channel: GdwChannel, meters: Sequence[tuple[MeterTarget, Any]], now: datetime, *,
                    zone: tzinfo = CST) -> RoundResult:
    """One poll round through a terminal (see the module docstring's table)."""
    result = RoundResult(channel.name, now)
    plans = [_plan_meter(t, channel.pns[t.address], reads) for t, reads in meters if t.address in channel.pns]
    logs = {p.target.address: _Attempts(channel, p.target, now) for p in plans}
    by_pn = {p.pn: p for p in plans}
    # AFN 0C: meters asked the same items share data units
    groups: dict[tuple[int, ...], list[int]] = {}
    for p in plans:
        if p.fns:
            groups.setdefault(tuple(sorted(p.fns)), []).append(p.pn)
    for fns, pns in groups.items():
        units = _units(Afn.CLASS1_DATA, pns, fns)
        for i in range(0, len(units), MAX_UNITS_PER_REQUEST):
            chunk = units[i:i + MAX_UNITS_PER_REQUEST]
            await _class_request(channel, Afn.CLASS1_DATA, chunk, by_pn, logs, result, now, zone)
    # AFN 0D F161 for the terminal's date
    frozen = [p for p in plans if p.frozen]
    if frozen:
        day = await _terminal_date(channel, now, zone, logs, frozen)
        if day is not None:
            units = _units(Afn.CLASS2_DATA, [p.pn for p in frozen], [161], day)
            for i in range(0, len(units), MAX_UNITS_PER_REQUEST):
                await _class_request(channel, Afn.CLASS2_DATA, units[i:i + MAX_UNITS_PER_REQUEST], by_pn, logs,
                                     result, now, zone)
    # the rest relayed to the meters (AFN 10 F1)
    for p in plans:
        if p.relayed:
            keep = {di: p.spec.keep.get(di) for di in p.relayed if di in p.spec.keep}
            readings, attempts = await poll_meter(channel, p.target, ReadSpec(tuple(p.relayed), keep), now,
                                                  meter_tz=zone)
            result.readings.extend(readings)
            logs[p.target.address].list.extend(attempts)
    for log_ in logs.values():
        result.attempts.extend(log_.list)
    return result


def _label(afn: int, fn: int) -> str:
    return f"{afn:02X} F{fn}"


async def _terminal_date(channel: GdwChannel, now: datetime, zone: tzinfo, logs: dict[str, _Attempts],
                         frozen: list[_MeterPlan]) -> date | None:
    """The terminal's date, from its clock (AFN 0C F2); failures recorded against the F161 reads."""
    try:
        reply = await channel.request(Afn.CLASS1_DATA, [unit(0, 2)], meter=f"terminal {channel.address.key}")
        clock = reply.value(2, 0)
    except (TransactionError, ProtocolError, KeyError) as exc:
        kind = exc.kind if isinstance(exc, TransactionError) else FailureKind.GARBLED
        for p in frozen:
            logs[p.target.address].add(_label(Afn.CLASS2_DATA, 161), kind,
                                       detail=f"terminal clock (AFN 0C F2) not read: {exc}")
        return None
    if not isinstance(clock, datetime):
        return now.astimezone(zone).date()
    return clock.date()


async def _class_request(channel: GdwChannel, afn: int, units: list[DataUnit], by_pn: dict[int, _MeterPlan],
                         logs: dict[str, _Attempts], result: RoundResult, now: datetime, zone: tzinfo) -> None:
    asked = [(pn, fn) for u in units for pn in u.pns for fn in u.fns]
    before = channel.stats.latency_total, channel.stats.successes
    try:
        reply = await channel.request(afn, units, meter=by_pn[asked[0][0]].target.address)
    except TransactionError as exc:
        for pn, fn in asked:
            logs[by_pn[pn].target.address].add(_label(afn, fn), exc.kind, detail=str(exc))
        return
    except ProtocolError as exc:
        for pn, fn in asked:
            logs[by_pn[pn].target.address].add(_label(afn, fn), FailureKind.ABNORMAL, detail=str(exc))
        return
    n = channel.stats.successes - before[1]
    latency = (channel.stats.latency_total - before[0]) / n if n else None
    got = {(pn, fn): v for pn, fn, v in reply.items()} if reply.afn == afn else {}
    for pn, fn in asked:
        plan = by_pn[pn]
        meter = plan.target
        value = got.get((pn, fn))
        label = _label(afn, fn)
        if value is None:
            logs[meter.address].add(label, "no_record" if afn == Afn.CLASS2_DATA else FailureKind.ABNORMAL,
                                    detail=f"terminal {channel.address.key} has no AFN {afn:02X}H F{fn} of p{pn}")
            continue
        if isinstance(value, FrozenEnergy):
            period = value.period
            stamp = (datetime.combine(period, FROZEN_STAMP, zone).astimezone(UTC) if period is not None else now)
            pairs = [(f"frozen.daily.{q}", v, "kWh") for q, v in _rated("energy.active.import", value.values)]
            dis = plan.frozen
        else:
            read_at, triples = terminal_values(fn, value)
            pairs = triples
            at = _local(read_at, zone)
            stamp = at if at is not None and at <= now else now
            dis = plan.fns.get(fn, [])
        for q, v, unit_ in pairs:
            if v is None or not _wanted(plan.spec, dis, q):
                continue
            value_ = meter.scale(v, _UNIT_SCALING.get(unit_, Scaling.NONE))
            result.readings.append(Reading(meter.address, q, stamp, value_, unit_, Quality.GOOD))
        logs[meter.address].add(label, "ok", latency)


# --- after login: the meter archive, events ----------------------------------------------------------

BAUD_OF: Final = {DLT645_1997: 1200}
DEFAULT_BAUD: Final = 2400


def archive_entries(channel: GdwChannel, protocols: Mapping[str, str]) -> list[MeterEntry]:
    """The archive the config says the terminal should hold: one entry per meter, seq = pn."""
    out = []
    for address, pn in sorted(channel.pns.items(), key=lambda kv: kv[1]):
        protocol = protocols.get(address, "dlt645-2007")
        out.append(MeterEntry(seq=pn, pn=pn, port=channel.port, baud=BAUD_OF.get(protocol, DEFAULT_BAUD),
                              protocol=PROTOCOL_645_1997 if protocol == DLT645_1997 else PROTOCOL_645_2007,
                              address=address))
    return out


def _same(a: MeterEntry, b: MeterEntry) -> bool:
    return (a.pn, a.port, a.baud, a.protocol, a.address) == (b.pn, b.port, b.baud, b.protocol, b.address)


def _show(e: MeterEntry | None) -> str:
    if e is None:
        return "none"
    return f"pn {e.pn} meter {e.address} protocol {e.protocol} port {e.port} baud {e.baud or 'default'}"


ARCHIVE_QUERY_BATCH: Final = 16


async def sync_archive(channel: GdwChannel, protocols: Mapping[str, str], *,
                       audit: Callable[[str, str, dict[str, Any]], None] | None = None) -> list[tuple[int, str, str]]:
    """Query the terminal's archive (AFN 0A F10) for the configured meters, download what differs
    (AFN 04 F10).  The differences as (pn, terminal's entry, config's entry)."""
    wanted = archive_entries(channel, protocols)
    held: dict[int, MeterEntry] = {}
    for i in range(0, len(wanted), ARCHIVE_QUERY_BATCH):
        seqs = tuple(e.seq for e in wanted[i:i + ARCHIVE_QUERY_BATCH])
        reply = await channel.request(Afn.QUERY_PARAMETERS, [unit(0, 10, ArchiveQuery(seqs))])
        for _, fn, value in reply.items():
            if fn == 10 and isinstance(value, MeterArchive):
                held.update({e.seq: e for e in value.entries})
    diffs = [(e.pn, _show(held.get(e.seq)), _show(e)) for e in wanted
             if e.seq not in held or not _same(held[e.seq], e)]
    if not diffs:
        log.info("channel %s: terminal %s holds the configured meter archive (%d meters)", channel.name,
                 channel.address.key, len(wanted))
        return []
    for pn, theirs, ours in diffs:
        log.warning("channel %s: terminal %s archive differs at pn %d: terminal has %s, config says %s; downloading",
                    channel.name, channel.address.key, pn, theirs, ours)
    changed = [e for e in wanted if e.seq not in held or not _same(held[e.seq], e)]
    for i in range(0, len(changed), ARCHIVE_QUERY_BATCH):
        await channel.request(Afn.SET_PARAMETERS, [unit(0, 10, MeterArchive(tuple(changed[i:i + ARCHIVE_QUERY_BATCH])))],
                              pw=channel.pw("AFN 04"), priority=URGENT)
    if audit is not None:
        audit("archive_download", f"terminal {channel.address.key}",
              {"channel": channel.name, "differences": [{"pn": pn, "terminal": t, "config": c} for pn, t, c in diffs]})
    return diffs


async def read_events(channel: GdwChannel, now: datetime, *, zone: tzinfo = CST) -> list[Reading]:
    """The important events the terminal has since the last pointer read (AFN 0E F1); ERC14
    power off/on as ``event.power_down.start`` / ``.end`` readings of every meter behind it."""
    ec = channel.ec
    if ec is None:
        return []
    end = ec.important
    start = channel.event_pointer if channel.event_pointer is not None else (end - 1) & 0xFF
    channel.events_waiting = False
    if start == end:
        return []
    reply = await channel.request(Afn.CLASS3_DATA, [unit(0, 1, EventPointers(start, end))], priority=URGENT)
    channel.event_pointer = end
    out: list[Reading] = []
    for _, fn, value in reply.items():
        if fn != 1 or not isinstance(value, EventLog):
            continue
        for record in value.records:
            if not isinstance(record, PowerOnOff):
                log.info("channel %s: terminal %s event ERC%d", channel.name, channel.address.key, record.erc)
                continue
            off, on = _local(record.off, zone), _local(record.on, zone)
            log.warning("channel %s: terminal %s reports power %s (ERC14)", channel.name, channel.address.key,
                        f"off at {off.isoformat() if off else '?'}" + (f", on at {on.isoformat()}" if on else ""))
            for meter in channel.pns:
                if off is not None:
                    out.append(Reading(meter, "event.power_down.start", off, off, "", Quality.GOOD))
                if on is not None:
                    out.append(Reading(meter, "event.power_down.end", on, on, "", Quality.GOOD))
    return out


# --- control turns of a special-transformer terminal (AFN 05) ---------------------------------------

TRIPPED_BELOW: Final = Decimal("0.001")  # kW: a tripped turn's load reads (next to) nothing


async def send_turn_command(channel: GdwChannel, meter: MeterTarget, command: Any, now: datetime, *,
                            settle: float = 0.0) -> Any:
    """A relay command to the customer behind a special-transformer terminal: its control turn
    (``turn``) tripped with AFN 05 F1 (remote trip, at once, until released) or released with F2
    (permit reclose: the customer closes the breaker), 保电 with F25 / F33.  The terminal's AFN 00
    is the acknowledgement; a trip is confirmed by the meter's load read back (AFN 0C F25: total
    active power below :data:`TRIPPED_BELOW`), the others by the acknowledgement.  Returns the
    :class:`~meterd.protocols.relay.ControlOutcome`; ControlError (with ``.outcome``) otherwise."""
    from meterd.errors import ControlError
    from meterd.protocols.dlt645.messages import RelayCommand
    from meterd.protocols.gdw1376.catalogue import ProtectOn, RemoteTrip
    from meterd.protocols.relay import ControlOutcome

    outcome = ControlOutcome(meter.address, command, now)

    def fail(failure: str, why: str) -> NoReturn:
        outcome.failure, outcome.detail = failure, why
        error = ControlError(f"meter {meter.address}: {command.name}: {why}")
        error.outcome = outcome  # type: ignore[attr-defined]
        raise error

    turn = channel.turn
    units = {RelayCommand.TRIP: [unit(turn, 1, RemoteTrip(0, 0))],
             RelayCommand.RECLOSE: [unit(turn, 2)], RelayCommand.RECLOSE_ALLOWED: [unit(turn, 2)],
             RelayCommand.PROTECT: [unit(0, 25, ProtectOn(0))], RelayCommand.PROTECT_RELEASE: [unit(0, 33)]}
    if command not in units:
        fail("unsupported", f"a special-transformer terminal has no {command.name} (AFN 05 trips and releases "
                            "its control turns)")
    if channel.password is None:
        fail("unsupported", f"AFN 05 through terminal {channel.address.key} needs its password: set "
                            f"channels.{channel.name}.gdw1376.password_secret (the secret's name)")
    try:
        await channel.request(Afn.CONTROL, units[command], meter=meter.address, priority=URGENT,
                              pw=channel.pw("AFN 05"))
    except TerminalDenied as exc:
        fail("refused", f"refused: {exc}: wrong password (PW)?")
    except TransactionError as exc:
        fail("unreachable", f"no acknowledgement: {exc}")
    outcome.acknowledged = True
    if command is not RelayCommand.TRIP:
        outcome.confirmed = True
        outcome.detail = f"acknowledged by terminal {channel.address.key} (AFN 00); turn {turn}"
        return outcome
    if settle:
        await asyncio.sleep(settle)
    pn = channel.pns.get(meter.address)
    if pn is None:
        fail("read-back", f"meter {meter.address} has no pn on channel {channel.name}")
    try:
        reply = await channel.request(Afn.CLASS1_DATA, [unit(pn, 25)], meter=meter.address, priority=URGENT)
        power = reply.value(25, pn)
    except (TransactionError, ProtocolError, KeyError) as exc:
        fail("read-back", f"read-back failed: {exc}")
    total = power.active[0] if isinstance(power, PresentPower) else None
    if total is None:
        fail("read-back", "read-back failed: the terminal has no active power of the meter")
    assert total is not None
    outcome.read_back = {"relay.open": abs(total) < TRIPPED_BELOW}
    if not outcome.read_back["relay.open"]:
        fail("anomaly", f"control anomaly: TRIP acknowledged but the load reads {total} kW")
    outcome.confirmed = True
    outcome.detail = f"turn {turn} tripped: load {total} kW read back (AFN 0C F25)"
    return outcome


__all__ = [
    "COUNTERS",
    "REJECT_REASONS",
    "GdwChannel",
    "GdwListener",
    "GdwTransport",
    "TerminalDenied",
    "archive_entries",
    "gdw_round",
    "password_bytes",
    "read_events",
    "send_turn_command",
    "sync_archive",
    "terminal_values",
]
