"""Tariffs: which version is in force when (00:00 CST of its date), the marginal price, the day
schedule and tier period calendar in CST, and problems() reporting every inconsistency at once."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal as D

import pytest

from meterd.clock import CST

from meterd.control.model import TOU_RATES, Rate
from meterd.control.tariff import (
    Tariff,
    TariffKind,
    TariffVersion,
    Tier,
    TierPeriod,
    TouPeriod,
    TouSource,
)

UTC = timezone.utc


def cst(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=CST)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


PRICES = {Rate.SHARP: D("1.2"), Rate.PEAK: D("0.9"), Rate.FLAT: D("0.6"), Rate.VALLEY: D("0.3")}
# 00:00 valley, 08:00 peak, 12:00 flat, 18:00 sharp, 20:00 peak, 22:00 valley (into the next day)
SCHEDULE = (
    TouPeriod(time(0), Rate.VALLEY),
    TouPeriod(time(8), Rate.PEAK),
    TouPeriod(time(12), Rate.FLAT),
    TouPeriod(time(18), Rate.SHARP),
    TouPeriod(time(20), Rate.PEAK),
    TouPeriod(time(22), Rate.VALLEY),
)
FLAT = TariffVersion(date(2026, 1, 1), TariffKind.FLAT, price=D("0.5283"))
TOU_REG = TariffVersion(date(2026, 4, 1), TariffKind.TOU, rate_prices=PRICES)
TOU_SCHED = TariffVersion(date(2026, 7, 1), TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE,
                          day_schedule=SCHEDULE)
TIERED = TariffVersion(date(2026, 10, 1), TariffKind.TIERED,
                       tiers=(Tier(D(2160), D("0.5283")), Tier(D(4200), D("0.5783")), Tier(None, D("0.8283"))))
TARIFF = Tariff("residential", (TIERED, TOU_SCHED, FLAT, TOU_REG))  # out of order on purpose


# --- versions in time --------------------------------------------------------------------------


def test_versions_are_sorted_by_effective_date():
    assert TARIFF.versions == (FLAT, TOU_REG, TOU_SCHED, TIERED)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (cst(2025, 12, 31, 23, 59, 59), None),  # before the first version
        (utc(2025, 12, 31, 16), FLAT),  # = 2026-01-01 00:00 CST: in force from that instant
        (cst(2026, 1, 1), FLAT),
        (cst(2026, 3, 31, 23, 59, 59), FLAT),
        (utc(2026, 3, 31, 16), TOU_REG),  # 2026-04-01 00:00 CST
        (utc(2026, 3, 31, 15, 59), FLAT),  # 23:59 CST on the day before
        (cst(2026, 8, 15, 12), TOU_SCHED),
        (cst(2030, 1, 1), TIERED),  # the last version never ends
    ],
)
def test_version_at(at, expected):
    assert TARIFF.version_at(at) is expected


def test_effective_instants_are_utc_and_strictly_inside():
    # 2026-04-01 00:00 CST = 03-31 16:00 UTC; 2026-07-01 00:00 CST = 06-30 16:00 UTC
    got = TARIFF.effective_instants(cst(2026, 3, 1), cst(2026, 7, 1, 0, 0, 1))
    assert got == [utc(2026, 3, 31, 16), utc(2026, 6, 30, 16)]
    assert all(t.tzinfo is UTC for t in got)
    # the ends themselves are not inside
    assert TARIFF.effective_instants(cst(2026, 4, 1), cst(2026, 7, 1)) == []
    assert TARIFF.effective_instants(cst(2020, 1, 1), cst(2020, 2, 1)) == []


def test_charged_rates():
    assert FLAT.charged_rates == (Rate.TOTAL,)
    assert TOU_REG.charged_rates == TOU_RATES
    assert TOU_SCHED.charged_rates == (Rate.TOTAL,)
    assert TIERED.charged_rates == (Rate.TOTAL,)


# --- current price -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "kwargs", "expected"),
    [
        (cst(2025, 6, 1), {}, None),
        (cst(2026, 2, 1), {}, D("0.5283")),
        (cst(2026, 2, 1), {"rate": Rate.PEAK}, D("0.5283")),  # flat: the rate does not matter
        (cst(2026, 5, 1, 9), {"rate": Rate.PEAK}, D("0.9")),
        (cst(2026, 5, 1, 9), {"rate": Rate.VALLEY}, D("0.3")),
        (cst(2026, 5, 1, 9), {}, D("0.6")),  # registers, no rate: the meter's schedule is unknown -> flat rate
        (cst(2026, 8, 1, 7, 59), {}, D("0.3")),  # schedule: valley until 08:00 CST
        (cst(2026, 8, 1, 8), {}, D("0.9")),  # peak from 08:00
        (cst(2026, 8, 1, 19), {}, D("1.2")),  # sharp 18:00-20:00
        (cst(2026, 8, 1, 23, 30), {}, D("0.3")),  # valley from 22:00 through midnight
        (cst(2026, 8, 1, 19), {"rate": Rate.FLAT}, D("0.6")),  # a rate given wins over the schedule
        (cst(2026, 11, 1), {}, D("0.5283")),  # tiered, 0 kWh so far
        (cst(2026, 11, 1), {"cumulative_kwh": D("2159.99")}, D("0.5283")),
        (cst(2026, 11, 1), {"cumulative_kwh": D(2160)}, D("0.5783")),  # the kWh after 2160 is tier 2's
        (cst(2026, 11, 1), {"cumulative_kwh": D(4200)}, D("0.8283")),
        (cst(2026, 11, 1), {"cumulative_kwh": D(99999)}, D("0.8283")),
    ],
)
def test_current_price(at, kwargs, expected):
    assert TARIFF.current_price(at, **kwargs) == expected


# --- day schedule and tier periods -------------------------------------------------------------


def test_schedule_changes_skip_midnight_where_the_rate_does_not_change():
    # 2026-08-01 21:00 CST -> 08-02 09:00 CST: peak, 22:00 valley, (00:00 valley again: no change),
    # 08:00 peak.  As UTC: 22:00 CST = 14:00 UTC, 08:00 CST = 00:00 UTC.
    got = TOU_SCHED.schedule_changes(cst(2026, 8, 1, 21), cst(2026, 8, 2, 9))
    assert got == [(utc(2026, 8, 1, 14), Rate.VALLEY), (utc(2026, 8, 2, 0), Rate.PEAK)]
    # the ends are not changes
    assert TOU_SCHED.schedule_changes(cst(2026, 8, 1, 8), cst(2026, 8, 1, 12)) == []
    # three days of a 5-change-a-day schedule
    assert len(TOU_SCHED.schedule_changes(cst(2026, 8, 1, 1), cst(2026, 8, 4, 1))) == 15
    assert TOU_SCHED.schedule_rate(utc(2026, 8, 1, 15)) is Rate.VALLEY  # 23:00 CST


def test_a_schedule_of_one_rate_never_changes():
    v = TariffVersion(date(2026, 1, 1), TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE,
                      day_schedule=(TouPeriod(time(0), Rate.FLAT), TouPeriod(time(12), Rate.FLAT)))
    assert v.schedule_changes(cst(2026, 1, 1), cst(2026, 1, 9)) == []
    assert v.schedule_rate(cst(2026, 1, 5, 13)) is Rate.FLAT


@pytest.mark.parametrize(
    ("period", "at", "key", "next_start"),
    [
        # 2025-12-31 16:00 UTC is 2026-01-01 00:00 CST: already 2026
        (TierPeriod.YEAR, utc(2025, 12, 31, 16), "2026", utc(2026, 12, 31, 16)),
        (TierPeriod.YEAR, utc(2025, 12, 31, 15, 59), "2025", utc(2025, 12, 31, 16)),
        (TierPeriod.MONTH, utc(2026, 1, 31, 16), "2026-02", utc(2026, 2, 28, 16)),
        (TierPeriod.MONTH, cst(2026, 12, 15), "2026-12", utc(2026, 12, 31, 16)),
    ],
)
def test_tier_period_calendar_is_cst(period, at, key, next_start):
    assert period.key(at) == key
    assert period.next_start(at) == next_start


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive"):
        TierPeriod.YEAR.key(datetime(2026, 1, 1))


# --- problems ----------------------------------------------------------------------------------


def _v(kind: TariffKind, **kw) -> TariffVersion:
    return TariffVersion(date(2026, 1, 1), kind, **kw)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (FLAT, []),
        (TOU_REG, []),
        (TOU_SCHED, []),
        (TIERED, []),
        (_v(TariffKind.FLAT), ["a flat tariff needs a price"]),
        (_v(TariffKind.FLAT, price=D("-0.1")), ["price is negative (-0.1)"]),
        (_v(TariffKind.FLAT, price=0.5), ["price must be a Decimal, not float 0.5"]),
        (_v(TariffKind.FLAT, price=D("NaN")), ["price is NaN"]),
        (_v(TariffKind.FLAT, price=D(1), fixed_monthly=D(-5)), ["fixed_monthly is negative (-5)"]),
        (_v(TariffKind.FLAT, price=D(1), tiers=TIERED.tiers), ["tiers are set but a flat tariff does not use them"]),
        (_v(TariffKind.TOU, rate_prices={Rate.PEAK: D(1), Rate.VALLEY: D("-0.2")}),
         ["time-of-use prices missing for sharp, flat", "valley price is negative (-0.2)"]),
        (_v(TariffKind.TOU, rate_prices={**PRICES, Rate.TOTAL: D(1)}),
         ["rate_prices has total, which is not a time-of-use rate (sharp/peak/flat/valley)"]),
        (_v(TariffKind.TOU, rate_prices=PRICES, price=D(1)),
         ["price 1 is set but a tou tariff does not use it"]),
        (_v(TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE),
         ["tou_source is schedule but the day schedule is empty"]),
        (_v(TariffKind.TOU, rate_prices=PRICES, day_schedule=SCHEDULE),
         ["a day schedule is set but tou_source is registers: the meter's registers are charged"]),
        (_v(TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE,
            day_schedule=(TouPeriod(time(8), Rate.PEAK), TouPeriod(time(0), Rate.VALLEY))),
         ["day schedule starts are not in ascending order"]),
        (_v(TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE,
            day_schedule=(TouPeriod(time(0), Rate.VALLEY), TouPeriod(time(8), Rate.PEAK),
                          TouPeriod(time(8), Rate.FLAT), TouPeriod(time(12), Rate.TOTAL))),
         ["day schedule period at 12:00:00 has rate total, not a time-of-use rate",
          "day schedule has duplicate starts: 08:00:00"]),
        (_v(TariffKind.TIERED), ["a tiered tariff needs at least one tier"]),
        (_v(TariffKind.TIERED, tiers=(Tier(D(100), D("0.5")), Tier(D(50), D("0.6")), Tier(None, D("0.7")))),
         ["tier 2 ends at 50 kWh, not above the previous bound 100: tiers must be strictly ascending"]),
        (_v(TariffKind.TIERED, tiers=(Tier(D(100), D("0.5")), Tier(D(200), D("-0.6")))),
         ["tier 2 price is negative (-0.6)", "the last tier ends at 200 kWh: it must be unbounded (upto None)"]),
        (_v(TariffKind.TIERED, tiers=(Tier(None, D("0.5")), Tier(None, D("0.6")))),
         ["tier 1 is unbounded (upto None) but is not the last tier"]),
        (_v(TariffKind.TIERED, tiers=(Tier(D(0), D("0.5")), Tier(None, D("0.6")))),
         ["tier 1 ends at 0 kWh, not above the previous bound 0: tiers must be strictly ascending"]),
    ],
)
def test_version_problems(version, expected):
    assert version.problems() == expected


def test_tariff_problems_name_the_version_and_duplicates():
    bad = TariffVersion(date(2026, 3, 1), TariffKind.FLAT)
    tariff = Tariff("t", (FLAT, bad, TariffVersion(date(2026, 1, 1), TariffKind.FLAT, price=D(1))))
    assert tariff.problems() == [
        "2026-01-01: two versions take effect on the same date",
        "2026-03-01: a flat tariff needs a price",
    ]
    assert Tariff("empty", ()).problems() == ["tariff 'empty' has no versions"]
    assert TARIFF.problems() == []


def test_problems_of_an_invalid_schedule_do_not_break_construction():
    v = _v(TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE, day_schedule=("08:00",))
    assert v.problems() == ["day schedule entry 1 is not a TouPeriod with a time start: '08:00'"]


def test_schedule_time_with_zone_is_a_problem():
    tz_time = time(8, tzinfo=timezone(timedelta(hours=8)))
    v = _v(TariffKind.TOU, rate_prices=PRICES, tou_source=TouSource.SCHEDULE,
           day_schedule=(TouPeriod(time(0), Rate.VALLEY), TouPeriod(tz_time, Rate.PEAK)))
    assert v.problems() == ["day schedule start 08:00:00+08:00 carries a time zone: starts are CST local times"]


def test_config_strings_become_enums():
    v = TariffVersion(date(2026, 1, 1), "tou", rate_prices=PRICES, tou_source="schedule",
                      day_schedule=(TouPeriod(time(0), "valley"), TouPeriod(time(8), "peak")))
    assert v.kind is TariffKind.TOU and v.tou_source is TouSource.SCHEDULE
    assert v.day_schedule[1].rate is Rate.PEAK
    assert v.problems() == []
    assert TariffVersion(date(2026, 1, 1), "cheap").problems() == ["unknown tariff kind 'cheap'"]
