"""``meterd report``: a report as an ``.xlsx`` workbook operators hand on.

::

    meterd report lineloss|energy|quality|balances -c site.toml --period 2026-11 [--base mom|yoy|PERIOD]
                  [--by area|line|group|industry|channel] [--role sales|supply|auxiliary|all]
                  [--area NAME] -o FILE.xlsx

Periods as for ``meterd lineloss`` (``2026-11-22``, ``2026-11``, ``2026-Q4``,
``2026-11-01..2026-11-15``) and also ``2026`` (a year); default yesterday in the site's zone.
The base is ``mom`` (环比, the period before; the default), ``yoy`` (同比, a year earlier) or a
period.  ``-o -`` writes the workbook to stdout.  The file is written whole or not at all (a
temporary file beside it, renamed).  What each report holds: ``docs/reports.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, error, site_zone
from meterd.clock import local_date, utc_now
from meterd.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from meterd.reports import KINDS

    p = sub.add_parser("report", help="a report as an .xlsx workbook: line loss, energy, quality, balances",
                       description="A report for a reporting period beside its base period (环比 / 同比), with "
                                   "the difference, the change and charts, as an Excel workbook.")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("-c", "--config", required=True, help="config file (topology, data directory, [site] timezone)")
    p.add_argument("--period", help="YYYY-MM-DD, YYYY-MM, YYYY-Qn, YYYY or START..END (default yesterday, site time)")
    p.add_argument("--base", default="mom",
                   help="mom (环比: the period before, default), yoy (同比: a year earlier) or a period")
    p.add_argument("--by", help="lineloss: area|line|group (default all units); energy: area|industry|group "
                                "(default area); quality: area|channel (default area); balances: area")
    p.add_argument("--role", choices=("sales", "supply", "auxiliary", "all"), default="sales",
                   help="energy: which points count (default sales: what customers used)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.xlsx", help="the workbook to write ('-': stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meterd.cli.common import load_site_config
    from meterd.reports import render

    out = None if args.output == "-" else Path(args.output)
    if out is not None:
        if out.suffix.lower() != ".xlsx":
            error(f"-o {args.output}: a report is an .xlsx workbook; name the file FILE.xlsx")
            return EXIT_BAD_INPUT
        if not out.parent.is_dir():
            error(f"-o {args.output}: directory {out.parent} does not exist")
            return EXIT_BAD_INPUT
    try:
        config = load_site_config(args.config)
        zone = site_zone(config)
        now = utc_now()
        if out is None:
            render(args.kind, config, sys.stdout.buffer, period=args.period, base=args.base, by=args.by, now=now,
                   zone=zone, today=local_date(now, zone), role=args.role)
            sys.stdout.buffer.flush()
            return EXIT_OK
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            written = render(args.kind, config, tmp, period=args.period, base=args.base, by=args.by, now=now,
                             zone=zone, today=local_date(now, zone), role=args.role)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except ConfigError as exc:
        for problem in exc.problems:
            error(problem)
        return EXIT_BAD_INPUT
    except OSError as exc:
        error(f"-o {args.output}: cannot write: {exc.strerror or exc}")
        return EXIT_FAILED
    rows = ", ".join(f"{title}: {n} rows" for title, n in written.items())
    print(f"{args.kind} report written to {out} ({rows})")
    return EXIT_OK
