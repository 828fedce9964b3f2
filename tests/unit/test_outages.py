"""Outages: an area's meters going silent together is an outage (with the affected accounts),
one silent meter is not; the store opens one outage per area and closes it when the meters return."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.analytics.outages import OutageFinding, OutageStore, detect_outages
from meterd.analytics.topology import Point, Role, Topology, Unit
from meterd.storage.database import Location

NOW = datetime(2024, 7, 1, 6, 0, tzinfo=UTC)  # 14:00 CST
AREA_METERS = ["S1", "C1", "C2", "C3", "C4"]
ACCOUNTS = {"C1": "ACC-1", "C2": "ACC-2", "C3": "ACC-3", "C4": "ACC-3"}  # C3, C4: one customer


def topology() -> Topology:
    return Topology.of(
        [Unit("L1", "line"), Unit("A1", "area", parent="L1"), Unit("A2", "area", parent="L1")],
        [Point("S1", "A1", Role.SUPPLY), *(Point(m, "A1", Role.SALES) for m in AREA_METERS[1:]),
         Point("H", "L1", Role.SUPPLY), Point("S1", "L1", Role.SALES), Point("S2", "L1", Role.SALES),
         Point("S2", "A2", Role.SUPPLY), *(Point(f"D{i}", "A2", Role.SALES) for i in range(4))],
    )


def healthy() -> dict[str, tuple[datetime | None, bool]]:
    meters = ["H", "S2", *AREA_METERS, *(f"D{i}" for i in range(4))]
    return {m: (NOW - timedelta(minutes=5), False) for m in meters}


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_area_going_silent_together_is_an_outage() -> None:
    status = healthy()
    # power lost around 13:10 CST; the meters were last read between 13:02 and 13:14
    for m, minutes in zip(AREA_METERS, (58, 50, 46, 53, 55)):
        status[m] = (ago(minutes), False)
    (f,) = detect_outages(topology(), status, NOW)
    assert f == OutageFinding("A1", ago(46), tuple(sorted(AREA_METERS)), Decimal("1.0000"), 0)


def test_single_silent_meter_is_not_an_outage() -> None:
    status = healthy()
    status["C2"] = (ago(120), False)
    assert detect_outages(topology(), status, NOW) == []


def test_power_down_reports_count_and_a_long_dead_meter_stays_apart() -> None:
    status = healthy()
    status["C4"] = (ago(3 * 24 * 60), False)  # dead for three days: its own fault
    status["S1"] = (ago(40), True)  # reported power-down
    status["C1"] = (ago(3), True)  # reported power-down a moment after its last read
    status["C2"] = (ago(35), False)
    status["C3"] = (None, True)  # never read, but reported power-down
    (f,) = detect_outages(topology(), status, NOW)
    assert f.meters == ("C1", "C2", "C3", "S1")
    assert f.share == Decimal("0.8000") and f.reported == 3
    assert f.started == ago(3)


@pytest.mark.parametrize(
    ("dark", "kw", "out"),
    [
        (["S1", "C1", "C2"], {}, True),  # 3 of 5 = 0.6: exactly the share
        (["S1", "C1"], {}, False),  # 2 of 5, and fewer than 3 meters
        (["S1", "C1", "C2"], {"min_meters": 4}, False),
        (["S1", "C1", "C2"], {"min_share": Decimal("0.61")}, False),
    ],
)
def test_share_and_count_borderlines(dark: list[str], kw: dict[str, object], out: bool) -> None:
    status = healthy()
    for m in dark:
        status[m] = (ago(45), False)
    assert bool(detect_outages(topology(), status, NOW, **kw)) is out  # type: ignore[arg-type]


def test_silent_after_is_strict_and_never_read_meters_are_left_out() -> None:
    status = healthy()
    for m in AREA_METERS:
        status[m] = (ago(30), False)  # exactly silent_after: not yet silent
    assert detect_outages(topology(), status, NOW) == []
    for m in ("S1", "C1", "C2"):
        status[m] = (ago(31), False)
    status["C4"] = (None, False)  # nothing known of it
    (f,) = detect_outages(topology(), status, NOW)
    assert (f.meters, f.share) == (("C1", "C2", "S1"), Decimal("0.7500"))  # 3 of the 4 known


def test_only_areas_by_default() -> None:
    status = healthy()
    for m in ("H", "S2", "S1"):  # the whole line's meters
        status[m] = (ago(40), False)
    assert detect_outages(topology(), status, NOW) == []
    (f,) = detect_outages(topology(), status, NOW, kinds=("line",))
    assert f.unit == "L1"


# --- the store -----------------------------------------------------------------------------------


@pytest.fixture
def store(state_where: Location) -> Iterator[OutageStore]:
    with OutageStore(state_where) as s:
        yield s


def test_outage_opened_with_accounts_then_closed_when_meters_return(store: OutageStore) -> None:
    status = healthy()
    for m in AREA_METERS:
        status[m] = (ago(50), False)
    findings = detect_outages(topology(), status, NOW)
    opened, closed = store.update(findings, NOW, ACCOUNTS.get)
    assert closed == []
    (o,) = opened
    assert (o.unit, o.started, o.ended) == ("A1", ago(50), None)
    assert o.accounts == ("ACC-1", "ACC-2", "ACC-3")  # S1 has no account; C3 and C4 share one
    assert o.meters == tuple(sorted(AREA_METERS))

    # ten minutes on, still dark: the same outage, nothing new
    later = NOW + timedelta(minutes=10)
    assert store.update(detect_outages(topology(), status, later), later, ACCOUNTS.get) == ([], [])
    assert [x.id for x in store.outages(open_only=True)] == [o.id]

    # power back: the meters are read again
    back = NOW + timedelta(minutes=40)
    status = {m: (back - timedelta(minutes=2), False) for m in status}
    opened, closed = store.update(detect_outages(topology(), status, back), back, ACCOUNTS.get)
    assert opened == [] and [(x.id, x.ended) for x in closed] == [(o.id, back)]
    assert store.outages(open_only=True) == []
    assert [x.id for x in store.outages()] == [o.id]


def test_never_two_open_per_unit_and_meters_grow(store: OutageStore) -> None:
    first = OutageFinding("A1", ago(50), ("C1", "C2", "S1"), Decimal("0.6"))
    more = OutageFinding("A1", ago(45), ("C1", "C2", "C3", "S1"), Decimal("0.8"))
    store.update([first], NOW, ACCOUNTS.get)
    store.update([more], NOW + timedelta(minutes=5), ACCOUNTS.get)
    (o,) = store.outages()
    assert o.started == ago(50)  # the start stays
    assert o.meters == ("C1", "C2", "C3", "S1") and o.accounts == ("ACC-1", "ACC-2", "ACC-3")


def test_a_later_outage_of_the_same_area_is_a_new_one(store: OutageStore) -> None:
    f = OutageFinding("A1", ago(50), ("C1", "C2", "S1"), Decimal("0.6"))
    store.update([f], NOW, ACCOUNTS.get)
    store.update([], NOW + timedelta(hours=1), ACCOUNTS.get)
    g = OutageFinding("A1", NOW + timedelta(hours=5), ("C1", "C2", "S1"), Decimal("0.6"))
    opened, _ = store.update([g], NOW + timedelta(hours=6), ACCOUNTS.get)
    assert [x.started for x in store.outages()] == [g.started, f.started]  # latest first
    assert [x.unit for x in store.outages(open_only=True)] == ["A1"] and opened[0].ended is None
