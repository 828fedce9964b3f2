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
What the DTU listener shares with the Q/GDW 1376.1 listener (the server's life cycle, the
registration deadline, rejections, replacement, liveness, online time and statistics, the
transport's binding) is written once in :mod:`meterd.collector.listener`; this module adds how a
DTU registers, its heartbeats and the way its bytes reach the channel.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from meterd.clock import Clock, utc_now
from meterd.collector.listener import (
    MAX_WAITING,
    REGISTRATION_TIMEOUT,
    TOO_MANY_WAITING,
    UNKNOWN_ID,
    UNREGISTERED_DATA,
    TerminalConnection,
    TerminalListener,
    TerminalState,
    TerminalTransport,
    listener_problems,
)
from meterd.errors import ConfigError
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
REJECT_REASONS: Final = (UNKNOWN_ID, MALFORMED, OVERSIZED, BAD_CHECKSUM, UNREGISTERED_DATA, REGISTRATION_TIMEOUT,
                          TOO_MANY_WAITING)

PENDING_LIMIT: Final = 1024  # bytes buffered from an unregistered connection while a format wants more
MAX_UNREGISTERED: Final = 16384  # bytes an unregistered connection may send (dropped) before it is closed
MAX_RESYNCS: Final = 64  # hunts for a registration inside unregistered bytes, per connection; then drop whole reads
SHOWN_BYTES: Final = 32  # of a connection's first bytes, kept for the log lines
MAX_SHIFT: Final = 256  # bytes of garbage looked past for a known registration behind it, when not unknown
HOLD: Final = 0.2  # seconds a read's tail that may start a "with data" registration waits for the next read
RX_BUFFER_LIMIT: Final = 65536  # unread meter bytes kept for a channel; a chatty DTU cannot grow it further


# --- the listener ---------------------------------------------------------------------------------


class _Connection(TerminalConnection):
    """One TCP connection from a DTU (or anyone)."""

    listener: DtuListener
    terminal: _Terminal | None

    def __init__(self, listener: DtuListener) -> None:
        super().__init__(listener)
        self.pending = bytearray()
        self.fmt: DtuFormat | None = None
        self.received = 0  # bytes before registering
        self.first_bytes = b""  # the first SHOWN_BYTES of them, for the log
        self.resyncs = 0
        self.stream: DtuStream | None = None  # once registered
        self.hold: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = self.loop.time()
        if self.terminal is None:
            self.listener._pre_registration(self, data)
        else:
            self.listener._from_dtu(self, data)

    def cancel_timers(self) -> None:
        self.cancel_deadline()
        self.cancel_hold()

    def cancel_hold(self) -> None:
        if self.hold is not None:
            self.hold.cancel()
            self.hold = None


@dataclass(slots=True)
class _Dropped:
    """Bytes of one read dropped as no registration: how many, and the first of them."""

    count: int = 0
    shown: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class _Terminal(TerminalState):
    session: _Connection | None = None
    transport: DtuTransport | None = None
    format: str | None = None

    @property
    def terminal_id(self) -> str:
        return self.ident


COUNTERS: Final = ("registrations", "replaced", "heartbeats", "heartbeat_timeouts", "disconnects",
                   "rx_bytes", "tx_bytes", "unsolicited_bytes", "registration_prefixes")


class DtuListener(TerminalListener[_Connection, _Terminal]):
    """The TCP server DTUs dial into.  ``known`` maps terminal id -> channel name.

    ``formats``: the registration/heartbeat formats accepted (presets by name or
    :class:`DtuFormat`), tried in order.  ``heartbeat_timeout``: seconds of silence after which a
    registered DTU is offline.  ``registration_timeout``: seconds a new connection has to register.
    ``hold``: seconds a "with data" read's tail that may start the registration waits for the next
    read.  A terminal id no format can register, or two whose registrations are the same bytes, is
    a ConfigError.  The life cycle, rejections, replacement, liveness and statistics are
    :class:`~meterd.collector.listener.TerminalListener`'s.
    """

    kind = "dtu"
    logger = log
    counters = COUNTERS
    reject_reasons = REJECT_REASONS
    registrations = "registrations"
    peer_closed = "the DTU closed the connection"
    connection = _Connection

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
        max_waiting: int = MAX_WAITING,
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
        problems.extend(listener_problems(name, heartbeat_timeout, registration_timeout, max_waiting))
        if not 0 <= port <= 65535:
            problems.append(f"listener {name}: port {port} must be 0..65535")
        if not problems:
            self._known = KnownRegistrations(self.formats, known)
            problems.extend(f"listener {name}: {p}" for p in self._known.problems)
        if problems:
            raise ConfigError(problems)
        super().__init__(host, port, terminals={tid: _Terminal(tid, ch) for tid, ch in known.items()},
                         heartbeat_timeout=heartbeat_timeout, registration_timeout=registration_timeout, clock=clock,
                         name=name, check_interval=check_interval, max_waiting=max_waiting)
        self.hold = hold

    def _log_listening(self, bound: tuple[str, int]) -> None:
        log.info("dtu listener %s: listening on %s:%s for %d terminal(s), formats %s", self.name,
                 bound[0], bound[1], len(self._terminals), ", ".join(f.name for f in self.formats))

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

    # --- statistics ---------------------------------------------------------------------------------

    def _format_of(self, term: _Terminal) -> str | None:
        return term.format

    def _format_names(self) -> list[str]:
        return [f.name for f in self.formats]

    # --- connection events (called by _Connection) -----------------------------------------------

    def _accepted(self, conn: _Connection) -> None:
        super()._accepted(conn)
        if not conn.closed:
            log.debug("dtu listener %s: connection from %s", self.name, conn.peer)

    def _shown(self, data: bytes) -> str:
        return show_bytes(data, SHOWN_BYTES)

    def _no_registration(self, conn: _Connection) -> tuple[str, bytes]:
        return (f"no registration within {self.registration_timeout:g} s ({conn.received} bytes received)",
                conn.first_bytes)

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
        if not self._first_unregistered(conn):
            return
        more = f" ... ({count} bytes)" if count > len(shown) else ""
        self._log.log(log, logging.WARNING, f"dtu listener {self.name}: data before registering",
                     "dtu listener %s: %s sent data before registering (dropped; it has %g s to register) [%s%s]",
                     self.name, conn.peer, self.registration_timeout, shown.hex(" ").upper(), more)

    def _refuse_unknown(self, conn: _Connection, fmt: DtuFormat, terminal_id: str, data: bytes) -> None:
        first = self._unknown(conn, terminal_id)
        (log.warning if first else log.debug)(
            "dtu listener %s: unknown terminal %r (%s) from %s refused [%s]", self.name, terminal_id, fmt.name,
            conn.peer, show_bytes(data, SHOWN_BYTES))

    def _register(self, conn: _Connection, fmt: DtuFormat, terminal_id: str, rest: bytes) -> None:
        term = self._terminals[terminal_id]
        conn.fmt = fmt
        conn.stream = DtuStream(fmt, terminal_id)
        self._attach(conn, term)
        term.format = fmt.name
        if rest:
            self._from_dtu(conn, rest)

    def _log_replaced(self, term: _Terminal, conn: _Connection, old: TerminalConnection) -> None:
        log.warning("dtu listener %s: terminal %s re-registered from %s; dropping its connection from %s",
                    self.name, term.ident, conn.peer, old.peer)

    def _log_online(self, term: _Terminal, conn: _Connection) -> None:
        assert conn.fmt is not None
        log.info("dtu listener %s: terminal %s (channel %s) online from %s (%s)", self.name, term.ident,
                 term.channel, conn.peer, conn.fmt.name)

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


# --- the transport ----------------------------------------------------------------------------------


class DtuTransport(TerminalTransport):
    """The pipe to the bus behind one DTU, bound to its current connection at ``open()``; the rules
    (:class:`LinkError` at once while the DTU is offline, a read failing at once when its connection
    goes, ``close()`` only unbinding) are :class:`~meterd.collector.listener.TerminalTransport`'s."""

    listener: DtuListener
    _session: _Connection | None

    def __init__(self, listener: DtuListener, terminal_id: str, name: str, *, connect_wait: float = 0.0) -> None:
        super().__init__(listener, terminal_id, name, connect_wait=connect_wait)

    @property
    def terminal_id(self) -> str:
        return self.ident

    @property
    def registered(self) -> bool:
        """Whether the terminal has registered since the listener was made (online now or not)."""
        return self.listener._terminals[self.ident].counters["registrations"] > 0

    async def wait_registered(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the terminal's first registration since the listener
        was made (at once if it has registered before); whether it has."""
        term = self.listener._terminals[self.ident]
        if not self.registered and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), timeout)
        return self.registered


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
