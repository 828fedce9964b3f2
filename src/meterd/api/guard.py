"""What uvicorn does not limit: how long a client may take to send its request, and how many
connections the API holds.

uvicorn (checked in its source, 0.3x to 0.55, h11 and httptools alike) arms its keep-alive timer
(``timeout_keep_alive``) only when a response is complete, and cancels it at the first byte of the
next request.  A connection that sends nothing, or half a request line, or headers one byte a
minute, has no timer at all and holds its socket for ever.  ``limit_concurrency`` does not help:
it is looked at only once a complete request has arrived, it answers that request 503 but never
closes or refuses a connection, and it counts idle connections -- 2,000 sockets that never send a
byte make every real request a 503.  ``backlog`` is the kernel's accept queue.  So 1,100 idle
sockets used to take every file descriptor of a daemon at the usual soft limit of 1,024: store
writes, DTU accepts and the API itself failed (see docs/api.md).

:class:`GuardedH11Protocol` is uvicorn's own h11 protocol with two additions; it reaches uvicorn
through the public ``Config(http=<asyncio.Protocol class>)`` and uses only h11's public state
(``conn.their_state``) and uvicorn's ``on_response_complete`` hook:

* **Request deadline** (``header_timeout``): from the moment a connection is accepted, or from
  the first byte of its next request after an answer, the client has ``header_timeout`` seconds
  to deliver the whole request (headers, and the body where there is one).  Then the connection
  is closed.  A kept-alive connection that sends nothing after an answer is closed by uvicorn's
  own ``timeout_keep_alive`` (``keep_alive_timeout`` in ``[api]``).
* **Connection cap** (``max_connections``): the connections of one server are counted.  A new
  connection over the cap first makes room by closing the connection that has been waiting
  longest without a request in progress (idle after an answer, or still sending its headers) --
  the way nginx reuses keep-alive connections when it runs short -- so a flood of idle sockets
  can never lock out the next real client, the dashboard or a ``/healthz`` probe.  Only when
  every connection is in the middle of a request is the newcomer refused at once: a fixed
  ``503`` written without reading anything, and closed.

Why not an accept-side guard around the listening socket: before uvicorn sees a connection
nothing knows where its request ends, so a guard there could only cap the count, not time the
headers -- and the cap alone, without eviction, is exactly what lets idle sockets lock everyone out.

**Request head** (:data:`MAX_HEAD`): h11 buffers at most 16 KiB of a request line and headers
(its default; the daemon states it to uvicorn), so a 1 MB query string or path is never read whole; uvicorn
answered it with a bare ``400 Invalid HTTP request received.`` in plain text.  The guard answers
``431`` with a JSON error naming the limit instead, and closes as before.

The httptools parser (``uvicorn[standard]``) is not used: the daemon asks for this class
explicitly, so installing httptools later can never bypass the guard.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Final, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from meterd.logthrottle import LogThrottle

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_KEEP_ALIVE_TIMEOUT: Final = 5.0
DEFAULT_MAX_CONNECTIONS: Final = 1024

#: The most of a request's line and headers h11 buffers: its default, which the daemon also passes to
#: uvicorn (``h11_max_incomplete_event_size``) so that it is a stated limit, not an assumed one.
MAX_HEAD: Final = 16 * 1024


def head_too_large(limit: int) -> bytes:
    """The 431 answer to a request whose line and headers run over ``limit`` bytes."""
    body = (f'{{"error": "request line and headers over {limit // 1024} KiB ({limit} bytes): a path, query '
            f'string or header that long is refused"}}').encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


_BUSY_BODY: Final = b'{"error": "the API is at its connection limit, every connection busy; try again"}'
BUSY_RESPONSE: Final = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                        b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
                        + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class ConnectionGuard:
    """The connections of one server: how many are open, which wait without a request in
    progress (oldest first), and what the guard did -- figures for ``/metrics``."""

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if header_timeout <= 0:
            raise ValueError(f"header_timeout must be positive, got {header_timeout}")
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open = 0
        self._waiting: dict[GuardedH11Protocol, None] = {}  # insertion order: waiting since
        self.accepted = 0
        self.evicted = 0  # closed to make room for a newer connection
        self.refused = 0  # turned away: every connection was in the middle of a request
        self.header_timeouts = 0  # closed for not sending a whole request in time
        self.log = LogThrottle()  # what the guard does is logged once a minute per kind, with a count

    def protocol(self) -> type[GuardedH11Protocol]:
        """The protocol class to hand uvicorn as ``Config(http=...)``, bound to this guard."""
        return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": self})

    def status(self) -> dict[str, int]:
        return {"open": self.open, "waiting": len(self._waiting), "accepted": self.accepted, "evicted": self.evicted,
                "refused": self.refused, "header_timeouts": self.header_timeouts}

    # --- called by the connections --------------------------------------------------------------

    def _admit(self) -> bool:
        """Room for one more connection, closing the longest-waiting one if need be; or False."""
        while self.open >= self.max_connections:
            if not self._waiting:
                return False
            oldest = next(iter(self._waiting))
            self.evicted += 1
            self.log.log(log, logging.WARNING, "HTTP API connections closed to make room",
                         "HTTP API: %d connections open (max_connections); closing the ones waiting longest "
                         "without a request to make room", self.open)
            oldest._release()
            oldest.transport.close()
        self.open += 1
        self.accepted += 1
        return True

    def _waits(self, conn: GuardedH11Protocol) -> None:
        self._waiting.pop(conn, None)
        self._waiting[conn] = None  # to the end: it waits from now

    def _works(self, conn: GuardedH11Protocol) -> None:
        self._waiting.pop(conn, None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard` (see the module docstring)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._counted = False  # holds one of the guard's places
        self._served = False  # uvicorn saw connection_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        if not self.guard._admit():
            self.guard.refused += 1
            self.guard.log.log(log, logging.WARNING, "HTTP API connections refused", "HTTP API: all %d connections are in the middle of "
                         "a request; new connections are answered 503", self.guard.max_connections)
            writer = cast(asyncio.WriteTransport, transport)  # uvloop's transports are no subclass of it
            writer.write(BUSY_RESPONSE)
            writer.close()
            return
        self._counted = self._served = True
        super().connection_made(transport)  # type: ignore[arg-type]
        self.guard._waits(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._counted:
            return
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self.guard._works(self)  # a request is under way: never evicted
        if state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the whole request is in (or it was refused)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse; a head over :data:`MAX_HEAD` (h11 keeps
        it unparsed in ``trailing_data``) gets 431 naming the limit."""
        limit = self.config.h11_max_incomplete_event_size or MAX_HEAD
        if len(self.conn.trailing_data[0]) > limit:
            self.transport.write(head_too_large(limit))
            self.transport.close()
            return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # uvicorn arms its keep-alive timer here
        if self._counted and not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.guard._waits(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._served:
            super().connection_lost(exc)

    def _release(self) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self.guard.open -= 1
            self.guard._works(self)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.guard.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.guard.header_timeouts += 1
            self.guard.log.log(log, logging.INFO, "HTTP API connections closed at the header timeout", "HTTP API: closed a connection from %s that "
                         "sent no complete request within %g s (header_timeout)",
                         f"{self.client[0]}:{self.client[1]}" if self.client else "?", self.guard.header_timeout)
            self._release()
            self.transport.close()
