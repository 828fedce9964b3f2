"""The report queries behind ``meterd lineloss`` / ``meterd stats`` and the HTTP API: one place
that turns a config, a period and the stores of its location (``[store]``) into line-loss reports, energy
rows and load curves, so the CLI and the API cannot disagree.

Periods: ``2026-11-22`` (a day), ``2026-11`` (a month), ``2026-Q4`` (a quarter),
``2026-11-01..2026-11-15`` (inclusive days); none means yesterday (the caller's ``today``: the site's).  Errors are
:class:`~meterd.errors.ConfigError` naming the bad value and the parameter it came in (``name``).
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from meterd.analytics.lineloss import LossReport
from meterd.analytics.topology import Role, Topology
from meterd.clock import CST, day_bounds
from meterd.errors import ConfigError
from meterd.readings import Quality, address_key

if TYPE_CHECKING:
    from meterd.storage.database import Location

CURVE_QUANTITIES = ("power.active.total", "curve.power.active.total")


def parse_period(text: str | None, *, today: date, name: str = "--period") -> tuple[date, date]:
    """``None`` -> yesterday; a day; ``YYYY-MM``; ``YYYY-Qn``; ``A..B`` (inclusive)."""
    if not text:
        day = today - timedelta(days=1)
        return day, day
    text = text.strip()
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            start, end = date.fromisoformat(a), date.fromisoformat(b)
        elif "-Q" in text.upper():
            year_text, q = text.upper().split("-Q")
            quarter = int(q)
            if not 1 <= quarter <= 4:
                raise ValueError
            start = date(int(year_text), 3 * quarter - 2, 1)
            end_month = 3 * quarter
            end = date(int(year_text), end_month, calendar.monthrange(int(year_text), end_month)[1])
        elif len(text) == 7:
            year, month = map(int, text.split("-"))
            start = date(year, month, 1)
            end = date(year, month, calendar.monthrange(year, month)[1])
        else:
            start = end = date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name} {text!r}: use YYYY-MM-DD, YYYY-MM, YYYY-Qn or START..END") from None
    if end < start:
        raise ConfigError(f"{name} {text!r}: the end is before the start")
    return start, end


def require_topology(config: Any) -> Topology:
    if config.analytics is None or config.analytics.topology is None:
        raise ConfigError(f"{config.source}: no [[topology.units]] / [[topology.points]]: define the areas, lines "
                          "and their metering points")
    return config.analytics.topology


def lineloss_reports(config: Any, start: date, end: date, *, unit: str | None = None, kind: str | None = None,
                     include_estimated: bool = False) -> list[LossReport]:
    """Line loss of every unit (or ``unit``, or units of ``kind``) over ``start..end``."""
    from meterd.analytics.energy import DailyRegisterStore, LossHistory
    from meterd.analytics.lineloss import line_loss_all

    topology = require_topology(config)
    if unit and unit not in topology.units:
        raise ConfigError(f"unknown area/line {unit!r} (defined: {', '.join(sorted(topology.units))})")
    with DailyRegisterStore(config.store.state) as store:
        registers = store.registers([start, end + timedelta(days=1)])
    with LossHistory(config.store.state) as history_store:
        history = {u: history_store.recent(u, before=start) for u in topology.units} if start == end else {}
    reports = line_loss_all(topology, registers, start, end, history=history, include_estimated=include_estimated,
                            kind=kind)
    return [r for r in reports if r.unit == unit] if unit else reports


def energy_rows(config: Any, spans: list[tuple[date, date]], *, by: Literal["unit", "industry", "group"],
                role: str = "sales") -> list[dict[str, str]]:
    """``{start, end, <by>, kwh}`` per span and key, keys sorted; ``role`` sales|supply|auxiliary|all."""
    from meterd.analytics.energy import DailyRegisterStore
    from meterd.analytics.stats import energy_by

    topology = require_topology(config)
    days = sorted({d for a, b in spans for d in (a, b + timedelta(days=1))})
    with DailyRegisterStore(config.store.state) as store:
        registers = store.registers(days)
    roles = None if role == "all" else {Role(role)}
    rows = []
    for a, b in spans:
        for key, kwh in sorted(energy_by(topology, registers, a, b, by=by, roles=roles).items()):
            rows.append({"start": a.isoformat(), "end": b.isoformat(), by: key, "kwh": str(kwh)})
    return rows


def curve_meters(config: Any, *, meter: str | None = None, unit: str | None = None,
                 group: str | None = None) -> list[str]:
    """The meters a load curve adds up: one meter; an area's sales points (or all its points when
    it has none); or a topology group's points.  Exactly one of the three."""
    if sum(x is not None for x in (meter, unit, group)) != 1:
        raise ConfigError("a load curve needs exactly one of meter, unit (area/line) or group")
    if meter is not None:
        return [address_key(meter)]
    topology = require_topology(config)
    if unit is not None:
        if unit not in topology.units:
            raise ConfigError(f"unknown area/line {unit!r}")
        return [p.meter for p in topology.points_of(unit) if p.role is Role.SALES] or \
            [p.meter for p in topology.points_of(unit)]
    meters = sorted({p.meter for p in topology.points if group in p.groups})
    if not meters:
        raise ConfigError(f"no metering point is in group {group!r}")
    return meters


def curve_points(where: Location, meters: list[str], day: date, step: timedelta,
                 zone: tzinfo = CST) -> list[tuple[datetime, Decimal, int]]:
    """The summed active power of ``meters`` over ``day`` in the site's ``zone`` (midnight to
    midnight) in ``step`` buckets from its midnight, from the instantaneous power and load-curve
    readings stored at ``where`` (the data directory, or the PostgreSQL database): (bucket start
    in ``zone``, kW, meters contributing)."""
    from meterd.analytics.stats import load_curve
    from meterd.storage import open_store

    start, end = day_bounds(day, zone)
    series = {}
    with open_store(where) as store:
        for m in meters:
            points = []
            for quantity in CURVE_QUANTITIES:
                points += [(r.timestamp, r.value) for r in store.readings(m, since=start, until=end,
                                                                          quantity=quantity)
                           if r.quality is not Quality.IMPLAUSIBLE]  # flagged at the door: not a load
            series[m] = sorted(points)
    return [(at.astimezone(zone), kw, n) for at, kw, n in load_curve(series, step=step, anchor=start)]

