"""Reporting and base periods (报告期 / 基期) of a report: pure functions, no clock.

A reporting period is what :func:`meterd.analytics.views.parse_period` accepts -- ``2026-11-22``
(a day), ``2026-11`` (a month), ``2026-Q4`` (a quarter), ``2026-11-01..2026-11-15`` (inclusive
days) -- and also ``2026`` (a year).  None means yesterday (``today`` is the site's).

The base period it is compared with:

``mom`` (环比, the default)
    the period just before, of the same length.  A period of whole calendar months (a month, a
    quarter, a year, or ``2026-01-01..2026-02-28``) is compared with the same number of whole
    months before it -- November with October, Q4 with Q3, March (31 days) with February (28 or
    29) -- because that is how operators read "last month"; any other period with the same
    number of days just before it (``2026-11-10..2026-11-16`` with ``2026-11-03..2026-11-09``).
``yoy`` (同比)
    the same days a year earlier.  Whole months map to whole months (February 2024, 29 days, to
    February 2023, 28 days); a day that does not exist a year earlier (29 February) becomes the
    last day of that February.
``PERIOD``
    any period in the reporting period's grammar.

Limits: both periods lie within 1970-01-01 .. 2099-12-31 and span at most :data:`MAX_DAYS`
(ten years); anything else is refused with a :class:`~meterd.errors.ConfigError` naming the
parameter and the value.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from meterd.analytics.views import parse_period
from meterd.errors import ConfigError

FIRST_DAY: Final = date(1970, 1, 1)
LAST_DAY: Final = date(2099, 12, 31)
MAX_DAYS: Final = 3653  # ten years of days, leap days included
BASES: Final = ("mom", "yoy")
BASE_WORDS: Final = {"mom": "环比 period-on-period", "yoy": "同比 year-on-year", "custom": "基期 chosen"}


class RangeError(ConfigError):
    """A period that is a period, but outside the dates or longer than a report covers."""


@dataclass(frozen=True, slots=True)
class Span:
    start: date
    end: date  # inclusive

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def text(self) -> str:
        return self.start.isoformat() if self.start == self.end else f"{self.start}..{self.end}"


@dataclass(frozen=True, slots=True)
class Periods:
    """The reporting period, its base and how the base was chosen (``mom``, ``yoy`` or ``custom``)."""

    report: Span
    base: Span
    how: str
    names: tuple[str, str] = ("--period", "--base")  # what the caller calls them, for errors


def _month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])


def _whole_months(span: Span) -> int:
    """How many whole calendar months ``span`` is, or 0 when it is not whole months."""
    if span.start.day != 1 or span.end != _month_end(span.end.year, span.end.month):
        return 0
    return (span.end.year - span.start.year) * 12 + span.end.month - span.start.month + 1


def _add_months(day: date, months: int) -> date:
    """The first of the month ``months`` after (before, if negative) ``day``'s month."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _year_earlier(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February: the last day of the February a year earlier
        return date(day.year - 1, 2, 28)


def previous_period(span: Span) -> Span:
    """环比: the period just before ``span`` (see the module docstring)."""
    months = _whole_months(span)
    if months:
        start = _add_months(span.start, -months)
        return Span(start, span.start - timedelta(days=1))
    return Span(span.start - timedelta(days=span.days), span.start - timedelta(days=1))


def year_earlier(span: Span) -> Span:
    """同比: the same days a year earlier (see the module docstring)."""
    if _whole_months(span):
        start = span.start.replace(year=span.start.year - 1)
        return Span(start, _month_end(span.end.year - 1, span.end.month))
    return Span(_year_earlier(span.start), _year_earlier(span.end))


def _parse(text: str | None, today: date, name: str) -> Span:
    if text is not None and text.strip().isascii() and text.strip().isdigit() and len(text.strip()) == 4:
        year = int(text.strip())
        if not FIRST_DAY.year <= year <= LAST_DAY.year:
            raise RangeError(f"{name} {text!r}: out of range (from {FIRST_DAY} to {LAST_DAY})")
        return _check(Span(date(year, 1, 1), date(year, 12, 31)), name, text)
    try:
        start, end = parse_period(text, today=today, name=name)
    except ConfigError as exc:
        raise ConfigError(f"{'; '.join(exc.problems)} (or YYYY for a year)") from None
    return _check(Span(start, end), name, text)


def _check(span: Span, name: str, text: str | None) -> Span:
    shown = f"{name} {text!r}" if text else name
    if span.start < FIRST_DAY or span.end > LAST_DAY:
        raise RangeError(f"{shown}: {span.text()} is out of range (from {FIRST_DAY} to {LAST_DAY})")
    if span.days > MAX_DAYS:
        raise RangeError(f"{shown}: {span.days} days is more than a report covers (at most ten years, "
                          f"{MAX_DAYS} days)")
    return span


def report_periods(period: str | None, base: str | None, *, today: date, period_name: str = "--period",
                   base_name: str = "--base") -> Periods:
    """The reporting period ``period`` and its ``base`` (``mom`` by default, ``yoy`` or a period)."""
    report = _parse(period, today, period_name)
    names = (period_name, base_name)
    how = (base or "mom").strip().lower()
    if how == "mom":
        return Periods(report, _check(previous_period(report), base_name, "mom"), how, names)
    if how == "yoy":
        return Periods(report, _check(year_earlier(report), base_name, "yoy"), how, names)
    if not base or not base.strip():
        raise ConfigError(f"{base_name}: empty; use mom, yoy or a period")
    try:
        return Periods(report, _parse(base, today, base_name), "custom", names)
    except RangeError:
        raise
    except ConfigError as exc:
        raise ConfigError(f"{'; '.join(exc.problems)}; {base_name} also takes mom (环比) or yoy (同比)") from None
