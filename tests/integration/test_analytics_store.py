"""The analytics stores on a real state database: daily registers (CST days, estimated vs measured),
the line-loss history, line loss straight from the store, and living beside the other state tables
(meter archive, prepaid) with several connections writing at once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.analytics import DailyRegisterStore, LossHistory, Point, Role, Topology, Unit, line_loss_all
from meterd.analytics.energy import EXPORT_DAILY, IMPORT_DAILY
from meterd.analytics.lineloss import registers_needed
from meterd.clock import CST
from meterd.readings import Quality, Reading
from meterd.storage import MeterRecord, SqliteStore
from meterd.storage.database import Location

D = date(2024, 5, 1)
D1 = D + timedelta(days=1)
DEC = Decimal


def freeze(day: date) -> datetime:
    """The daily freeze at 00:00 CST of ``day``, as the collector stores it (UTC)."""
    return datetime(day.year, day.month, day.day, tzinfo=CST).astimezone(UTC)


def reading(meter: str, day: date, value: str, quality: Quality = Quality.GOOD,
            quantity: str = IMPORT_DAILY) -> Reading:
    return Reading(meter, quantity, freeze(day), DEC(value), "kWh", quality)


@pytest.fixture
def store(state_where: Location) -> Iterator[DailyRegisterStore]:
    with DailyRegisterStore(state_where) as s:
        yield s


def test_record_and_read_back_by_cst_day(store: DailyRegisterStore) -> None:
    written = store.record([
        reading("M1", D, "100.00"),
        reading("M1", D1, "112.50"),
        reading("M2", D, "7.10", quantity=EXPORT_DAILY),
        Reading("M1", "energy.active.import.total", freeze(D), DEC(1)),  # not a daily freeze: ignored
        Reading("M1", IMPORT_DAILY, freeze(D), "n/a"),  # not a number: ignored
    ])
    assert written == 3
    assert freeze(D).hour == 16  # 00:00 CST is 16:00 UTC the day before ...
    assert store.registers([D, D1]) == {("M1", D): (DEC("100.00"), False), ("M1", D1): (DEC("112.50"), False)}
    assert store.registers([D], quantity=EXPORT_DAILY) == {("M2", D): (DEC("7.10"), False)}  # ... but day D
    assert str(store.registers([D])[("M1", D)][0]) == "100.00"  # the digits as read
    assert store.days_of("M1") == [(D, DEC("100.00"), False), (D1, DEC("112.50"), False)]
    assert store.record([]) == 0
    with pytest.raises(ValueError, match="no time zone"):
        store.record([Reading("M9", IMPORT_DAILY, datetime(2024, 5, 1), DEC(1))])
    assert store.days_of("M9") == []


def test_measured_replaces_estimated_never_the_reverse(store: DailyRegisterStore) -> None:
    assert store.record([reading("M1", D, "99.00", Quality.ESTIMATED)]) == 1
    assert store.registers([D]) == {("M1", D): (DEC("99.00"), True)}
    assert store.record([reading("M1", D, "100.00", Quality.SUSPECT)]) == 1  # measured, if flagged
    assert store.registers([D]) == {("M1", D): (DEC("100.00"), False)}
    assert store.record([reading("M1", D, "98.00", Quality.ESTIMATED)]) == 0  # refused
    assert store.registers([D]) == {("M1", D): (DEC("100.00"), False)}
    assert store.record([reading("M1", D, "100.00")]) == 1  # a replay of the measured value is harmless
    assert store.registers([D]) == {("M1", D): (DEC("100.00"), False)}


def test_registers_for_some_meters(store: DailyRegisterStore) -> None:
    store.record([reading(f"M{i:04d}", day, str(i)) for i in range(3000) for day in (D, D1)]
                 + [reading("M0001", D1, "5", Quality.ESTIMATED), reading("M0002", D1, "9", Quality.ESTIMATED)])
    store.record([reading("M0003", D1, "1", Quality.ESTIMATED)])  # refused: measured already there
    few = store.registers([D, D1], meters=["M0001", "M2999", "nobody"])
    assert few == {("M0001", D): (DEC(1), False), ("M0001", D1): (DEC(1), False),
                   ("M2999", D): (DEC(2999), False), ("M2999", D1): (DEC(2999), False)}
    many = store.registers([D1], meters=[f"M{i:04d}" for i in range(2500)])  # the scan-and-filter path
    assert len(many) == 2500 and ("M2999", D1) not in many
    assert len(store.registers([D, D1, D1])) == 6000
    assert store.prune(D1) == 3000
    assert store.registers([D]) == {}


def test_estimated_flag_comes_back_on_the_full_scan(store: DailyRegisterStore) -> None:
    store.record([reading("M1", D, "1"), reading("M2", D, "2", Quality.ESTIMATED)])
    assert store.registers([D]) == {("M1", D): (DEC(1), False), ("M2", D): (DEC(2), True)}


def test_line_loss_from_the_store_and_history(state_where: Location) -> None:
    topo = Topology.of([Unit("A1", "area"), Unit("A2", "area")], [
        Point("S1", "A1", Role.SUPPLY), Point("C1", "A1", Role.SALES), Point("C2", "A1", Role.SALES),
        Point("S2", "A2", Role.SUPPLY), Point("C3", "A2", Role.SALES),
    ])
    with DailyRegisterStore(state_where) as registers, LossHistory(state_where) as history:
        # history: A1 ran at 4 % for a week
        for n in range(1, 8):
            history.save(line_loss_all(topo, {("S1", D - timedelta(days=n)): (DEC(0), False),
                                              ("S1", D - timedelta(days=n - 1)): (DEC(100), False),
                                              ("C1", D - timedelta(days=n)): (DEC(0), False),
                                              ("C1", D - timedelta(days=n - 1)): (DEC(96), False),
                                              ("C2", D - timedelta(days=n)): (DEC(0), False),
                                              ("C2", D - timedelta(days=n - 1)): (DEC(0), False)},
                                       D - timedelta(days=n), D - timedelta(days=n), kind="area"))
        assert history.recent("A1", D) == [DEC("4.00")] * 7
        assert history.recent("A2", D) == []  # no supply data: rate None, not saved
        registers.record([reading("S1", D, "1000"), reading("S1", D1, "1200"),
                          reading("C1", D, "10"), reading("C1", D1, "110"),
                          reading("C2", D, "20"), reading("C2", D1, "96"),
                          reading("S2", D, "0"), reading("S2", D1, "50"),
                          reading("C3", D, "0"), reading("C3", D1, "49", Quality.ESTIMATED)])
        regs = registers.registers(registers_needed(D, D))
        reports = {r.unit: r for r in line_loss_all(topo, regs, D, D, history=history.recent_all(D))}
        a1, a2 = reports["A1"], reports["A2"]
        # A1: 200 in, 100 + 76 out: 24 lost, 12.00 % -- over 10 % and 8 points above its 4 % week
        assert (a1.loss, a1.rate, a1.flags) == (DEC(24), DEC("12.00"), ("over_threshold", "jump"))
        assert (a2.rate, a2.estimated, a2.flags) == (DEC("100.00"), ("C3",), ("over_threshold", "incomplete"))
        assert history.save(reports.values()) == 1  # A2 is incomplete: not a norm for later days
        assert history.save(reports.values(), include_incomplete=True) == 2
        assert history.recent("A1", D1, days=1) == [DEC("12.00")]
        with pytest.raises(ValueError):
            history.save(line_loss_all(topo, regs, D - timedelta(days=1), D))


def test_shares_state_sqlite3_with_the_other_stores(tmp_path: Path) -> None:
    from meterd.control.state import ControlStore

    with SqliteStore(tmp_path) as main, ControlStore(tmp_path), DailyRegisterStore(tmp_path) as regs:
        main.upsert_meters([MeterRecord("M1", "bus1", "dlt645-2007", DEC(1), DEC(1))])
        regs.record([reading("M1", D, "1")])
        assert [m.address for m in main.meters()] == ["M1"]
    with sqlite3.connect(tmp_path / "state.sqlite3") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"meters", "accounts", "ledger", "daily_registers"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_concurrent_writers_in_threads_and_connections(state_where: Location) -> None:
    shared = DailyRegisterStore(state_where)
    errors: list[BaseException] = []

    def write(store: DailyRegisterStore, prefix: str) -> None:
        try:
            for batch in range(10):
                store.record([reading(f"{prefix}{batch}-{i}", D, str(i)) for i in range(200)])
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    others = [DailyRegisterStore(state_where) for _ in range(2)]
    threads = [threading.Thread(target=write, args=(s, p)) for s, p in
               ((shared, "a"), (shared, "b"), (others[0], "c"), (others[1], "d"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in others:
        s.close()
    assert errors == []
    assert len(shared.registers([D])) == 4 * 10 * 200
    shared.close()
    shared.close()  # closing twice is harmless
