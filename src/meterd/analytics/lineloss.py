"""Line loss (线损) of areas, lines and groups from daily frozen registers: pure functions.

For a period of whole days ``start..end`` (inclusive) a point's energy is
``register(end + 1) - register(start)`` -- the freezes at 00:00 CST that bracket the period -- times
its extra multiplier (see :mod:`meterd.analytics.topology`; CT x PT is already applied).  Then::

    supply    = sum of the supply points' energy        (供电量)
    sales     = sum of the sales points' energy         (售电量)
    loss      = supply - sales                          (损失电量)
    rate      = loss / supply x 100, to 0.01 %          (线损率; None when supply is 0)
    auxiliary = sum of the auxiliary points' energy: check meters, station use and the like,
                reported beside the balance and never part of it

Every figure carries its completeness -- the share of the unit's points (all roles) with usable
data -- and the meters that had none.  A point without data is left out of its sum, so an
incomplete area usually shows a *higher* loss (a sales meter missing) or a negative one (a supply
meter missing): read the rate together with ``missing``.

Estimated registers are never mixed in silently.  By default a point whose energy involves an
estimated register is left out like a missing one and listed in ``estimated``; with
``include_estimated=True`` its energy is used and it is still listed there.

Bad data: a register that went backwards (meter replaced, register reset, or a wrap of the
6-digit register) gives a negative difference; the point is reported missing, not guessed at.

Flags: ``negative_loss`` (sales exceed supply: wiring, ratio or topology error, or a missing
supply meter), ``over_threshold`` (rate above the unit's ``loss_threshold``), ``jump`` (rate more
than ``jump_threshold`` percentage points away from the mean of the unit's recent daily rates;
needs at least three of them), ``incomplete`` (any point without usable data).

Only forward (import) registers are balanced; areas with distributed generation feeding back
would need the export registers as extra supply -- not handled here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Any, Final

from meterd.analytics.topology import Role, Topology

RegisterMap = Mapping[tuple[str, date], tuple[Decimal, bool]]

FLAGS: Final = ("negative_loss", "over_threshold", "jump", "incomplete")
MIN_HISTORY: Final = 3  # daily rates needed before a jump can be judged
_PCT: Final = Decimal("0.01")
_HUNDRED: Final = Decimal(100)
_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_NO_HISTORY: Final[Mapping[str, Sequence[Decimal]]] = MappingProxyType({})
_DAY: Final = timedelta(days=1)


@dataclass(frozen=True)
class LossReport:
    unit: str
    kind: str
    start: date
    end: date  # inclusive
    supply: Decimal
    sales: Decimal
    auxiliary: Decimal
    loss: Decimal
    rate: Decimal | None  # percent, 2 places; None when supply is 0
    supply_points: int
    supply_with_data: int
    sales_points: int
    sales_with_data: int
    completeness: Decimal  # percent of all the unit's points with usable data, 2 places
    missing: tuple[str, ...]  # meters without data for the period
    estimated: tuple[str, ...]  # meters whose energy came from (or would need) estimated registers
    flags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: dates ISO, Decimals as strings (exact), tuples as lists."""
        return {
            "unit": self.unit,
            "kind": self.kind,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "supply": str(self.supply),
            "sales": str(self.sales),
            "auxiliary": str(self.auxiliary),
            "loss": str(self.loss),
            "rate": None if self.rate is None else str(self.rate),
            "supply_points": self.supply_points,
            "supply_with_data": self.supply_with_data,
            "sales_points": self.sales_points,
            "sales_with_data": self.sales_with_data,
            "completeness": str(self.completeness),
            "missing": list(self.missing),
            "estimated": list(self.estimated),
            "flags": list(self.flags),
        }


def period_energy(registers: RegisterMap, meter: str, start: date, end: date) -> tuple[Decimal, bool] | None:
    """Energy of ``meter`` over the days ``start..end`` and whether an estimated register is
    involved; None when a bracketing register is missing or the difference is negative."""
    first = registers.get((meter, start))
    last = registers.get((meter, end + _DAY))
    if first is None or last is None:
        return None
    energy = last[0] - first[0]
    if energy < _ZERO:
        return None
    return energy, first[1] or last[1]


def line_loss(
    topology: Topology,
    unit: str,
    registers: RegisterMap,
    start: date,
    end: date,
    *,
    history: Sequence[Decimal] = (),
    include_estimated: bool = False,
) -> LossReport:
    """The loss report of one unit for ``start..end``; see the module docstring."""
    if end < start:
        raise ValueError(f"period ends ({end}) before it starts ({start})")
    spec = topology.units.get(unit)
    if spec is None:
        raise KeyError(f"unknown unit {unit!r}")
    after = end + _DAY
    sums = {Role.SUPPLY: _ZERO, Role.SALES: _ZERO, Role.AUXILIARY: _ZERO}
    points = {Role.SUPPLY: 0, Role.SALES: 0, Role.AUXILIARY: 0}
    with_data = {Role.SUPPLY: 0, Role.SALES: 0, Role.AUXILIARY: 0}
    missing: list[str] = []
    estimated: list[str] = []
    get = registers.get
    for p in topology.points_of(unit):
        role = p.role  # a StrEnum: a plain "sales" from a hand-built Point finds the same key
        points[role] += 1
        # period_energy inlined: this loop runs once per meter of the district.
        first = get((p.meter, start))
        last = get((p.meter, after))
        if first is None or last is None or last[0] < first[0]:
            missing.append(p.meter)
            continue
        if first[1] or last[1]:
            estimated.append(p.meter)
            if not include_estimated:
                continue
        energy = last[0] - first[0]
        if p.multiplier != _ONE:
            energy *= p.multiplier
        sums[role] += energy
        with_data[role] += 1
    supply, sales = sums[Role.SUPPLY], sums[Role.SALES]
    loss = supply - sales
    rate = None if supply == _ZERO else (loss / supply * _HUNDRED).quantize(_PCT, ROUND_HALF_UP)
    total = sum(points.values())
    have = sum(with_data.values())
    completeness = (Decimal(have) / Decimal(total) * _HUNDRED).quantize(_PCT, ROUND_HALF_UP) if total else _ZERO
    flags = []
    if loss < _ZERO:
        flags.append("negative_loss")
    if rate is not None and rate > spec.loss_threshold:
        flags.append("over_threshold")
    if rate is not None and len(history) >= MIN_HISTORY:
        mean = sum(history, _ZERO) / len(history)
        if abs(rate - mean) > spec.jump_threshold:
            flags.append("jump")
    if have < total or total == 0:
        flags.append("incomplete")
    return LossReport(
        unit=unit,
        kind=spec.kind,
        start=start,
        end=end,
        supply=supply,
        sales=sales,
        auxiliary=sums[Role.AUXILIARY],
        loss=loss,
        rate=rate,
        supply_points=points[Role.SUPPLY],
        supply_with_data=with_data[Role.SUPPLY],
        sales_points=points[Role.SALES],
        sales_with_data=with_data[Role.SALES],
        completeness=completeness,
        missing=tuple(missing),
        estimated=tuple(estimated),
        flags=tuple(flags),
    )


def line_loss_all(
    topology: Topology,
    registers: RegisterMap,
    start: date,
    end: date,
    *,
    history: Mapping[str, Sequence[Decimal]] = _NO_HISTORY,
    include_estimated: bool = False,
    kind: str | None = None,
) -> list[LossReport]:
    """:func:`line_loss` of every unit (of ``kind``, if given), in unit-name order."""
    return [
        line_loss(topology, name, registers, start, end, history=history.get(name, ()),
                  include_estimated=include_estimated)
        for name, unit in sorted(topology.units.items())
        if kind is None or unit.kind == kind
    ]


def registers_needed(start: date, end: date) -> tuple[date, date]:
    """The two freeze days a period's energy needs (what to ask the register store for)."""
    return start, end + _DAY
