"""Energy by industry, group and unit; calendar periods; summed load curves aligned to CST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.analytics.stats import energy_by, load_curve, periods
from meterd.analytics.topology import Point, Role, Topology, Unit
from meterd.clock import CST

D = date(2024, 5, 1)
D1 = D + timedelta(days=1)
DEC = Decimal


def topology() -> Topology:
    return Topology.of(
        [Unit("L1", "line"), Unit("A1", "area", parent="L1"), Unit("A2", "area", parent="L1")],
        [
            Point("H", "L1", Role.SUPPLY),
            Point("S1", "L1", Role.SALES, industry="utility"),
            Point("S1", "A1", Role.SUPPLY, industry="utility"),  # same meter, second unit
            Point("R1", "A1", Role.SALES, industry="resident", groups=("north",)),
            Point("R2", "A1", Role.SALES, industry="resident", groups=("north", "key")),
            Point("F1", "A2", Role.SALES, industry="factory", groups=("key",), multiplier=DEC(10)),
            Point("S2", "A2", Role.SUPPLY),
            Point("E1", "A2", Role.SALES, industry="resident"),  # estimated
            Point("M1", "A2", Role.SALES, industry="resident"),  # missing
        ],
    )


REGISTERS = {
    ("H", D): (DEC(0), False), ("H", D1): (DEC(700), False),
    ("S1", D): (DEC(0), False), ("S1", D1): (DEC(330), False),
    ("R1", D): (DEC("10.5"), False), ("R1", D1): (DEC("110.5"), False),  # 100
    ("R2", D): (DEC(0), False), ("R2", D1): (DEC("200.25"), False),  # 200.25
    ("F1", D): (DEC(1), False), ("F1", D1): (DEC(31), False),  # 30 x 10 = 300
    ("S2", D): (DEC(0), False), ("S2", D1): (DEC(360), False),
    ("E1", D): (DEC(0), False), ("E1", D1): (DEC(40), True),  # 40, estimated
    ("M1", D): (DEC(0), False),
}


def test_energy_by_industry() -> None:
    got = energy_by(topology(), REGISTERS, D, D, "industry")
    # S1 is a point of two units but one meter: counted once for its industry
    assert got == {"factory": DEC(300), "resident": DEC("300.25"), "utility": DEC(330)}
    with_estimates = energy_by(topology(), REGISTERS, D, D, "industry", include_estimated=True)
    assert with_estimates["resident"] == DEC("340.25")


def test_energy_by_group() -> None:
    got = energy_by(topology(), REGISTERS, D, D, "group")
    assert got == {"key": DEC("500.25"), "north": DEC("300.25")}


def test_energy_by_unit_with_roles() -> None:
    sales = energy_by(topology(), REGISTERS, D, D, "unit", roles={Role.SALES})
    assert sales == {"A1": DEC("300.25"), "A2": DEC(300), "L1": DEC(330)}
    supply = energy_by(topology(), REGISTERS, D, D, "unit", roles={Role.SUPPLY})
    assert supply == {"A1": DEC(330), "A2": DEC(360), "L1": DEC(700)}
    every = energy_by(topology(), REGISTERS, D, D, "unit")  # every role: supply and sales added
    assert every["A1"] == DEC("630.25")


def test_energy_by_rejects_an_unknown_key() -> None:
    with pytest.raises(ValueError):
        energy_by(topology(), REGISTERS, D, D, "colour")  # type: ignore[arg-type]


def test_periods_quarters_clipped_and_across_the_year() -> None:
    assert periods("quarter", date(2024, 2, 15), date(2024, 8, 10)) == [
        (date(2024, 2, 15), date(2024, 3, 31)),
        (date(2024, 4, 1), date(2024, 6, 30)),
        (date(2024, 7, 1), date(2024, 8, 10)),
    ]
    assert periods("quarter", date(2024, 10, 1), date(2025, 3, 31)) == [
        (date(2024, 10, 1), date(2024, 12, 31)),
        (date(2025, 1, 1), date(2025, 3, 31)),
    ]


def test_periods_months_and_days() -> None:
    assert periods("month", date(2024, 1, 31), date(2024, 3, 1)) == [
        (date(2024, 1, 31), date(2024, 1, 31)),
        (date(2024, 2, 1), date(2024, 2, 29)),  # leap year
        (date(2024, 3, 1), date(2024, 3, 1)),
    ]
    assert periods("month", date(2023, 12, 5), date(2024, 1, 2)) == [
        (date(2023, 12, 5), date(2023, 12, 31)), (date(2024, 1, 1), date(2024, 1, 2))]
    assert periods("day", D, D1) == [(D, D), (D1, D1)]
    assert periods("quarter", D, D) == [(D, D)]


def test_periods_refuse_bad_input() -> None:
    with pytest.raises(ValueError):
        periods("week", D, D1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        periods("day", D1, D)


def cst(h: int, m: int = 0, day: int = 1) -> datetime:
    return datetime(2024, 5, day, h, m, tzinfo=CST)


def test_load_curve_buckets_align_to_cst_midnight() -> None:
    utc = UTC
    series = {
        # 00:07 and 00:14 CST (16:07, 16:14 UTC the day before) fall in the 00:00 bucket: mean 3
        "m1": [(datetime(2024, 4, 30, 16, 7, tzinfo=utc), DEC(2)), (cst(0, 14), DEC(4)), (cst(0, 15), DEC(5))],
        "m2": [(cst(0, 0), DEC("1.5")), (cst(0, 29, 1), DEC("0.5"))],
        "m3": [(cst(23, 59, 1) - timedelta(days=1), DEC(7))],  # 23:45 bucket of the day before
    }
    got = load_curve(series, step=timedelta(minutes=15))
    assert got == [
        (cst(23, 45) - timedelta(days=1), DEC(7), 1),
        (cst(0, 0), DEC("4.5"), 2),  # m1 mean 3 + m2 1.5
        (cst(0, 15), DEC("5.5"), 2),  # m1 5 + m2 0.5
    ]
    assert got[1][0].utcoffset() == timedelta(hours=8)


def test_load_curve_hourly_and_means_rounded() -> None:
    series = {"m": [(cst(1, 0), DEC(1)), (cst(1, 20), DEC(1)), (cst(1, 40), DEC(2))]}
    assert load_curve(series, step=timedelta(hours=1)) == [(cst(1), DEC("1.3333"), 1)]
    assert load_curve({}, step=timedelta(hours=1)) == []


def test_load_curve_refuses_floats_naive_times_and_bad_steps() -> None:
    with pytest.raises(TypeError):
        load_curve({"m": [(cst(1), 1.5)]}, step=timedelta(hours=1))  # type: ignore[list-item]
    with pytest.raises(ValueError):
        load_curve({"m": [(datetime(2024, 5, 1), DEC(1))]}, step=timedelta(hours=1))
    with pytest.raises(ValueError):
        load_curve({}, step=timedelta(0))
