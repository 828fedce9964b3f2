"""The transport contract and a receive buffer shared by the concrete pipes.

Reads are event driven: bytes land in a buffer from the event loop's callback and a waiting
``read`` is woken.  ``read`` returns everything buffered (at least one byte) or raises
LinkTimeoutError; it never returns empty.
"""

from __future__ import annotations

import abc
import asyncio

from meterd.errors import LinkClosedError, LinkTimeoutError


class Transport(abc.ABC):
    """One link to a bus or terminal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_exc: BaseException | None = None

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def reset_input(self) -> None:
        """Discard what arrived so far (stale bytes from an earlier, late answer)."""
        self._buffer.clear()

    async def read(self, timeout: float) -> bytes:
        if not self._buffer:
            if self._closed_exc is not None:
                raise LinkClosedError(str(self._closed_exc) or "link closed", channel=self.name)
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._waiter = waiter
            handle = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            except TimeoutError:
                raise LinkTimeoutError(f"no bytes within {timeout:.3f} s", channel=self.name) from None
            finally:
                handle.cancel()
                self._waiter = None
            if not self._buffer:
                raise LinkClosedError(str(self._closed_exc) or "link closed", channel=self.name)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # called from event-loop callbacks of the concrete transports
    def _received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self, exc: BaseException | None) -> None:
        self._closed_exc = exc or LinkClosedError("peer closed the link", channel=self.name)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
