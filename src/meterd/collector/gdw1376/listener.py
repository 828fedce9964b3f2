"""The TCP server Q/GDW 1376.1 terminals log in to, and the transport to one terminal (see the
package docstring for the rules)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic as time_monotonic
from typing import Any, Final, Self

from meterd.clock import Clock, utc_now
from meterd.collector.channel import (
    TraceEvent,
    TraceHook,
)
from meterd.collector.transports.base import Transport
from meterd.errors import ConfigError, LinkClosedError, LinkError, ProtocolError
from meterd.logthrottle import LogThrottle
from meterd.protocols.gdw1376.frame import (
    HEADER_LEN,
    MAX_USER_DATA,
    Afn,
    decode_frame,
    parse_terminal_address,
    scan_frames,
)
from meterd.protocols.gdw1376.frame import Frame as GdwFrame
from meterd.protocols.gdw1376.messages import (
    Message,
    decode_message,
    encode,
    link_confirm,
)
from meterd.protocols.gdw1376.messages import confirm as confirm_message

log = logging.getLogger(__name__)

UNKNOWN_ID: Final = "unknown_id"
UNREGISTERED_DATA: Final = "unregistered_data"
REGISTRATION_TIMEOUT: Final = "registration_timeout"
OVERSIZED: Final = "oversized"
REJECT_REASONS: Final = (UNKNOWN_ID, UNREGISTERED_DATA, REGISTRATION_TIMEOUT, OVERSIZED)
COUNTERS: Final = ("logins", "replaced", "heartbeats", "heartbeat_timeouts", "logouts", "disconnects",
                   "rx_bytes", "tx_bytes", "unsolicited_frames")
MAX_PENDING: Final = HEADER_LEN + MAX_USER_DATA + 2  # bytes kept of an incomplete frame: the largest frame L allows
MAX_UNKNOWN_IDS: Final = 100
LINK_LOGIN, LINK_LOGOUT, LINK_HEARTBEAT = 1, 2, 3


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None



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
