"""Reporting and base periods: 环比 (mom) and 同比 (yoy) across month ends and leap years, chosen
bases, and the ranges a report refuses."""

from __future__ import annotations

from datetime import date

import pytest

from meterd.errors import ConfigError
from meterd.reports.periods import RangeError, Span, previous_period, report_periods, year_earlier

TODAY = date(2026, 12, 7)


def span(a: str, b: str) -> Span:
    return Span(date.fromisoformat(a), date.fromisoformat(b))


@pytest.mark.parametrize("period, base", [
    ("2026-11-22", span("2026-11-21", "2026-11-21")),  # a day: the day before
    ("2026-03-01", span("2026-02-28", "2026-02-28")),
    ("2024-03-01", span("2024-02-29", "2024-02-29")),  # leap year
    ("2026-11", span("2026-10-01", "2026-10-31")),  # a month: the month before, whatever its length
    ("2026-03", span("2026-02-01", "2026-02-28")),
    ("2024-03", span("2024-02-01", "2024-02-29")),
    ("2026-01", span("2025-12-01", "2025-12-31")),  # across the year
    ("2026-Q1", span("2025-10-01", "2025-12-31")),  # a quarter: the quarter before
    ("2026", span("2025-01-01", "2025-12-31")),  # a year
    ("2026-01-01..2026-02-28", span("2025-11-01", "2025-12-31")),  # whole months: as many months
    ("2026-11-10..2026-11-16", span("2026-11-03", "2026-11-09")),  # days: as many days just before
    ("2026-03-01..2026-03-15", span("2026-02-14", "2026-02-28")),
    ("2024-02-15..2024-03-15", span("2024-01-16", "2024-02-14")),  # 30 days over a leap February
])
def test_mom_is_the_period_before(period: str, base: Span) -> None:
    got = report_periods(period, "mom", today=TODAY)
    assert got.base == base and got.how == "mom"
    assert report_periods(period, None, today=TODAY).base == base  # mom is the default


@pytest.mark.parametrize("period, base", [
    ("2026-11-22", span("2025-11-22", "2025-11-22")),
    ("2024-02-29", span("2023-02-28", "2023-02-28")),  # no 29 February a year earlier
    ("2025-02-28", span("2024-02-28", "2024-02-28")),  # not the 29th: the same date
    ("2024-02", span("2023-02-01", "2023-02-28")),  # whole month to whole month: 29 days to 28
    ("2025-02", span("2024-02-01", "2024-02-29")),  # 28 days to 29
    ("2026-Q4", span("2025-10-01", "2025-12-31")),
    ("2026", span("2025-01-01", "2025-12-31")),
    ("2024-01-15..2024-02-29", span("2023-01-15", "2023-02-28")),
    ("2024-02-29..2024-03-10", span("2023-02-28", "2023-03-10")),
    ("2026-11-01..2026-11-30", span("2025-11-01", "2025-11-30")),  # a month typed as a range: the same
])
def test_yoy_is_the_same_days_a_year_earlier(period: str, base: Span) -> None:
    got = report_periods(period, "yoy", today=TODAY)
    assert got.base == base and got.how == "yoy"


def test_a_chosen_base_and_the_default_period() -> None:
    got = report_periods("2026-11", "2026-06-01..2026-06-10", today=TODAY)
    assert got.report == span("2026-11-01", "2026-11-30") and got.base == span("2026-06-01", "2026-06-10")
    assert got.how == "custom"
    got = report_periods(None, None, today=TODAY)  # yesterday, against the day before
    assert got.report == span("2026-12-06", "2026-12-06") and got.base == span("2026-12-05", "2026-12-05")
    assert report_periods("2026-11", "YOY", today=TODAY).how == "yoy"


def test_previous_and_year_earlier_directly() -> None:
    assert previous_period(span("2024-12-01", "2024-12-31")) == span("2024-11-01", "2024-11-30")
    assert year_earlier(span("2028-02-29", "2028-02-29")) == span("2027-02-28", "2027-02-28")


@pytest.mark.parametrize("period, base, message, too_far", [
    ("2026-13", None, "--period '2026-13': use YYYY-MM-DD", False),
    ("2026-11-30..2026-11-01", None, "the end is before the start", False),
    ("2026-11", "last", "--base 'last'", False),
    ("2026-11", "  ", "--base: empty", False),
    ("2010-01-01..2026-12-31", None, "6209 days is more than a report covers (at most ten years", True),
    ("1969-12", None, "out of range (from 1970-01-01 to 2099-12-31)", True),
    ("2100", None, "out of range", True),
    ("0000", None, "out of range", True),
    ("1970-01", "mom", "--base 'mom': 1969-12-01..1969-12-31 is out of range", True),
    ("1970-06", "yoy", "--base 'yoy'", True),
    ("2026-11", "2000-01-01..2026-01-01", "--base '2000-01-01..2026-01-01': 9498 days", True),
])
def test_refused_periods_name_what_is_wrong(period: str, base: str | None, message: str, too_far: bool) -> None:
    with pytest.raises(ConfigError) as exc:
        report_periods(period, base, today=TODAY)
    assert message in "; ".join(exc.value.problems)
    assert isinstance(exc.value, RangeError) == too_far


def test_ten_years_is_allowed() -> None:
    got = report_periods("2016-01-01..2025-12-31", "2006-01-01..2015-12-31", today=TODAY)
    assert got.report.days == 3653 and got.base.days == 3652
