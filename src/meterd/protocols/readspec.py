"""What to ask a meter for, per protocol, so that every protocol yields the same readings.

A poll names what it wants in one of three ways: DL/T 645-2007 data identifiers (``items``),
DL/T 645-1997 identifiers (``items_1997``), or canonical quantity names (``quantities``, e.g.
``energy.active.import.total``, ``voltage.a``) -- the names every codec decodes to.  Quantities
are the protocol-neutral form: :func:`resolve` turns them into the requests one meter's protocol
needs.

* DL/T 645-2007 / -1997: for each quantity, the identifier that carries it with the fewest other
  values (``00010000`` for the active import total rather than the ``0001FF00`` block), found by
  searching the catalogue's current-value identifiers once (:func:`dlt645_index`,
  :func:`dlt645_1997_index`).  Identifiers wanted for several quantities are read once.  A quantity
  name means the present value -- settlement and curve identifiers are never chosen -- except the
  2007 freezes, whose names say so: ``frozen.daily.energy.<kind>.<rate>`` and ``frozen.daily.time``
  are read from the last daily freeze (``0506KK01``), ``frozen.hourly.energy.active.import|export.total``
  and ``frozen.hourly.time`` from the last hourly freeze (``0504KK01``), stamped with the freeze time.
* Modbus: the meter's register map and :func:`~meterd.protocols.modbus.compile_plan`.

Readings from identifiers chosen for quantities are filtered to the quantities asked for
(:attr:`ReadSpec.keep`), so a 2007 meter, a 1997 meter and a Modbus meter polled with the same
``quantities`` produce the same set of readings.  Identifiers listed explicitly keep everything
they carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from meterd.errors import UnknownIdentifierError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue1997 import is_known97, lookup97, status97_flags

DLT645_2007: Final = "dlt645-2007"
DLT645_1997: Final = "dlt645-1997"
MODBUS: Final = "modbus"


def _best(candidates: Iterable[tuple[int, tuple[str, ...]]]) -> dict[str, int]:
    best: dict[str, tuple[int, int]] = {}
    for di, quantities in candidates:
        size = len(quantities)
        for q in quantities:
            if q not in best or (size, di) < best[q]:
                best[q] = (size, di)
    return {q: di for q, (_, di) in sorted(best.items())}


def _candidates_2007() -> Iterable[tuple[int, tuple[str, ...]]]:
    dis: list[int] = []
    for kk in catalogue.ENERGY_KINDS:
        for rr in range(15):
            dis.append((kk << 16) | (rr << 8))
            dis.append(0x01000000 | (kk << 16) | (rr << 8))
    for d2 in range(0x01, 0x08):
        dis += [0x02000000 | (d2 << 16) | (p << 8) for p in range(4)]
        dis.append(0x02000000 | (d2 << 16) | 0xFF00)
    dis += [0x02800000 | n for n in range(1, 0x0B)]
    dis += [0x04000101, 0x04000102, 0x0400010C, 0x04000401, 0x04000402]
    dis += [0x04000500 | n for n in range(1, 8)]
    for di in dis:
        try:
            item = catalogue.lookup(di)
        except UnknownIdentifierError:
            continue
        if item.records or item.timestamp_di is not None:
            continue
        quantities = tuple(item.quantities)
        if "status.word3" in quantities:  # decoded into its relay flags as well
            quantities += tuple(catalogue.status3_flags(0))
        yield di, quantities


# The last freeze (NN = 01) of each kind DL/T 645-2007 appendix A defines: daily 05 06 KK 01 (KK 00: the
# freeze time, 01..08 the energy kinds), hourly 05 04 KK 01 (00 time, 01/02 forward/reverse active).
_LAST_FREEZES: Final = (*(0x05060001 | (kk << 8) for kk in range(9)), *(0x05040001 | (kk << 8) for kk in range(3)))


_RATES_NAMED: Final = 14  # rate1..rate14, as for the present values (RR 01..0E above)


def _frozen_2007() -> Iterable[tuple[int, tuple[str, ...]]]:
    for di in _LAST_FREEZES:
        yield di, tuple(q for q in catalogue.lookup(di).quantities
                        if not (".rate" in q and int(q.rpartition(".rate")[2]) > _RATES_NAMED))


def _candidates_1997() -> Iterable[tuple[int, tuple[str, ...]]]:
    for di in (*range(0x9000, 0x9200), *range(0xA000, 0xA200), *range(0xB000, 0xB700), *range(0xC000, 0xC100)):
        if (di >> 8) & 0x0F not in (0, 1) and di < 0xB600:
            continue  # last month / the month before: not present values
        if not is_known97(di):
            continue
        quantities = tuple(lookup97(di).quantities)
        if "status.word1997" in quantities:  # decoded into its flags as well
            quantities += tuple(status97_flags(0))
        yield di, quantities


@lru_cache(maxsize=1)
def dlt645_index() -> Mapping[str, int]:
    """Quantity -> the DL/T 645-2007 identifier that reads its present value most cheaply (a
    ``frozen.*`` quantity: its value at the last freeze)."""
    return _best((*_candidates_2007(), *_frozen_2007()))


@lru_cache(maxsize=1)
def dlt645_1997_index() -> Mapping[str, int]:
    """Quantity -> the DL/T 645-1997 identifier that reads its present value most cheaply."""
    return _best(_candidates_1997())


_INDEXES: Final = {DLT645_2007: dlt645_index, DLT645_1997: dlt645_1997_index}


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """The identifiers one DL/T 645 meter is asked for in a poll, and what to keep of each.

    ``keep[di]`` is None to keep every value the identifier carries, else the quantities asked
    for.
    """

    items: tuple[int, ...]
    keep: Mapping[int, frozenset[str] | None] = field(default_factory=dict)

    def wanted(self, di: int, quantity: str) -> bool:
        keep = self.keep.get(di)
        return keep is None or quantity in keep


def resolve_dlt645(
    quantities: Iterable[str], items: Iterable[int] = (), *, edition: str = DLT645_2007
) -> tuple[ReadSpec, list[str]]:
    """Explicit ``items`` plus the identifiers carrying ``quantities``; also the quantities the
    edition has no identifier for."""
    index = _INDEXES[edition]()
    order: list[int] = list(dict.fromkeys(items))
    keep: dict[int, frozenset[str] | None] = {di: None for di in order}
    wanted: dict[int, set[str]] = {}
    missing: list[str] = []
    for q in dict.fromkeys(quantities):
        di = index.get(q)
        if di is None:
            missing.append(q)
            continue
        if di not in keep:
            order.append(di)
            keep[di] = frozenset()
        wanted.setdefault(di, set()).add(q)
    for di, qs in wanted.items():
        if keep[di] is not None:
            keep[di] = frozenset(qs)
    return ReadSpec(tuple(order), keep), missing

