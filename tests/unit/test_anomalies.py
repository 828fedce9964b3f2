"""Abnormal-usage detectors on crafted reading series (each kind, with its borderlines), and the
open/update/close lifecycle of events in a real state database."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.analytics.anomalies import (
    EVIDENCE_PER_EVENT,
    AnomalyStore,
    Finding,
    Kind,
    Limits,
    Severity,
    detect,
)
from meterd.clock import CST
from meterd.readings import Quality, Reading, Value
from meterd.storage.database import Database, Location

T0 = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)  # 10:00 CST
M = "000000000001"
DEC = Decimal


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def r(quantity: str, minutes: float, value: Value, quality: Quality = Quality.GOOD, meter: str = M) -> Reading:
    return Reading(meter, quantity, at(minutes), value, "", quality)


def series(quantity: str, values: list[Value], every: float = 15) -> list[Reading]:
    return [r(quantity, i * every, v) for i, v in enumerate(values)]


def kinds(readings: list[Reading], now_minutes: float | None = None, **kw: object) -> dict[Kind, Finding]:
    now = at(now_minutes if now_minutes is not None else max((x.timestamp - T0).total_seconds() / 60
                                                              for x in readings) if readings else 0)
    return {f.kind: f for f in detect(M, readings, now, **kw)}  # type: ignore[arg-type]


# --- voltage -----------------------------------------------------------------------------------
# 220 V -10 % / +7 %: 198.0 .. 235.4 V is inside.


@pytest.mark.parametrize(
    ("values", "found"),
    [
        (["220.0", "197.9", "197.9"], True),  # just outside, 15 min: counts
        (["220.0", "198.0", "198.0"], False),  # exactly the lower limit: inside
        (["220.0", "235.5", "236.0"], True),  # just over +7 %
        (["220.0", "235.4", "235.4"], False),  # exactly +7 %
        (["220.0", "220.0", "150.0"], False),  # one sample: too short to count
        (["150.0", "150.0", "220.0"], False),  # recovered: not a condition any more
    ],
)
def test_voltage_limits_and_persistence(values: list[str], found: bool) -> None:
    readings = series("voltage.a", [DEC(v) for v in values])
    assert (Kind.VOLTAGE in kinds(readings)) is found


def test_voltage_run_shorter_than_the_minimum_does_not_count() -> None:
    readings = [r("voltage.b", 0, DEC(220)), r("voltage.b", 1, DEC(190)), r("voltage.b", 15.9, DEC(190))]
    assert Kind.VOLTAGE not in kinds(readings)
    readings.append(r("voltage.b", 16, DEC(189)))  # 15 minutes out of limits now
    f = kinds(readings)[Kind.VOLTAGE]
    assert f.at == at(1) and f.severity is Severity.WARNING
    assert "phase b 189..190 V" in f.detail
    assert [e["value"] for e in f.evidence] == ["190", "190", "189"]
    assert f.evidence[0] == {"meter": M, "quantity": "voltage.b", "timestamp": at(1).isoformat(), "value": "190"}


def test_voltage_lost_phase_is_critical_and_limits_are_per_meter() -> None:
    readings = series("voltage.c", [DEC(0), DEC(0), DEC("0.3")])
    assert kinds(readings)[Kind.VOLTAGE].severity is Severity.CRITICAL
    # A 10 kV meter behind a PT reads primary volts: 10 kV +-7 %
    hv = Limits(voltage_nominal=DEC(10000), voltage_low_pct=DEC(-7), voltage_high_pct=DEC(7))
    ok = series("voltage.a", [DEC(10650), DEC(10650)])
    assert Kind.VOLTAGE not in kinds(ok, limits=hv)
    assert Kind.VOLTAGE in kinds(ok)  # with the 220 V limits it would be far out


def test_voltage_estimated_samples_are_not_evidence() -> None:
    readings = [r("voltage.a", 0, DEC(150)), r("voltage.a", 15, DEC(150), Quality.ESTIMATED)]
    assert Kind.VOLTAGE not in kinds(readings)


# --- current imbalance ---------------------------------------------------------------------------


def three_phase(rows: list[tuple[str, str, str]], every: float = 15) -> list[Reading]:
    out = []
    for i, row in enumerate(rows):
        for phase, amps in zip("abc", row):
            out.append(r(f"current.{phase}", i * every, DEC(amps)))
    return out


@pytest.mark.parametrize(
    ("rows", "found"),
    [
        ([("10", "10", "6.9"), ("10", "10", "6.9")], True),  # 31 %: over 30 %
        ([("10", "10", "7"), ("10", "10", "7")], False),  # exactly 30 %: not over
        ([("1.0", "0.5", "0.5"), ("1.0", "0.5", "0.5")], True),  # 50 % at exactly the minimum current
        ([("0.99", "0", "0"), ("0.99", "0", "0")], False),  # light load: not judged
        ([("10", "1", "1")], False),  # one sample: too short
        ([("10", "1", "1"), ("10", "10", "10")], False),  # balanced again
    ],
)
def test_imbalance_borderlines(rows: list[tuple[str, str, str]], found: bool) -> None:
    assert (Kind.IMBALANCE in kinds(three_phase(rows))) is found


def test_imbalance_dead_phase_is_critical() -> None:
    f = kinds(three_phase([("20", "19", "0"), ("21", "18", "0")]))[Kind.IMBALANCE]
    assert f.severity is Severity.CRITICAL and "no current" in f.detail
    assert "100.0 %" in f.detail and f.at == at(0)
    assert len(f.evidence) == 6  # three phases at the first and at the last instant


def test_imbalance_phases_read_one_by_one_line_up() -> None:
    readings = []
    for i in range(2):
        for k, (phase, amps) in enumerate(zip("abc", ("20", "19", "3"))):
            readings.append(r(f"current.{phase}", i * 15 + k * 0.5, DEC(amps)))  # 30 s apart
    assert Kind.IMBALANCE in kinds(readings)
    far = [x for x in readings if x.quantity != "current.c"] + [r("current.c", 5, DEC(3)), r("current.c", 20, DEC(3))]
    assert Kind.IMBALANCE not in kinds(far)  # phase c read 5 minutes off: not the same instant


def test_imbalance_needs_all_three_phases() -> None:
    single = series("current.a", [DEC(10), DEC(10)]) + series("current.c", [DEC(0), DEC(0)])
    assert Kind.IMBALANCE not in kinds(single)


# --- no data -------------------------------------------------------------------------------------


def test_no_data_after_24_hours() -> None:
    last = at(0)
    just = detect(M, [], last + timedelta(hours=24), last_seen=last)
    assert just == []  # exactly 24 h: not yet
    late = detect(M, [], last + timedelta(hours=24, seconds=1), last_seen=last)
    assert [(f.kind, f.severity, f.at) for f in late] == [(Kind.NO_DATA, Severity.WARNING, last)]
    very_late = detect(M, [], last + timedelta(hours=73), last_seen=last)
    assert very_late[0].severity is Severity.CRITICAL


def test_no_data_uses_the_newest_good_reading_and_ignores_estimates() -> None:
    now = at(0) + timedelta(hours=30)
    readings = [r("energy.active.import.total", 0, DEC(1)),
                r("energy.active.import.total", 600, DEC(2), Quality.ESTIMATED)]
    f = kinds(readings, now_minutes=30 * 60)[Kind.NO_DATA]
    assert f.at == at(0) and [e["timestamp"] for e in f.evidence] == [at(0).isoformat()]  # the last good one
    readings.append(r("energy.active.import.total", 600, DEC(2), Quality.SUSPECT))  # read, flagged
    assert Kind.NO_DATA not in kinds(readings, now_minutes=30 * 60)
    # an older last_seen does not hide a newer reading
    assert detect(M, readings, now, last_seen=at(-10_000)) == []


def test_a_meter_never_read_is_no_data() -> None:
    (f,) = detect(M, [], at(0))
    assert (f.kind, f.detail) == (Kind.NO_DATA, "no reading on record")


# --- reverse energy ------------------------------------------------------------------------------


def test_reverse_energy_from_the_export_register() -> None:
    readings = series("energy.active.export.total", [DEC("5.00"), DEC("5.00"), DEC("5.05"), DEC("5.10")])
    f = kinds(readings)[Kind.REVERSE]
    assert f.at == at(15)  # the register started moving after the second sample
    assert "0.10 kWh" in f.detail
    just_under = series("energy.active.export.total", [DEC("5.00"), DEC("5.09")])
    assert Kind.REVERSE not in kinds(just_under)


def test_reverse_energy_from_negative_power_must_persist() -> None:
    short = series("power.active.total", [DEC("1.2"), DEC("-0.8"), DEC("-0.9")], every=7)
    assert Kind.REVERSE not in kinds(short)  # 7 minutes
    held = series("power.active.total", [DEC("1.2"), DEC("-0.8"), DEC("-0.9"), DEC("-0.7")], every=7.5)
    f = kinds(held)[Kind.REVERSE]
    assert f.at == at(7.5) and "-0.7 kW" in f.detail


def test_reverse_is_normal_for_a_generator() -> None:
    readings = series("energy.active.export.total", [DEC(5), DEC(9)])
    assert Kind.REVERSE in kinds(readings)
    assert Kind.REVERSE not in kinds(readings, generator=True)


# --- clock ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drift", "found", "severity"),
    [
        (timedelta(minutes=5), False, None),
        (timedelta(minutes=5, seconds=1), True, Severity.WARNING),
        (-timedelta(minutes=5, seconds=1), True, Severity.WARNING),
        (timedelta(hours=2), True, Severity.CRITICAL),
    ],
)
def test_clock_drift(drift: timedelta, found: bool, severity: Severity | None) -> None:
    readings = [r("clock", 0, at(0) + drift)]
    got = kinds(readings)
    assert (Kind.CLOCK in got) is found
    if found:
        assert got[Kind.CLOCK].severity is severity
        assert ("ahead" if drift > timedelta(0) else "behind") in got[Kind.CLOCK].detail


def test_clock_uses_the_latest_reading_and_reads_naive_times_as_cst() -> None:
    readings = [r("clock", 0, at(0) + timedelta(hours=1)), r("clock", 15, at(15))]
    assert Kind.CLOCK not in kinds(readings)  # corrected since
    naive_cst = at(0).astimezone(CST).replace(tzinfo=None)
    assert Kind.CLOCK not in kinds([r("clock", 0, naive_cst)])


# --- energy while the relay is open --------------------------------------------------------------


def test_energy_while_relay_open() -> None:
    readings = [
        r("relay.open", 0, False), r("energy.active.import.total", 0, DEC("100.00")),
        r("relay.open", 15, True), r("energy.active.import.total", 15, DEC("100.50")),
        r("relay.open", 30, True), r("energy.active.import.total", 30, DEC("100.54")),
        r("energy.active.import.total", 45, DEC("100.55")),
    ]
    f = kinds(readings)[Kind.RELAY_OPEN_ENERGY]
    # counted from the first "open" read: 100.50 -> 100.55 = 0.05 kWh, exactly the minimum
    assert (f.severity, f.at) == (Severity.CRITICAL, at(15))
    assert "0.05 kWh" in f.detail
    assert Kind.RELAY_OPEN_ENERGY not in kinds(readings[:-1])  # 0.04 kWh: under the minimum


def test_no_relay_finding_once_closed_again_or_never_open() -> None:
    base = [r("relay.open", 0, True), r("energy.active.import.total", 0, DEC(1)),
            r("energy.active.import.total", 15, DEC(2))]
    assert Kind.RELAY_OPEN_ENERGY in kinds(base)
    assert Kind.RELAY_OPEN_ENERGY not in kinds(base + [r("relay.open", 20, False)])
    closed = [r("relay.open", 0, False)] + base[1:]
    assert Kind.RELAY_OPEN_ENERGY not in kinds(closed)


def test_other_meters_and_non_numbers_are_ignored() -> None:
    readings = [r("voltage.a", 0, DEC(100), meter="other"), r("voltage.a", 15, DEC(100), meter="other"),
                r("voltage.a", 0, "n/a"), r("voltage.a", 15, "n/a"), r("voltage.a", 15, DEC(220))]
    assert detect(M, readings, at(15)) == []


def test_a_healthy_meter_has_no_findings() -> None:
    readings = (series("voltage.a", [DEC(221)] * 4) + three_phase([("5", "5.5", "4.8")] * 4)
                + series("energy.active.import.total", [DEC(1), DEC(2), DEC(3), DEC(4)])
                + series("energy.active.export.total", [DEC(0)] * 4)
                + series("power.active.total", [DEC("2.2")] * 4)
                + series("relay.open", [False] * 4) + [r("clock", 45, at(45) + timedelta(seconds=20))])
    assert detect(M, readings, at(45)) == []


# --- the event store -----------------------------------------------------------------------------


@pytest.fixture
def store(state_where: Location) -> Iterator[AnomalyStore]:
    with AnomalyStore(state_where) as s:
        yield s


def finding(kind: Kind = Kind.VOLTAGE, minutes: float = 0, meter: str = M,
            severity: Severity = Severity.WARNING, detail: str = "low") -> Finding:
    ev = ({"meter": meter, "quantity": "voltage.a", "timestamp": at(minutes).isoformat(), "value": "190"},)
    return Finding(meter, kind, severity, at(minutes), detail, ev)


def test_event_lifecycle(store: AnomalyStore) -> None:
    checked = [(M, k) for k in Kind]
    opened, closed = store.update([finding()], checked, at(15))
    assert closed == [] and len(opened) == 1
    event = opened[0]
    assert (event.meter, event.kind, event.opened, event.last_seen, event.closed) == (M, Kind.VOLTAGE, at(0), at(15), None)

    # still there: the same event, updated; nothing opened
    opened, closed = store.update([finding(minutes=15, severity=Severity.CRITICAL, detail="lower")], checked, at(30))
    assert (opened, closed) == ([], [])
    (still,) = store.events("open")
    assert still.id == event.id and still.last_seen == at(30)
    assert (still.severity, still.detail) == (Severity.CRITICAL, "lower")
    assert [e["timestamp"] for e in still.evidence] == [at(0).isoformat(), at(15).isoformat()]

    # checked and gone: closed
    opened, closed = store.update([], checked, at(45))
    assert opened == [] and [(e.id, e.closed) for e in closed] == [(event.id, at(45))]
    assert store.events("open") == []

    # back again: a new event
    opened, _ = store.update([finding(minutes=60)], checked, at(60))
    assert opened[0].id != event.id
    assert [e.id for e in store.events()] == [opened[0].id, event.id]
    assert [e.id for e in store.events("closed")] == [event.id]


def test_an_unchecked_kind_stays_open(store: AnomalyStore) -> None:
    store.update([finding(Kind.CLOCK)], [], at(0))
    store.update([], [(M, Kind.VOLTAGE), ("other", Kind.CLOCK)], at(15))  # the clock was not read
    assert [e.kind for e in store.events("open")] == [Kind.CLOCK]
    _, closed = store.update([], [(M, Kind.CLOCK)], at(30))
    assert [e.kind for e in closed] == [Kind.CLOCK]


def test_events_filters_and_limit(store: AnomalyStore) -> None:
    store.update([finding(Kind.VOLTAGE), finding(Kind.CLOCK, 1), finding(Kind.CLOCK, 2, meter="B")], [], at(5))
    assert {(e.meter, e.kind) for e in store.events(kind=Kind.CLOCK)} == {(M, Kind.CLOCK), ("B", Kind.CLOCK)}
    assert [e.kind for e in store.events(meter=M, kind="clock_drift")] == [Kind.CLOCK]
    assert len(store.events(limit=2)) == 2
    with pytest.raises(ValueError):
        store.events("half-open")


def test_two_findings_of_one_kind_make_one_event(store: AnomalyStore) -> None:
    opened, _ = store.update([finding(detail="phase a"), finding(minutes=5, detail="phase c",
                                                               severity=Severity.CRITICAL)], [], at(10))
    (e,) = opened
    assert (e.detail, e.severity, e.opened) == ("phase a; phase c", Severity.CRITICAL, at(0))


def test_evidence_is_capped_keeping_the_start_and_the_latest(store: AnomalyStore) -> None:
    for i in range(EVIDENCE_PER_EVENT + 20):
        store.update([finding(minutes=i)], [], at(i))
    (e,) = store.events("open")
    stamps = [x["timestamp"] for x in e.evidence]
    assert len(stamps) == EVIDENCE_PER_EVENT
    assert stamps[0] == at(0).isoformat() and stamps[-1] == at(EVIDENCE_PER_EVENT + 19).isoformat()


def test_store_survives_reopening_and_stores_json(state_where: Location) -> None:
    with AnomalyStore(state_where) as s:
        s.update([finding()], [], at(0))
    with AnomalyStore(state_where) as s:
        assert len(s.events("open")) == 1
    if isinstance(state_where, Database):
        import psycopg

        conn, integrity = state_where.connect(), psycopg.IntegrityError
    else:
        conn, integrity = sqlite3.connect(state_where / "state.sqlite3"), sqlite3.IntegrityError
    try:
        (evidence,) = conn.execute("SELECT evidence FROM anomaly_evidence").fetchone()  # its own table
        with pytest.raises(integrity):  # never two open events for (meter, kind)
            conn.execute("INSERT INTO anomalies (meter, kind, severity, opened_ts, last_seen_ts, detail)"
                         " VALUES (?, 'voltage_out_of_limits', 'warning', 0, 0, '')", (M,))
    finally:
        conn.close()
    assert json.loads(evidence)[0]["value"] == "190"


def test_detect_and_store_together(store: AnomalyStore) -> None:
    low = series("voltage.a", [DEC(190), DEC(190)])
    found = detect(M, low, at(15))
    opened, _ = store.update(found, [(M, k) for k in Kind], at(15))
    assert [e.kind for e in opened] == [Kind.VOLTAGE]
    fine = low + [r("voltage.a", 30, DEC(220))]
    _, closed = store.update(detect(M, fine, at(30)), [(M, k) for k in Kind], at(30))
    assert [e.kind for e in closed] == [Kind.VOLTAGE]
