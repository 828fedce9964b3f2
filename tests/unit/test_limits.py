"""meterd.control.limits: power limits (定值控制) -- runs over the limit, windows, hold, safety."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.control.limits import PowerLimit, PowerSample, PowerWindow, evaluate_power
from meterd.clock import CST
from meterd.control.model import CommandKind
from meterd.control.policy import PROTECTED_REASON, SafetyRules

K = CommandKind
T0 = datetime(2024, 5, 15, 14, 0, tzinfo=CST)  # a Wednesday afternoon, outside the windows below
MINUTE = timedelta(minutes=1)
NO_RULES = SafetyRules()
LIMIT = PowerLimit(meter="big1", account="acc-big", area="north", limit_kw=Decimal(100),
                   hold=timedelta(minutes=15), action=K.TRIP)


def samples(kws, start=T0, step=MINUTE) -> list[PowerSample]:
    return [PowerSample(start + i * step, Decimal(str(kw))) for i, kw in enumerate(kws)]


def last(series: list[PowerSample]) -> datetime:
    return series[-1].at


# -- runs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kws, since", [
    ([], None),
    ([90], None),
    ([100], None),  # at the limit is not over it
    ([100.01], 0),
    ([110, 120, 130], 0),
    ([110, 90, 110, 120], 2),  # a sample under breaks the run
    ([110, 100, 110], 2),
    ([90, 110, 110, 110], 1),
    ([110, 110, 90], None),  # the latest sample is under: no run now
])
def test_exceeded_since(kws, since):
    series = samples(kws)
    d = evaluate_power(replace(LIMIT, hold=timedelta(hours=1)), series, T0 + timedelta(hours=1), NO_RULES)
    assert d.exceeded_since == (None if since is None else series[since].at)
    assert (d.command, d.notice, d.held) == (None, None, None)


@pytest.mark.parametrize("minutes_over, acts", [
    (14, False),
    (15, True),  # exactly the hold
    (16, True),
])
def test_hold_boundary(minutes_over, acts):
    series = samples([80] + [120] * (minutes_over + 1))  # over from sample 1 to sample minutes_over + 1
    d = evaluate_power(LIMIT, series, last(series), NO_RULES)
    assert d.exceeded_since == series[1].at
    assert (d.command is not None) is acts
    assert (d.notice is not None) is acts


def test_zero_hold_acts_on_one_sample():
    series = samples([120])
    d = evaluate_power(replace(LIMIT, hold=timedelta(0)), series, last(series), NO_RULES)
    assert d.command is not None and d.command.kind is K.TRIP


def test_the_run_is_measured_to_the_latest_sample_not_now():
    series = samples([120] * 10)
    d = evaluate_power(LIMIT, series, last(series) + timedelta(hours=1), NO_RULES)
    assert (d.exceeded_since, d.command) == (series[0].at, None)


def test_unsorted_and_future_samples():
    series = samples([120] * 16)
    shuffled = series[::2] + series[1::2]
    future = [PowerSample(last(series) + MINUTE, Decimal(50))]  # a meter clock ahead of ours
    d = evaluate_power(LIMIT, shuffled + future, last(series), NO_RULES)
    assert d.exceeded_since == series[0].at
    assert d.command is not None


def test_command_and_notice():
    series = samples([110] * 15 + [123.4])
    d = evaluate_power(LIMIT, series, last(series), NO_RULES)
    c = d.command
    assert c is not None
    assert (c.meter, c.kind, c.requested_by, c.account) == ("big1", K.TRIP, "power-limit", "acc-big")
    assert c.reason == "load 123.4 kW > limit 100 kW for 15m (hold 15m)"
    n = d.notice
    assert n is not None
    assert (n.kind, n.account, n.meter, n.at, n.balance) == ("power-limit", "acc-big", "big1", last(series), None)
    assert "123.4 kW" in n.message and "trip" in n.message


def test_active_means_already_acted_upon():
    series = samples([120] * 30)
    d = evaluate_power(LIMIT, series, last(series), NO_RULES, active=True)
    assert (d.exceeded_since, d.command, d.notice, d.held) == (series[0].at, None, None, None)


# -- windows (时段控) -----------------------------------------------------------------------------

WINDOWED = replace(LIMIT, windows=(PowerWindow(time(8), time(12), Decimal(50)),
                                   PowerWindow(time(22), time(6), Decimal(200))))


@pytest.mark.parametrize("limit, local, expected", [
    (WINDOWED, (7, 59), 100),
    (WINDOWED, (8, 0), 50),
    (WINDOWED, (11, 59), 50),
    (WINDOWED, (12, 0), 100),
    (WINDOWED, (21, 59), 100),
    (WINDOWED, (22, 0), 200),
    (WINDOWED, (0, 0), 200),  # wraps past midnight
    (WINDOWED, (5, 59), 200),
    (WINDOWED, (6, 0), 100),
    (replace(WINDOWED, limit_kw=None), (14, 0), None),
    (replace(WINDOWED, limit_kw=None), (9, 0), 50),
])
def test_limit_at(limit, local, expected):
    at = datetime(2024, 5, 15, *local, tzinfo=CST)
    assert limit.limit_at(at) == (None if expected is None else Decimal(expected))
    assert limit.limit_at(at.astimezone(timezone.utc)) == limit.limit_at(at)


def test_a_run_starts_when_a_window_lowers_the_limit():
    series = samples([80] * 5, start=datetime(2024, 5, 15, 7, 58, tzinfo=CST))  # 07:58 .. 08:02
    d = evaluate_power(replace(WINDOWED, hold=timedelta(minutes=2)), series, last(series), NO_RULES)
    assert d.exceeded_since == datetime(2024, 5, 15, 8, 0, tzinfo=CST)
    assert d.command is not None and "limit 50 kW" in d.command.reason


def test_a_run_ends_when_a_window_raises_the_limit():
    series = samples([80] * 3, start=datetime(2024, 5, 15, 11, 58, tzinfo=CST))  # 11:58 .. 12:00
    d = evaluate_power(WINDOWED, series, last(series), NO_RULES)
    assert (d.exceeded_since, d.command) == (None, None)


def test_a_run_across_midnight_in_a_wrapping_window():
    series = samples([250] * 31, start=datetime(2024, 5, 15, 23, 45, tzinfo=CST))  # 23:45 .. 00:15
    d = evaluate_power(replace(WINDOWED, hold=timedelta(minutes=30)), series, last(series), NO_RULES)
    assert d.exceeded_since == series[0].at
    assert d.command is not None and d.command.reason == "load 250 kW > limit 200 kW for 30m (hold 30m)"


def test_no_limit_outside_the_windows_breaks_the_run():
    limit = replace(LIMIT, limit_kw=None, hold=timedelta(0), windows=(PowerWindow(time(8), time(9), Decimal(50)),))
    series = samples([80] * 3, start=datetime(2024, 5, 15, 8, 58, tzinfo=CST))  # 08:58 .. 09:00
    assert evaluate_power(limit, series, last(series), NO_RULES).exceeded_since is None
    assert evaluate_power(limit, series[:2], series[1].at, NO_RULES).exceeded_since == series[0].at


# -- safety --------------------------------------------------------------------------------------

NIGHT = datetime(2024, 5, 15, 23, 0, tzinfo=CST)
QUIET = SafetyRules(quiet_hours=((time(22), time(7)),))
CAPPED = SafetyRules(max_trips_per_area_hour=3)


@pytest.mark.parametrize("action, protected, rules, start, area_trips, held", [
    (K.TRIP, False, NO_RULES, T0, 0, None),
    (K.TRIP, True, NO_RULES, T0, 0, PROTECTED_REASON),
    (K.TRIP, False, QUIET, NIGHT, 0, "quiet hours 22:00-07:00 CST"),
    (K.TRIP, False, SafetyRules(no_trip_weekends=True), datetime(2024, 5, 18, 14, 0, tzinfo=CST), 0, "weekend"),
    (K.TRIP, False, CAPPED, T0, 2, None),
    (K.TRIP, False, CAPPED, T0, 3, "area trip cap reached: at most 3 trips per hour in area north"),
    # an alarm is never held
    (K.ALARM, True, QUIET, NIGHT, 9, None),
    (K.ALARM, False, CAPPED, T0, 3, None),
])
def test_safety(action, protected, rules, start, area_trips, held):
    series = samples([150] * 16, start=start)
    limit = replace(LIMIT, action=action, protected=protected)
    d = evaluate_power(limit, series, last(series), rules, area_trips_last_hour=area_trips)
    assert d.held == held
    if held is None:
        assert d.command is not None and d.command.kind is action
        assert d.notice is not None and d.notice.kind == "power-limit"
    else:
        assert d.command is None
        assert d.notice is not None and d.notice.kind == "held" and held in d.notice.message


def test_held_notice_only_when_the_reason_changes():
    series = samples([150] * 16, start=NIGHT)
    first = evaluate_power(LIMIT, series, last(series), QUIET)
    again = evaluate_power(LIMIT, series, last(series), QUIET, held=first.held)
    assert first.notice is not None and again.notice is None
    assert again.held == first.held and again.command is None


def test_no_account():
    series = samples([150] * 16)
    d = evaluate_power(replace(LIMIT, account=None, action=K.ALARM), series, last(series), NO_RULES)
    assert d.command is not None and d.command.account is None
    assert d.notice is not None and (d.notice.account, d.notice.meter) == ("", "big1")


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, problems", [
    ({}, []),
    ({"windows": WINDOWED.windows}, []),
    ({"action": K.RECLOSE}, ["action must be alarm or trip"]),
    ({"hold": timedelta(seconds=-1)}, ["hold must not be negative"]),
    ({"limit_kw": Decimal(0)}, ["limit_kw must be > 0"]),
    ({"limit_kw": None}, ["no limit_kw and no windows"]),
    ({"windows": (PowerWindow(time(8), time(8), Decimal(50)),)}, ["is empty"]),
    ({"windows": (PowerWindow(time(8), time(9), Decimal(-1)),)}, ["limit_kw must be > 0"]),
    ({"windows": (PowerWindow(time(22), time(6), Decimal(50)), PowerWindow(time(5), time(7), Decimal(60)))},
     ["overlap"]),
    ({"windows": (PowerWindow(time(22), time(6), Decimal(50)), PowerWindow(time(6), time(22), Decimal(60)))},
     []),
])
def test_problems(changes, problems):
    found = replace(LIMIT, **changes).problems()
    assert len(found) == len(problems), found
    for text, expected in zip(found, problems):
        assert expected in text
