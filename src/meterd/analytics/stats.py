"""Energy and load statistics by unit, industry, group and period: pure functions.

* :func:`energy_by` -- each point's own energy over ``start..end`` (daily frozen registers, as in
  :mod:`meterd.analytics.lineloss`), summed per key.  Every point counts, whatever its role, unless
  ``roles`` narrows it: by ``"unit"`` that would add a unit's supply to its sales, so ask for
  ``roles={Role.SALES}`` (energy used) or ``{Role.SUPPLY}`` (energy supplied) there.  A meter that
  is a point of several units counts once per key (an area's supply meter, also a sales point of
  its line, is not doubled in its industry or group).  Points without a key (no industry, no
  groups) and without usable data are left out; estimated registers only with
  ``include_estimated``.  Completeness belongs to the line-loss reports, not here.
* :func:`periods` -- calendar days, months or quarters covering a date range, the first and last
  clipped to it.
* :func:`load_curve` -- the summed power of many meters per time bucket, with how many meters
  contributed to each bucket, so a dip from missing meters is told apart from a real one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Final, Literal

from meterd.analytics.lineloss import RegisterMap, period_energy
from meterd.analytics.topology import Point, Role, Topology
from meterd.clock import CST
from meterd.readings import Value

_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_KW_PLACES: Final = Decimal("0.0001")  # a bucket's mean power: 0.1 W, the register resolution
# A CST midnight: buckets are counted from it, so any step that divides a day starts each day at 00:00.
_ANCHOR: Final = datetime(2000, 1, 1, tzinfo=CST)


def _keys(point: Point, by: str) -> Iterable[str]:
    if by == "unit":
        return (point.unit,)
    if by == "industry":
        return (point.industry,) if point.industry else ()
    if by == "group":
        return point.groups
    raise ValueError(f"energy_by: by must be 'unit', 'industry' or 'group', not {by!r}")


def energy_by(
    topology: Topology,
    registers: RegisterMap,
    start: date,
    end: date,
    by: Literal["unit", "industry", "group"],
    *,
    roles: Collection[Role] | None = None,
    include_estimated: bool = False,
) -> dict[str, Decimal]:
    """Energy per key over ``start..end`` (inclusive days); see the module docstring."""
    out: dict[str, Decimal] = {}
    seen: set[tuple[str, str]] = set()
    for point in topology.points:
        if roles is not None and point.role not in roles:
            continue
        keys = [k for k in _keys(point, by) if (k, point.meter) not in seen]
        if not keys:
            continue
        got = period_energy(registers, point.meter, start, end)
        if got is None or (got[1] and not include_estimated):
            continue
        energy = got[0] if point.multiplier == _ONE else got[0] * point.multiplier
        for key in keys:
            seen.add((key, point.meter))
            out[key] = out.get(key, _ZERO) + energy
    return dict(sorted(out.items()))


def _next_start(day: date, kind: str) -> date:
    if kind == "day":
        return day + timedelta(days=1)
    if kind == "month":
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    if kind == "quarter":
        first_month_next = (day.month - 1) // 3 * 3 + 4  # 4, 7, 10 or 13
        return date(day.year + (first_month_next > 12), (first_month_next - 1) % 12 + 1, 1)
    raise ValueError(f"periods: kind must be 'day', 'month' or 'quarter', not {kind!r}")


def periods(kind: Literal["day", "month", "quarter"], start: date, end: date) -> list[tuple[date, date]]:
    """Calendar periods (inclusive first and last day) covering ``start..end``, clipped to it:
    ``periods("quarter", 2024-02-15, 2024-08-10)`` is Feb 15..Mar 31, Apr 1..Jun 30, Jul 1..Aug 10."""
    if end < start:
        raise ValueError(f"period ends ({end}) before it starts ({start})")
    out = []
    day = start
    while day <= end:
        nxt = _next_start(day, kind)
        out.append((day, min(nxt - timedelta(days=1), end)))
        day = nxt
    return out


def load_curve(
    series: Mapping[str, Sequence[tuple[datetime, Value]]],  # powers are checked below: Decimal or int
    *,
    step: timedelta,
    anchor: datetime = _ANCHOR,
) -> list[tuple[datetime, Decimal, int]]:
    """(bucket start, summed power, meters contributing) per bucket that has data, in time order.

    ``series`` maps a meter to its (timestamp, power) samples.  Buckets are ``step`` long and
    counted from ``anchor`` (default a CST midnight; a day's curve passes that day's midnight in the
    site's zone, so its buckets start at 00:00 whatever the zone and its daylight saving); bucket
    starts are returned in the anchor's zone.  A meter with several samples in
    one bucket contributes their mean (power is a rate: adding its samples would count it twice),
    to 0.0001; meters are then added.  Samples without a time zone, and float powers, are refused.
    """
    if step <= timedelta(0):
        raise ValueError(f"load_curve: step must be positive, not {step}")
    if anchor.tzinfo is None:
        raise ValueError(f"load_curve: anchor {anchor.isoformat()} has no time zone")
    origin, zone = anchor.astimezone(UTC), anchor.tzinfo  # bucket arithmetic on UTC: exact in any zone
    per_bucket: dict[int, dict[str, list[Decimal]]] = defaultdict(dict)
    for meter, samples in series.items():
        for at, power in samples:
            if at.tzinfo is None:
                raise ValueError(f"load_curve: meter {meter} sample at {at.isoformat()} has no time zone")
            if isinstance(power, bool) or not isinstance(power, (Decimal, int)):
                raise TypeError(f"load_curve: meter {meter} power {power!r} is not a Decimal")
            bucket = (at - origin) // step
            per_bucket[bucket].setdefault(meter, []).append(Decimal(power))
    out = []
    for bucket in sorted(per_bucket):
        total = _ZERO
        meters = per_bucket[bucket]
        for values in meters.values():
            total += values[0] if len(values) == 1 else (sum(values, _ZERO) / len(values)).quantize(_KW_PLACES)
        out.append(((origin + bucket * step).astimezone(zone), total, len(meters)))
    return out
