"""How the simulated terminals start and stop: what the DTU, concentrator and MQTT terminal
simulators and their fleets have in common.

* :class:`Running` -- a simulator used as ``async with``: :meth:`start` on entry, :meth:`close` on
  exit (each simulator has its own ``start`` and ``close``);
* :class:`DialInTerminal` -- a terminal that dials in to the master over one TCP connection at a
  time (a :class:`Link`), dialling again through its :class:`~meterd.simulators.dialler.Dialler`:
  whether it is connected, :meth:`~DialInTerminal.wait_disconnected`,
  :meth:`~DialInTerminal.drop`, :meth:`~DialInTerminal.send` and :meth:`~DialInTerminal.close`
  (dialling and the ticker stopped, the connection closed).  The DTU (:mod:`.dtu`) and the
  concentrator (:mod:`.concentrator`) keep what happens on the connection, and how it ends
  (``_end``), to themselves;
* :class:`TerminalFleet` -- running terminals closed together (``async with`` closes them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Generic, Protocol, Self, TypeVar

from meterd.errors import LinkError
from meterd.simulators.dialler import Dialler, DialStats

__all__ = ["DialInTerminal", "Link", "Running", "TerminalFleet"]


class Running:
    """Started on entering ``async with``, closed on leaving it."""

    __slots__ = ()

    async def start(self) -> object:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Link:
    """One TCP connection of a dial-in terminal; ``dropped``: the terminal ended it on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.dropped = False
        self.ended = asyncio.Event()


class LinkStats(DialStats, Protocol):
    """The counters a dial-in terminal's own code here keeps, beside its dialler's."""

    tx_bytes: int
    drops: int


LinkT = TypeVar("LinkT", bound=Link)


class DialInTerminal(Running, Generic[LinkT]):
    """A terminal with one connection to the master at a time (``_link``, None while down), a
    :class:`~meterd.simulators.dialler.Dialler` (``_dialler``: its ``who`` names the terminal in
    messages), the task that dials (``_dialling``) and the one that moves its meters on
    (``_ticker``).  The subclass ends a connection (``_end``)."""

    stats: LinkStats
    _link: LinkT | None
    _dialler: Dialler
    _dialling: asyncio.Task[None] | None
    _ticker: asyncio.Task[None] | None

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and not link.ended.is_set()

    async def _end(self, *, abort: bool) -> None:
        """End the current connection, if any: aborted (``abort``, an RST) or closed."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop dialling and the ticker, then close the connection (the master sees it end)."""
        self._dialler.closing = True
        for task in (self._dialling, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._dialling = self._ticker = None
        await self._end(abort=False)

    async def drop(self) -> None:
        """Lose the connection now (abort: no goodbye), like losing mobile coverage; counted in
        ``drops`` if there was one.  The terminal dials again as after any lost connection."""
        if self.connected:
            self.stats.drops += 1
        await self._end(abort=True)

    async def send(self, data: bytes) -> None:
        """Write raw bytes to the master (noise, data before registering or logging in, a frame
        of a test's making ...); LinkError while not connected."""
        link = self._link
        if link is None or link.ended.is_set():
            raise LinkError(f"{self._dialler.who} is not connected")
        await self._write(link, data)

    async def wait_disconnected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the current connection to end; whether it has."""
        link = self._link
        if link is None:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.ended.wait(), timeout)
        return link.ended.is_set()

    async def _write(self, link: LinkT, data: bytes) -> None:
        link.writer.write(data)
        self.stats.tx_bytes += len(data)
        await link.writer.drain()


class Closes(Protocol):
    async def close(self) -> None: ...


class TerminalFleet:
    """Running terminals (:meth:`_members`), closed together, whatever each one's close raises."""

    __slots__ = ()

    def _members(self) -> Iterable[Closes]:
        raise NotImplementedError

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self._members()), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
