"""The transport contract and a receive buffer shared by the concrete pipes.

Reads are event driven: bytes land in a buffer from the event loop's callback and a waiting
``read`` is woken.  ``read`` returns everything buffered (at least one byte) or raises
LinkTimeoutError; it never returns empty.

A transport keeps one timeout timer armed across reads: most reads are answered well inside
their timeout, and creating and cancelling a timer for each of them (a heap push and a
cancelled entry in the loop's heap) cost a thousand-channel daemon a tenth of its CPU.  When the
timer fires for an earlier read's deadline while a later read waits, it re-arms for that one.
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
        self._timer: asyncio.TimerHandle | None = None  # see read()
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._deadline = 0.0

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
            deadline = loop.time() + timeout
            self._deadline = deadline
            timer = self._timer
            if timer is None or timer.when() > deadline or self._timer_loop is not loop:
                # one timer serves the reads that follow until it fires: a read whose deadline is
                # later (the usual case, a reply came in time) re-arms it then, not every time
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._timer_fired, loop)
                self._timer_loop = loop
            try:
                await waiter
            except TimeoutError:
                raise LinkTimeoutError(f"no bytes within {timeout:.3f} s", channel=self.name) from None
            finally:
                self._waiter = None
            if not self._buffer:
                raise LinkClosedError(str(self._closed_exc) or "link closed", channel=self.name)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _timer_fired(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:  # armed for an earlier read: wait on for this one
            self._timer = loop.call_at(self._deadline, self._timer_fired, loop)

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
