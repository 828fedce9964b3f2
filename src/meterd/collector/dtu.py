"""DTUs that dial in: a TCP listener for GPRS/4G transparent terminals, and a transport per terminal.

A DTU (data transfer unit) sits next to the meters' RS-485 bus and connects *to* the master over
the mobile network.  Once connected it first sends a *registration packet* (注册包) carrying its
terminal id, then passes bytes through transparently in both directions, and every so often sends
a *heartbeat packet* (心跳包) so the master (and the operator's NAT) know the link is alive.  What
those two packets look like is configured per DTU model: the sans-I/O codec
:class:`~meterd.protocols.terminal.dtu.DtuFormat` (presets and config keys are documented there).

:class:`DtuListener` accepts the connections, recognises the registration (trying each configured
format), maps the terminal id to its channel, strips heartbeats, watches liveness and keeps the
per-terminal statistics.  :class:`DtuTransport` is the :class:`~meterd.collector.transports.base.Transport`
a :class:`~meterd.collector.channel.Channel` uses to reach the meters behind one terminal: it
opens at once when the DTU is online and raises :class:`~meterd.errors.LinkError` at once when it
is not (the channel records a ``link`` failure and tries again next round), so a round never
waits for a DTU that is not there.  (The daemon holds a DTU channel's first round until the DTU
first registers since start, for at most one interval: :meth:`DtuTransport.wait_registered`.)

Rules of the listener
---------------------
* Registration: the bytes a new connection sends are matched first against the registration
  packets of the configured terminals in every format
  (:class:`~meterd.protocols.terminal.dtu.KnownRegistrations`: whatever follows the packet, and
  waiting while the bytes so far are a piece of one), then parsed by the formats in their order
  (to tell an unknown id or a broken registration from data): the first format that sees a
  registration, a broken one or the start of one decides.  A valid registration whose id is in ``known``
  puts the terminal online; any bytes behind it in the same read (heartbeats, the registration
  again, meter data) are handled as ordinary traffic.  Bytes that are no registration in any
  format are dropped up to where one could start (:meth:`~meterd.protocols.terminal.dtu.DtuFormat.resync`),
  so garbage and a registration in one read still register.
* Rejections, each counted in ``status()["rejected"]`` by reason and logged with the peer (once a
  minute per reason, with a count of the rest: a flood of bad connections does not fill the log):

  ``unknown_id``            a well-formed registration of a terminal id that is not configured;
                            the connection is closed.
  ``malformed``             recognisably a registration attempt (the format's prefix/header, or
                            for a plain ASCII format: text) but not a valid one -- bad characters,
                            wrong length, unknown packet type; closed at once.
  ``oversized``             a registration longer than the format allows; closed at once.
  ``bad_checksum``          a framed registration with a wrong checksum; closed at once.
  ``unregistered_data``     bytes that are no registration in any format (meter frames, binary
                            noise, a heartbeat) before the terminal registered: dropped and
                            counted once per connection; the connection may still register until
                            the registration deadline -- unless more than
                            :data:`MAX_UNREGISTERED` bytes come without one (``oversized``, closed:
                            nothing a peer sends before registering is kept beyond
                            :data:`PENDING_LIMIT` bytes).
  ``registration_timeout``  no valid registration within ``registration_timeout`` seconds of
                            connecting; closed.

* Replacement: a second connection registering an id that is online replaces the first: the
  old connection is aborted and a read waiting on it fails at once with ``LinkClosedError``; the
  terminal stays online (its online time runs on) and ``replaced`` is counted.
* Liveness: any byte from the DTU (heartbeat or meter data: DTUs of the USR family only send
  heartbeats while idle) resets the heartbeat timer.  A registered connection silent for
  ``heartbeat_timeout`` seconds is marked offline and aborted (``heartbeat_timeouts``).
* Heartbeats and the terminal's own registration are stripped from every read by a
  :class:`~meterd.protocols.terminal.dtu.DtuStream` (at a read's start, and for frame formats
  heartbeats also at its end).  A format with ``data_carries_registration`` ("with data") also
  loses copies of the registration inside a read, and a read ending in the first bytes of the
  registration keeps them back until the next read or ``hold`` seconds, whichever comes first.

Every rejection's log line names the peer and shows the bytes (hex, the first 32).

Time: timeouts run on the event loop's monotonic clock (a wall-clock step never takes DTUs
offline); timestamps and the online time behind the online-rate statistic come from ``clock``
(aware UTC datetimes, like the daemon's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Self

from meterd.clock import Clock, utc_now
from meterd.collector.transports.base import Transport
from meterd.errors import ConfigError, LinkClosedError, LinkError
from meterd.logthrottle import LogThrottle
from meterd.protocols.terminal.dtu import (
    BAD_CHECKSUM,
    MALFORMED,
    OVERSIZED,
    DtuFormat,
    DtuStream,
    KnownRegistrations,
    ParseStatus,
    get_format,
    show_bytes,
)

log = logging.getLogger(__name__)

# rejection reasons (keys of status()["rejected"]); the format's own: MALFORMED, OVERSIZED, BAD_CHECKSUM
UNKNOWN_ID: Final = "unknown_id"
UNREGISTERED_DATA: Final = "unregistered_data"
REGISTRATION_TIMEOUT: Final = "registration_timeout"
REJECT_REASONS: Final = (UNKNOWN_ID, MALFORMED, OVERSIZED, BAD_CHECKSUM, UNREGISTERED_DATA, REGISTRATION_TIMEOUT)

MAX_UNKNOWN_IDS: Final = 100  # distinct unknown ids remembered in status()
PENDING_LIMIT: Final = 1024  # bytes buffered from an unregistered connection while a format wants more
MAX_UNREGISTERED: Final = 16384  # bytes an unregistered connection may send (dropped) before it is closed
MAX_RESYNCS: Final = 64  # hunts for a registration inside unregistered bytes, per connection; then drop whole reads
SHOWN_BYTES: Final = 32  # of a connection's first bytes, kept for the log lines
MAX_SHIFT: Final = 256  # bytes of garbage looked past for a known registration behind it, when not unknown
HOLD: Final = 0.2  # seconds a read's tail that may start a "with data" registration waits for the next read
RX_BUFFER_LIMIT: Final = 65536  # unread meter bytes kept for a channel; a chatty DTU cannot grow it further


# --- the listener ---------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One TCP connection from a DTU (or anyone)."""

    def __init__(self, listener: DtuListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.pending = bytearray()
        self.terminal: _Terminal | None = None
        self.fmt: DtuFormat | None = None
        self.closed = False
        self.close_reason: str | None = None
        self.saw_unregistered = False
        self.deadline: asyncio.TimerHandle | None = None
        self.last_rx = self.loop.time()
        self.received = 0  # bytes before registering
        self.first_bytes = b""  # the first SHOWN_BYTES of them, for the log
        self.resyncs = 0
        self.stream: DtuStream | None = None  # once registered
        self.hold: asyncio.TimerHandle | None = None

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
        if self.terminal is None:
            self.listener._pre_registration(self, data)
        else:
            self.listener._from_dtu(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cancel_deadline()
        self.cancel_hold()
        self.listener._connection_lost(self, exc)

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def cancel_hold(self) -> None:
        if self.hold is not None:
            self.hold.cancel()
            self.hold = None

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def shut(self, reason: str, *, abort: bool = False) -> None:
        """Close (gracefully, or at once with ``abort``), remembering why."""
        if self.close_reason is None:
            self.close_reason = reason
        self.cancel_deadline()
        self.cancel_hold()
        if self.transport is not None and not self.closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True


@dataclass(slots=True)
class _Dropped:
    """Bytes of one read dropped as no registration: how many, and the first of them."""

    count: int = 0
    shown: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class _Terminal:
    terminal_id: str
    channel: str
    session: _Connection | None = None
    transport: DtuTransport | None = None
    online_event: asyncio.Event = field(default_factory=asyncio.Event)
    peer: str | None = None
    format: str | None = None
    connected_since: datetime | None = None
    online_since: datetime | None = None  # start of the current online span (survives replacement)
    online_total: float = 0.0  # seconds of closed online spans
    last_seen: datetime | None = None
    last_heartbeat: datetime | None = None
    last_offline: datetime | None = None
    offline_reason: str = ""
    counters: Counter[str] = field(default_factory=Counter)

    def online_seconds(self, now: datetime) -> float:
        running = (now - self.online_since).total_seconds() if self.online_since is not None else 0.0
        return self.online_total + max(running, 0.0)


COUNTERS: Final = ("registrations", "replaced", "heartbeats", "heartbeat_timeouts", "disconnects",
                   "rx_bytes", "tx_bytes", "unsolicited_bytes", "registration_prefixes")


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


class DtuListener:
    """The TCP server DTUs dial into.  ``known`` maps terminal id -> channel name.

    ``formats``: the registration/heartbeat formats accepted (presets by name or
    :class:`DtuFormat`), tried in order.  ``heartbeat_timeout``: seconds of silence after which a
    registered DTU is offline.  ``registration_timeout``: seconds a new connection has to register.
    ``hold``: seconds a "with data" read's tail that may start the registration waits for the next
    read.  A terminal id no format can register, or two whose registrations are the same bytes, is
    a ConfigError.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        formats: Sequence[DtuFormat | str] = ("usr-ascii",),
        known: Mapping[str, str],
        heartbeat_timeout: float = 120.0,
        registration_timeout: float = 10.0,
        clock: Clock = utc_now,
        name: str = "dtu",
        check_interval: float | None = None,
        hold: float = HOLD,
    ) -> None:
        if isinstance(formats, (str, DtuFormat)):
            formats = [formats]
        problems: list[str] = []
        self.formats: list[DtuFormat] = []
        for f in formats:
            try:
                self.formats.append(get_format(f))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if not formats:
            problems.append(f"listener {name}: at least one dtu format is needed")
        if heartbeat_timeout <= 0:
            problems.append(f"listener {name}: heartbeat_timeout {heartbeat_timeout} must be > 0 seconds")
        if registration_timeout <= 0:
            problems.append(f"listener {name}: registration_timeout {registration_timeout} must be > 0 seconds")
        if not 0 <= port <= 65535:
            problems.append(f"listener {name}: port {port} must be 0..65535")
        if not problems:
            self._known = KnownRegistrations(self.formats, known)
            problems.extend(f"listener {name}: {p}" for p in self._known.problems)
        if problems:
            raise ConfigError(problems)
        self.name = name
        self.host = host
        self.port = port
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.registration_timeout = float(registration_timeout)
        self.check_interval = check_interval or min(1.0, self.heartbeat_timeout / 5)
        self.hold = hold
        self.clock = clock
        self._terminals: dict[str, _Terminal] = {tid: _Terminal(tid, ch) for tid, ch in known.items()}
        self._pending: set[_Connection] = set()
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._bound: tuple[str, int] | None = None
        self.started: datetime | None = None
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.unknown_ids: Counter[str] = Counter()
        self._log = LogThrottle()  # rejections: once a minute per reason, with a count
        # (channel, online): a terminal came online here or went offline (collector nodes: the
        # node holding a DTU's connection owns its channel); called in the event loop
        self.on_presence: Callable[[str, bool], None] | None = None

    # --- life cycle ------------------------------------------------------------------------------

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
        self._watchdog = asyncio.create_task(self._watch(), name=f"dtu-watchdog {self.name}")
        log.info("dtu listener %s: listening on %s:%s for %d terminal(s), formats %s", self.name,
                 self._bound[0], self._bound[1], len(self._terminals), ", ".join(f.name for f in self.formats))

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
            raise RuntimeError(f"dtu listener {self.name} is not started")
        return int(self._bound[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- what channels use ------------------------------------------------------------------------

    def transport(self, terminal_id: str, *, connect_wait: float = 0.0) -> DtuTransport:
        """The transport to the meters behind ``terminal_id`` (one per terminal, named after its channel)."""
        term = self._terminal(terminal_id)
        if term.transport is None:
            term.transport = DtuTransport(self, terminal_id, term.channel, connect_wait=connect_wait)
        else:
            term.transport.connect_wait = connect_wait
        return term.transport

    def channel_of(self, terminal_id: str) -> str:
        return self._terminal(terminal_id).channel

    def is_online(self, terminal_id: str) -> bool:
        return self._terminal(terminal_id).session is not None

    async def wait_online(self, terminal_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the terminal to be online; whether it is."""
        term = self._terminal(terminal_id)
        if term.session is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), timeout)
        return term.session is not None

    @property
    def terminal_ids(self) -> list[str]:
        return list(self._terminals)

    def _terminal(self, terminal_id: str) -> _Terminal:
        try:
            return self._terminals[terminal_id]
        except KeyError:
            raise KeyError(f"dtu listener {self.name}: terminal {terminal_id!r} is not configured") from None

    # --- statistics ---------------------------------------------------------------------------------

    def terminal_status(self, terminal_id: str) -> dict[str, Any]:
        term = self._terminal(terminal_id)
        now = self.clock()
        online = term.online_seconds(now)
        observed = (now - self.started).total_seconds() if self.started is not None else 0.0
        doc: dict[str, Any] = {
            "channel": term.channel,
            "state": "online" if term.session is not None else "offline",
            "peer": term.peer if term.session is not None else None,
            "format": term.format,
            "connected_since": _iso(term.connected_since) if term.session is not None else None,
            "last_seen": _iso(term.last_seen),
            "last_heartbeat": _iso(term.last_heartbeat),
            "last_offline": _iso(term.last_offline),
            "offline_reason": term.offline_reason or None,
            "online_seconds": round(online, 3),
            "online_rate": round(min(online / observed, 1.0), 4) if observed > 0 else None,
        }
        doc.update({k: term.counters[k] for k in COUNTERS})
        return doc

    def status(self) -> dict[str, Any]:
        terminals = {tid: self.terminal_status(tid) for tid in self._terminals}
        return {
            "name": self.name,
            "host": self._bound[0] if self._bound else self.host,
            "port": self._bound[1] if self._bound else self.port,
            "formats": [f.name for f in self.formats],
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

    # --- connection events (called by _Connection) -----------------------------------------------

    def _accepted(self, conn: _Connection) -> None:
        if self._server is None:
            conn.shut("listener closed", abort=True)
            return
        self.accepted += 1
        self._connections.add(conn)
        self._pending.add(conn)
        conn.deadline = conn.loop.call_later(self.registration_timeout, self._registration_deadline, conn)
        log.debug("dtu listener %s: connection from %s", self.name, conn.peer)

    def _reject(self, conn: _Connection, reason: str, detail: str, data: bytes = b"") -> None:
        self.rejected[reason] += 1
        shown = f" [{show_bytes(data, SHOWN_BYTES)}]" if data else ""
        self._log.log(log, logging.WARNING, f"dtu listener {self.name}: connections rejected ({reason})",
                     "dtu listener %s: connection from %s rejected (%s): %s%s", self.name, conn.peer, reason,
                     detail, shown)
        self._pending.discard(conn)
        conn.shut(reason)

    def _registration_deadline(self, conn: _Connection) -> None:
        conn.deadline = None
        if conn.terminal is None and not conn.closed:
            self._reject(conn, REGISTRATION_TIMEOUT, f"no registration within {self.registration_timeout:g} s "
                         f"({conn.received} bytes received)", conn.first_bytes)

    def _pre_registration(self, conn: _Connection, data: bytes) -> None:
        if len(conn.first_bytes) < SHOWN_BYTES:
            conn.first_bytes += data[: SHOWN_BYTES - len(conn.first_bytes)]
        conn.received += len(data)
        conn.pending += data
        dropped = _Dropped()
        self._look_for_registration(conn, dropped)
        if dropped.count:
            self._unregistered(conn, bytes(dropped.shown), dropped.count)
        if conn.terminal is None and not conn.closed and conn.received - len(conn.pending) > MAX_UNREGISTERED:
            self._reject(conn, OVERSIZED, f"{conn.received} bytes without a registration (at most "
                         f"{MAX_UNREGISTERED} are read before one)", conn.first_bytes)

    def _look_for_registration(self, conn: _Connection, dropped: _Dropped) -> None:
        """Register ``conn`` from its pending bytes, refuse it, wait for more, or drop what cannot
        be a registration (counted in ``dropped``, the first bytes kept for the log)."""
        def drop(n: int) -> None:
            room = SHOWN_BYTES - len(dropped.shown)
            if room > 0:
                dropped.shown += conn.pending[: min(n, room)]
            dropped.count += n
            del conn.pending[:n]

        while conn.pending and conn.terminal is None and not conn.closed:
            # one registration fits in PENDING_LIMIT bytes: look no further (a 256 KiB read is
            # neither copied nor parsed whole)
            buf = bytes(conn.pending[: PENDING_LIMIT + 1])
            known = self._known.match(buf)
            if known is not None:
                fmt, terminal_id, n = known
                rest = bytes(conn.pending[n:])
                conn.pending.clear()
                self._register(conn, fmt, terminal_id, rest)
                return
            # formats in order: the first that sees a registration (or the start of one) decides
            fmt, r = self.formats[0], None
            for f in self.formats:
                parsed = f.parse_registration(buf)
                if parsed.status is not ParseStatus.FOREIGN:
                    fmt, r = f, parsed
                    break
            if self._known.incomplete(buf) or (r is not None and r.status is ParseStatus.MORE):
                if len(conn.pending) <= PENDING_LIMIT:
                    return
                self._reject(conn, OVERSIZED, f"more than {PENDING_LIMIT} bytes without a complete registration",
                             buf)
                return
            if r is not None and r.status is ParseStatus.OK:
                assert r.terminal_id is not None
                # garbage that ends in text runs into a prefix-less id: a configured terminal's
                # registration a little further on is the registration
                later = next((i for i in range(1, min(len(buf), MAX_SHIFT)) if self._known.match(buf[i:])), 0)
                if later:
                    drop(later)
                    continue
                self._refuse_unknown(conn, fmt, r.terminal_id, buf)
                return
            if r is not None:  # BAD
                self._reject(conn, r.reason, f"{fmt.name}: {r.detail}", buf)
                return
            # no registration starts here in any format: drop what comes before the next place one could
            if conn.resyncs < MAX_RESYNCS:
                conn.resyncs += 1
                drop(min(fmt.resync(buf) for fmt in self.formats))
            else:
                drop(len(conn.pending))

    def _unregistered(self, conn: _Connection, shown: bytes, count: int) -> None:
        if conn.saw_unregistered:
            return
        conn.saw_unregistered = True
        self.rejected[UNREGISTERED_DATA] += 1
        more = f" ... ({count} bytes)" if count > len(shown) else ""
        self._log.log(log, logging.WARNING, f"dtu listener {self.name}: data before registering",
                     "dtu listener %s: %s sent data before registering (dropped; it has %g s to register) [%s%s]",
                     self.name, conn.peer, self.registration_timeout, shown.hex(" ").upper(), more)

    def _refuse_unknown(self, conn: _Connection, fmt: DtuFormat, terminal_id: str, data: bytes) -> None:
        if terminal_id in self.unknown_ids or len(self.unknown_ids) < MAX_UNKNOWN_IDS:
            first = terminal_id not in self.unknown_ids
            self.unknown_ids[terminal_id] += 1
        else:
            first = False
        self.rejected[UNKNOWN_ID] += 1
        (log.warning if first else log.debug)(
            "dtu listener %s: unknown terminal %r (%s) from %s refused [%s]", self.name, terminal_id, fmt.name,
            conn.peer, show_bytes(data, SHOWN_BYTES))
        self._pending.discard(conn)
        conn.shut(UNKNOWN_ID)

    def _register(self, conn: _Connection, fmt: DtuFormat, terminal_id: str, rest: bytes) -> None:
        term = self._terminals[terminal_id]
        conn.cancel_deadline()
        self._pending.discard(conn)
        now = self.clock()
        conn.terminal, conn.fmt = term, fmt
        conn.stream = DtuStream(fmt, terminal_id)
        old = term.session
        term.session = conn
        if old is not None and old is not conn:
            term.counters["replaced"] += 1
            log.warning("dtu listener %s: terminal %s re-registered from %s; dropping its connection from %s",
                        self.name, terminal_id, conn.peer, old.peer)
            self._detach(term, old, f"replaced by a new connection from {conn.peer}")
            old.shut("replaced", abort=True)
        else:
            term.online_since = now
            term.online_event.set()
            log.info("dtu listener %s: terminal %s (channel %s) online from %s (%s)", self.name, terminal_id,
                     term.channel, conn.peer, fmt.name)
            self._presence(term.channel, True)
        term.counters["registrations"] += 1
        term.connected_since = term.last_seen = now
        term.peer, term.format = conn.peer, fmt.name
        if rest:
            self._from_dtu(conn, rest)

    def _from_dtu(self, conn: _Connection, data: bytes) -> None:
        term = conn.terminal
        if term is None or term.session is not conn:
            return  # a replaced connection's last bytes
        term.last_seen = self.clock()
        term.counters["rx_bytes"] += len(data)
        stream = conn.stream
        assert stream is not None
        conn.cancel_hold()
        prefixes = stream.prefixes
        payload, beats = stream.feed(data)
        if beats:
            term.counters["heartbeats"] += beats
            term.last_heartbeat = term.last_seen
        term.counters["registration_prefixes"] += stream.prefixes - prefixes
        if stream.held:
            conn.hold = conn.loop.call_later(self.hold, self._release_held, conn)
        if payload:
            self._deliver(term, conn, payload)

    def _release_held(self, conn: _Connection) -> None:
        conn.hold = None
        term = conn.terminal
        if term is not None and term.session is conn and conn.stream is not None:
            held = conn.stream.flush()
            if held:
                self._deliver(term, conn, held)

    def _deliver(self, term: _Terminal, conn: _Connection, payload: bytes) -> None:
        transport = term.transport
        if transport is not None and transport._session is conn:
            if len(transport._buffer) + len(payload) > RX_BUFFER_LIMIT:
                term.counters["unsolicited_bytes"] += len(transport._buffer)
                transport.reset_input()  # nobody is reading: what piled up is stale
            transport._received(payload)
        else:
            term.counters["unsolicited_bytes"] += len(payload)

    def _connection_lost(self, conn: _Connection, exc: Exception | None) -> None:
        self._connections.discard(conn)
        self._pending.discard(conn)
        term = conn.terminal
        if term is not None and term.session is conn:
            if conn.close_reason is None:
                term.counters["disconnects"] += 1
                reason = f"connection lost: {exc}" if exc else "the DTU closed the connection"
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
        log.warning("dtu listener %s: terminal %s (channel %s) offline: %s", self.name, term.terminal_id,
                    term.channel, reason)
        self._presence(term.channel, False)

    def _presence(self, channel: str, online: bool) -> None:
        if self.on_presence is not None:
            try:
                self.on_presence(channel, online)
            except Exception:  # the listener goes on whatever the observer does
                log.exception("dtu listener %s: presence callback for channel %s failed", self.name, channel)

    def _detach(self, term: _Terminal, conn: _Connection, reason: str) -> None:
        transport = term.transport
        if transport is not None and transport._session is conn:
            transport._session_lost(LinkClosedError(f"terminal {term.terminal_id}: {reason}"))

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
                    except Exception:  # one terminal's trouble must not end the watch over all of them
                        log.exception("dtu listener %s: taking terminal %s offline failed", self.name,
                                      term.terminal_id)


# --- the transport ----------------------------------------------------------------------------------


class DtuTransport(Transport):
    """The pipe to the bus behind one DTU: bound to its current connection at ``open()``.

    ``open()`` returns at once if the terminal is online (waiting up to ``connect_wait`` seconds
    for it to come online first, if set) and raises :class:`LinkError` if it is not.  When the
    connection goes away (the DTU drops, is replaced, stops heart-beating) a pending ``read``
    fails at once with :class:`LinkClosedError` and the transport is closed; the next ``open()``
    binds to whatever connection the terminal has then.  ``close()`` only unbinds: the DTU's TCP
    connection belongs to the listener and stays up.
    """

    def __init__(self, listener: DtuListener, terminal_id: str, name: str, *, connect_wait: float = 0.0) -> None:
        super().__init__(name)
        self.listener = listener
        self.terminal_id = terminal_id
        self.connect_wait = connect_wait
        self._session: _Connection | None = None

    @property
    def is_open(self) -> bool:
        s = self._session
        return (s is not None and self._closed_exc is None and not s.closed
                and self.listener._terminals[self.terminal_id].session is s)

    async def open(self) -> None:
        term = self.listener._terminals[self.terminal_id]
        if term.session is None and self.connect_wait > 0 and self.listener.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), self.connect_wait)
        s = term.session
        if s is None or s.closed:
            if not self.listener.running:
                raise LinkError(f"terminal {self.terminal_id} offline (dtu listener {self.listener.name} "
                                "is not running)", channel=self.name)
            since = ""
            if term.last_offline is not None:
                since = f" since {term.last_offline.isoformat(timespec='seconds')}: {term.offline_reason}"
            elif term.counters["registrations"] == 0:
                since = " (never registered)"
            raise LinkError(f"terminal {self.terminal_id} offline{since}", channel=self.name)
        self._buffer.clear()
        self._closed_exc = None
        self._session = s

    @property
    def registered(self) -> bool:
        """Whether the terminal has registered since the listener was made (online now or not)."""
        return self.listener._terminals[self.terminal_id].counters["registrations"] > 0

    async def wait_registered(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the terminal's first registration since the listener
        was made (at once if it has registered before); whether it has."""
        term = self.listener._terminals[self.terminal_id]
        if not self.registered and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), timeout)
        return self.registered

    async def write(self, data: bytes) -> None:
        if not self.is_open:
            raise LinkClosedError(f"terminal {self.terminal_id} is not connected", channel=self.name)
        assert self._session is not None
        self._session.write(data)
        self.listener._terminals[self.terminal_id].counters["tx_bytes"] += len(data)

    async def close(self) -> None:
        if self._session is not None:
            self._session = None
            self._lost(LinkClosedError(f"terminal {self.terminal_id}: transport closed"))

    def _session_lost(self, exc: LinkClosedError) -> None:
        self._session = None
        self._lost(exc)

    def __repr__(self) -> str:
        return f"DtuTransport({self.name!r}, terminal {self.terminal_id})"


def known_from(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """terminal id -> channel name from pairs, refusing an id given twice."""
    out: dict[str, str] = {}
    problems = []
    for tid, channel in pairs:
        if tid in out:
            problems.append(f"terminal {tid!r} is given for channels {out[tid]!r} and {channel!r}")
        out[tid] = channel
    if problems:
        raise ConfigError(problems)
    return out


__all__ = [
    "COUNTERS",
    "REJECT_REASONS",
    "DtuListener",
    "DtuTransport",
    "known_from",
]  # fmt: skip
