"""The collector's door: every batch of readings passes :class:`~meterd.plausibility.Gate` before
the store, the observers (prepaid, analytics) and the rest of the daemon see it.

:func:`bounds` turns a configured meter into its :class:`~meterd.plausibility.MeterBounds`: its
rating × CT × PT, and each energy register's span in the meter's protocol (DL/T 645: 10^6 kWh on
the meter; a Modbus map's integer register: ``2^bits × scale``; a float register:
:data:`~meterd.plausibility.FLOAT_ENERGY_SPAN`), primary side.

:class:`Door` screens, counts, logs once a minute per meter and quantity (with a count of the
rest, never once per reading), and hands what it found to an anomaly recorder (the daemon writes them to the state database off the loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Final

from meterd.clock import CST
from meterd.config.model import MeterConfig
from meterd.logthrottle import LogThrottle
from meterd.plausibility import (
    DLT645_ENERGY_SPAN,
    FLOAT_ENERGY_SPAN,
    Gate,
    Implausible,
    MeterBounds,
    is_energy,
)
from meterd.readings import Reading

log = logging.getLogger(__name__)

Recorder = Callable[[list[Implausible]], None]

#: How far ahead of the master's clock a terminal may stamp a pushed reading (clocks drift).
AHEAD_SLACK: Final = timedelta(minutes=5)


def bounds(meter: MeterConfig) -> MeterBounds:
    multiplier = meter.ct * meter.pt
    spans: dict[str, Decimal] = {}
    if meter.regmap is not None:  # a register map says how wide each energy register is
        for entry in meter.regmap.entries:
            if not is_energy(entry.quantity):
                continue
            raw = FLOAT_ENERGY_SPAN if entry.type.is_float else Decimal(entry.type.int_range[1] + 1) * entry.scale
            spans[entry.quantity] = raw if entry.primary else raw * multiplier
    return MeterBounds.of(meter.rating, multiplier, spans, DLT645_ENERGY_SPAN)


class Door:
    """The gate with the daemon's bookkeeping around it."""

    def __init__(self, meters: Iterable[MeterConfig], record: Recorder | None = None, *,
                 zone: tzinfo = CST) -> None:
        # bounds depend on the rating, CT, PT and map only: meters alike share one (immutable)
        # MeterBounds -- 100,000 meters of a few kinds hold a few, built once each
        alike: dict[tuple[object, ...], tuple[MeterBounds, MeterConfig]] = {}
        by_meter: dict[str, MeterBounds] = {}
        for m in meters:
            # by identity (a model's or the site's rating is one object) and as written (1 and 1.0
            # are equal Decimals, yet bounds made from them are written differently in messages);
            # the first meter of a kind is kept with its bounds, so the ids stay its objects'
            key = (id(m.rating), str(m.ct), str(m.pt), id(m.regmap))
            found = alike.get(key)
            if found is None:
                found = alike[key] = (bounds(m), m)
            by_meter[m.address] = found[0]
        self.gate = Gate(by_meter, zone=zone)
        self.zone = zone  # the site's: the times the log and the anomalies show
        self.record = record
        self.flagged = 0  # readings flagged implausible since start
        self.restamped = 0  # pushed readings stamped ahead of the master's clock, taken as received
        self._log = LogThrottle()  # once a minute per meter and quantity, with a count

    def restamp_ahead(self, readings: list[Reading], now: datetime, terminal: str) -> list[Reading]:
        """Readings a terminal stamped itself (MQTT pushes), each live one stamped more than
        :data:`AHEAD_SLACK` after ``now`` stamped ``now`` instead: what it read is taken as read
        when it came. Kept as stamped, a reading years ahead became the newest of its register, so
        every later one was older: its account's charging stalled, its relay state froze, until the
        terminal's clock reached that year. Frozen registers keep their stamp (their day; the
        prepaid engine judges a frozen value from the future itself). Logged once a minute per
        terminal, with a count."""
        limit = now + AHEAD_SLACK
        if all(r.timestamp <= limit for r in readings):
            return readings
        out: list[Reading] = []
        for r in readings:
            if r.timestamp > limit and not r.quantity.startswith("frozen."):
                self.restamped += 1
                self._log.log(log, logging.WARNING, f"ahead {terminal}",
                              "terminal %s's clock is ahead: meter %s %s stamped %s, received %s; taken as "
                              "read when received", terminal, r.meter, r.quantity, r.timestamp.isoformat(),
                              now.isoformat())
                r = replace(r, timestamp=now)
            out.append(r)
        return out

    def screen(self, readings: list[Reading]) -> list[Reading]:
        out, found = self.gate.screen(readings)
        if not found:
            return readings
        self.flagged += len(found)
        for f in found:
            self._log.log(log, logging.WARNING, f"implausible {f.meter} {f.quantity}",
                          "implausible reading, stored flagged and not charged: %s", f.describe(self.zone))
        if self.record is not None:
            try:
                self.record(found)
            except Exception:  # recording must never stop collection
                log.exception("recording %d implausible reading(s) as anomalies failed", len(found))
        return out
