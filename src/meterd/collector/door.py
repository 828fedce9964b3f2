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
from decimal import Decimal

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

    def __init__(self, meters: Iterable[MeterConfig], record: Recorder | None = None) -> None:
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
        self.gate = Gate(by_meter)
        self.record = record
        self.flagged = 0  # readings flagged implausible since start
        self._log = LogThrottle()  # once a minute per meter and quantity, with a count

    def screen(self, readings: list[Reading]) -> list[Reading]:
        out, found = self.gate.screen(readings)
        if not found:
            return readings
        self.flagged += len(found)
        for f in found:
            self._log.log(log, logging.WARNING, f"implausible {f.meter} {f.quantity}",
                          "implausible reading, stored flagged and not charged: %s", f.describe())
        if self.record is not None:
            try:
                self.record(found)
            except Exception:  # recording must never stop collection
                log.exception("recording %d implausible reading(s) as anomalies failed", len(found))
        return out
