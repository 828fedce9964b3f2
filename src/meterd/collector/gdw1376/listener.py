"""The TCP server Q/GDW 1376.1 terminals log in to, and the transport to one terminal (see the
package docstring for the rules; the life cycle, rejections, replacement, liveness and statistics
are :class:`~meterd.collector.listener.TerminalListener`'s, shared with the DTU listener)."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from time import monotonic as time_monotonic
from typing import Any, Final

from meterd.clock import Clock, utc_now
from meterd.collector.channel import (
    TraceEvent,
    TraceHook,
)
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
from meterd.errors import ConfigError, ProtocolError
from meterd.protocols.gdw1376.frame import (
    HEADER_LEN,
    MAX_USER_DATA,
    Afn,
    FrameScanner,
    decode_frame,
    parse_terminal_address,
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

OVERSIZED: Final = "oversized"
REJECT_REASONS: Final = (UNKNOWN_ID, UNREGISTERED_DATA, REGISTRATION_TIMEOUT, OVERSIZED, TOO_MANY_WAITING)
COUNTERS: Final = ("logins", "replaced", "heartbeats", "heartbeat_timeouts", "logouts", "disconnects",
                   "rx_bytes", "tx_bytes", "unsolicited_frames")
MAX_PENDING: Final = HEADER_LEN + MAX_USER_DATA + 2  # bytes kept of an incomplete frame: the largest frame L allows
LINK_LOGIN, LINK_LOGOUT, LINK_HEARTBEAT = 1, 2, 3
# A terminal heart-beats every minute or so; past this many heartbeats in one second of one
# connection the rest of that second are counted, not confirmed (logged once a minute)
MAX_HEARTBEATS_PER_SECOND: Final = 10


# --- the listener ---------------------------------------------------------------------------------


class _Connection(TerminalConnection):
    listener: GdwListener
    terminal: _Terminal | None

    def __init__(self, listener: GdwListener) -> None:
        super().__init__(listener)
        self.scan = FrameScanner()
        self.beat_second = 0.0  # loop time the current second of heartbeats began
        self.beats = 0  # heartbeats in it

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = self.loop.time()
        self.listener._data(self, data)


@dataclass(eq=False)
class _Terminal(TerminalState):
    """``ident`` (``key``): the terminal's address, RRRR-TTTT."""

    session: _Connection | None = None
    transport: GdwTransport | None = None
    master: int = 0  # the MSA the terminal logged in with (echoed in our requests)
    clock: datetime | None = None  # the terminal's clock as its last 2013 heartbeat said

    @property
    def key(self) -> str:
        return self.ident


class GdwListener(TerminalListener[_Connection, _Terminal]):
    """The TCP server Q/GDW 1376.1 terminals log in to.  ``known``: terminal address
    (``RRRR-TTTT``) -> channel name.  ``on_login(channel)`` is called (in the loop) after each
    login (a replacement's too); ``on_presence(channel, online)`` when a terminal comes online or
    goes offline."""

    kind = "gdw1376"
    logger = log
    protocol = "gdw1376"
    counters = COUNTERS
    reject_reasons = REJECT_REASONS
    registrations = "logins"
    connection = _Connection

    def __init__(self, host: str = "0.0.0.0", port: int = 0, *, known: Mapping[str, str],
                 heartbeat_timeout: float = 120.0, registration_timeout: float = 10.0, clock: Clock = utc_now,
                 name: str = "gdw1376", check_interval: float | None = None,
                 max_waiting: int = MAX_WAITING) -> None:
        problems = []
        terminals: dict[str, _Terminal] = {}
        for text, channel in known.items():
            try:
                key = parse_terminal_address(text).key
            except ProtocolError as exc:
                problems.append(f"listener {name}: channel {channel}: {exc}")
                continue
            terminals[key] = _Terminal(key, channel)
        problems.extend(listener_problems(name, heartbeat_timeout, registration_timeout, max_waiting))
        if problems:
            raise ConfigError(problems)
        super().__init__(host, port, terminals=terminals, heartbeat_timeout=heartbeat_timeout,
                         registration_timeout=registration_timeout, clock=clock, name=name,
                         check_interval=check_interval, max_waiting=max_waiting)
        self.on_login: Callable[[str], None] | None = None
        # the technician's frame trace: logins, heartbeats and the master's confirmations, as the
        # channels trace their requests (``meterd.cli.frametext.trace_line`` prints both)
        self.trace: TraceHook | None = None

    # --- what channels use ---------------------------------------------------------------------------

    def transport(self, terminal: str, *, connect_wait: float = 0.0) -> GdwTransport:
        term = self._terminal(terminal)
        if term.transport is None:
            term.transport = GdwTransport(self, term.key, term.channel, connect_wait=connect_wait)
        else:
            term.transport.connect_wait = connect_wait
        return term.transport

    def _key(self, terminal: str) -> str:
        return parse_terminal_address(terminal).key

    # --- statistics ----------------------------------------------------------------------------------

    def _format_of(self, term: _Terminal) -> str | None:
        return "gdw1376"

    def _format_names(self) -> list[str]:
        return ["gdw1376"]

    def _more_status(self, term: _Terminal, doc: dict[str, Any]) -> None:
        doc["terminal_clock"] = term.clock.isoformat() if term.clock is not None else None

    # --- connection events ----------------------------------------------------------------------------

    def _no_registration(self, conn: _Connection) -> tuple[str, bytes]:
        return f"no login (AFN 02 F1) within {self.registration_timeout:g} s", b""

    def _data(self, conn: _Connection, data: bytes) -> None:
        found = conn.scan.feed(data)
        if found:
            end = found[-1][1]
            raw_buf = bytes(conn.scan.buf[:end])
            conn.scan.consume(end)
        elif len(conn.scan.buf) > MAX_PENDING:
            dropped = bytes(conn.scan.buf[:32])
            conn.scan.clear()
            if conn.terminal is None:
                self._reject(conn, OVERSIZED, f"more than {MAX_PENDING} bytes without a Q/GDW 1376.1 frame", dropped)
            return
        term = conn.terminal
        if term is not None and term.session is conn:
            term.counters["rx_bytes"] += len(data)
            term.last_seen = self.clock()
        for start, stop, frame in found:
            if conn.closed or (conn.transport is not None and conn.transport.is_closing()):
                # the peer went away while a burst was being handled: the rest of it is not
                # answered (asyncio logs a warning per write to a lost socket -- thousands for a
                # flood of heartbeats in one read)
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
                if self._beat_flood(term, conn):
                    return
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
            if frame.con:  # the confirmation needs the link fields only: the data units are not decoded
                head = Message(frame.address, frame.afn, (), frame.control, frame.seq, frame.pw, frame.ec, frame.tp,
                               frame.protocol)
                with contextlib.suppress(ProtocolError):
                    self._send(term, conn, encode(confirm_message(head)))
            return
        transport = term.transport
        if transport is not None and transport._session is conn:
            transport._frame(frame, raw)
        else:
            term.counters["unsolicited_frames"] += 1

    def _beat_flood(self, term: _Terminal, conn: _Connection) -> bool:
        """Whether this heartbeat is one too many in its second (then it is not confirmed)."""
        now = conn.last_rx
        if now - conn.beat_second >= 1.0:
            conn.beat_second, conn.beats = now, 0
        conn.beats += 1
        if conn.beats <= MAX_HEARTBEATS_PER_SECOND:
            return False
        self._log.log(log, logging.WARNING, f"gdw1376 listener {self.name}: heartbeat flood {term.key}",
                      "gdw1376 listener %s: terminal %s (channel %s) from %s sends more than %d heartbeats a second; "
                      "the rest of each second are counted, not confirmed", self.name, term.key, term.channel,
                      conn.peer, MAX_HEARTBEATS_PER_SECOND)
        return True

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
        if not self._first_unregistered(conn):
            return
        self._log.log(log, logging.WARNING, f"gdw1376 listener {self.name}: frames before a login",
                      "gdw1376 listener %s: %s sent a frame before logging in (dropped) [%s]", self.name,
                      conn.peer, raw[:32].hex(" ").upper())

    def _login(self, conn: _Connection, msg: Message) -> None:
        key = msg.address.key
        term = self._terminals.get(key)
        if term is None:
            first = self._unknown(conn, key)
            (log.warning if first else log.debug)("gdw1376 listener %s: unknown terminal %s from %s refused",
                                                  self.name, key, conn.peer)
            return
        term.master = msg.address.master
        self._attach(conn, term)
        self._send(term, conn, link_confirm(msg))
        if self.on_login is not None:
            try:
                self.on_login(term.channel)
            except Exception:
                log.exception("gdw1376 listener %s: login hook for channel %s failed", self.name, term.channel)

    def _log_replaced(self, term: _Terminal, conn: _Connection, old: TerminalConnection) -> None:
        log.warning("gdw1376 listener %s: terminal %s logged in again from %s; dropping its connection from %s",
                    self.name, term.key, conn.peer, old.peer)

    def _log_online(self, term: _Terminal, conn: _Connection) -> None:
        log.info("gdw1376 listener %s: terminal %s (channel %s) logged in from %s", self.name, term.key, term.channel,
                 conn.peer)


# --- the transport ----------------------------------------------------------------------------------


class GdwTransport(TerminalTransport):
    """The pipe to one terminal, bound to its current connection at ``open()`` (the DTU
    transport's rules: LinkError at once while the terminal is offline).  Beside the bytes, the
    frames the listener decoded wait in :attr:`frames` for the channel's matcher."""

    listener: GdwListener
    _session: _Connection | None
    never = " (never logged in)"

    def __init__(self, listener: GdwListener, key: str, name: str, *, connect_wait: float = 0.0) -> None:
        super().__init__(listener, key, name, connect_wait=connect_wait)
        self.frames: deque[GdwFrame] = deque(maxlen=64)
        self.received = 0  # frames received ever (the deque keeps the last 64 only)

    @property
    def key(self) -> str:
        return self.ident

    @property
    def terminal(self) -> _Terminal:
        return self.listener._terminals[self.ident]

    def reset_input(self) -> None:
        self._buffer.clear()
        self.frames.clear()

    def _frame(self, frame: GdwFrame, raw: bytes) -> None:
        self.frames.append(frame)
        self.received += 1
        self._received(raw)
