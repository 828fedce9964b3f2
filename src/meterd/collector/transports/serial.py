"""Serial pipe over pyserial (RS-485 adapters, or a pseudo-terminal, which pyserial opens alike).

pyserial opens the port and does the line settings (termios: baud, parity, stop bits, exclusive
lock); the bytes then go through the port's file descriptor (``Serial.fileno()``, non-blocking, as
pyserial opens it): the event loop watches it (``add_reader``, epoll on Linux) and ``os.read`` /
``os.write`` move the bytes.  pyserial's own ``read``/``write`` are not used: they wait in
``select()``, which refuses a descriptor above 1023 (``ValueError: filedescriptor out of range``)
-- and a daemon with a few hundred ports has such descriptors, as pyserial opens five per port
(the port and two pipe pairs for ``cancel_read``/``cancel_write``): :data:`FDS_PER_PORT`.  A
``select()`` per read also cost CPU for nothing: the loop has already said the port is readable.

Writes go to the kernel buffer at once; we do not ``tcdrain``, which at 2400 baud would stall the
whole loop for the frame's wire time.  A write the kernel takes only in part (its buffer full) waits
for the descriptor to be writable, up to ``write_timeout`` (:data:`WRITE_TIMEOUT`) each time.

Whatever the callback that reads the port meets -- an error, end of file (the device went away), a
bug -- it stops watching the port and hands the failure to the waiting read, once: a port that
fails never makes the loop call it again and again (each call a log line).

pyserial lets ``termios.error`` through from some calls (``tcsetattr`` while opening, ``tcflush`` in
``reset_input_buffer``); it is not an ``OSError``.  A port the driver refuses to configure (a pty
reopened at the 8E1 it was left at answers EINVAL, pyserial/pyserial#196) or a device that went away
under an open port is a link error like any other, so :data:`PORT_ERRORS` includes it.

Every way opening a port can fail -- no such device, not a tty (``/dev/null``, a plain file:
ENOTTY from ``tcgetattr``), permission, another program holding the lock, a driver refusing the
line settings, settings pyserial refuses (``ValueError``) or cannot pass to the kernel
(``OverflowError`` for an absurd baud rate) -- becomes one :class:`~meterd.errors.LinkError`
naming the device, the line settings and the reason in words (:func:`port_problem`).  The channel
counts it as a ``link`` failure and tries the port again on its next transaction; ``meterd read``
and ``meterd probe`` print it as one line.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import termios
from typing import Final

import serial

from meterd.collector.transports.base import Transport
from meterd.errors import LinkClosedError, LinkError

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
PORT_ERRORS = (serial.SerialException, OSError, termios.error)
SETTING_ERRORS = (ValueError, OverflowError)  # pyserial refused the settings, or they overflow a C int
FDS_PER_PORT: Final = 5  # an open pyserial port: its descriptor and two pipes (cancel_read, cancel_write)
READ_SIZE: Final = 4096
WRITE_TIMEOUT: Final = 2.0  # a write the kernel does not take within this is a link failure
GONE: Final = "the device went away (unplugged, or another program reads the port)"

_REASONS: Final = {
    errno.ENOENT: "no such device (nothing at that path: unplugged, or named differently?)",
    errno.ENODEV: "no such device (the driver has no device behind that path)",
    errno.ENXIO: "no such device (the driver has no device behind that path)",
    errno.EACCES: "permission denied (is this user in the dialout group?)",
    errno.EPERM: "permission denied (is this user in the dialout group?)",
    errno.EBUSY: "in use by another program (the device is busy)",
    errno.EAGAIN: "in use by another program (it holds the port's lock)",
    errno.EISDIR: "a directory, not a serial port",
    errno.ENOTTY: "not a serial port (it takes no line settings)",
    errno.EIO: "input/output error (the device went away?)",
}


class SerialTransport(Transport):
    def __init__(
        self, name: str, device: str, *, baud: int = 2400, bytesize: int = 8, parity: str = "E", stopbits: int = 1,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        super().__init__(name)
        self.write_timeout = write_timeout
        self.device = device
        self.baud = baud
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self._port: serial.Serial | None = None
        self._fd = -1  # the port's descriptor while the loop watches it
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None and self._closed_exc is None

    @property
    def line_settings(self) -> str:
        return f"{self.baud} {self.bytesize}{self.parity}{self.stopbits}"

    async def open(self) -> None:
        if self._port is not None:  # lost (the reader failed) but not closed yet
            await self.close()
        self._buffer.clear()
        self._closed_exc = None
        try:
            port = serial.Serial(
                self.device,
                baudrate=self.baud,
                bytesize=self.bytesize,
                parity=PARITIES[self.parity],
                stopbits=self.stopbits,
                timeout=0,
                exclusive=True,
            )
            fd = port.fileno()
        except (*PORT_ERRORS, *SETTING_ERRORS) as exc:
            raise LinkError(f"cannot open serial port {self.device} at {self.line_settings}: {port_problem(exc)}",
                            channel=self.name) from exc
        loop = asyncio.get_running_loop()
        try:
            os.set_blocking(fd, False)  # pyserial opens it so; a read or write must never wait
            loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError) as exc:  # a device the event loop cannot watch
            port.close()
            raise LinkError(f"cannot watch serial port {self.device}: {port_problem(exc)}", channel=self.name) from exc
        self._port, self._fd, self._loop = port, fd, loop

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except Exception as exc:  # noqa: BLE001 -- EIO (the device went away), EBADF, or a bug: never again
            self._fail(exc)
            return
        if data:
            self._received(data)
        else:  # end of file: a tty reads it once its device hung up
            self._fail(None)

    def _fail(self, exc: BaseException | None) -> None:
        """The port cannot be read any more: stop watching it and fail the waiting read (once)."""
        self._detach()
        if exc is None or (isinstance(exc, OSError) and exc.errno == errno.EIO):
            reason = GONE
        else:
            reason = port_problem(exc)
        # no channel here: read() names it when it raises this on
        self._lost(LinkClosedError(f"serial port {self.device}: {reason}"))

    async def write(self, data: bytes) -> None:
        if self._port is None or self._fd < 0:
            raise LinkClosedError(f"{self.device} is not open", channel=self.name)
        view = memoryview(data)
        try:
            while view:
                try:
                    n = os.write(self._fd, view)
                except (BlockingIOError, InterruptedError):
                    n = 0
                view = view[n:]
                if view:  # the kernel's buffer is full (a stalled line): wait until it takes more
                    await self._writable()
        except (OSError, TimeoutError) as exc:
            self._detach()
            reason = f"the port took nothing for {self.write_timeout:g} s" if isinstance(exc, TimeoutError) else port_problem(exc)
            raise LinkClosedError(f"serial port {self.device}: write failed: {reason}", channel=self.name) from exc

    async def _writable(self) -> None:
        assert self._loop is not None
        ready = self._loop.create_future()
        self._loop.add_writer(self._fd, _resolve, ready)
        try:
            await asyncio.wait_for(ready, self.write_timeout)
        finally:
            self._loop.remove_writer(self._fd)

    def reset_input(self) -> None:
        super().reset_input()
        if self._port is not None and self._fd >= 0:
            try:
                self._port.reset_input_buffer()  # tcflush(TCIFLUSH)
            except PORT_ERRORS:
                pass

    def _detach(self) -> None:
        if self._fd >= 0 and self._loop is not None:
            try:
                self._loop.remove_reader(self._fd)
                self._loop.remove_writer(self._fd)
            except (ValueError, OSError, RuntimeError):  # RuntimeError: the loop is closed
                pass
        self._fd = -1

    async def close(self) -> None:
        if self._port is not None:
            self._detach()
            try:
                self._port.close()
            except PORT_ERRORS:
                pass
            self._port = None

    def __repr__(self) -> str:
        return f"SerialTransport({self.name!r}, {self.device} {self.line_settings})"


def descriptor_shortfall(ports: int, soft_limit: int, hard_limit: int, reserve: int = 64) -> str | None:
    """Why ``ports`` serial ports may not all open under the open-file limit, in words; None if they fit.

    Each open port holds :data:`FDS_PER_PORT` descriptors; ``reserve`` leaves room for the store,
    the API, listeners and logs (a node with DTUs or terminals needs more: one per connection)."""
    needed = ports * FDS_PER_PORT + reserve
    if soft_limit == resource.RLIM_INFINITY or needed <= soft_limit:
        return None
    return (f"{ports} serial channels need about {needed} open files ({FDS_PER_PORT} a port, as pyserial opens "
            f"them, and {reserve} more) but the open-file limit is {soft_limit} (hard {hard_limit}): the ports "
            "past it will fail to open; raise LimitNOFILE in the systemd unit or `ulimit -n` before starting")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def port_problem(exc: BaseException) -> str:
    """Why a port could not be opened, in words.

    pyserial wraps most failures in ``SerialException``: with the errno for ``open()``
    (``[Errno 2] could not open port ...: [Errno 2] No such file ...``), without one but chained to
    the ``termios.error`` for configuring (``Could not configure port: (25, '...')``).  ``termios.error``
    itself prints as a bare tuple.  All of them are reduced to the errno's meaning.
    """
    if isinstance(exc, SETTING_ERRORS):
        return f"bad line settings: {exc}"
    cause = exc.__context__ if isinstance(exc, serial.SerialException) and exc.__context__ is not None else exc
    if isinstance(cause, termios.error):
        code = cause.args[0] if cause.args and isinstance(cause.args[0], int) else None
        if code == errno.ENOTTY:
            return _REASONS[errno.ENOTTY]
        return f"cannot configure the port: {cause.args[-1] if cause.args else cause}"
    code = getattr(exc, "errno", None) or getattr(cause, "errno", None)
    if isinstance(code, int) and code:
        return _REASONS.get(code) or os.strerror(code)
    if "returned no data" in str(exc):  # pyserial's words for a read at end of file
        return GONE
    return str(exc)
