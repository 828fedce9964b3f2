"""A paho-mqtt client driven by the asyncio event loop: no network thread per client.

paho's ``loop_start`` runs a thread per client that sits in ``select``; every publish from the
event loop then wakes it through a socket pair, and every message it reads comes back with
``call_soon_threadsafe``.  With one broker connection per simulated terminal (hundreds in one
process) or thousands of requests a second on the master's one connection, those thread hops cost
more than the MQTT work itself.  :class:`PahoDriver` uses paho's external-loop interface instead
(``loop_read`` / ``loop_write`` / ``loop_misc`` and the ``on_socket_*`` callbacks): the socket is
an ``add_reader`` of the event loop, writes are flushed once per loop iteration (however many
messages were published in it), keep-alive runs on one one-second timer for all the loop's
clients, and every paho callback (``on_connect``, ``on_message``, ...) runs in the loop thread.

Only (re)connecting leaves the loop: paho's ``reconnect`` resolves the name, connects and does the
TLS handshake with blocking calls, so it runs in a worker thread; while it runs the owner is not
connected and does not touch the client.  After a lost connection (or a failed attempt) the driver
waits and tries again with exponential back-off (``reconnect``: min, doubling up to max, back to
min after a successful CONNACK, as paho's own loop does), and paho re-sends what it kept
(unacknowledged QoS 1).

:func:`new_client` makes the client as meterd uses it, for the master's hub and the simulated
terminals alike: a byte pipe to the broker, nothing of meterd's topics or payloads.

Strategy notes:

* paho reads a packet with two or three ``recv`` calls (type byte, length bytes, body) and one
  more that fails with EAGAIN: :class:`Client` hands it a :class:`BufferedSocket` that takes what
  the kernel has in one ``recv`` and serves those small reads from memory.
* ``loop_read`` returns after one packet when paho has few messages in flight; the driver calls
  it again while the buffer holds bytes (the kernel socket is no longer readable then).
* paho sends each packet with its own ``send``; while the driver flushes, the socket gathers them
  and writes them with one.  What the kernel does not take (paho's queue or gathered bytes) is
  written when the socket becomes writable again.
* For every PUBACK paho 2.x builds a ``ReasonCode`` and an (empty) MQTT 5 ``Properties`` even on
  an MQTT 3.1.1 connection, which costs more than the rest of handling the packet:
  :class:`Client` hands ``on_publish`` one pair made per client instead (3.1.1 PUBACKs carry
  neither; MQTT 5 and malformed packets take paho's own path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from meterd.logthrottle import LogThrottle
from meterd.supervise import log_task_failure

log = logging.getLogger(__name__)

MISC_EVERY = 1.0  # seconds between loop_misc calls (keep-alive pings, ping timeouts), as paho's thread
RECV_SIZE = 65536


class BufferedSocket:
    """A socket whose ``recv`` serves paho's small reads from one big kernel read, and whose
    ``send`` gathers what paho writes in one flush into one kernel write (while ``corked``).

    Everything else is the wrapped socket's (``fileno``, ``setsockopt``, ...); ``pending()`` is
    what paho's own select loop asks an SSL socket, so a threaded client works with it too (it
    never corks).  A gathered write the kernel does not take at once stays in ``unsent`` until
    :meth:`uncork` is called again; an error there is left for the next read to find.
    """

    __slots__ = ("_buf", "_out", "_pos", "corked", "sock")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._buf = b""
        self._pos = 0
        self._out = bytearray()
        self.corked = False

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self.sock.recv(max(n, RECV_SIZE))  # BlockingIOError, SSLWantReadError: as is
            if not buf:
                return b""
            self._buf, pos = buf, 0
        end = pos + n
        self._pos = end
        if pos == 0 and end >= len(buf):
            return buf
        return buf[pos:end]

    def pending(self) -> int:
        inner = getattr(self.sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    @property
    def buffered(self) -> int:
        """Received bytes not yet read by paho."""
        return len(self._buf) - self._pos

    @property
    def unsent(self) -> int:
        return len(self._out)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self.corked or self._out:
            self._out += data
            return len(data)
        return self.sock.send(data)

    def uncork(self) -> int:
        """Write what was gathered; how many bytes are still waiting (the socket is full)."""
        self.corked = False
        out = self._out
        if out:
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except OSError:  # the connection is broken: the reader gets the error and closes it
                sent = len(out)
            del out[:sent]
        return len(out)

    def close(self) -> None:
        if self._out:  # a DISCONNECT written just before paho closes the socket
            with contextlib.suppress(OSError, ValueError):
                self.sock.send(self._out)
            self._out.clear()
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _Filters(MQTTMatcher):
    """paho matches every incoming topic against the per-topic callbacks (``message_callback_add``)
    by splitting it and walking a trie; meterd registers none, so skip the walk while it is empty."""

    def iter_match(self, topic: str) -> Any:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)


class Client(mqtt.Client):
    """paho's client, reading and writing through a :class:`BufferedSocket`, with a cheaper
    MQTT 3.1.1 PUBACK (see the module doc).

    ``debug_log``, if set, gets all of paho's chatter at debug level (its "not connected" errors
    while reconnecting too), formatted only when that logger is enabled for debug: paho's own
    ``on_log`` formats a line for every packet in and out, used or not.
    """

    debug_log: logging.Logger | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message_filtered = _Filters()
        # what a 3.1.1 PUBACK "carries": success, no properties (shared by all its PUBACKs)
        self._puback_reason = ReasonCode(PacketTypes.PUBACK)
        self._puback_properties = Properties(PacketTypes.PUBACK)

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def _easy_log(self, level: Any, fmt: str, *args: Any) -> None:
        log = self.debug_log
        if log is not None and log.isEnabledFor(logging.DEBUG):
            log.debug(fmt, *args)
        if self._on_log is not None or self._logger is not None:
            super()._easy_log(level, fmt, *args)

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol == MQTTProtocolVersion.MQTTv5 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, self._puback_reason, self._puback_properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class _MiscTicker:
    """One timer per event loop runs ``loop_misc`` of every connected driver once a second (hundreds
    of simulated terminals share a process: not a timer each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.drivers: dict[PahoDriver, None] = {}  # insertion-ordered set
        self.handle: asyncio.TimerHandle | None = None

    def add(self, driver: PahoDriver) -> None:
        self.drivers[driver] = None
        if self.handle is None:
            self.handle = self.loop.call_later(MISC_EVERY, self._tick)

    def discard(self, driver: PahoDriver) -> None:
        self.drivers.pop(driver, None)

    def _tick(self) -> None:
        self.handle = None
        for driver in list(self.drivers):
            driver._misc()
        if self.drivers and not self.loop.is_closed():
            self.handle = self.loop.call_later(MISC_EVERY, self._tick)


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _MiscTicker] = weakref.WeakKeyDictionary()


def _ticker(loop: asyncio.AbstractEventLoop) -> _MiscTicker:
    ticker = _TICKERS.get(loop)
    if ticker is None:
        ticker = _TICKERS[loop] = _MiscTicker(loop)
    return ticker


class PahoDriver:
    """Connects one paho client and runs its I/O in the running event loop (see the module doc).

    ``on_connect`` is installed as the client's ``on_connect`` (the driver needs to see the CONNACK
    to reset its back-off).  ``start`` once; ``stop`` ends it: after ``client.disconnect()`` for a
    clean DISCONNECT, or with ``abort=True`` to drop the socket without one (the broker then
    publishes the client's will).
    """

    def __init__(self, client: mqtt.Client, host: str, port: int, keepalive: int, *,
                 reconnect: tuple[float, float] = (1.0, 30.0),
                 on_connect: Callable[..., None] | None = None) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.reconnect_min, self.reconnect_max = reconnect
        self._user_on_connect = on_connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._sock: Any = None  # the socket registered with the loop
        self._writer = False  # the socket is watched for writability
        self._flush_pending = False
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._connecting = False  # reconnect() is running in a worker thread
        self._delay: float | None = None
        self._log = LogThrottle()  # a callback failing on every message: once a minute, with a count
        client.on_connect = self._paho_connect
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write

    @property
    def running(self) -> bool:
        return self._running

    @property
    def attached(self) -> bool:
        """Whether a socket is open and served by the loop (connected, or waiting for CONNACK)."""
        return self._sock is not None

    def start(self) -> None:
        """Start connecting in the background (and keep reconnecting until :meth:`stop`)."""
        if self._running or self._task is not None:
            raise RuntimeError("PahoDriver.start called twice")
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._running = True
        self._lost = asyncio.Event()
        self.client.connect_async(self.host, self.port, self.keepalive)
        self._task = self._loop.create_task(self._connector(), name=f"mqtt-connect {self.host}:{self.port}")
        self._task.add_done_callback(log_task_failure)

    async def stop(self, *, abort: bool = False, timeout: float = 2.0) -> None:
        """Stop reconnecting and detach from the loop.  Call after ``client.disconnect()`` (waits up
        to ``timeout`` s for the DISCONNECT to go out) or with ``abort``: the socket is shut down
        under the client, no DISCONNECT."""
        self._running = False
        task, self._task = self._task, None
        if task is not None and self._connecting:
            # reconnect() is running in a thread: let it finish, so its socket is closed below
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            task = None
        if abort:
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        elif self._sock is not None:
            self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._detach()
        self.client._sock_close()

    # --- connecting -----------------------------------------------------------------------------

    async def _connector(self) -> None:
        first = True
        while self._running:
            if not first:
                self._delay = self.reconnect_min if self._delay is None else min(self._delay * 2, self.reconnect_max)
                await asyncio.sleep(self._delay)
                if not self._running:
                    return
            first = False
            self._lost = asyncio.Event()
            self._connecting = True
            try:
                await asyncio.to_thread(self.client.reconnect)
            except Exception as exc:  # noqa: BLE001 -- OSError, ssl errors, socks errors: try again
                log.debug("MQTT %s:%d: connection attempt failed: %s", self.host, self.port, exc)
                self._connect_failed()
                continue
            finally:
                self._connecting = False
            if not self._running:
                return
            self._attach()
            await self._lost.wait()

    def _connect_failed(self) -> None:
        on_fail = self.client.on_connect_fail
        if on_fail is not None:
            try:
                on_fail(self.client, None)
            except Exception:
                log.exception("MQTT on_connect_fail failed")

    def _paho_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            self._delay = None
        if self._user_on_connect is not None:
            self._user_on_connect(client, userdata, flags, reason, properties)

    # --- the socket in the loop -----------------------------------------------------------------

    def _attach(self) -> None:
        sock = self.client.socket()
        if sock is None:  # closed again before we got here
            self._lost.set()
            return
        assert self._loop is not None
        self._sock = sock
        self._loop.add_reader(sock, self._readable)
        _ticker(self._loop).add(self)
        self._flush()  # CONNECT, queued by reconnect()

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if self._loop is not None:
            _ticker(self._loop).discard(self)
        if sock is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock)
            if self._writer:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(sock)
        self._writer = False
        self._lost.set()

    def _readable(self) -> None:
        client = self.client
        try:
            client.loop_read()
            sock = client.socket()
            while isinstance(sock, BufferedSocket) and sock.buffered:
                client.loop_read()
                sock = client.socket()
        except Exception:  # noqa: BLE001 -- a callback raised inside paho: keep the connection going
            self._log.log(log, logging.ERROR, "MQTT incoming data whose handling failed",
                          "MQTT %s:%d: handling incoming data failed", self.host, self.port, exc_info=True)

    def _flush(self) -> None:
        self._flush_pending = False
        client, sock = self.client, self._sock
        if sock is None:
            return
        buffered = isinstance(sock, BufferedSocket)
        if buffered:
            sock.corked = True
        try:
            client.loop_write()
        finally:
            left = sock.uncork() if buffered else 0
        if self._sock is None:
            return
        blocked = bool(left) or client.want_write()
        if blocked and not self._writer:
            assert self._loop is not None
            self._writer = True
            self._loop.add_writer(sock, self._flush)
        elif not blocked and self._writer:
            self._writer = False
            assert self._loop is not None
            self._loop.remove_writer(sock)

    def _misc(self) -> None:
        if self._sock is None:
            return
        try:
            self.client.loop_misc()  # keep-alive ping, or close on a missing PINGRESP
        except Exception:
            log.exception("MQTT %s:%d: keep-alive failed", self.host, self.port)

    # --- paho's socket callbacks ----------------------------------------------------------------

    def _in_loop(self) -> bool:
        return threading.get_ident() == self._thread_id

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._in_loop():
            if sock is self._sock:
                self._detach()
        elif self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._socket_closed_late, sock)

    def _socket_closed_late(self, sock: Any) -> None:
        if sock is self._sock:
            self._detach()

    def _register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # publish() and paho's own acks queue packets: flush them all once, at the end of this
        # loop iteration (reconnect() in its thread queues CONNECT: _attach flushes it)
        if self._flush_pending or not self._in_loop() or self._loop is None:
            return
        self._flush_pending = True
        self._loop.call_soon(self._flush)

    def _unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        pass  # _flush watches the socket for writability itself: it also knows the gathered bytes


# --- the clients meterd makes ---------------------------------------------------------------

_paho_logger = logging.getLogger(f"{__name__}.paho")  # paho's own chatter, at debug level (see new_client)


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Small request/reply messages: no Nagle delay (with delayed ACKs it costs ~40 ms a hop)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    reconnect: tuple[float, float] = (1.0, 30.0),
) -> mqtt.Client:
    """A paho-mqtt 2.x client as meterd uses them (the hub and the simulated terminals): callback
    API version 2, MQTT 3.1.1, clean session, reconnect back-off ``reconnect`` (min, max seconds),
    no client-side cap on messages in flight, TCP_NODELAY, paho's log at debug level; its socket is
    a :class:`BufferedSocket` (run it with a :class:`PahoDriver`)."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    client.debug_log = _paho_logger
    client.on_socket_open = _no_delay
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set()
    client.reconnect_delay_set(*reconnect)  # type: ignore[arg-type]
    client.max_inflight_messages_set(0)
    return client


__all__ = ["MISC_EVERY", "BufferedSocket", "Client", "PahoDriver", "new_client"]
