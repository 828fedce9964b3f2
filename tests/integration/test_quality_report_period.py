"""The collection-quality report reads each period with period-level queries
(:meth:`QualityStore.days`), not :meth:`QualityStore.report` day by day; its figures must be
the day-by-day sums it used to add up -- exactly, the online seconds' floats included.

The district: two months (October and November 2026) in New York time, where November begins
on the day the clocks go back (a 25-hour day) -- attempts a moment either side of midnight and of
the month's end, a meter that moves to another channel for a day, one silent on every third day,
a freeze meter that is not due on some days, an archive meter never read, a meter read but not in
the archive, a day without a single attempt; terminals watched from the start, from mid-October
and from mid-November, with overlapping, month-crossing and still-open online intervals.  Built
with the real stores on SQLite and PostgreSQL, folded by the real rollup, compared at two "now"s:
mid-November (the days after it not begun, the day itself cut at it) and after both periods."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from meterd.clock import day_start
from meterd.reports import report_periods
from meterd.reports.kinds import _quality_tallies, _Tally, quality_report
from meterd.reports.periods import Span
from meterd.storage import open_store
from meterd.storage.quality import QualityStore
from meterd.storage.sqlite import Attempt, MeterRecord

NY = ZoneInfo("America/New_York")
M1, M2, M3, M4, M5, M6 = (f"{i:012d}" for i in range(1, 7))
FIRST, LAST = date(2026, 10, 1), date(2026, 11, 30)
NOWS = (datetime(2026, 11, 20, 15, tzinfo=NY), datetime(2026, 12, 3, 9, tzinfo=NY))


def ny(day: date, hour: int = 0, minute: int = 0, second: int = 0, ms: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second, ms * 1000), NY).astimezone(UTC)


def attempts() -> list[Attempt]:
    out = []

    def put(meter: str, channel: str, at: datetime, outcome: str) -> None:
        out.append(Attempt(meter, channel, "00010000", at, outcome, 0.1 if outcome == "ok" else None))

    day = FIRST
    while day <= LAST:
        n = day.toordinal()
        if day == date(2026, 10, 20):  # nothing at all that day: only the archive's meters, without data
            day += timedelta(days=1)
            continue
        # M1 on t1: ok at 00:00:00.000 and noon, a timeout at 23:59:59.999; every fifth day only timeouts
        put(M1, "t1", ny(day), "timeout" if n % 5 == 0 else "ok")
        put(M1, "t1", ny(day, 12), "timeout" if n % 5 == 0 else "ok")
        put(M1, "t1", ny(day, 23, 59, 59, 999), "timeout")
        # M2 on t1; on 10 November it moves to t0 (counted there: t0 < t1), ok only on t0 that day
        if day < date(2026, 11, 10):
            put(M2, "t1", ny(day, 8), "ok")
            put(M2, "t1", ny(day, 20), "timeout")
        elif day == date(2026, 11, 10):
            put(M2, "t1", ny(day, 6), "timeout")
            put(M2, "t0", ny(day, 18), "ok")
        else:
            put(M2, "t0", ny(day, 10), "ok")
        # M3 on t2: silent every third day; else ok at 23:30, a timeout at 00:15
        if n % 3:
            put(M3, "t2", ny(day, 23, 30), "ok")
            put(M3, "t2", ny(day, 0, 15), "timeout")
        # M4 (no area) on t2, a freeze: every other day only "no record" (not due), else one of each;
        # every seventh a timeout instead (due: no data)
        put(M4, "t2", ny(day, 0, 0, 30), "no_record")
        put(M4, "t2", ny(day, 22), "timeout" if n % 7 == 0 else "no_record" if n % 2 else "ok")
        # M6: read on t1 from the 15th to the 25th of November, not in the archive
        if date(2026, 11, 15) <= day <= date(2026, 11, 25):
            put(M6, "t1", ny(day, 9), "ok")
        day += timedelta(days=1)
    return out


def build(where: Any) -> None:
    with open_store(where) as store:
        store.upsert_meters([MeterRecord(m, ch, "dlt645-2007", Decimal(1), Decimal(1))
                             for m, ch in ((M1, "t1"), (M2, "t1"), (M3, "t2"), (M4, "t2"), (M5, "t3"))])
        store.record_attempts(attempts())
    with QualityStore(where, zone=NY) as quality:
        quality.set_areas({M1: "TA1", M2: "TA1", M6: "TA1", M3: "TA2", M5: "TA2"})  # M4: in no area
        for terminal, start, end in (
                ("t1", ny(date(2026, 9, 30), 12), ny(date(2026, 10, 31), 22)),  # across the month's end
                ("t1", ny(date(2026, 11, 1), 0, 30), ny(date(2026, 11, 5), 3)),
                ("t1", ny(date(2026, 11, 2)), ny(date(2026, 11, 3))),  # inside the one before
                ("t1", ny(date(2026, 11, 5), 4), ny(date(2026, 11, 18), 10)),
                ("t1", ny(date(2026, 11, 18), 12), None),  # still online
                ("t2", ny(date(2026, 10, 15), 10), ny(date(2026, 10, 31), 23, 59, 59, 999)),
                ("t2", ny(date(2026, 11, 1)), ny(date(2026, 11, 30), 12))):
            quality.record_online(terminal, start, end)
        quality.record_watch("t1", ny(date(2026, 9, 30), 12))
        quality.record_watch("t3", ny(date(2026, 11, 10)))  # watched, never online: 0 %
        quality.update()


def _sum(t: list[Any], row: Any) -> None:
    t[0] += row.attempts
    t[1] += row.ok
    t[2] += row.due
    t[3] += row.meters_due
    t[4] += row.meters_with_data
    if row.online_seconds is not None and row.terminals:
        t[5] += row.online_seconds
        t[6] += row.span_seconds


def day_by_day(store: QualityStore, span: Span, by: str,
               now: datetime) -> tuple[dict[tuple[str, str], tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the report added up before: each begun day's QualityStore.report (the API's
    /api/v1/quality), its area (or channel) rows and total summed over the period; and each day's total."""
    out: dict[tuple[str, str], list[Any]] = {}
    daily = []
    for i in range(span.days):
        day = span.start + timedelta(days=i)
        t = [0, 0, 0, 0, 0, 0.0, 0.0]
        if day_start(day, NY) <= now:
            report = store.report(day, now=now, refresh=False)
            for row in report.areas if by == "area" else report.channels:
                _sum(out.setdefault((by, row.key), [0, 0, 0, 0, 0, 0.0, 0.0]), row)
            _sum(out.setdefault(("total", "total"), [0, 0, 0, 0, 0, 0.0, 0.0]), report.total)
            _sum(t, report.total)
        daily.append((day, *t))
    return {k: tuple(v) for k, v in out.items()}, daily


def figures(t: _Tally) -> tuple[Any, ...]:
    return t.attempts, t.ok, t.due, t.meter_days, t.meter_days_data, t.online, t.span


def test_period_sums_are_the_day_by_day_sums(state_where: Any) -> None:
    build(state_where)
    periods = report_periods("2026-11", None, today=date(2026, 12, 3))  # against October
    assert periods.base == Span(date(2026, 10, 1), date(2026, 10, 31))
    config = SimpleNamespace(source="ny.toml", store=SimpleNamespace(state=state_where))
    seen_online = False
    with QualityStore(state_where, zone=NY) as store:
        for now in NOWS:
            for span in (periods.report, periods.base):
                for by in ("area", "channel"):
                    expected, expected_daily = day_by_day(store, span, by, now)
                    daily: list[tuple[date, _Tally]] = []
                    got = _quality_tallies(store.days(span.start, span.end, now=now), span, by, daily)
                    assert {k: figures(t) for k, t in got.items()} == expected, (now, span, by)
                    assert [(d, *figures(t)) for d, t in daily] == expected_daily, (now, span, by)
                    seen_online |= any(v[6] for v in expected.values())
            # and the workbook's rows are made of them: the report, both periods, beside the old sums
            for by in ("area", "channel"):
                now_sums = day_by_day(store, periods.report, by, now)[0]
                base_sums = day_by_day(store, periods.base, by, now)[0]
                sheet = quality_report(config, periods, now=now, zone=NY, by=by).sheets[0]
                rows = {(r[0].split()[1], r[1]): r for r in sheet.rows}  # type: ignore[union-attr]
                assert set(rows) == set(now_sums) | set(base_sums)
                for key, row in rows.items():
                    a, b = now_sums.get(key), base_sums.get(key)
                    assert row[2:4] == ([a[0], a[1]] if a else [None, None]), (now, key)
                    assert row[13:15] == [a[3] - a[4] if a else None, b[3] - b[4] if b else None], (now, key)
    assert seen_online
    # the data set has what the docstring says: the move, the gap, the not-due freeze days, the
    # empty day, the meters of no area and of no archive, the terminals
    with QualityStore(state_where, zone=NY) as store:
        moved = store.report(date(2026, 11, 10), now=NOWS[1], refresh=False)
        assert {r.key: r.meters for r in moved.channels} == {"t0": 1, "t1": 1, "t2": 2, "t3": 1}
        assert {r.key for r in moved.areas} == {"TA1", "TA2", "-"}
        first = store.report(date(2026, 11, 1), now=NOWS[1], refresh=False)
        assert first.end - first.start == timedelta(hours=25)
        assert first.total.attempts == 9  # M1 3, M2 2, M3 2, M4 2
        assert (first.total.not_due, sorted(first.total.no_data)) == ([], [M4, M5])  # M4: a timeout
        third = store.report(date(2026, 11, 3), now=NOWS[1], refresh=False)  # M3's silent day
        assert (third.total.not_due, sorted(third.total.no_data)) == ([M4], [M3, M5])  # M4: two "no record"s
        empty = store.report(date(2026, 10, 20), now=NOWS[1], refresh=False)
        assert (empty.total.attempts, len(empty.total.no_data)) == (0, 5)
        t3 = {r.key: r for r in store.report(date(2026, 11, 12), now=NOWS[1], refresh=False).channels}["t3"]
        assert (t3.online_seconds, t3.span_seconds) == (0.0, 86400.0)


def test_the_period_is_read_with_a_few_queries_whatever_its_length(tmp_path: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect: a report read the rollup a day at a time (a month of 100,000 meters took over a
    minute of CPU).  The statements the report runs are counted (SQLite's trace): as many for a
    month beside its base as for two days beside theirs (both with 10 November, when M2 moved: its
    attempts of the day are read on their own)."""
    build(tmp_path)
    connect = sqlite3.connect
    statements: list[str] = []

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    config = SimpleNamespace(source="ny.toml", store=SimpleNamespace(state=tmp_path))
    counts = []
    for period in ("2026-11-10..2026-11-11", "2026-11"):
        statements.clear()
        quality_report(config, report_periods(period, None, today=date(2026, 12, 3)), now=NOWS[1], zone=NY)
        counts.append(sum(s.lstrip().upper().startswith("SELECT") for s in statements))
    assert counts[0] == counts[1] < 30, counts
