"""TCP client pipe: the master connects to a serial server or a transparent DTU."""

from __future__ import annotations

import asyncio
import socket

from meterd.collector.transports.base import Transport
from meterd.errors import LinkClosedError, LinkError, LinkTimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)


class TcpTransport(Transport):
    def __init__(self, name: str, host: str, port: int, *, connect_timeout: float = 5.0) -> None:
        super().__init__(name)
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._closed_exc is None and not self._transport.is_closing()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._buffer.clear()
        self._closed_exc = None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port), self.connect_timeout
            )
        except TimeoutError:
            raise LinkTimeoutError(
                f"connect to {self.host}:{self.port} timed out after {self.connect_timeout} s", channel=self.name
            ) from None
        except OSError as exc:
            raise LinkError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}",
                            channel=self.name) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = transport  # type: ignore[assignment]

    async def write(self, data: bytes) -> None:
        if not self.is_open:
            raise LinkClosedError(f"not connected to {self.host}:{self.port}", channel=self.name)
        assert self._transport is not None
        self._transport.write(data)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def __repr__(self) -> str:
        return f"TcpTransport({self.name!r}, {self.host}:{self.port})"
