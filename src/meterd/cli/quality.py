"""``meterd quality``: collection quality of a day per meter, channel (terminal) and area.

Reads the state store of a data directory (``--data-dir``, or the one a config names with
``-c``), folds in the attempts recorded since the last look and prints, for a day in the site's
zone (``[site] timezone`` of the config; without one, the zone the state database records, else
Asia/Shanghai; default today): per meter, per channel and per area (the topology's 台区; ``-`` for meters in
none) the attempts, successes, "no record yet" answers, failures by kind, success rate, terminal
online rate and the meters that gave no data.  Rows under the operators' 97 % line are marked
``!``.  How each figure is counted: :mod:`meterd.storage.quality` and ``docs/analytics.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error, print_json, shown, site_zone
from meterd.clock import local_date, zone_name
from meterd.errors import ConfigError
from meterd.reports.periods import FIRST_DAY, LAST_DAY
from meterd.storage.database import Location
from meterd.storage.quality import THRESHOLD, QualityReport, QualityRow, QualityStore
from meterd.storage.sqlite import STATE_FILE

DEFAULT_DATA_DIR = Path("meterd-data")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help="collection quality of a day per meter, channel and area")
    p.add_argument("--area", help="only this topology area ('-': the meters in no area)")
    p.add_argument("--date", help="the day, YYYY-MM-DD in the site's zone (default today)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="config file (its store's data directory is used)")
    where.add_argument("--data-dir", help=f"data directory (default ./{DEFAULT_DATA_DIR})")
    p.add_argument("--threshold", type=float, default=THRESHOLD * 100,
                   help="flag rows under this many percent (default %(default)g)")
    p.add_argument("--recompute", action="store_true", help="recompute the day from the attempts log")
    p.add_argument("--meters", choices=("all", "flagged", "none"), default="all",
                   help="which meter rows to print (default all)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def resolve_location(args: argparse.Namespace) -> tuple[Location, tzinfo]:
    """The store ``-c`` names (its data directory, or its PostgreSQL database) and the site's zone,
    else ``--data-dir`` and the zone its state database records (the default when it records none)."""
    if getattr(args, "config", None):
        from meterd.cli.common import load_site_config

        config = load_site_config(args.config)
        return config.store.state, site_zone(config)
    where = Path(args.data_dir) if getattr(args, "data_dir", None) else DEFAULT_DATA_DIR
    return where, site_zone(None, where)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def format_report(report: QualityReport, *, meters: str = "all") -> list[str]:
    """The report as text lines: a table of meters, then channels, areas and the total."""
    kinds = report.failure_kinds
    no_record = any(r.no_record for r in report.meters)
    head = ["", "AREA", "CHANNEL", "METER", "ATTEMPTS", "OK", *(["NO-RECORD"] if no_record else []),
            *(k.upper() for k in kinds), "SUCCESS%", "DATA%", "ONLINE%", "NO-DATA"]
    right = {"ATTEMPTS", "OK", "NO-RECORD", "SUCCESS%", "DATA%", "ONLINE%", *(k.upper() for k in kinds)}

    def cells(row: QualityRow) -> list[str]:
        if row.level == "meter":
            area, channel, meter = row.area, row.channel, row.key
            nodata = "yes" if row.no_data else "not due" if row.not_due else ""
        else:
            area = row.area if row.level in ("area", "channel") else ""
            channel = row.channel if row.level == "channel" else ""
            meter = {"channel": "(channel)", "area": "(area)", "total": "(total)"}[row.level]
            if row.level == "area":
                area = row.key
            nodata = f"{len(row.no_data)}/{row.meters_due}" if row.meters_due else "0"
        return ["!" if row.below else "", area, channel, meter, str(row.attempts), str(row.ok),
                *([str(row.no_record)] if no_record else []),
                *(str(row.failures.get(k, 0)) for k in kinds), _pct(row.success_rate),
                "" if row.level == "meter" else _pct(row.data_rate), _pct(row.online_rate), nodata]

    shown = {"all": report.meters, "flagged": [r for r in report.meters if r.below], "none": []}[meters]
    sections = [shown, report.channels, report.areas, [report.total]]
    table = [[cells(r) for r in rows] for rows in sections]
    widths = [max([len(h)] + [len(c[i]) for rows in table for c in rows]) for i, h in enumerate(head)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if head[i] in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    zone = report.zone
    start = report.start.astimezone(zone)
    until = "24:00" if report.whole_day else f"{report.end.astimezone(zone):%H:%M}"
    offset = start.isoformat()[19:]  # +08:00
    title = (f"collection quality {report.day.isoformat()} ({zone_name(zone)} {offset}, {start:%H:%M}-{until})"
             + (f", area {report.area}" if report.area else "")
             + f"; rows under {report.threshold * 100:g} % marked !")
    out = [title, line(head)]
    for rows in table:
        if not rows:
            continue
        out.append(line(["-" * w for w in widths]))
        out.extend(line(c) for c in rows)
    for what, meters_ in (("meters with no data", [m for r in report.meters for m in r.no_data]),
                          ("meters with no record yet (not due)", [m for r in report.meters for m in r.not_due])):
        if meters_:
            shown_list = ", ".join(meters_[:20]) + (f" and {len(meters_) - 20} more" if len(meters_) > 20 else "")
            out.append(f"{what}: {shown_list}")
    if no_record:
        out.append("NO-RECORD: the meter answered that the record asked for is not there yet (a freeze, a "
                   "settlement, a curve record): not due, neither success nor failure")
    flagged = [r for r in (*report.channels, *report.areas, report.total) if r.below]
    for r in flagged:
        who = "total" if r.level == "total" else f"{r.level} {r.key}"
        out.append(f"! {who}: under {report.threshold * 100:g} % on {', '.join(r.flags)}")
    return out


def run(args: argparse.Namespace, *, clock: Callable[[], datetime] | None = None) -> int:
    now = (clock or (lambda: datetime.now(UTC)))()
    try:
        where, zone = resolve_location(args)
        day = date.fromisoformat(args.date) if args.date else local_date(now, zone)
        if not FIRST_DAY <= day <= LAST_DAY:  # 9999-12-31 has no next midnight: a traceback (exit 1)
            raise ValueError(f"out of range (from {FIRST_DAY} to {LAST_DAY})")
    except ValueError as exc:
        error(f"--date {shown(args.date)}: {exc}" if args.date else str(exc))
        return EXIT_BAD_INPUT
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    if not 0 < args.threshold <= 100:
        error(f"--threshold {args.threshold:g} must be a percentage above 0 and at most 100")
        return EXIT_BAD_INPUT
    if isinstance(where, Path) and not (where / STATE_FILE).exists():
        error(f"no state store in {where} (run the daemon or the demo first, or pass --data-dir)")
        return EXIT_BAD_INPUT
    with QualityStore(where, threshold=args.threshold / 100, zone=zone) as quality:
        if args.recompute:
            quality.rollup(day)
        report = quality.report(day, args.area, now=now)
    if args.json:
        print_json(report.as_dict())
        return EXIT_OK
    if not report.meters:
        print(f"no meters{' in area ' + args.area if args.area else ''} and no attempts on {day.isoformat()}")
        return EXIT_OK
    for text in format_report(report, meters=args.meters):
        print(text)
    return EXIT_OK
