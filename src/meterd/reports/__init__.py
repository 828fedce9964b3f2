"""Reports operators hand on: line loss, energy by area / industry / group, collection quality and
prepaid balances as ``.xlsx`` workbooks, each for a reporting period (报告期) beside a base period
(基期: 环比 the period before, 同比 a year earlier, or one chosen), with their difference and
change and charts.

- :mod:`.periods` -- the reporting and base periods (pure);
- :mod:`.kinds` -- the four reports, from the queries the API and the other commands use;
- :mod:`.workbook` -- writing a report with openpyxl, streamed (write-only mode).

May import: ``meterd.analytics`` (views), ``meterd.storage``, ``meterd.control`` (the ledger and
accounts), ``meterd.clock``, ``meterd.errors`` -- never ``api`` or ``cli``, which sit on top: the
CLI (``meterd report``) and the API (``GET /api/v1/reports/{kind}.xlsx``) both call :func:`render`.

Contract: time is passed in (``now``); human-facing times are in the site's zone; money is read as
integer fen and written as 元 with two decimals, exact; errors are
:class:`~meterd.errors.ConfigError` naming the parameter and the value.
"""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from typing import IO, Any

from meterd.reports.kinds import BY, KINDS, build, check_by
from meterd.reports.periods import Periods, Span, report_periods
from meterd.reports.workbook import write_workbook


def render(kind: str, config: Any, target: str | IO[bytes], *, period: str | None, base: str | None,
           by: str | None, now: datetime, zone: tzinfo, today: date, role: str = "sales",
           period_name: str = "--period", base_name: str = "--base", by_name: str = "--by") -> dict[str, int]:
    """Build report ``kind`` and write it to ``target``; returns the rows written per sheet."""
    by = check_by(kind, by, name=by_name)
    periods = report_periods(period, base, today=today, period_name=period_name, base_name=base_name)
    return write_workbook(build(kind, config, periods, now=now, zone=zone, by=by, role=role), target)


__all__ = ["BY", "KINDS", "Periods", "Span", "build", "check_by", "render", "report_periods", "write_workbook"]
