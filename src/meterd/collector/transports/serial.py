"""Serial pipe over pyserial (RS-485 adapters, or a pseudo-terminal, which pyserial opens alike).

pyserial does the line settings; the file descriptor is watched by the event loop so a read never
blocks the loop.  Writes go to the kernel buffer at once; we do not ``tcdrain``, which at 2400 baud
would stall the whole loop for the frame's wire time.

pyserial lets ``termios.error`` through from some calls (``tcsetattr`` while opening, ``tcflush`` in
``reset_input_buffer``); it is not an ``OSError``.  A port the driver refuses to configure (a pty
reopened at the 8E1 it was left at answers EINVAL, pyserial/pyserial#196) or a device that went away
under an open port is a link error like any other, so :data:`PORT_ERRORS` includes it.
"""

from __future__ import annotations

import asyncio
import termios

import serial

from meterd.collector.transports.base import Transport
from meterd.errors import LinkClosedError, LinkError

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class SerialTransport(Transport):
    def __init__(
        self, name: str, device: str, *, baud: int = 2400, bytesize: int = 8, parity: str = "E", stopbits: int = 1
    ) -> None:
        super().__init__(name)
        self.device = device
        self.baud = baud
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self._port: serial.Serial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None and self._closed_exc is None

    @property
    def line_settings(self) -> str:
        return f"{self.baud} {self.bytesize}{self.parity}{self.stopbits}"

    async def open(self) -> None:
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
                write_timeout=2,
                exclusive=True,
            )
        except (*PORT_ERRORS, ValueError) as exc:
            raise LinkError(f"cannot open {self.device} at {self.line_settings}: {_say(exc)}",
                            channel=self.name) from exc
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._port is not None
        try:
            data = self._port.read(4096)
        except PORT_ERRORS as exc:
            self._detach()
            self._lost(LinkClosedError(f"{self.device}: {exc}", channel=self.name))
            return
        if data:
            self._received(data)

    async def write(self, data: bytes) -> None:
        if self._port is None:
            raise LinkClosedError(f"{self.device} is not open", channel=self.name)
        try:
            self._port.write(data)
        except PORT_ERRORS as exc:
            self._detach()
            raise LinkClosedError(f"{self.device}: write failed: {exc}", channel=self.name) from exc

    def reset_input(self) -> None:
        super().reset_input()
        if self._port is not None:
            try:
                self._port.reset_input_buffer()
            except PORT_ERRORS:
                pass

    def _detach(self) -> None:
        if self._port is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._port.fileno())
            except (ValueError, OSError):
                pass

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


def _say(exc: BaseException) -> str:
    """``termios.error`` prints as a bare tuple, ``(22, 'Invalid argument')``: name it."""
    if isinstance(exc, termios.error):
        return f"cannot configure the port: {exc.args[-1] if exc.args else exc}"
    return str(exc)
