"""What every listener terminals dial in to does alike: the DTU listener (:mod:`meterd.collector.dtu`)
and the Q/GDW 1376.1 listener (:mod:`meterd.collector.gdw1376.listener`).

A terminal connects *to* the master over TCP, says who it is (a DTU's registration packet, a
concentrator's login), keeps the link alive and carries a channel's requests and replies.  The
rules the two listeners share live here once:

* :class:`TerminalListener` -- the asyncio server's start and stop, the registration deadline of
  a new connection, rejections (counted by reason, logged once a minute per reason), a second
  connection of an online terminal replacing the first, online/offline bookkeeping (online time,
  ``on_presence``), the heartbeat watchdog, the transports handed to channels, and the statistics;
* :class:`TerminalConnection` -- one TCP connection: peer name, TCP_NODELAY and keepalive, the
  registration deadline, shut (gracefully or aborted) with a reason, connection_lost;
* :class:`TerminalState` -- one configured terminal: its connection, transport and statistics;
* :class:`TerminalTransport` -- a channel's pipe to one terminal, bound to its current connection
  at ``open()``, failing at once with :class:`~meterd.errors.LinkError` while it is offline.

A listener module subclasses each and keeps only what differs: how a connection's bytes are read
(its connection's ``data_received``), how a registration / login is recognised and answered, its
heartbeats, what is delivered to whom, and the words of its log lines (``kind`` names the
listener in them: ``"dtu listener gprs: ..."``; they are logged through the subclass's ``logger``,
so each keeps its own logger name).  The bytes of a registered terminal go straight from the
subclass's ``data_received`` to its own handler: nothing here sits on that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final, Generic, Self, TypeVar, cast

from meterd.clock import Clock
from meterd.collector.transports.base import Transport
from meterd.errors import LinkClosedError, LinkError, ProtocolError
from meterd.logthrottle import LogThrottle

# rejection reasons both listeners have (keys of status()["rejected"])
UNKNOWN_ID: Final = "unknown_id"
UNREGISTERED_DATA: Final = "unregistered_data"
REGISTRATION_TIMEOUT: Final = "registration_timeout"
TOO_MANY_WAITING: Final = "too_many_waiting"

#: Connections at a time that have not registered yet; a new one past it is reset at once.  Each holds a
#: file descriptor for up to ``registration_timeout``: a flood of connections (a scanner, a network
#: device gone wrong, thousands of misconfigured DTUs) must not use up the daemon's descriptors, which
#: its databases need too.  Registered connections are bounded by the configured terminals.
MAX_WAITING: Final = 1024

MAX_UNKNOWN_IDS: Final = 100  # distinct unknown ids remembered in status()


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def listener_problems(name: str, heartbeat_timeout: float, registration_timeout: float,
                     max_waiting: int = MAX_WAITING) -> list[str]:
    """What is wrong with a listener's two timeouts and its ``max_waiting`` (config problems, for a
    ConfigError)."""
    problems = []
    if heartbeat_timeout <= 0:
        problems.append(f"listener {name}: heartbeat_timeout {heartbeat_timeout} must be > 0 seconds")
    if registration_timeout <= 0:
        problems.append(f"listener {name}: registration_timeout {registration_timeout} must be > 0 seconds")
    if max_waiting < 1:
        problems.append(f"listener {name}: max_waiting {max_waiting} must be at least 1")
    return problems


# --- a connection -----------------------------------------------------------------------------------


class TerminalConnection(asyncio.Protocol):
    """One TCP connection from a terminal (or anyone).  A subclass reads the bytes
    (``data_received``: set ``last_rx`` and hand them on) and adds its own timers to
    :meth:`cancel_timers`."""

    listener: TerminalListener[Any, Any]
    terminal: TerminalState | None

    def __init__(self, listener: TerminalListener[Any, Any]) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.terminal = None
        self.closed = False
        self.close_reason: str | None = None
        self.saw_unregistered = False
        self.deadline: asyncio.TimerHandle | None = None
        self.last_rx = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports are no subclasses of asyncio.Transport
        self.transport = stream = cast(asyncio.Transport, transport)
        peer = stream.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        sock = stream.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.listener._accepted(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cancel_timers()
        self.listener._connection_lost(self, exc)

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def cancel_timers(self) -> None:
        """Cancel what is pending on this connection's behalf (it is closing)."""
        self.cancel_deadline()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def shut(self, reason: str, *, abort: bool = False) -> None:
        """Close (gracefully, or at once with ``abort``), remembering why."""
        if self.close_reason is None:
            self.close_reason = reason
        self.cancel_timers()
        if self.transport is not None and not self.closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.closed = True


# --- a terminal ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class TerminalState:
    """One configured terminal: ``ident`` is its id (a DTU's terminal id, a concentrator's
    ``RRRR-TTTT``), ``channel`` the channel it serves."""

    ident: str
    channel: str
    session: TerminalConnection | None = None
    transport: TerminalTransport | None = None
    online_event: asyncio.Event = field(default_factory=asyncio.Event)
    peer: str | None = None
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


ConnT = TypeVar("ConnT", bound=TerminalConnection)
TermT = TypeVar("TermT", bound=TerminalState)


# --- the listener -------------------------------------------------------------------------------------


class TerminalListener(Generic[ConnT, TermT]):
    """The TCP server terminals dial in to; ``terminals`` maps each configured terminal's id to
    its state.  ``heartbeat_timeout``: seconds of silence after which a registered terminal is
    offline.  ``registration_timeout``: seconds a new connection has to register.  The
    subclass checks its configuration (:func:`listener_problems`) before calling this."""

    kind: ClassVar[str]  # in the log lines: "<kind> listener <name>: ..."
    logger: ClassVar[logging.Logger]
    protocol: ClassVar[str | None] = None  # status()["protocol"], when there is one
    counters: ClassVar[tuple[str, ...]]  # a terminal's counters in terminal_status()
    reject_reasons: ClassVar[tuple[str, ...]]
    registrations: ClassVar[str]  # the counter of registrations / logins
    peer_closed: ClassVar[str] = "the terminal closed the connection"  # an offline reason
    connection: ClassVar[type[TerminalConnection]]  # what a new connection is

    def __init__(self, host: str, port: int, *, terminals: Mapping[str, TermT], heartbeat_timeout: float,
                 registration_timeout: float, clock: Clock, name: str, check_interval: float | None,
                 max_waiting: int = MAX_WAITING) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.registration_timeout = float(registration_timeout)
        self.max_waiting = max_waiting
        self.check_interval = check_interval or min(1.0, self.heartbeat_timeout / 5)
        self.clock = clock
        self._terminals: dict[str, TermT] = dict(terminals)
        self._pending: set[ConnT] = set()
        self._connections: set[ConnT] = set()
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._bound: tuple[str, int] | None = None
        self.started: datetime | None = None
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.unknown_ids: Counter[str] = Counter()
        self._log = LogThrottle()  # rejections: once a minute per reason, with a count
        # (channel, online): a terminal came online here or went offline (collector nodes: the
        # node holding a terminal's connection owns its channel); called in the event loop
        self.on_presence: Callable[[str, bool], None] | None = None

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        connection = type(self).connection
        try:
            self._server = await loop.create_server(lambda: connection(self), self.host, self.port)
        except OSError as exc:
            raise LinkError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                            channel=self.name) from exc
        self._bound = self._server.sockets[0].getsockname()[:2]
        self.started = self.clock()
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self.kind}-watchdog {self.name}")
        self._log_listening(self._bound)

    def _log_listening(self, bound: tuple[str, int]) -> None:
        self.logger.info(f"{self.kind} listener %s: listening on %s:%s for %d terminal(s)", self.name, bound[0],
                         bound[1], len(self._terminals))

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
            raise RuntimeError(f"{self.kind} listener {self.name} is not started")
        return int(self._bound[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    # --- what channels use ------------------------------------------------------------------------

    def is_online(self, terminal: str) -> bool:
        return self._terminal(terminal).session is not None

    async def wait_online(self, terminal: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the terminal to be online; whether it is."""
        term = self._terminal(terminal)
        if term.session is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), timeout)
        return term.session is not None

    @property
    def terminal_ids(self) -> list[str]:
        return list(self._terminals)

    def _key(self, terminal: str) -> str:
        """The key in ``_terminals`` of a terminal as a caller names it (ProtocolError: it cannot be one)."""
        return terminal

    def _terminal(self, terminal: str) -> TermT:
        try:
            return self._terminals[self._key(terminal)]
        except (KeyError, ProtocolError):
            raise KeyError(f"{self.kind} listener {self.name}: terminal {terminal!r} is not configured") from None

    # --- statistics ---------------------------------------------------------------------------------

    def _format_of(self, term: TermT) -> str | None:
        raise NotImplementedError

    def _format_names(self) -> list[str]:
        raise NotImplementedError

    def _more_status(self, term: TermT, doc: dict[str, Any]) -> None:
        """Add what the subclass tells of a terminal beyond the shared fields (before the counters)."""

    def terminal_status(self, terminal: str) -> dict[str, Any]:
        term = self._terminal(terminal)
        now = self.clock()
        online = term.online_seconds(now)
        observed = (now - self.started).total_seconds() if self.started is not None else 0.0
        doc: dict[str, Any] = {
            "channel": term.channel,
            "state": "online" if term.session is not None else "offline",
            "peer": term.peer if term.session is not None else None,
            "format": self._format_of(term),
            "connected_since": _iso(term.connected_since) if term.session is not None else None,
            "last_seen": _iso(term.last_seen),
            "last_heartbeat": _iso(term.last_heartbeat),
            "last_offline": _iso(term.last_offline),
            "offline_reason": term.offline_reason or None,
            "online_seconds": round(online, 3),
            "online_rate": round(min(online / observed, 1.0), 4) if observed > 0 else None,
        }
        self._more_status(term, doc)
        doc.update({k: term.counters[k] for k in self.counters})
        return doc

    def status(self) -> dict[str, Any]:
        terminals = {tid: self.terminal_status(tid) for tid in self._terminals}
        doc: dict[str, Any] = {"name": self.name}
        if self.protocol is not None:
            doc["protocol"] = self.protocol
        doc.update({
            "host": self._bound[0] if self._bound else self.host,
            "port": self._bound[1] if self._bound else self.port,
            "formats": self._format_names(),
            "started": _iso(self.started),
            "heartbeat_timeout": self.heartbeat_timeout,
            "registration_timeout": self.registration_timeout,
            "accepted": self.accepted,
            "pending": len(self._pending),
            "known": len(self._terminals),
            "online": sum(1 for t in terminals.values() if t["state"] == "online"),
            "rejected": {r: self.rejected[r] for r in self.reject_reasons},
            "unknown_ids": dict(self.unknown_ids),
            "terminals": terminals,
        })
        return doc

    # --- connection events ----------------------------------------------------------------------------

    def _accepted(self, conn: ConnT) -> None:
        if self._server is None:
            conn.shut("listener closed", abort=True)
            return
        if len(self._pending) >= self.max_waiting:
            self.rejected[TOO_MANY_WAITING] += 1
            self._log.log(self.logger, logging.WARNING,
                          f"{self.kind} listener {self.name}: connections rejected ({TOO_MANY_WAITING})",
                          f"{self.kind} listener %s: connection from %s reset: %d connections are already waiting "
                          "to register (max_waiting)", self.name, conn.peer, len(self._pending))
            conn.shut(TOO_MANY_WAITING, abort=True)
            return
        self.accepted += 1
        self._connections.add(conn)
        self._pending.add(conn)
        conn.deadline = conn.loop.call_later(self.registration_timeout, self._registration_deadline, conn)

    def _shown(self, data: bytes) -> str:
        """Bytes as the log lines show them."""
        return data[:32].hex(" ").upper()

    def _reject(self, conn: ConnT, reason: str, detail: str, data: bytes = b"") -> None:
        self.rejected[reason] += 1
        shown = f" [{self._shown(data)}]" if data else ""
        self._log.log(self.logger, logging.WARNING, f"{self.kind} listener {self.name}: connections rejected ({reason})",
                      f"{self.kind} listener %s: connection from %s rejected (%s): %s%s", self.name, conn.peer,
                      reason, detail, shown)
        self._pending.discard(conn)
        conn.shut(reason)

    def _no_registration(self, conn: ConnT) -> tuple[str, bytes]:
        """What the rejection of a connection that did not register in time says: detail, bytes."""
        raise NotImplementedError

    def _registration_deadline(self, conn: ConnT) -> None:
        conn.deadline = None
        if conn.terminal is None and not conn.closed:
            self._reject(conn, REGISTRATION_TIMEOUT, *self._no_registration(conn))

    def _first_unregistered(self, conn: ConnT) -> bool:
        """Count a connection's data before registering, once per connection: whether this was the first."""
        if conn.saw_unregistered:
            return False
        conn.saw_unregistered = True
        self.rejected[UNREGISTERED_DATA] += 1
        return True

    def _unknown(self, conn: ConnT, terminal_id: str) -> bool:
        """Count a registration of a terminal that is not configured and close the connection;
        whether the id is new (the subclass logs it at WARNING then, else at DEBUG)."""
        if terminal_id in self.unknown_ids or len(self.unknown_ids) < MAX_UNKNOWN_IDS:
            first = terminal_id not in self.unknown_ids
            self.unknown_ids[terminal_id] += 1
        else:
            first = False
        self.rejected[UNKNOWN_ID] += 1
        self._pending.discard(conn)
        conn.shut(UNKNOWN_ID)
        return first

    def _log_replaced(self, term: TermT, conn: ConnT, old: TerminalConnection) -> None:
        raise NotImplementedError

    def _log_online(self, term: TermT, conn: ConnT) -> None:
        raise NotImplementedError

    def _attach(self, conn: ConnT, term: TermT) -> None:
        """``conn`` registered as ``term``: the terminal is online on it (an older connection of the
        terminal is replaced: aborted, a read waiting on it fails, the terminal stays online)."""
        conn.cancel_deadline()
        self._pending.discard(conn)
        now = self.clock()
        old = term.session
        conn.terminal = term
        term.session = conn
        if old is not None and old is not conn:
            term.counters["replaced"] += 1
            self._log_replaced(term, conn, old)
            self._detach(term, old, f"replaced by a new connection from {conn.peer}")
            old.shut("replaced", abort=True)
        elif old is None:
            term.online_since = now
            term.online_event.set()
            self._log_online(term, conn)
            self._presence(term.channel, True)
        term.counters[self.registrations] += 1
        term.connected_since = term.last_seen = now
        term.peer = conn.peer

    def _connection_lost(self, conn: ConnT, exc: Exception | None) -> None:
        self._connections.discard(conn)
        self._pending.discard(conn)
        term = conn.terminal
        if term is not None and term.session is conn:
            if conn.close_reason is None:
                term.counters["disconnects"] += 1
                reason = f"connection lost: {exc}" if exc else self.peer_closed
            else:
                reason = conn.close_reason
            self._offline(term, conn, reason)

    def _offline(self, term: TerminalState, conn: TerminalConnection, reason: str) -> None:
        if term.session is not conn:
            return
        now = self.clock()
        term.session = None
        term.online_total = term.online_seconds(now)
        term.online_since = None
        term.online_event.clear()
        term.last_offline, term.offline_reason = now, reason
        self._detach(term, conn, reason)
        self.logger.warning(f"{self.kind} listener %s: terminal %s (channel %s) offline: %s", self.name, term.ident,
                            term.channel, reason)
        self._presence(term.channel, False)

    def _presence(self, channel: str, online: bool) -> None:
        if self.on_presence is not None:
            try:
                self.on_presence(channel, online)
            except Exception:  # the listener goes on whatever the observer does
                self.logger.exception(f"{self.kind} listener %s: presence callback for channel %s failed", self.name,
                                      channel)

    def _detach(self, term: TerminalState, conn: TerminalConnection, reason: str) -> None:
        transport = term.transport
        if transport is not None and transport._session is conn:
            transport._session_lost(LinkClosedError(f"terminal {term.ident}: {reason}"))

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
                        self.logger.exception(f"{self.kind} listener %s: taking terminal %s offline failed",
                                              self.name, term.ident)


# --- the transport ------------------------------------------------------------------------------------


class TerminalTransport(Transport):
    """The pipe to one terminal: bound to its current connection at ``open()``.

    ``open()`` returns at once if the terminal is online (waiting up to ``connect_wait`` seconds
    for it to come online first, if set) and raises :class:`LinkError` if it is not.  When the
    connection goes away (the terminal drops, is replaced, stops heart-beating) a pending ``read``
    fails at once with :class:`LinkClosedError` and the transport is closed; the next ``open()``
    binds to whatever connection the terminal has then.  ``close()`` only unbinds: the terminal's
    TCP connection belongs to the listener and stays up.
    """

    never: ClassVar[str] = " (never registered)"  # why offline, before the first registration

    def __init__(self, listener: TerminalListener[Any, Any], ident: str, name: str, *,
                 connect_wait: float = 0.0) -> None:
        super().__init__(name)
        self.listener = listener
        self.ident = ident
        self.connect_wait = connect_wait
        self._session: TerminalConnection | None = None

    @property
    def is_open(self) -> bool:
        s = self._session
        return (s is not None and self._closed_exc is None and not s.closed
                and self.listener._terminals[self.ident].session is s)

    async def open(self) -> None:
        listener = self.listener
        term = listener._terminals[self.ident]
        if term.session is None and self.connect_wait > 0 and listener.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(term.online_event.wait(), self.connect_wait)
        s = term.session
        if s is None or s.closed:
            if not listener.running:
                raise LinkError(f"terminal {self.ident} offline ({listener.kind} listener {listener.name} "
                                "is not running)", channel=self.name)
            since = ""
            if term.last_offline is not None:
                since = f" since {term.last_offline.isoformat(timespec='seconds')}: {term.offline_reason}"
            elif term.counters[listener.registrations] == 0:
                since = self.never
            raise LinkError(f"terminal {self.ident} offline{since}", channel=self.name)
        self.reset_input()
        self._closed_exc = None
        self._session = s

    async def write(self, data: bytes) -> None:
        if not self.is_open:
            raise LinkClosedError(f"terminal {self.ident} is not connected", channel=self.name)
        assert self._session is not None
        self._session.write(data)
        self.listener._terminals[self.ident].counters["tx_bytes"] += len(data)

    async def close(self) -> None:
        if self._session is not None:
            self._session = None
            self._lost(LinkClosedError(f"terminal {self.ident}: transport closed"))

    def _session_lost(self, exc: LinkClosedError) -> None:
        self._session = None
        self._lost(exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, terminal {self.ident})"


__all__ = [
    "MAX_UNKNOWN_IDS",
    "REGISTRATION_TIMEOUT",
    "UNKNOWN_ID",
    "UNREGISTERED_DATA",
    "TerminalConnection",
    "TerminalListener",
    "TerminalState",
    "TerminalTransport",
    "listener_problems",
]  # fmt: skip
