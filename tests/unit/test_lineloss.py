"""Line loss against tables worked out by hand: multipliers, missing and estimated meters, flags,
a line over its areas, periods of several days.

The area used throughout (day D = 2024-05-01; registers at the start of D and of D + 1)::

    meter  role       start     next day   energy
    S1     supply     1000.00   1100.00    100.00
    C1     sales        50.00     80.00     30.00
    C2     sales        10.00     35.00     25.00
    C3     sales       200.00    237.50     37.50
    X1     auxiliary     5.00      6.00      1.00
                                   sales =  92.50, loss = 7.50, rate = 7.50 %
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal

import pytest

from meterd.analytics.lineloss import LossReport, line_loss, line_loss_all, period_energy
from meterd.analytics.topology import Point, Role, Topology, Unit

D = date(2024, 5, 1)
D1 = D + timedelta(days=1)
DEC = Decimal


def area(**unit: object) -> Topology:
    return Topology.of(
        [Unit("A1", "area", **unit)],  # type: ignore[arg-type]
        [
            Point("S1", "A1", Role.SUPPLY),
            Point("C1", "A1", Role.SALES),
            Point("C2", "A1", Role.SALES),
            Point("C3", "A1", Role.SALES),
            Point("X1", "A1", Role.AUXILIARY),
        ],
    )


def regs(table: dict[str, tuple[str, str]], *, estimated: set[tuple[str, date]] = frozenset(),  # type: ignore[assignment]
         first: date = D, last: date = D1) -> dict[tuple[str, date], tuple[Decimal, bool]]:
    out = {}
    for meter, (a, b) in table.items():
        for day, text in ((first, a), (last, b)):
            if text is not None:
                out[(meter, day)] = (DEC(text), (meter, day) in estimated)
    return out


BASE = {
    "S1": ("1000.00", "1100.00"),
    "C1": ("50.00", "80.00"),
    "C2": ("10.00", "35.00"),
    "C3": ("200.00", "237.50"),
    "X1": ("5.00", "6.00"),
}


def test_the_worked_example() -> None:
    r = line_loss(area(), "A1", regs(BASE), D, D)
    assert (r.supply, r.sales, r.auxiliary, r.loss, r.rate) == (
        DEC("100.00"), DEC("92.50"), DEC("1.00"), DEC("7.50"), DEC("7.50"))
    assert (r.supply_points, r.supply_with_data, r.sales_points, r.sales_with_data) == (1, 1, 3, 3)
    assert r.completeness == DEC("100.00")
    assert (r.missing, r.estimated, r.flags) == ((), (), ())
    assert (r.unit, r.kind, r.start, r.end) == ("A1", "area", D, D)


def test_auxiliary_energy_is_reported_but_not_in_the_balance() -> None:
    big_check_meter = {**BASE, "X1": ("5.00", "505.00")}
    r = line_loss(area(), "A1", regs(big_check_meter), D, D)
    assert r.auxiliary == DEC("500.00")
    assert (r.loss, r.rate) == (DEC("7.50"), DEC("7.50"))


def test_multiplier_scales_the_point() -> None:
    # The supply meter reports secondary-side registers: 2.50 kWh x 40 = 100 kWh.
    topo = Topology.of([Unit("A1", "area")], [
        Point("S1", "A1", Role.SUPPLY, multiplier=DEC(40)),
        Point("C1", "A1", Role.SALES),
        Point("C2", "A1", Role.SALES, multiplier=DEC("2")),  # 12.50 x 2 = 25
    ])
    r = line_loss(topo, "A1", regs({"S1": ("10.00", "12.50"), "C1": ("0", "30.00"), "C2": ("0", "12.50")}), D, D)
    assert (r.supply, r.sales, r.loss, r.rate) == (DEC("100.0000"), DEC("55.00"), DEC("45.0000"), DEC("45.00"))


def test_missing_sales_meter() -> None:
    r = line_loss(area(), "A1", regs({**BASE, "C3": ("200.00", None)}), D, D)  # type: ignore[dict-item]
    # sales 30 + 25 = 55, loss 45, rate 45.00 %; 4 of 5 points with data
    assert (r.sales, r.loss, r.rate) == (DEC("55.00"), DEC("45.00"), DEC("45.00"))
    assert r.missing == ("C3",)
    assert (r.sales_points, r.sales_with_data) == (3, 2)
    assert r.completeness == DEC("80.00")
    assert r.flags == ("over_threshold", "incomplete")


def test_missing_supply_meter_gives_no_rate() -> None:
    r = line_loss(area(), "A1", regs({**BASE, "S1": (None, "1100.00")}), D, D)  # type: ignore[dict-item]
    assert r.supply == 0 and r.rate is None
    assert r.loss == DEC("-92.50")
    assert r.flags == ("negative_loss", "incomplete")
    assert (r.supply_points, r.supply_with_data) == (1, 0)


def test_a_register_going_backwards_is_missing_not_negative_energy() -> None:
    r = line_loss(area(), "A1", regs({**BASE, "C1": ("80.00", "0.50")}), D, D)  # meter replaced
    assert r.missing == ("C1",)
    assert r.sales == DEC("62.50")
    assert period_energy(regs({"C1": ("80.00", "0.50")}), "C1", D, D) is None


def test_estimated_values_left_out_by_default() -> None:
    registers = regs(BASE, estimated={("C2", D1)})
    r = line_loss(area(), "A1", registers, D, D)
    # C2 left out: sales 30 + 37.5 = 67.5, loss 32.5 -> 32.50 %
    assert (r.sales, r.loss, r.rate) == (DEC("67.50"), DEC("32.50"), DEC("32.50"))
    assert r.estimated == ("C2",) and r.missing == ()
    assert r.sales_with_data == 2 and r.completeness == DEC("80.00")
    assert r.flags == ("over_threshold", "incomplete")


def test_estimated_values_included_on_request_and_named() -> None:
    registers = regs(BASE, estimated={("C2", D1)})
    r = line_loss(area(), "A1", registers, D, D, include_estimated=True)
    assert (r.sales, r.rate) == (DEC("92.50"), DEC("7.50"))
    assert r.estimated == ("C2",)
    assert r.completeness == DEC("100.00") and r.flags == ()


def test_estimated_start_register_counts_too() -> None:
    assert period_energy(regs(BASE, estimated={("S1", D)}), "S1", D, D) == (DEC("100.00"), True)
    assert period_energy(regs(BASE), "S1", D, D) == (DEC("100.00"), False)


def test_negative_loss() -> None:
    r = line_loss(area(), "A1", regs({**BASE, "C3": ("200.00", "255.00")}), D, D)
    # sales 30 + 25 + 55 = 110 > supply 100
    assert (r.loss, r.rate) == (DEC("-10.00"), DEC("-10.00"))
    assert r.flags == ("negative_loss",)


@pytest.mark.parametrize(
    ("c3_next", "rate", "flagged"),
    [
        ("235.00", "10.00", False),  # sales 90 -> exactly the threshold: not over
        ("234.99", "10.01", True),  # just over
    ],
)
def test_over_threshold_borderline(c3_next: str, rate: str, flagged: bool) -> None:
    r = line_loss(area(), "A1", regs({**BASE, "C3": ("200.00", c3_next)}), D, D)
    assert r.rate == DEC(rate)
    assert ("over_threshold" in r.flags) is flagged


def test_threshold_is_per_unit() -> None:
    r = line_loss(area(loss_threshold=DEC("5")), "A1", regs(BASE), D, D)
    assert r.flags == ("over_threshold",)


@pytest.mark.parametrize(
    ("history", "jump"),
    [
        ((DEC(2), DEC("2.5"), DEC(3)), False),  # mean 2.5: 7.50 - 2.5 = 5.00, not more than 5
        ((DEC(2), DEC("2.49"), DEC(3)), True),  # mean 2.4966..: 5.0033 > 5
        ((DEC(12), DEC(13), DEC(14)), True),  # a fall counts as well: |7.5 - 13| = 5.5
        ((DEC(0), DEC(0)), False),  # two values are not a history yet
        ((), False),
    ],
)
def test_jump_against_history(history: tuple[Decimal, ...], jump: bool) -> None:
    r = line_loss(area(), "A1", regs(BASE), D, D, history=history)
    assert ("jump" in r.flags) is jump


def test_rate_rounds_half_up_to_hundredths() -> None:
    topo = Topology.of([Unit("A", "area")], [Point("S", "A", Role.SUPPLY), Point("C", "A", Role.SALES)])
    r = line_loss(topo, "A", regs({"S": ("0", "3"), "C": ("0", "2")}), D, D)
    assert r.rate == DEC("33.33")
    r = line_loss(topo, "A", regs({"S": ("0", "8"), "C": ("0", "7.9991")}), D, D)
    assert r.rate == DEC("0.01")  # 0.01125 % -> 0.01


def test_period_of_several_days_uses_the_bracketing_freezes_only() -> None:
    end = D + timedelta(days=2)  # May 1..3 inclusive: registers of May 1 and May 4
    registers = regs(BASE, last=end + timedelta(days=1))
    registers[("C1", D1)] = (DEC("999999"), False)  # a day in between: not looked at
    r = line_loss(area(), "A1", registers, D, end)
    assert (r.start, r.end, r.rate) == (D, end, DEC("7.50"))
    assert period_energy(registers, "S1", D, end) == (DEC("100.00"), False)
    assert period_energy(registers, "S1", D, D) is None  # May 2's register is missing


def test_period_must_not_end_before_it_starts() -> None:
    with pytest.raises(ValueError):
        line_loss(area(), "A1", regs(BASE), D1, D)


def test_unknown_unit() -> None:
    with pytest.raises(KeyError):
        line_loss(area(), "nowhere", regs(BASE), D, D)


def feeder() -> Topology:
    """Line L1: head meter H; areas A1 (S1) and A2 (S2) hang on it, their supply meters are the
    line's sales points; special-transformer customer T1 is fed straight from the line."""
    return Topology.of(
        [Unit("L1", "line", loss_threshold=DEC(5)), Unit("A1", "area", parent="L1"), Unit("A2", "area", parent="L1")],
        [
            Point("H", "L1", Role.SUPPLY),
            Point("S1", "L1", Role.SALES),
            Point("S2", "L1", Role.SALES),
            Point("T1", "L1", Role.SALES, multiplier=DEC(10)),
            Point("S1", "A1", Role.SUPPLY),
            Point("C1", "A1", Role.SALES),
            Point("S2", "A2", Role.SUPPLY),
            Point("C2", "A2", Role.SALES),
        ],
    )


FEEDER = {
    "H": ("0", "1000"),  # the line takes in 1000
    "S1": ("0", "400"),  # area 1 takes 400, sells 380 (5.00 %)
    "S2": ("0", "450"),  # area 2 takes 450, sells 441 (2.00 %)
    "T1": ("0", "10"),  # 10 x 10 = 100
    "C1": ("0", "380"),
    "C2": ("0", "441"),
}


def test_line_uses_its_own_points_and_areas_are_separate() -> None:
    reports = {r.unit: r for r in line_loss_all(feeder(), regs(FEEDER), D, D)}
    assert list(reports) == ["A1", "A2", "L1"]
    line = reports["L1"]
    # 1000 - (400 + 450 + 100) = 50 -> 5.00 %: the line's own loss, not the areas'
    assert (line.kind, line.supply, line.sales, line.loss, line.rate) == ("line", DEC(1000), DEC(950), DEC(50), DEC("5.00"))
    assert line.flags == ()  # exactly at its threshold of 5 %
    assert (reports["A1"].rate, reports["A2"].rate) == (DEC("5.00"), DEC("2.00"))


def test_line_loss_all_by_kind_and_with_history() -> None:
    topo = feeder()
    lines = line_loss_all(topo, regs(FEEDER), D, D, kind="line")
    assert [r.unit for r in lines] == ["L1"]
    areas = line_loss_all(topo, regs(FEEDER), D, D, kind="area", history={"A2": [DEC(9), DEC(9), DEC(9)]})
    assert [(r.unit, r.flags) for r in areas] == [("A1", ()), ("A2", ("jump",))]


def test_a_missing_area_supply_meter_shows_in_the_line_and_the_area() -> None:
    registers = regs({k: v for k, v in FEEDER.items() if k != "S2"})
    reports = {r.unit: r for r in line_loss_all(feeder(), registers, D, D)}
    assert reports["L1"].missing == ("S2",) and "incomplete" in reports["L1"].flags
    assert reports["L1"].rate == DEC("50.00")  # 1000 - 500: read with the missing meter beside it
    assert reports["A2"].rate is None and reports["A2"].flags == ("negative_loss", "incomplete")


def test_unit_without_points() -> None:
    topo = Topology.of([Unit("E", "group")], [])
    r = line_loss(topo, "E", {}, D, D)
    assert (r.supply, r.rate, r.completeness, r.flags) == (0, None, 0, ("incomplete",))


def test_as_dict_is_json_ready_and_exact() -> None:
    r = line_loss(area(), "A1", regs({**BASE, "C3": ("200.00", None)}), D, D)  # type: ignore[dict-item]
    d = r.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["rate"] == "45.00" and d["supply"] == "100.00" and d["start"] == "2024-05-01"
    assert d["missing"] == ["C3"] and d["flags"] == ["over_threshold", "incomplete"]
    none = line_loss(area(), "A1", {}, D, D).as_dict()
    assert none["rate"] is None
    assert set(d) == set(LossReport.__dataclass_fields__)


def test_roles_given_as_plain_strings_work() -> None:
    topo = Topology.of([Unit("A", "area")], [Point("S", "A", "supply"), Point("C", "A", "sales")])  # type: ignore[arg-type]
    assert line_loss(topo, "A", regs({"S": ("0", "10"), "C": ("0", "9")}), D, D).rate == DEC("10.00")


def test_topology_problems() -> None:
    topo = Topology.of(
        [Unit("A1", "area", parent="L9"), Unit("A2", "area"), Unit("B", "zone")],
        [
            Point("S1", "A1", Role.SUPPLY),
            Point("S1", "A1", Role.SALES),  # same meter, two roles
            Point("C1", "A2", Role.SALES),
            Point("C1", "A2", Role.SALES),  # counted twice
            Point("C9", "A3", Role.SALES),  # unknown unit
            Point("S3", "B", Role.SUPPLY, multiplier=DEC(0)),
        ],
    )
    problems = topo.problems()
    assert any("parent 'L9'" in p for p in problems)
    assert any("'A1'" in p and "different roles" in p and "S1" in p for p in problems)
    assert any("'A2' has no supply point" in p for p in problems)
    assert any("C1 is listed 2 times" in p for p in problems)
    assert any("unknown unit 'A3'" in p and "C9" in p for p in problems)
    assert any("kind 'zone'" in p for p in problems)
    assert any("multiplier 0" in p for p in problems)
    assert feeder().problems() == []


def test_points_of() -> None:
    topo = feeder()
    assert [p.meter for p in topo.points_of("L1")] == ["H", "S1", "S2", "T1"]
    assert topo.points_of(topo.units["A1"]) == topo.points_of("A1")
    assert topo.points_of("nowhere") == ()
    assert "S1" in topo.meters()
