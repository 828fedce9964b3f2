"""What one anomaly check writes of the events' evidence (a real state database, both backends):
an evidence the check does not change is neither rewritten nor, with it, the event's row grown;
one that changes is merged exactly as before (how it started, its latest, dedup by quantity and
timestamp); an old database's evidence is moved to its table by the store's migration."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterd.storage.anomalies import (
    _SCHEMA,
    EVIDENCE_EVERY,
    EVIDENCE_PER_EVENT,
    AnomalyStore,
    Finding,
    Kind,
    Severity,
    _merge_evidence,
)
from meterd.storage.database import Database, Location, translate_schema

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def entry(meter: str, minutes: int, quantity: str = "voltage.a", value: str = "171.3") -> dict[str, str]:
    return {"meter": meter, "quantity": quantity, "timestamp": at(minutes).isoformat(), "value": value}


def finding(meter: str, evidence: tuple[dict[str, str], ...], kind: Kind = Kind.VOLTAGE,
            severity: Severity = Severity.WARNING, detail: str = "low") -> Finding:
    return Finding(meter, kind, severity, T0, detail, evidence)


@contextmanager
def sql(where: Location) -> Iterator[Any]:
    """A connection of the test's own to the store's database (autocommitting)."""
    if isinstance(where, Database):
        with where.pool().connection() as conn:
            conn.autocommit = True
            yield conn
    else:
        conn = sqlite3.connect(where / "state.sqlite3", isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()


def count_evidence_writes(where: Location) -> None:
    """A trigger counts every row write of an evidence into ``evidence_writes``: an UPDATE setting
    ``anomalies.evidence``, an INSERT or UPDATE of ``anomaly_evidence`` (when there is one)."""
    with sql(where) as conn:
        conn.execute("CREATE TABLE evidence_writes (n INTEGER)")
        tables = [("anomalies", "UPDATE OF evidence")]
        if isinstance(where, Database):
            if conn.execute("SELECT to_regclass('anomaly_evidence')").fetchone()[0] is not None:
                tables.append(("anomaly_evidence", "INSERT OR UPDATE"))
            conn.execute("CREATE FUNCTION count_evidence() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN INSERT INTO evidence_writes VALUES (1); RETURN NEW; END $$")
            for i, (table, what) in enumerate(tables):
                conn.execute(f"CREATE TRIGGER count_{i} AFTER {what} ON {table} FOR EACH ROW "
                             "EXECUTE FUNCTION count_evidence()")
        else:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'anomaly_evidence'").fetchone():
                tables += [("anomaly_evidence", "INSERT"), ("anomaly_evidence", "UPDATE")]
            for i, (table, what) in enumerate(tables):
                conn.execute(f"CREATE TRIGGER count_{i} AFTER {what} ON {table} "
                             "BEGIN INSERT INTO evidence_writes VALUES (1); END")


def evidence_writes(where: Location) -> int:
    with sql(where) as conn:
        return int(conn.execute("SELECT count(*) FROM evidence_writes").fetchone()[0])


@pytest.fixture
def store(state_where: Location) -> Iterator[AnomalyStore]:
    with AnomalyStore(state_where) as s:
        yield s


def test_a_check_that_changes_no_evidence_writes_none(store: AnomalyStore, state_where: Location) -> None:
    meters = [f"{i:012d}" for i in range(3)]
    full = tuple(entry(meters[2], i) for i in range(EVIDENCE_PER_EVENT))
    store.update([finding(meters[0], (entry(meters[0], 0),)), finding(meters[1], (entry(meters[1], 0),)),
                  finding(meters[2], full), finding(meters[0], (entry(meters[0], 0, "clock"),), Kind.CLOCK)], [], at(1))
    count_evidence_writes(state_where)
    checked = [(m, k) for m in meters for k in (Kind.VOLTAGE, Kind.CLOCK, Kind.NO_DATA)]
    # the same newest reading again (no data), an entry of the middle of a full evidence again
    same = [finding(meters[0], (entry(meters[0], 0),), severity=Severity.CRITICAL, detail="lower"),
            finding(meters[1], (entry(meters[1], 0),)), finding(meters[2], (full[30], full[-1])),
            finding(meters[0], (entry(meters[0], 0, "clock"),), Kind.CLOCK)]
    for minute in (2, 3):
        assert store.update(same, checked, at(minute)) == ([], [])
        assert evidence_writes(state_where) == 0
    events = {(e.meter, e.kind): e for e in store.events("open")}
    assert {e.last_seen for e in events.values()} == {at(3)}  # every event seen, none rewritten
    assert (events[meters[0], Kind.VOLTAGE].severity, events[meters[0], Kind.VOLTAGE].detail) == (Severity.CRITICAL,
                                                                                                    "lower")
    assert [e["timestamp"] for e in events[meters[2], Kind.VOLTAGE].evidence] == [e["timestamp"] for e in full]
    # one new reading: that event's evidence is written, once, and no other
    store.update([*same[:1], finding(meters[1], (entry(meters[1], 0), entry(meters[1], 4))), *same[2:]], checked, at(4))
    assert evidence_writes(state_where) == 1
    (event,) = store.events("open", meter=meters[1])
    assert [e["timestamp"] for e in event.evidence] == [at(0).isoformat(), at(4).isoformat()]
    # its two entries again, in the other order: nothing written
    store.update([finding(meters[1], (entry(meters[1], 4), entry(meters[1], 0)))], checked[3:6], at(5))
    assert evidence_writes(state_where) == 1


def test_merged_evidence_is_as_merging_every_check(store: AnomalyStore) -> None:
    """Evidence through many checks of random old, dropped and new entries, the same keys again or
    not, several findings of a meter in one check: the stored evidence is always what merging every
    finding's evidence in turn (the cap keeping how it started and its latest) makes of it."""
    rng = random.Random(1376)
    meters = [f"{i:012d}" for i in range(4)]
    model: dict[str, list[dict[str, str]]] = {}
    for check in range(120):
        findings = []
        for m in meters:
            if rng.random() < 0.15:
                continue  # no finding: the event closes, a later one opens a new event
            stamps = rng.choice([[check], [check, check - 1], [rng.randrange(0, check + 1)],
                                 rng.sample(range(check + 1), min(3, check + 1))])
            values = tuple(entry(m, s, rng.choice(["voltage.a", "voltage.b"]), str(check)) for s in stamps)
            findings += [finding(m, values[:1]), finding(m, values[1:])] if len(values) > 1 else [finding(m, values)]
        _, closed = store.update(findings, [(m, Kind.VOLTAGE) for m in meters], at(check))
        for e in closed:
            model.pop(e.meter)
        for f in findings:
            model[f.meter] = _merge_evidence(model.get(f.meter, []), f.evidence)
        stored = {e.meter: list(e.evidence) for e in store.events("open")}
        assert stored == {m: ev for m, ev in model.items() if ev}, f"check {check}"
        assert all(len(ev) <= EVIDENCE_PER_EVENT for ev in stored.values())


def test_an_old_database_has_its_evidence_moved(state_where: Location) -> None:
    old = [entry("A", 0), entry("A", 1)]
    with sql(state_where) as conn:
        for statement in translate_schema(_SCHEMA) if isinstance(state_where, Database) else [_SCHEMA]:
            (conn.execute if isinstance(state_where, Database) else conn.executescript)(statement)
        import json

        conn.execute("INSERT INTO anomalies (meter, kind, severity, opened_ts, last_seen_ts, detail, evidence) "
                     "VALUES ('A', 'voltage_out_of_limits', 'warning', 0, 0, 'low', "
                     f"'{json.dumps(old)}')")
    with AnomalyStore(state_where) as store:
        (event,) = store.events("open")
        assert list(event.evidence) == old
        store.update([finding("A", (entry("A", 1), entry("A", 2)))], [], at(2))
        (event,) = store.events("open")
        assert list(event.evidence) == [*old, entry("A", 2)]
    with sql(state_where) as conn:
        assert conn.execute("SELECT evidence FROM anomalies").fetchone()[0] == "[]"
        assert conn.execute("SELECT version FROM schema_versions WHERE store = 'anomalies'").fetchone()[0] == 2


def test_a_detection_round_takes_evidence_once_a_window(store: AnomalyStore, state_where: Location) -> None:
    """A meter read every minute (new evidence every check): with ``evidence_every`` an event's
    evidence is written once in each window of it, the events opened together in different checks;
    severity, detail and last_seen every check; how it started kept, its latest at most a window old."""
    meters = [f"{i:012d}" for i in range(30)]
    store.update([finding(m, (entry(m, 0),)) for m in meters], [], at(0), evidence_every=EVIDENCE_EVERY)
    window = int(EVIDENCE_EVERY.total_seconds() // 60)
    took: dict[str, list[int]] = {m: [] for m in meters}
    for minute in range(1, 3 * window + 1):
        store.update([finding(m, (entry(m, minute),), detail=f"low {minute}") for m in meters],
                     [(m, Kind.VOLTAGE) for m in meters], at(minute), evidence_every=EVIDENCE_EVERY)
        events = store.events("open", limit=100)
        assert {(e.last_seen, e.detail) for e in events} == {(at(minute), f"low {minute}")}
        for e in events:
            assert e.evidence[0]["timestamp"] == at(0).isoformat()
            assert at(minute) - datetime.fromisoformat(e.evidence[-1]["timestamp"]) < EVIDENCE_EVERY
            if e.evidence[-1]["timestamp"] == at(minute).isoformat():
                took[e.meter].append(minute)
    for m, minutes in took.items():  # once in each window of its own
        assert len(minutes) == 3 and minutes[1] - minutes[0] == minutes[2] - minutes[1] == window, (m, minutes)
    assert len({minutes[0] for minutes in took.values()}) > 5  # not all in one check
    # without it (a command's anomaly, the door's): every finding's evidence, as before
    store.update([finding(meters[0], (entry(meters[0], 100),))], [], at(100))
    (event,) = store.events("open", meter=meters[0])
    assert event.evidence[-1]["timestamp"] == at(100).isoformat()
