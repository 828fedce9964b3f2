"""The dial-in side that simulated terminals share: connect to the master, dial again when the
connection is lost or cannot be made, count it all.

A simulated DTU (:mod:`.dtu`) and a simulated concentrator (:mod:`.concentrator`) are TCP
*clients* of the master, as their real GPRS/4G counterparts are.  Each keeps one :class:`Dialler`,
which

* opens the connection (:meth:`Dialler.open`: ``connect_timeout``, TCP_NODELAY, the owner's
  ``connections`` and ``connect_failures`` counted, a :class:`~meterd.errors.LinkError` naming
  the terminal and the master when it fails);
* dials until it is told to stop (:meth:`Dialler.keep_dialling`): wait, dial, and after each
  attempt wait as its :class:`Backoff` says -- the delay again after a connection that got up,
  doubled up to a maximum after one that did not, with seeded jitter where the owner gives a
  ``random.Random`` (one draw per wait, just before it, from the owner's generator: the owner's
  own draws, its faults, keep their order with these);
* counts and logs a connection the master ended (:meth:`Dialler.master_closed`).

What is dialled in between -- registration, login, heartbeats, answers -- stays with the owner,
as do its connection objects.  Log lines go to the owner's logger, as the owner's own would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from meterd.errors import LinkError

__all__ = ["Backoff", "DialStats", "Dialler"]


class DialStats(Protocol):
    """The counters a dialler keeps in its owner's statistics."""

    connections: int
    connect_failures: int
    closed_by_master: int


class Dials(Protocol):
    """What a dialler reads from its owner, when it dials (so the owner's attributes stay the truth)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def stats(self) -> DialStats: ...


@dataclass(slots=True)
class Backoff:
    """Seconds to wait before the next dial: ``delay`` after a connection that got up, doubled
    after each one that did not, up to ``most``; times ``1 + jitter * rng.random()`` with an
    ``rng`` (no draw without one)."""

    delay: float
    most: float
    rng: random.Random | None = None
    jitter: float = 0.2
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.delay

    def after(self, up: bool) -> float:
        """The wait after an attempt that got up (``up``) or did not; moves the backoff on."""
        if up:
            self.current = self.delay
        wait = self.current if self.rng is None else self.current * (1.0 + self.jitter * self.rng.random())
        if not up:
            self.current = min(self.current * 2, self.most)
        return wait


class Dialler:
    """Connects ``owner`` (``who`` in messages, e.g. ``DTU DTU00000001``) to its master; see the
    module doc.  ``closing`` is set while the owner shuts down: nothing is dialled, and a
    connection that ends is not the master's doing."""

    def __init__(self, owner: Dials, who: str, log: logging.Logger) -> None:
        self.owner = owner
        self.who = who
        self.log = log
        self.closing = False

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new TCP connection to the master (LinkError if it cannot be made)."""
        owner = self.owner
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(owner.host, owner.port),
                                                    owner.connect_timeout)
        except (OSError, TimeoutError) as exc:
            owner.stats.connect_failures += 1
            raise LinkError(f"{self.who}: cannot connect to {owner.host}:{owner.port}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        owner.stats.connections += 1
        return reader, writer

    async def keep_dialling(self, dial: Callable[[], Awaitable[bool]], backoff: Backoff, *,
                            first_wait: float | None = None, gate: asyncio.Event | None = None,
                            until_up: bool = False) -> None:
        """Wait ``first_wait`` seconds (None: not at all), then, once ``gate`` is set, ``dial()``:
        whether the terminal got up (a LinkError: it did not; logged at debug).  Again after
        ``backoff.after(up)`` seconds, until :attr:`closing` -- or, with ``until_up``, until it got up."""
        wait = first_wait
        while True:
            if wait is not None:
                await asyncio.sleep(wait)
            if self.closing:
                return
            if gate is not None:
                await gate.wait()
            try:
                up = await dial()
            except LinkError as exc:
                self.log.debug("%s", exc)
                up = False
            if self.closing or (up and until_up):
                return
            wait = backoff.after(up)

    def master_closed(self, by_master: bool, dropped: bool) -> None:
        """A connection ended: counted and logged as the master's doing if it saw the end
        (``by_master``) and neither the owner (``dropped``) nor a shutdown ended it."""
        if by_master and not dropped and not self.closing:
            self.owner.stats.closed_by_master += 1
            self.log.debug("%s: the master closed the connection", self.who)
