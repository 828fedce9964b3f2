"""Charging: hand-computed tables (the arithmetic in a comment beside each), then properties over
random reading series: charges are never positive, the kWh charged add up to the register advance,
a replay charges nothing, and one call equals the same series split over two calls.

Every test runs twice: through :func:`charge_account`, and through :class:`DistrictCharger` (a
district's pass), whose own path for the plain accounts must charge exactly the same."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterd.control.charging import (
    ChargeFlag,
    ChargeResult,
    Cursor,
    DistrictCharger,
    FlagKind,
    MeterReplacement,
    Usage,
    charge_account,
    fixed_charges,
)
from meterd.clock import CST
from meterd.control.model import EntryKind, LedgerEntry, Rate, RegisterReading
from meterd.plausibility import Rating
from meterd.control.tariff import Tariff, TariffKind, TariffVersion, Tier, TierPeriod, TouPeriod, TouSource

UTC = timezone.utc
ACC = "A1"
M1, M2 = "M1", "M2"
T, SHARP, PEAK, FLAT, VALLEY = Rate.TOTAL, Rate.SHARP, Rate.PEAK, Rate.FLAT, Rate.VALLEY


def cst(mo: int, d: int, h: int = 0, mi: int = 0, y: int = 2026) -> datetime:
    """A CST wall-clock time, as the UTC instant charging returns."""
    return datetime(y, mo, d, h, mi, tzinfo=CST).astimezone(UTC)


def rd(meter: str, rate: Rate, at: datetime, value: str) -> RegisterReading:
    return RegisterReading(meter, rate, at, D(value))


def cur(meter: str, rate: Rate, at: datetime, value: str) -> dict[tuple[str, Rate], Cursor]:
    return {(meter, rate): Cursor(meter, rate, at, D(value))}


def flat(price: str, effective: date = date(2026, 1, 1), **kw) -> TariffVersion:
    return TariffVersion(effective, TariffKind.FLAT, price=D(price), **kw)


def district_charge(account: str, tariff: Tariff, readings: Iterable[RegisterReading], cursors: Mapping,
                    usage: Mapping, *, memo: dict | None = None, as_fields: bool = False, **kw) -> ChargeResult:
    """:func:`charge_account` through :class:`DistrictCharger`: charged once to plan the deltas,
    then again on a new charger with those plans, which takes its own path where it applies."""
    readings = list(readings)
    ratings = kw.pop("ratings", {})
    planning = DistrictCharger(ratings)
    if memo is not None:
        planning.memo = memo
    planning.charge(account, tariff, readings, cursors, usage, **kw)
    charger = DistrictCharger(ratings)
    charger.memo = planning.memo
    charger.charge(account, tariff, readings, cursors, usage, **kw)
    entries, moved, usage_rows, flags = charger.take()
    assert planning.take()[0] == entries  # the same, planned or not
    return ChargeResult(entries if as_fields else [LedgerEntry(*e) for e in entries],
                        {(c.meter, c.rate): c for c in moved},
                        {period: Usage(a, period, kwh) for a, period, kwh in usage_rows}, flags)


CHARGE = charge_account  # or district_charge: see the implementation fixture


@pytest.fixture(autouse=True, params=["charge_account", "DistrictCharger"])
def implementation(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHARGE",
                        charge_account if request.param == "charge_account" else district_charge)
    return request.param


def charge(tariff: Tariff, readings: Iterable[RegisterReading], cursors=None, usage=None, **kw) -> ChargeResult:
    return CHARGE(ACC, tariff, readings, cursors or {}, usage or {}, **kw)


def table(entries: Sequence[LedgerEntry]) -> list[tuple]:
    """(meter, rate, kwh, price, amount, period_start, period_end) per entry."""
    return [(e.meter, e.rate, e.kwh, e.price, e.amount, e.period_start, e.period_end) for e in entries]


def kinds(flags: Sequence[ChargeFlag]) -> list[tuple[str, Rate, FlagKind]]:
    return [(f.meter, f.rate, f.kind) for f in flags]


FLAT_TARIFF = Tariff("flat", (flat("0.5283"),))


# --- flat, first reading, gap ------------------------------------------------------------------


def test_flat():
    readings = [
        rd(M1, T, cst(3, 1), "100.00"),  # first reading, no cursor: sets it, charges nothing
        rd(M1, T, cst(3, 2), "112.50"),
        rd(M1, T, cst(3, 3), "112.50"),  # no advance: the cursor moves, no entry
        rd(M1, T, cst(3, 4), "130.01"),
    ]
    result = charge(FLAT_TARIFF, reversed(readings))  # any order in, time order applied
    assert table(result.entries) == [
        # 112.50 - 100.00 = 12.50 kWh × 0.5283 = 6.60375 -> 6.60
        (M1, T, D("12.50"), D("0.5283"), D("-6.60"), cst(3, 1), cst(3, 2)),
        # 130.01 - 112.50 = 17.51 kWh × 0.5283 = 9.250533 -> 9.25
        (M1, T, D("17.51"), D("0.5283"), D("-9.25"), cst(3, 3), cst(3, 4)),
    ]
    first = result.entries[0]
    assert first.kind is EntryKind.CHARGE
    assert first.account == ACC
    assert first.at == first.period_end
    assert first.detail == "12.5000 kWh × 0.5283 total"
    assert first.key == "charge:M1:total:2026-02-28T16:00:00+00:00/2026-03-01T16:00:00+00:00:0"
    assert result.cursors == cur(M1, T, cst(3, 4), "130.01")
    assert result.flags == []
    assert result.usage == {}


def test_first_reading_sets_the_cursor_and_charges_nothing():
    result = charge(FLAT_TARIFF, [rd(M1, T, cst(3, 1), "42.00"), rd(M1, PEAK, cst(3, 1), "7.00")])
    assert result.entries == [] and result.flags == []
    assert result.cursors == {**cur(M1, T, cst(3, 1), "42.00"), **cur(M1, PEAK, cst(3, 1), "7.00")}


def test_gap_is_one_big_delta():
    # ten days without readings: 1100.00 - 1000.00 = 100 kWh × 0.5283 = 52.83, over the whole gap
    result = charge(FLAT_TARIFF, [rd(M1, T, cst(3, 11, 9), "1100.00")], cur(M1, T, cst(3, 1, 9), "1000.00"))
    assert table(result.entries) == [(M1, T, D("100.00"), D("0.5283"), D("-52.83"), cst(3, 1, 9), cst(3, 11, 9))]


def test_timezone_of_the_input_does_not_matter():
    # the same instants given as CST-aware datetimes: same keys, UTC instants back
    in_cst = [rd(M1, T, cst(3, 1).astimezone(CST), "1.00"), rd(M1, T, cst(3, 2).astimezone(CST), "3.00")]
    in_utc = [rd(M1, T, cst(3, 1), "1.00"), rd(M1, T, cst(3, 2), "3.00")]
    assert charge(FLAT_TARIFF, in_cst).entries == charge(FLAT_TARIFF, in_utc).entries
    cursor_in_cst = {(M1, T): Cursor(M1, T, cst(3, 1).astimezone(CST), D("1.00"))}
    assert charge(FLAT_TARIFF, in_utc[1:], cursor_in_cst).entries == charge(FLAT_TARIFF, in_utc).entries
    with pytest.raises(ValueError, match="naive"):
        charge(FLAT_TARIFF, [rd(M1, T, datetime(2026, 3, 1), "1.00")])


def test_a_tariff_with_problems_is_refused():
    with pytest.raises(ValueError, match="a flat tariff needs a price"):
        charge(Tariff("bad", (TariffVersion(date(2026, 1, 1), TariffKind.FLAT),)), [])


# --- time of use -------------------------------------------------------------------------------

PRICES = {SHARP: D("1.0276"), PEAK: D("0.8563"), FLAT: D("0.5283"), VALLEY: D("0.2803")}
TOU_REG = Tariff("tou", (TariffVersion(date(2026, 1, 1), TariffKind.TOU, rate_prices=PRICES),))


def test_tou_from_registers():
    t0, t1 = cst(3, 1), cst(3, 2)
    cursors = {}
    for rate, value in [(T, "260.00"), (SHARP, "10.00"), (PEAK, "50.00"), (FLAT, "80.00"), (VALLEY, "120.00")]:
        cursors |= cur(M1, rate, t0, value)
    readings = [rd(M1, T, t1, "281.75"), rd(M1, SHARP, t1, "12.00"), rd(M1, PEAK, t1, "55.50"),
                rd(M1, FLAT, t1, "84.25"), rd(M1, VALLEY, t1, "130.00")]
    result = charge(TOU_REG, readings, cursors)
    # readings of one instant are taken in register order: flat, peak, sharp, total, valley
    assert table(result.entries) == [
        (M1, FLAT, D("4.25"), D("0.5283"), D("-2.25"), t0, t1),  # 4.25 × 0.5283 = 2.245275 -> 2.25
        (M1, PEAK, D("5.50"), D("0.8563"), D("-4.71"), t0, t1),  # 5.5 × 0.8563 = 4.70965 -> 4.71
        (M1, SHARP, D("2.00"), D("1.0276"), D("-2.06"), t0, t1),  # 2 × 1.0276 = 2.0552 -> 2.06
        (M1, VALLEY, D("10.00"), D("0.2803"), D("-2.80"), t0, t1),  # 10 × 0.2803 = 2.803 -> 2.80
    ]  # TOTAL advanced 21.75 kWh: its cursor moves, but a registers tariff does not charge it
    assert result.cursors[(M1, T)] == Cursor(M1, T, t1, D("281.75"))
    assert len(result.cursors) == 5
    assert result.entries[1].detail == "5.5000 kWh × 0.8563 peak"


SCHED_PRICES = {SHARP: D("1.2"), PEAK: D("0.9"), FLAT: D("0.6"), VALLEY: D("0.3")}
# 00:00 valley, 08:00 peak, 12:00 flat, 18:00 sharp, 20:00 peak, 22:00 valley (through midnight)
SCHEDULE = (
    TouPeriod(time(0), VALLEY),
    TouPeriod(time(8), PEAK),
    TouPeriod(time(12), FLAT),
    TouPeriod(time(18), SHARP),
    TouPeriod(time(20), PEAK),
    TouPeriod(time(22), VALLEY),
)
TOU_SCHED = Tariff("tou-schedule", (TariffVersion(date(2026, 1, 1), TariffKind.TOU, rate_prices=SCHED_PRICES,
                                                  tou_source=TouSource.SCHEDULE, day_schedule=SCHEDULE),))


def test_tou_from_a_day_schedule_splits_an_interval_across_periods():
    # 07:00 -> 13:00 CST, 12 kWh on TOTAL, 2 kWh an hour:
    #   07-08 valley 1 h = 2 kWh × 0.3 = 0.60;  08-12 peak 4 h = 8 kWh × 0.9 = 7.20;
    #   12-13 flat 1 h = 2 kWh × 0.6 = 1.20
    result = charge(TOU_SCHED, [rd(M1, T, cst(3, 1, 13), "1012.00")], cur(M1, T, cst(3, 1, 7), "1000.00"))
    assert table(result.entries) == [
        (M1, VALLEY, D("2.0000"), D("0.3"), D("-0.60"), cst(3, 1, 7), cst(3, 1, 8)),
        (M1, PEAK, D("8.0000"), D("0.9"), D("-7.20"), cst(3, 1, 8), cst(3, 1, 12)),
        (M1, FLAT, D("2.0000"), D("0.6"), D("-1.20"), cst(3, 1, 12), cst(3, 1, 13)),
    ]
    # the key names the register (TOTAL), the entry the TOU rate it was priced at
    assert [e.key[-7:] for e in result.entries] == ["00:00:0", "00:00:1", "00:00:2"]
    assert all(":total:" in e.key for e in result.entries)


def test_tou_schedule_rounding_and_midnight():
    # 21:00 -> 09:00 next day (12 h), 1.00 kWh: peak 21-22 (1 h), valley 22-08 (10 h; 00:00 is no
    # boundary: valley on both sides), peak 08-09 (1 h).  Cumulative at 22:00: 1/12 = 0.08333 -> 0.0833;
    # at 08:00: 11/12 = 0.91667 -> 0.9167.  Pieces 0.0833, 0.8334, 0.0833 (sum 1.0000).
    #   0.0833 × 0.9 = 0.07497 -> 0.07;  0.8334 × 0.3 = 0.25002 -> 0.25
    result = charge(TOU_SCHED, [rd(M1, T, cst(3, 2, 9), "11.00")], cur(M1, T, cst(3, 1, 21), "10.00"))
    assert table(result.entries) == [
        (M1, PEAK, D("0.0833"), D("0.9"), D("-0.07"), cst(3, 1, 21), cst(3, 1, 22)),
        (M1, VALLEY, D("0.8334"), D("0.3"), D("-0.25"), cst(3, 1, 22), cst(3, 2, 8)),
        (M1, PEAK, D("0.0833"), D("0.9"), D("-0.07"), cst(3, 2, 8), cst(3, 2, 9)),
    ]


# --- tiers -------------------------------------------------------------------------------------


def test_tiers_by_year_across_two_meters():
    tariff = Tariff("tiered", (TariffVersion(date(2026, 1, 1), TariffKind.TIERED, tiers=(
        Tier(D(100), D("0.5")), Tier(D(200), D("0.7")), Tier(None, D("1.0")))),))
    cursors = cur(M1, T, cst(3, 1), "500.00") | cur(M2, T, cst(3, 1), "40.00")
    usage = {"2026": Usage(ACC, "2026", D(90))}
    readings = [rd(M2, T, cst(3, 3), "140.00"), rd(M1, T, cst(3, 2), "520.00")]
    result = charge(tariff, readings, cursors, usage)
    assert table(result.entries) == [
        # M1 first (its reading is earlier): 20 kWh over 24 h from 90 used: 10 kWh reach 100 (tier 1),
        # 10 kWh at tier 2.  Uniform use: 10/20 of 24 h -> split at 12:00.  10 × 0.5 = 5.00, 10 × 0.7 = 7.00
        (M1, T, D("10"), D("0.5"), D("-5.00"), cst(3, 1), cst(3, 1, 12)),
        (M1, T, D("10.00"), D("0.7"), D("-7.00"), cst(3, 1, 12), cst(3, 2)),
        # M2: 100 kWh over 48 h from 110 used: 90 reach 200 (tier 2), 10 at tier 3.
        # 90/100 of 48 h = 43.2 h = 43 h 12 min -> 03-02 19:12.  90 × 0.7 = 63.00, 10 × 1.0 = 10.00
        (M2, T, D("90"), D("0.7"), D("-63.00"), cst(3, 1), cst(3, 2, 19, 12)),
        (M2, T, D("10.00"), D("1.0"), D("-10.00"), cst(3, 2, 19, 12), cst(3, 3)),
    ]
    assert [e.detail for e in result.entries[:2]] == ["10.0000 kWh × 0.5 tier 1 (2026)",
                                                      "10.0000 kWh × 0.7 tier 2 (2026)"]
    assert result.usage == {"2026": Usage(ACC, "2026", D("210.00"))}  # 90 + 20 + 100


def test_tiers_by_year_split_at_new_year_cst():
    tariff = Tariff("tiered", (TariffVersion(date(2025, 1, 1), TariffKind.TIERED, tiers=(
        Tier(D(100), D("0.5")), Tier(None, D("0.7")))),))
    usage = {"2025": Usage(ACC, "2025", D(95))}
    # 2025-12-31 12:00 -> 2026-01-01 12:00 CST, 24 kWh: 12 kWh in 2025, 12 in 2026 (from 0).
    # 2025 from 95 used: 5 kWh to 100 (5/12 of 12 h = 5 h -> 17:00), 7 at 0.7.
    #   5 × 0.5 = 2.50;  7 × 0.7 = 4.90;  12 × 0.5 = 6.00
    result = charge(tariff, [rd(M1, T, cst(1, 1, 12), "24.00")], cur(M1, T, cst(12, 31, 12, y=2025), "0.00"), usage)
    assert table(result.entries) == [
        (M1, T, D("5"), D("0.5"), D("-2.50"), cst(12, 31, 12, y=2025), cst(12, 31, 17, y=2025)),
        (M1, T, D("7.0000"), D("0.7"), D("-4.90"), cst(12, 31, 17, y=2025), cst(1, 1)),
        (M1, T, D("12.00"), D("0.5"), D("-6.00"), cst(1, 1), cst(1, 1, 12)),
    ]
    assert result.usage == {"2025": Usage(ACC, "2025", D("107.0000")), "2026": Usage(ACC, "2026", D("12.00"))}


def test_tiers_by_month_split_at_the_month_and_at_the_step():
    tariff = Tariff("tiered-month", (TariffVersion(date(2026, 1, 1), TariffKind.TIERED, tier_period=TierPeriod.MONTH,
                                                   tiers=(Tier(D(50), D("0.5")), Tier(None, D("0.8")))),))
    cursors = cur(M1, T, cst(3, 31), "0.00") | cur(M2, T, cst(4, 1), "10.00")
    usage = {"2026-03": Usage(ACC, "2026-03", D(40))}
    readings = [rd(M1, T, cst(4, 2), "48.00"), rd(M2, T, cst(4, 3), "40.00")]
    result = charge(tariff, readings, cursors, usage)
    assert table(result.entries) == [
        # M1 48 kWh over 48 h, split at 04-01 00:00 CST: 24 kWh in March, 24 in April.
        # March from 40 used: 10 kWh to 50 (tier 1; 10/24 of 24 h = 10:00), 14 at tier 2.
        (M1, T, D("10"), D("0.5"), D("-5.00"), cst(3, 31), cst(3, 31, 10)),  # 10 × 0.5
        (M1, T, D("14.0000"), D("0.8"), D("-11.20"), cst(3, 31, 10), cst(4, 1)),  # 14 × 0.8
        (M1, T, D("24.00"), D("0.5"), D("-12.00"), cst(4, 1), cst(4, 2)),  # April from 0: 24 × 0.5
        # M2 30 kWh over 48 h, April from 24 used: 26 kWh to 50 (26/30 of 48 h = 41.6 h -> 04-02 17:36),
        # 4 at tier 2.  26 × 0.5 = 13.00, 4 × 0.8 = 3.20
        (M2, T, D("26.00"), D("0.5"), D("-13.00"), cst(4, 1), cst(4, 2, 17, 36)),
        (M2, T, D("4.00"), D("0.8"), D("-3.20"), cst(4, 2, 17, 36), cst(4, 3)),
    ]
    assert result.usage == {
        "2026-03": Usage(ACC, "2026-03", D("64.0000")),  # 40 + 24
        "2026-04": Usage(ACC, "2026-04", D("54.00")),  # 24 + 30
    }


# --- tariff versions ---------------------------------------------------------------------------


def test_price_change_mid_delta_is_split_at_the_effective_instant():
    tariff = Tariff("flat", (flat("0.5"), flat("0.6", date(2026, 4, 1))))
    # 03-31 16:00 -> 04-01 09:00 CST (17 h), 10 kWh; the new price from 04-01 00:00 CST, 8 h in:
    #   8/17 × 10 = 4.70588 -> 4.7059 at 0.5 = 2.35295 -> 2.35;  5.2941 at 0.6 = 3.17646 -> 3.18
    result = charge(tariff, [rd(M1, T, cst(4, 1, 9), "110.00")], cur(M1, T, cst(3, 31, 16), "100.00"))
    assert table(result.entries) == [
        (M1, T, D("4.7059"), D("0.5"), D("-2.35"), cst(3, 31, 16), cst(4, 1)),
        (M1, T, D("5.2941"), D("0.6"), D("-3.18"), cst(4, 1), cst(4, 1, 9)),
    ]


def test_a_new_version_that_charges_other_registers():
    # flat until 04-01, TOU from registers after.  12 h either side of 04-01 00:00 CST.
    tariff = Tariff("switch", (flat("0.5"), TariffVersion(date(2026, 4, 1), TariffKind.TOU, rate_prices=PRICES)))
    cursors = cur(M1, T, cst(3, 31, 12), "100.00") | cur(M1, PEAK, cst(3, 31, 12), "40.00")
    readings = [rd(M1, T, cst(4, 1, 12), "120.00"), rd(M1, PEAK, cst(4, 1, 12), "46.00")]
    result = charge(tariff, readings, cursors)
    assert table(result.entries) == [
        # PEAK 6 kWh: the March half (3 kWh) is under the flat version, which does not charge PEAK;
        # the April half 3 × 0.8563 = 2.5689 -> 2.57.  It is the delta's second piece: n = 1.
        (M1, PEAK, D("3.0000"), D("0.8563"), D("-2.57"), cst(4, 1), cst(4, 1, 12)),
        # TOTAL 20 kWh: March half 10 × 0.5 = 5.00; the April half is not charged (TOU registers)
        (M1, T, D("10.0000"), D("0.5"), D("-5.00"), cst(3, 31, 12), cst(4, 1)),
    ]
    assert result.entries[0].key.endswith(":0")  # n counts entries of the delta


def test_no_tariff_before_the_first_version():
    tariff = Tariff("late-start", (flat("0.5", date(2026, 3, 1)),))
    # 02-28 12:00 -> 03-01 12:00 CST, 24 kWh: the first 12 h have no tariff (12 kWh not charged),
    # the last 12 h 12 × 0.5 = 6.00.  PEAK is not charged by a flat tariff: no flag for it.
    cursors = cur(M1, T, cst(2, 28, 12), "0.00") | cur(M1, PEAK, cst(2, 28, 12), "0.00")
    readings = [rd(M1, T, cst(3, 1, 12), "24.00"), rd(M1, PEAK, cst(3, 1, 12), "5.00")]
    result = charge(tariff, readings, cursors)
    assert table(result.entries) == [(M1, T, D("12.0000"), D("0.5"), D("-6.00"), cst(3, 1), cst(3, 1, 12))]
    assert kinds(result.flags) == [(M1, T, FlagKind.NO_TARIFF)]
    assert result.flags[0].detail.startswith("12.0000 kWh over")
    assert result.cursors[(M1, T)].value == D("24.00")  # the cursor advances all the same
    # entirely before the tariff: flagged, cursor advanced, nothing charged
    early = charge(tariff, [rd(M1, T, cst(2, 10), "9.00")], cur(M1, T, cst(2, 1), "1.00"))
    assert early.entries == [] and kinds(early.flags) == [(M1, T, FlagKind.NO_TARIFF)]
    assert early.cursors == cur(M1, T, cst(2, 10), "9.00")


# --- register trouble --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("multiplier", "before", "after", "kwh", "flag"),
    [
        # span = 10^6 × 40 = 4 × 10^7 primary kWh: 25 + 40 000 000 - 39 999 990 = 35 kWh
        (D(40), "39999990.00", "25.00", D("35.00"), FlagKind.ROLLOVER),
        # no multiplier, span 10^6: 5 + 1 000 000 - 999 990 = 15 kWh
        (None, "999990.00", "5.00", D("15.00"), FlagKind.ROLLOVER),
        # fell 600 000: more than half of 10^6 but less than half of 4 × 10^7 -> not a rollover
        (D(40), "700000.00", "100000.00", None, FlagKind.NEGATIVE_DELTA),
        (None, "1000.00", "990.00", None, FlagKind.NEGATIVE_DELTA),
    ],
)
def test_rollover_and_negative_delta(multiplier, before, after, kwh, flag):
    multipliers = {M1: multiplier} if multiplier else {}
    result = charge(FLAT_TARIFF, [rd(M1, T, cst(3, 2), after)], cur(M1, T, cst(3, 1), before),
                    multipliers=multipliers)
    assert kinds(result.flags) == [(M1, T, flag)]
    if kwh is None:  # not charged, not credited, the cursor stays
        assert result.entries == [] and result.cursors == {}
    else:
        assert [e.kwh for e in result.entries] == [kwh]
        assert result.cursors == cur(M1, T, cst(3, 2), after)


def test_after_a_negative_delta_the_next_reading_charges_from_the_kept_cursor():
    readings = [rd(M1, T, cst(3, 2), "499.50"), rd(M1, T, cst(3, 3), "510.00")]
    result = charge(FLAT_TARIFF, readings, cur(M1, T, cst(3, 1), "500.00"))
    # 510.00 - 500.00 = 10 kWh over 03-01 -> 03-03; 10 × 0.5283 = 5.283 -> 5.28
    assert table(result.entries) == [(M1, T, D("10.00"), D("0.5283"), D("-5.28"), cst(3, 1), cst(3, 3))]
    assert kinds(result.flags) == [(M1, T, FlagKind.NEGATIVE_DELTA)]


def test_late_duplicate_and_conflicting_readings():
    readings = [
        rd(M1, T, cst(3, 1), "190.00"),  # older than the cursor: LATE
        rd(M1, T, cst(3, 2), "200.00"),  # the cursor itself again: silently ignored
        rd(M1, T, cst(3, 2), "201.00"),  # same instant, other value: DUPLICATE_CONFLICT
        rd(M1, T, cst(3, 3), "210.00"),
        rd(M1, T, cst(3, 3), "210.00"),  # delivered twice in one batch: charged once
    ]
    result = charge(FLAT_TARIFF, readings, cur(M1, T, cst(3, 2), "200.00"))
    # 10 kWh × 0.5283 = 5.283 -> 5.28
    assert table(result.entries) == [(M1, T, D("10.00"), D("0.5283"), D("-5.28"), cst(3, 2), cst(3, 3))]
    assert [(f.kind, f.at) for f in result.flags] == [(FlagKind.LATE, cst(3, 1)),
                                                       (FlagKind.DUPLICATE_CONFLICT, cst(3, 2))]


# --- meter replacement -------------------------------------------------------------------------

SWAP = MeterReplacement("swap-1", ACC, M1, M2, cst(3, 2, 12), {T: D("1013.00")}, {T: D("0.50")})


def test_replacement():
    readings = [
        rd(M1, T, cst(3, 2), "1010.00"),
        rd(M1, T, cst(3, 2, 18), "1014.00"),  # the old meter after its replacement: LATE
        rd(M2, T, cst(3, 3), "5.50"),
    ]
    result = charge(FLAT_TARIFF, readings, cur(M1, T, cst(3, 1), "1000.00"), replacements=[SWAP])
    assert table(result.entries) == [
        (M1, T, D("10.00"), D("0.5283"), D("-5.28"), cst(3, 1), cst(3, 2)),  # 10 × 0.5283 = 5.283
        # old final 1013.00 - 1010.00 = 3 kWh up to the replacement: 3 × 0.5283 = 1.5849 -> 1.58
        (M1, T, D("3.00"), D("0.5283"), D("-1.58"), cst(3, 2), cst(3, 2, 12)),
        # new meter from its initial 0.50: 5.50 - 0.50 = 5 kWh × 0.5283 = 2.6415 -> 2.64
        (M2, T, D("5.00"), D("0.5283"), D("-2.64"), cst(3, 2, 12), cst(3, 3)),
    ]
    assert [(f.meter, f.kind, f.at) for f in result.flags] == [
        (M1, FlagKind.REPLACEMENT, cst(3, 2, 12)),
        (M1, FlagKind.LATE, cst(3, 2, 18)),
    ]
    assert "replaced by M2 (swap-1)" in result.flags[0].detail
    assert result.cursors == cur(M1, T, cst(3, 2, 12), "1013.00") | cur(M2, T, cst(3, 3), "5.50")
    # applying the same batch again with the new cursors: nothing charged, no second REPLACEMENT
    again = charge(FLAT_TARIFF, readings, result.cursors, replacements=[SWAP])
    assert again.entries == [] and again.cursors == {}
    assert FlagKind.REPLACEMENT not in {f.kind for f in again.flags}


def test_replacement_of_a_meter_never_read_and_a_new_meter_read_at_the_instant():
    readings = [rd(M2, T, cst(3, 2, 12), "0.50"), rd(M2, T, cst(3, 2, 13), "1.50")]
    other = MeterReplacement("swap-x", "OTHER", "M8", "M9", cst(3, 2, 12), {T: D(1)}, {T: D(0)})
    result = charge(FLAT_TARIFF, readings, {}, replacements=[SWAP, other])  # other accounts ignored
    # no old cursor: nothing to charge.  The new meter's reading at the instant equals its initial
    # value (a duplicate); one hour later 1 kWh × 0.5283 = 0.5283 -> 0.53
    assert table(result.entries) == [(M2, T, D("1.00"), D("0.5283"), D("-0.53"), cst(3, 2, 12), cst(3, 2, 13))]
    assert kinds(result.flags) == [(M1, T, FlagKind.REPLACEMENT)]
    assert result.cursors[(M1, T)] == Cursor(M1, T, cst(3, 2, 12), D("1013.00"))


# --- fixed monthly charges ---------------------------------------------------------------------


def test_fixed_charges():
    tariff = Tariff("fixed", (flat("0.5", date(2025, 12, 15), fixed_monthly=D("10.00")),
                              flat("0.5", date(2026, 3, 1), fixed_monthly=D("12.345")),
                              flat("0.5", date(2026, 5, 1))))
    # months starting in (2025-11-01, 2026-06-01] CST: Dec 1 is before the first version (none),
    # Jan, Feb at 10.00; Mar, Apr at 12.345 -> 12.35 (half up); May, Jun at 0 (none)
    got = fixed_charges(ACC, tariff, cst(11, 1, y=2025), cst(6, 1))
    assert [(e.key, e.amount, e.at, e.period_end) for e in got] == [
        ("fixed:A1:2026-01", D("-10.00"), cst(1, 1), cst(2, 1)),
        ("fixed:A1:2026-02", D("-10.00"), cst(2, 1), cst(3, 1)),
        ("fixed:A1:2026-03", D("-12.35"), cst(3, 1), cst(4, 1)),
        ("fixed:A1:2026-04", D("-12.35"), cst(4, 1), cst(5, 1)),
    ]
    assert all(e.kind is EntryKind.FIXED and e.account == ACC for e in got)
    # (start, end]: a month starting exactly at start is not in, one starting exactly at end is
    assert [e.key for e in fixed_charges(ACC, tariff, cst(1, 1), cst(2, 1))] == ["fixed:A1:2026-02"]
    assert fixed_charges(ACC, tariff, cst(1, 1), cst(1, 31)) == []


# --- properties --------------------------------------------------------------------------------

PROPERTY_TARIFFS = [
    Tariff("flat+change", (flat("0.5283", date(2025, 12, 1)), flat("0.6123", date(2026, 1, 10)))),
    Tariff("schedule", (TariffVersion(date(2025, 12, 1), TariffKind.TOU, rate_prices=SCHED_PRICES,
                                      tou_source=TouSource.SCHEDULE, day_schedule=SCHEDULE),)),
    Tariff("tiered-year", (TariffVersion(date(2025, 12, 1), TariffKind.TIERED, tiers=(
        Tier(D(30), D("0.51")), Tier(D(80), D("0.63")), Tier(None, D("0.99")))),)),
    Tariff("tiered-month+flat", (
        TariffVersion(date(2025, 12, 1), TariffKind.TIERED, tier_period=TierPeriod.MONTH,
                      tiers=(Tier(D(20), D("0.4")), Tier(None, D("0.7")))),
        flat("0.55", date(2026, 1, 20)),
    )),
]
START = cst(12, 20, y=2025)


@st.composite
def series(draw) -> list[RegisterReading]:
    """TOTAL readings of one or two meters, non-decreasing, over a few weeks across a year end,
    with duplicate deliveries; sorted as charging orders them (time, meter, register, value)."""
    out: list[RegisterReading] = []
    for meter in draw(st.sampled_from([(M1,), (M1, M2)])):
        at, value = START, D(draw(st.integers(0, 10_000)))
        for _ in range(draw(st.integers(1, 8))):
            minutes = draw(st.integers(0, 6 * 24 * 60))
            if minutes:  # else the same reading delivered again
                at += timedelta(minutes=minutes)
                # at most 1 kWh a minute: 60 kW, within what the default rating can carry
                value += D(draw(st.integers(0, min(5_000, 100 * minutes)))) / 100
            out.append(RegisterReading(meter, T, at, value))
    return sorted(out, key=lambda r: (r.at, r.meter, r.rate, r.value))


def merged(result: ChargeResult, cursors: Mapping, usage: Mapping) -> tuple[dict, dict]:
    return {**cursors, **result.cursors}, {**usage, **result.usage}


PROPERTY = settings(max_examples=100, deadline=None,  # the implementation fixture only picks a function
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@PROPERTY
@given(st.sampled_from(PROPERTY_TARIFFS), series())
def test_charges_are_never_positive_and_add_up_to_the_register_advance(tariff, readings):
    result = charge(tariff, readings)
    assert all(e.amount <= 0 and e.kwh > 0 for e in result.entries)
    assert all(e.period_start <= e.period_end == e.at for e in result.entries)
    assert len({e.key for e in result.entries}) == len(result.entries)
    for meter in {r.meter for r in readings}:
        values = [r.value for r in readings if r.meter == meter]
        assert sum(e.kwh for e in result.entries if e.meter == meter) == values[-1] - values[0]


@PROPERTY
@given(st.sampled_from(PROPERTY_TARIFFS), series(), st.data())
def test_a_replayed_prefix_charges_nothing(tariff, readings, data):
    prefix = readings[:data.draw(st.integers(0, len(readings)))]
    first = charge(tariff, prefix)
    cursors, usage = merged(first, {}, {})
    again = charge(tariff, prefix, cursors, usage)
    assert again.entries == [] and again.cursors == {} and again.usage == {}
    assert {f.kind for f in again.flags} <= {FlagKind.LATE}


@PROPERTY
@given(st.sampled_from(PROPERTY_TARIFFS), series(), st.data())
def test_one_call_equals_two_consecutive_calls(tariff, readings, data):
    cut = data.draw(st.integers(0, len(readings)))
    whole = charge(tariff, readings)
    head = charge(tariff, readings[:cut])
    cursors, usage = merged(head, {}, {})
    tail = charge(tariff, readings[cut:], cursors, usage)
    assert head.entries + tail.entries == whole.entries
    assert merged(tail, cursors, usage) == merged(whole, {}, {})


# --- a district's pass: a shared memo and entries as field tuples change nothing ----------------------

def test_a_shared_memo_and_field_tuples_charge_exactly_the_same():
    tiered = Tariff("tiered", (TariffVersion(date(2026, 1, 1), TariffKind.TIERED, tier_period=TierPeriod.MONTH,
                                             tiers=(Tier(D(100), D("0.5")), Tier(None, D("0.8")))),))
    changing = Tariff("changing", (flat("0.5"), TariffVersion(date(2026, 4, 1), TariffKind.TOU, rate_prices=PRICES)))
    late = Tariff("late-start", (flat("0.5", date(2026, 3, 1)),))
    t0, t1 = cst(3, 31, 12), cst(4, 1, 12)  # across a version change, a month start (tiers), a schedule
    cases = []
    for tariff in (FLAT_TARIFF, TOU_REG, TOU_SCHED, tiered, changing, late):
        for register in (T, SHARP, PEAK, FLAT, VALLEY):
            cases.append((tariff, [rd(M1, register, t1, "180.50"), rd(M2, register, t1, "7.25")],
                          cur(M1, register, t0, "100.00") | cur(M2, register, cst(2, 27), "1.00"),
                          {"2026-03": Usage(ACC, "2026-03", D("95"))}))
    memo: dict = {}
    for _ in range(2):  # the second round finds every plan in the memo
        for tariff, readings, cursors, usage in cases:
            plain = charge(tariff, readings, cursors, usage)
            fast = charge(tariff, readings, cursors, usage, memo=memo, as_fields=True)
            assert [LedgerEntry(*fields) for fields in fast.entries] == plain.entries
            assert (fast.cursors, fast.usage, fast.flags) == (plain.cursors, plain.usage, plain.flags)
    assert memo  # and it was used


def test_a_district_charger_charges_the_plain_accounts_itself(monkeypatch, implementation):
    if implementation != "charge_account":
        pytest.skip("one run is enough")
    tiered = Tariff("tiered", (TariffVersion(date(2026, 1, 1), TariffKind.TIERED, tier_period=TierPeriod.MONTH,
                                             tiers=(Tier(D(100), D("0.5")), Tier(None, D("0.8")))),))
    t0, t1 = cst(3, 10), cst(3, 11)
    march = {"2026-03": Usage("", "2026-03", D("10"))}
    near_the_step = {"2026-03": Usage("", "2026-03", D("95"))}
    accounts = [  # (account, tariff, readings, cursors, usage, plain)
        ("flat", FLAT_TARIFF, [rd("F", T, t1, "112.50")], cur("F", T, t0, "100.00"), {}, True),
        ("tou", TOU_REG, [rd("R", r, t1, v) for r, v in ((SHARP, "3.5"), (PEAK, "7"), (FLAT, "12"), (VALLEY, "20"))],
         {k: c for r in (SHARP, PEAK, FLAT, VALLEY) for k, c in cur("R", r, t0, "1.25").items()}, {}, True),
        ("tiered", tiered, [rd("T1", T, t1, "30"), rd("T2", T, t1, "50")],  # two meters, one step, in order
         cur("T1", T, t0, "20") | cur("T2", T, t0, "45"), march, True),
        ("crossing", tiered, [rd("X", T, t1, "30")], cur("X", T, t0, "20"), near_the_step, False),
        ("still", FLAT_TARIFF, [rd("S", T, t1, "100.00")], cur("S", T, t0, "100.00"), {}, True),
        ("new", FLAT_TARIFF, [rd("N", T, t1, "5")], {}, {}, False),  # no cursor yet
        ("late", FLAT_TARIFF, [rd("L", T, t0, "5")], cur("L", T, t1, "4"), {}, False),
        ("twice", FLAT_TARIFF, [rd("W", T, t1, "7"), rd("W", T, t1 + timedelta(hours=1), "8")],
         cur("W", T, t0, "5"), {}, False),
    ]
    expected = [charge_account(a, t, r, c, u) for a, t, r, c, u, _ in accounts]
    charger = DistrictCharger()
    for a, t, r, c, u, _ in accounts:  # plans every delta
        charger.charge(a, t, r, c, u)
    assert [LedgerEntry(*e) for e in charger.take()[0]] == [e for x in expected for e in x.entries]

    general: list[str] = []

    def counted(account, *args, **kw):
        general.append(account)
        return charge_account(account, *args, **kw)

    monkeypatch.setattr(sys.modules[DistrictCharger.__module__], "charge_account", counted)
    for a, t, r, c, u, _ in accounts:
        charger.charge(a, t, r, c, u)
    entries, moved, usage_rows, flags = charger.take()
    assert general == [a for a, *_, plain in accounts if not plain]
    assert [LedgerEntry(*e) for e in entries] == [e for x in expected for e in x.entries]
    assert moved == [c for x in expected for c in x.cursors.values()]
    assert usage_rows == [(a, u.period, u.kwh) for (a, *_), x in zip(accounts, expected) for u in x.usage.values()]
    assert flags == [f for x in expected for f in x.flags]
    # hand-checked, the plain ones: 12.50 kWh × 0.5283 = 6.60375 -> 6.60; tiers: 10 + 10 + 5 kWh, below 100
    assert table(expected[0].entries) == [("F", T, D("12.50"), D("0.5283"), D("-6.60"), t0, t1)]
    assert [e.amount for e in expected[2].entries] == [D("-5.00"), D("-2.50")]
    assert expected[2].usage["2026-03"].kwh == D("25")
    assert expected[4].entries == [] and expected[4].cursors[("S", T)].at == t1


# --- plausibility (issue 14): nothing impossible is charged ------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "3.4028234663852886E+38", "1E+30", "1E+16",
                                   "1000000", "-1"])
def test_a_value_that_is_no_register_value_is_flagged_never_charged_and_never_a_cursor(value):
    t0, t1 = cst(11, 2, 10), cst(11, 2, 10, 15)
    start = cur(M1, T, t0, "1000")
    result = charge(FLAT_TARIFF, [rd(M1, T, t1, value)], start)
    assert result.entries == [] and result.cursors == {}
    assert kinds(result.flags) == [(M1, T, FlagKind.IMPLAUSIBLE)]
    # the next good reading charges from the old cursor, as if the absurd one had never come
    after = charge(FLAT_TARIFF, [rd(M1, T, t1, value), rd(M1, T, cst(11, 2, 10, 30), "1002")], start)
    assert sum(e.kwh for e in after.entries) == D(2)


def test_an_advance_beyond_what_the_meter_can_carry_is_held_and_charging_resumes_from_the_cursor():
    t0 = cst(11, 2, 10)
    start = cur(M1, T, t0, "1000")
    # default rating 3 x 220 V x 100 A x 1.2 = 79.2 kW: 19.8 kWh in 15 minutes, + 2 register steps
    limit = D("19.8") + D("0.02")
    at_limit = charge(FLAT_TARIFF, [rd(M1, T, cst(11, 2, 10, 15), str(1000 + limit))], start)
    assert sum(e.kwh for e in at_limit.entries) == limit and at_limit.flags == []
    over = charge(FLAT_TARIFF, [rd(M1, T, cst(11, 2, 10, 15), str(1000 + limit + D("0.01")))], start)
    assert over.entries == [] and over.cursors == {} and kinds(over.flags) == [(M1, T, FlagKind.IMPLAUSIBLE)]
    assert "more than the meter can carry" in over.flags[0].detail
    # a spike, then the register where it should be: the spike is held, the real use charged
    spike = charge(FLAT_TARIFF, [rd(M1, T, cst(11, 2, 10, 15), "500000"), rd(M1, T, cst(11, 2, 10, 30), "1005")],
                   start)
    assert sum(e.kwh for e in spike.entries) == D(5)
    assert kinds(spike.flags) == [(M1, T, FlagKind.IMPLAUSIBLE)]


def test_the_meters_rating_and_multiplier_set_what_it_can_carry():
    t0, t1 = cst(11, 2, 10), cst(11, 2, 11)  # one hour
    start = cur(M1, T, t0, "1000")
    small = {M1: Rating(rated_current=D(60), phases=1)}  # 60 A x 220 V x 1.2 = 15.84 kW
    held = charge(FLAT_TARIFF, [rd(M1, T, t1, "1016")], start, ratings=small)
    assert kinds(held.flags) == [(M1, T, FlagKind.IMPLAUSIBLE)] and held.entries == []
    fine = charge(FLAT_TARIFF, [rd(M1, T, t1, "1015.8")], start, ratings=small)
    assert sum(e.kwh for e in fine.entries) == D("15.8")
    # a CT of 50: 50 x 79.2 kW = 3960 kW
    big = charge(FLAT_TARIFF, [rd(M1, T, t1, "4900")], start, multipliers={M1: D(50)})
    assert sum(e.kwh for e in big.entries) == D(3900) and big.flags == []


def test_an_absurd_rollover_is_not_charged():
    # a glitch to 0 from high up the register looks like a rollover of ~400,000 kWh in 15 minutes
    start = cur(M1, T, cst(11, 2, 10), "600000")
    result = charge(FLAT_TARIFF, [rd(M1, T, cst(11, 2, 10, 15), "0")], start)
    assert result.entries == [] and kinds(result.flags) == [(M1, T, FlagKind.IMPLAUSIBLE)]
    # a real rollover over a plausible interval still charges
    real = charge(FLAT_TARIFF, [rd(M1, T, cst(11, 2, 10, 15), "2")], cur(M1, T, cst(11, 2, 10), "999995"))
    assert sum(e.kwh for e in real.entries) == D(7) and kinds(real.flags) == [(M1, T, FlagKind.ROLLOVER)]
