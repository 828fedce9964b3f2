"""Which meters measure what: supply, sales and auxiliary points of areas (台区), lines and groups.

The acquisition system sorts its metering points into three kinds -- 供电点 (supply: energy
entering the unit, e.g. the distribution transformer's low-voltage side or the feeder-head meter),
受电点 (sales: energy leaving it to customers or to lower units) and 辅助点 (auxiliary: check meters,
station use, anything to watch that is not part of the balance) -- and relates them by area, line
or group.  A :class:`Topology` is that relation, immutable, built once from the config.

A meter may be a point of several units: an area's supply meter is usually also a *sales* point of
the line the area hangs on (``Unit.parent``).  The config says so explicitly; nothing is inferred
from ``parent``, so a line's balance is exactly the points listed for it.

Multipliers: readings stored by meterd already have the meter's CT x PT ratio applied (primary
side, see :mod:`meterd.readings`).  ``Point.multiplier`` is an *extra* factor for a point whose
archive ratio is not applied upstream (e.g. a terminal that reports secondary-side registers, or a
meter kept out of the archive); leave it at 1 otherwise, or the ratio is applied twice.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

UNIT_KINDS: Final = frozenset({"area", "line", "group"})  # 台区, 馈线 (10 kV line), 区域/分组


class Role(enum.StrEnum):
    SUPPLY = "supply"  # 供电点
    SALES = "sales"  # 受电点
    AUXILIARY = "auxiliary"  # 辅助点: reported, never part of the balance


@dataclass(frozen=True, slots=True)
class Point:
    meter: str
    unit: str  # the area, line or group this point belongs to
    role: Role
    multiplier: Decimal = Decimal(1)  # extra factor; CT x PT is already in the readings
    industry: str = ""  # for statistics by industry (行业)
    groups: tuple[str, ...] = ()  # free labels for statistics by group (e.g. key customers)


@dataclass(frozen=True, slots=True)
class Unit:
    name: str
    kind: str  # "area" (台区) | "line" (馈线) | "group"
    loss_threshold: Decimal = Decimal(10)  # percent; a higher rate is flagged
    jump_threshold: Decimal = Decimal(5)  # percentage points away from the unit's recent mean
    parent: str | None = None  # e.g. the line an area hangs on (documentation and navigation only)


@dataclass(frozen=True)
class Topology:
    units: Mapping[str, Unit]
    points: tuple[Point, ...]
    _by_unit: Mapping[str, tuple[Point, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", dict(self.units))  # a private copy: later edits to the
        # caller's mapping must not change a topology already indexed
        object.__setattr__(self, "points", tuple(self.points))
        by_unit: dict[str, list[Point]] = defaultdict(list)
        for point in self.points:
            by_unit[point.unit].append(point)
        object.__setattr__(self, "_by_unit", {name: tuple(ps) for name, ps in by_unit.items()})

    @classmethod
    def of(cls, units: Iterable[Unit], points: Iterable[Point]) -> Topology:
        """Build from lists (units keyed by their names)."""
        return cls({u.name: u for u in units}, tuple(points))

    def points_of(self, unit: str | Unit) -> tuple[Point, ...]:
        name = unit.name if isinstance(unit, Unit) else unit
        return self._by_unit.get(name, ())

    def meters(self) -> frozenset[str]:
        return frozenset(p.meter for p in self.points)

    def problems(self) -> list[str]:
        """Everything that would make a balance wrong or meaningless, one line each (empty = fine)."""
        out: list[str] = []
        for key, unit in self.units.items():
            if key != unit.name:
                out.append(f"unit {unit.name!r} is filed under the key {key!r}")
            if unit.kind not in UNIT_KINDS:
                out.append(f"unit {unit.name!r}: kind {unit.kind!r} is not one of {sorted(UNIT_KINDS)}")
            if unit.parent is not None and unit.parent not in self.units:
                out.append(f"unit {unit.name!r}: parent {unit.parent!r} is not a known unit")
            if unit.parent == unit.name:
                out.append(f"unit {unit.name!r} is its own parent")
            if unit.loss_threshold < 0 or unit.jump_threshold < 0:
                out.append(f"unit {unit.name!r}: thresholds must not be negative")
        for name in sorted(set(self._by_unit) - set(self.units)):
            meters = ", ".join(sorted({p.meter for p in self._by_unit[name]}))
            out.append(f"points of unknown unit {name!r} (meters {meters})")
        for name in sorted(self.units):
            points = self._by_unit.get(name, ())
            if not any(p.role == Role.SUPPLY for p in points):
                out.append(f"unit {name!r} has no supply point: no line loss can be computed")
            roles: dict[str, list[Role]] = defaultdict(list)
            for p in points:
                roles[p.meter].append(p.role)
                if p.multiplier <= 0:
                    out.append(f"unit {name!r}: meter {p.meter} has multiplier {p.multiplier} (must be > 0)")
            for meter, rs in sorted(roles.items()):
                if len(set(rs)) > 1:
                    out.append(f"unit {name!r}: meter {meter} is listed with different roles "
                               f"({', '.join(sorted(set(rs)))})")
                elif len(rs) > 1:
                    out.append(f"unit {name!r}: meter {meter} is listed {len(rs)} times as {rs[0]} "
                               "(its energy would count more than once)")
        return out
