"""What the rest of a node may ask of the collector: the narrow interface ``meterd.app`` hands out.

The collector (:class:`~meterd.collector.daemon.Daemon`) knows nothing of prepaid control,
analytics, the billing link or the API.  The composition root builds them beside it and gives
each only what it uses of this interface, usually as bound methods:

- :meth:`Collector.route` -- reach a configured meter: its channel, target and Modbus link (relay
  commands and their read-back go out on the meter's own bus);
- :meth:`Collector.read_now` -- a technician's on-demand read, ahead of routine rounds, stored
  and seen by the observers like a round's;
- :meth:`Collector.ingest` -- readings and attempts made outside a round;
- :meth:`Collector.subscribe` -- every batch of readings that passed the door (rounds, tasks,
  pushed readings);
- :meth:`Collector.add_service` -- a long-running task supervised beside the channels until stop;
- :meth:`Collector.stats`, :meth:`Collector.channel_figures`, :meth:`Collector.listener_status`,
  :meth:`Collector.spool_size`, :meth:`Collector.terminal_figures` -- live figures for diagnostics
  and ``/metrics``;
- :meth:`Collector.readiness` -- why the collector is not ready yet (``/readyz``), or None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from meterd.collector.channel import Channel
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import MeterTarget
from meterd.readings import Reading
from meterd.storage.sqlite import Attempt

#: Sees every batch of readings the collector lets through its door.
Observer = Callable[[list[Reading]], None]
#: Runs until the event is set; restarted with back-off if it ends early.
Service = Callable[[asyncio.Event], Awaitable[None]]


class Route(NamedTuple):
    """How a configured meter is reached."""

    channel: Channel
    target: MeterTarget
    link: ModbusLink | None


@dataclass(frozen=True, slots=True)
class ChannelFigures:
    """One channel's live counters (``/metrics``); latencies in seconds."""

    name: str
    transactions: int
    successes: int
    failures: tuple[tuple[str, int], ...]  # (failure kind, count), sorted by kind
    latency_mean: float
    latency_max: float
    waiting: int  # transactions queued for the bus
    rounds: int
    overruns: int
    link: str = ""  # serial, tcp, modbus-tcp, dtu or mqtt: the read-latency histogram's label
    latency_buckets: tuple[tuple[float, int], ...] = ()  # (upper bound in s, successes in it), +inf last
    latency_total: float = 0.0  # seconds, summed over the successes
    last_success: float | None = None  # unix seconds of the last reply; None: none since start
    # attempts by outcome (ok, no_record, timeout, ...) since start, as collection quality counts them
    outcomes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class TerminalFigures:
    """A DTU, MQTT or Q/GDW 1376.1 terminal this node polls, and whether it is online now (as the quality
    statistics count it: a round got past its link)."""

    terminal: str
    channel: str
    kind: str  # dtu, mqtt or gdw1376
    online: bool


class Collector(Protocol):
    def route(self, address: str) -> Route | None: ...

    async def read_now(self, address: str, quantities: Sequence[str], *,
                       now: datetime) -> tuple[list[Reading], list[Attempt]]: ...

    def ingest(self, readings: list[Reading], attempts: list[Attempt]) -> None: ...

    def subscribe(self, observer: Observer) -> None: ...

    def add_service(self, service: Service) -> None: ...

    def stats(self) -> dict[str, dict[str, object]]: ...

    def channel_figures(self) -> list[ChannelFigures]: ...

    def listener_status(self) -> dict[str, object]: ...

    def spool_size(self) -> tuple[int, int] | None: ...

    def terminal_figures(self) -> list[TerminalFigures]: ...

    def readiness(self) -> str | None: ...


__all__ = ["ChannelFigures", "Collector", "Observer", "Route", "Service", "TerminalFigures"]
