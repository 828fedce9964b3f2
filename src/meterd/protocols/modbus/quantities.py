"""The canonical quantities a Modbus register map may name, with their unit and scaling.

A Modbus meter and a DL/T 645 meter reading the same thing must produce the same quantity name,
unit and :class:`~meterd.protocols.dlt645.catalogue.Scaling`, so downstream code (storage,
charging, line loss) never cares which protocol a reading came from.  The set is therefore not
written out here: it is *harvested* from the DL/T 645 catalogue, by looking up the current-value
identifiers of every quantity that a register could hold:

* energy ``00 KK RR 00``: every kind, total and rate1..rate4 (China's sharp/peak/flat/valley;
  Modbus meters carry at most four tariff registers, DL/T 645 allows 63);
* maximum demand ``01 KK RR 00``: the value only (its time is a BCD date, not a register number);
* instantaneous variables ``02 .. FF 00``: voltage, current, power, pf, angle per phase/total;
* ``02 80 00 01/02/04/08``: current.n, frequency, demand.active.now, battery.clock;
* status word 3 flags: relay.open, relay.command_open, alarm.pre_trip, relay.protected (booleans).

Modbus extras, which DL/T 645 has no identifier for but common Modbus meters publish:

* ``voltage.ab|bc|ca`` -- line-to-line voltages (PT scaling).  Three-wire CT/PT installations
  (e.g. CHINT DSSU666, 3x100 V PT secondaries) have no neutral, so line voltages are all they
  measure; DL/T 645-2007 reports only phase voltages.
* ``energy.reactive.import.total`` / ``energy.reactive.export.total`` (kvarh, CT x PT) -- Eastron
  and Schneider count reactive energy as import/export.  DL/T 645's combined reactive 1/2 are sums
  of quadrants chosen by a programmable combination word, so mapping import/export onto
  ``combined1/2`` would claim a composition nobody verified.

Booleans (the relay flags) have no unit and no scaling; everything else is a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import Kind, Scaling

MAX_RATE: Final = 4


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    """What a quantity is: its canonical unit and how secondary-side values become primary."""

    unit: str
    scaling: Scaling
    boolean: bool = False


EXTRA_QUANTITIES: Final[Mapping[str, QuantitySpec]] = {
    "voltage.ab": QuantitySpec("V", Scaling.PT),
    "voltage.bc": QuantitySpec("V", Scaling.PT),
    "voltage.ca": QuantitySpec("V", Scaling.PT),
    "energy.reactive.import.total": QuantitySpec("kvarh", Scaling.CTPT),
    "energy.reactive.export.total": QuantitySpec("kvarh", Scaling.CTPT),
}


def _harvest_dis() -> list[int]:
    dis: list[int] = []
    for kk in catalogue.ENERGY_KINDS:
        for rr in range(MAX_RATE + 1):
            dis.append((kk << 16) | (rr << 8))  # 00 KK RR 00: current energy
            if kk != 0x00:  # combined active has no demand
                dis.append(0x01000000 | (kk << 16) | (rr << 8))  # 01 KK RR 00: maximum demand
    dis += [0x02000000 | (d2 << 16) | 0xFF00 for d2 in range(0x01, 0x08)]  # 02 D2 FF 00 blocks
    dis += [0x02800001, 0x02800002, 0x02800004, 0x02800008]
    return dis


@lru_cache(maxsize=1)
def known_quantities() -> Mapping[str, QuantitySpec]:
    """Every quantity name a register map may use, with its canonical unit and scaling."""
    specs: dict[str, QuantitySpec] = {}
    for di in _harvest_dis():
        item = catalogue.lookup(di)
        for f in item.fields + item.repeat:
            if f.kind is Kind.NUMBER:
                specs[f.quantity] = QuantitySpec(f.unit, f.scaling)
    for flag in catalogue.status3_flags(0):
        specs[flag] = QuantitySpec("", Scaling.NONE, boolean=True)
    specs.update(EXTRA_QUANTITIES)
    return dict(sorted(specs.items()))


def spec(quantity: str) -> QuantitySpec | None:
    return known_quantities().get(quantity)
