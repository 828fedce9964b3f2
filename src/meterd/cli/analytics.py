"""Reports: ``meterd lineloss``, ``meterd anomalies``, ``meterd outages``, ``meterd stats``.

Each reads the state database of a config (``-c``; the topology comes from it) and prints a table,
``--json``, or ``--csv FILE`` (``-`` for stdout).  Periods: ``2026-11-22`` (a day), ``2026-11``
(a month), ``2026-Q4`` (a quarter), ``2026-11-01..2026-11-15`` (inclusive days); default yesterday
in the site's zone (``[site] timezone``).  Times print in that zone with the offset; ``--json`` and
``--csv`` keep ISO 8601 with the offset.  Line loss is computed from the daily frozen registers the daemon keeps (the register at
the start of each day), with its completeness and the meters missing shown beside every figure.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from meterd.analytics.views import parse_period
from meterd.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    MAX_COUNT,
    error,
    name_arg,
    print_json,
    shown,
    site_zone,
    whole_number,
)
from meterd.clock import local_date, local_text, utc_now
from meterd.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineloss", help="line loss per area / line for a day, month or period")
    p.add_argument("--area", "--unit", dest="unit", help="only this area, line or group")
    p.add_argument("--kind", choices=("area", "line", "group"), help="only units of this kind")
    p.add_argument("--period", help="YYYY-MM-DD, YYYY-MM, YYYY-Qn or START..END (default yesterday, site time)")
    p.add_argument("--include-estimated", action="store_true",
                   help="use estimated register values too (the report says which meters)")
    _common(p)
    p.set_defaults(func=lineloss_cmd)

    p = sub.add_parser("anomalies", help="metering anomalies (voltage, current imbalance, no data, ...)")
    p.add_argument("--state", choices=("open", "closed", "all"), default="open")
    p.add_argument("--meter", type=name_arg)
    p.add_argument("--kind")
    p.add_argument("--limit", type=whole_number(1, MAX_COUNT), default=200)
    _common(p)
    p.set_defaults(func=anomalies_cmd)

    p = sub.add_parser("outages", help="area outages found from meters going silent together")
    p.add_argument("--open", action="store_true", help="only outages still going on")
    _common(p)
    p.set_defaults(func=outages_cmd)

    p = sub.add_parser("stats", help="energy by area / industry / group and period, or a load curve")
    p.add_argument("what", choices=("energy", "curve"))
    p.add_argument("--by", choices=("unit", "industry", "group"), default="unit", help="energy: grouping")
    p.add_argument("--period", help="energy: as for lineloss; curve: one day YYYY-MM-DD (default yesterday)")
    p.add_argument("--split", choices=("day", "month", "quarter"), help="energy: one column per sub-period")
    p.add_argument("--role", choices=("sales", "supply", "auxiliary", "all"), default="sales",
                   help="energy: which points count (default sales: what customers used)")
    p.add_argument("--meter", help="curve: one meter")
    p.add_argument("--unit", help="curve: the meters of an area / line")
    p.add_argument("--group", help="curve: the meters of a group")
    p.add_argument("--step", default="15m", help="curve: bucket size (default 15m)")
    _common(p)
    p.set_defaults(func=stats_cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="config file (topology, data directory)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", metavar="FILE", help="write CSV to FILE ('-' for stdout)")


def _load(args: argparse.Namespace):
    from meterd.cli.common import load_site_config

    config = load_site_config(args.config)
    return config


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str], table: Iterable[str]) -> None:
    if args.json:
        print_json(rows)
        return
    if args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (";".join(v) if isinstance(v, (list, tuple)) else v) for k, v in row.items()})
        if args.csv == "-":
            sys.stdout.write(out.getvalue())
        else:
            Path(args.csv).write_text(out.getvalue(), encoding="utf-8")
            print(f"{len(rows)} rows written to {args.csv}")
        return
    for line in table:
        print(line)


def _plain(obj: Any) -> dict[str, Any]:
    """A stored event / outage as JSON-ready values (ISO times, enum values, lists)."""
    import dataclasses
    import enum
    from decimal import Decimal

    def conv(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, Decimal):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _today(config: Any) -> Any:
    """Today in the site's zone: what a period defaults from."""
    return local_date(utc_now(), site_zone(config))


def _when(text: Any, zone: Any, empty: str = "-") -> str:
    """An ISO time from :func:`_plain` as people read it: site time with its offset."""
    return empty if not text else local_text(datetime.fromisoformat(text), zone)


def _guard(func):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ConfigError as exc:
            error(str(exc))
            return EXIT_BAD_INPUT
    wrapper.__name__ = func.__name__
    return wrapper


def _period(args: argparse.Namespace, config: Any) -> tuple[date, date]:
    """``--period`` as days, within the years the stores and the API know (1970 to 2099): a period
    ending 9999-12-31 was an OverflowError traceback (exit 1)."""
    from meterd.reports.periods import FIRST_DAY, LAST_DAY

    start, end = parse_period(args.period, today=_today(config))
    if not (FIRST_DAY <= start and end <= LAST_DAY):
        raise ConfigError(f"--period {shown(args.period or '')} is out of range (from {FIRST_DAY} to {LAST_DAY})")
    return start, end


@_guard
def lineloss_cmd(args: argparse.Namespace) -> int:
    from meterd.analytics.views import lineloss_reports

    config = _load(args)
    start, end = _period(args, config)
    reports = lineloss_reports(config, start, end, unit=args.unit, kind=args.kind,
                               include_estimated=args.include_estimated)
    rows = [r.as_dict() for r in reports]
    columns = ["unit", "kind", "start", "end", "supply", "sales", "auxiliary", "loss", "rate", "completeness",
               "supply_points", "supply_with_data", "sales_points", "sales_with_data", "flags", "missing",
               "estimated"]
    period = f"{start}" if start == end else f"{start}..{end}"

    def table() -> Iterable[str]:
        yield f"line loss {period} (kWh; rate = loss / supply; completeness = points with data)"
        yield (f"{'UNIT':<14} {'KIND':<5} {'SUPPLY':>12} {'SALES':>12} {'LOSS':>11} {'RATE%':>7} "
               f"{'COMPLETE%':>9}  FLAGS / MISSING")
        for r in reports:
            rate = "-" if r.rate is None else f"{r.rate}"
            extra = ", ".join(r.flags)
            if r.missing:
                shown = ", ".join(r.missing[:5]) + (f" (+{len(r.missing) - 5})" if len(r.missing) > 5 else "")
                extra += f" | missing {shown}"
            if r.estimated:
                extra += f" | estimated {', '.join(r.estimated[:5])}"
            yield (f"{r.unit:<14} {r.kind:<5} {r.supply:>12} {r.sales:>12} {r.loss:>11} {rate:>7} "
                   f"{r.completeness:>9}  {extra}")
    _emit(args, rows, columns, table())
    return EXIT_OK


@_guard
def anomalies_cmd(args: argparse.Namespace) -> int:
    from meterd.analytics.anomalies import AnomalyStore

    config = _load(args)
    with AnomalyStore(config.store.state) as store:
        events = store.events(state=None if args.state == "all" else args.state, meter=args.meter, kind=args.kind,
                              limit=args.limit)
    rows = [_plain(e) for e in events]
    columns = ["id", "meter", "kind", "severity", "opened", "last_seen", "closed", "detail"]
    zone = site_zone(config)

    def table() -> Iterable[str]:
        yield f"{'ID':>5} {'METER':<12} {'KIND':<24} {'SEVERITY':<8} {'OPENED':<25} {'CLOSED':<25} DETAIL"
        for row in rows:
            yield (f"{row['id']:>5} {row['meter']:<12} {row['kind']:<24} {row['severity']:<8} "
                   f"{_when(row['opened'], zone):<25} {_when(row['closed'], zone):<25} {row['detail']}")
    _emit(args, rows, columns, table())
    return EXIT_OK


@_guard
def outages_cmd(args: argparse.Namespace) -> int:
    from meterd.analytics.outages import OutageStore

    config = _load(args)
    with OutageStore(config.store.state) as store:
        outages = store.outages(open_only=args.open)
    rows = [_plain(o) for o in outages]
    columns = ["id", "unit", "started", "ended", "meters", "accounts"]
    zone = site_zone(config)

    def table() -> Iterable[str]:
        yield f"{'ID':>4} {'AREA':<14} {'STARTED':<25} {'ENDED':<25} {'METERS':>6} ACCOUNTS"
        for row in rows:
            yield (f"{row['id']:>4} {row['unit']:<14} {_when(row['started'], zone):<25} "
                   f"{_when(row['ended'], zone, 'ongoing'):<25} {len(row['meters']):>6} {', '.join(row['accounts'])}")
    _emit(args, rows, columns, table())
    return EXIT_OK


@_guard
def stats_cmd(args: argparse.Namespace) -> int:
    from meterd.analytics.stats import periods
    from meterd.analytics.views import curve_meters, curve_points, energy_rows, require_topology
    from meterd.config.durations import parse_step

    config = _load(args)
    require_topology(config)
    if args.what == "energy":
        start, end = _period(args, config)
        spans = periods(args.split, start, end) if args.split else [(start, end)]
        rows = energy_rows(config, spans, by=args.by, role=args.role)
        columns = ["start", "end", args.by, "kwh"]

        def table() -> Iterable[str]:
            yield f"{'START':<10} {'END':<10} {args.by.upper():<16} {'KWH':>14}"
            for r in rows:
                yield f"{r['start']:<10} {r['end']:<10} {r[args.by]:<16} {r['kwh']:>14}"
        _emit(args, rows, columns, table())
        return EXIT_OK
    # curve
    if sum(x is not None for x in (args.meter, args.unit, args.group)) != 1:
        raise ConfigError("stats curve needs exactly one of --meter, --unit, --group")
    meters = curve_meters(config, meter=args.meter, unit=args.unit, group=args.group)
    zone = site_zone(config)
    day, _ = _period(args, config)
    curve = curve_points(config.store.state, meters, day, parse_step(args.step), zone)
    points: list[dict[str, object]] = [{"at": at.isoformat(), "kw": str(kw), "meters": n} for at, kw, n in curve]

    def curve_table() -> Iterable[str]:
        yield f"load curve {day} of {len(meters)} meter(s), step {args.step}"
        yield f"{'AT':<25} {'KW':>12} {'METERS':>6}"
        for at, kw, n in curve:
            yield f"{local_text(at, zone):<25} {kw!s:>12} {n:>6}"
    _emit(args, points, ["at", "kw", "meters"], curve_table())
    return EXIT_OK
