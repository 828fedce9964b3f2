"""The alarm store on both backends (SQLite and a PostgreSQL of the tests' own): raised once per
ongoing condition, refreshed in place, resolved with its history when the condition clears, an
operator's close kept while the condition goes on, the steps and their audit line in one
transaction, refusals that write nothing, paging, and the versioned migration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from meterd.control.state import ControlStore
from meterd.storage.alarms import (
    Action,
    AlarmConflictError,
    AlarmInputError,
    AlarmKind,
    AlarmNotFoundError,
    AlarmSeverity,
    AlarmState,
    AlarmStore,
    Condition,
)
from meterd.storage.database import Location

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def cond(key: str, *, severity: AlarmSeverity = AlarmSeverity.MAJOR, title: str = "t", since: datetime = T0,
         kind: AlarmKind = AlarmKind.ANOMALY, subject: str = "000000000001", **detail: object) -> Condition:
    return Condition(key, kind, subject, severity, title, since, detail)


@pytest.fixture
def store(state_where: Location) -> Iterator[AlarmStore]:
    with AlarmStore(state_where) as s:
        yield s


def test_one_alarm_per_ongoing_condition(store: AlarmStore) -> None:
    raised, resolved = store.sync([cond("anomaly:1"), cond("anomaly:1"), cond("outage:4", kind=AlarmKind.OUTAGE,
                                                                              subject="TA-1")], [], T0)
    assert len(raised) == 2 and resolved == []
    for minute in range(1, 4):  # polled again and again: nothing new
        assert store.sync([cond("anomaly:1", severity=AlarmSeverity.CRITICAL, title="worse", n=minute),
                           cond("outage:4", kind=AlarmKind.OUTAGE, subject="TA-1")],
                          ["anomaly:1", "outage:4"], T0 + timedelta(minutes=minute)) == ([], [])
    alarms, more = store.alarms()
    assert more is None and len(alarms) == 2
    first = store.alarm(raised[0])
    assert first is not None and first.severity is AlarmSeverity.CRITICAL and first.title == "worse"
    assert first.detail == {"n": 3} and first.raised_at == T0 and first.state is AlarmState.OPEN
    assert [s.action for s in first.history] == [Action.RAISED]
    assert store.counts() == {"open": 2, "acknowledged": 0, "closed": 0}
    # a failed command's alarm: the next failure shows the relay stuck
    [c], _ = store.sync([cond("command:m:trip", kind=AlarmKind.COMMAND_FAILED)], [], T0)
    store.sync([cond("command:m:trip", kind=AlarmKind.RELAY_STUCK)], [], T0 + timedelta(minutes=5))
    stuck = store.alarm(c)
    assert stuck is not None and stuck.kind is AlarmKind.RELAY_STUCK


def test_cleared_condition_is_resolved_and_keeps_its_history(store: AlarmStore) -> None:
    [a], _ = store.sync([cond("terminal:d1", kind=AlarmKind.TERMINAL_OFFLINE)], [], T0)
    store.act(a, Action.ACKNOWLEDGED, actor="li", now=T0 + timedelta(minutes=1), comment="seen")
    # not checked: nothing happens even though no condition came
    assert store.sync([], ["anomaly:9"], T0 + timedelta(minutes=2)) == ([], [])
    assert store.sync([], ["terminal:d1"], T0 + timedelta(minutes=3)) == ([], [a])
    done = store.alarm(a)
    assert done is not None and done.state is AlarmState.CLOSED and not done.ongoing
    assert done.closed_at == T0 + timedelta(minutes=3)
    assert [(s.action, s.by, s.comment) for s in done.history] == [
        (Action.RAISED, "meterd", None), (Action.ACKNOWLEDGED, "li", "seen"),
        (Action.RESOLVED, "meterd", "the condition cleared")]
    # the terminal goes offline again: a new alarm
    [b], _ = store.sync([cond("terminal:d1", kind=AlarmKind.TERMINAL_OFFLINE)], ["terminal:d1"], T0 + timedelta(hours=1))
    assert b != a and store.counts() == {"open": 1, "acknowledged": 0, "closed": 1}


def test_closed_by_an_operator_while_ongoing_is_not_raised_again(store: AlarmStore) -> None:
    [a], _ = store.sync([cond("command:000000000001:trip", kind=AlarmKind.RELAY_STUCK)], [], T0)
    store.act(a, "closed", actor="li", now=T0, comment="crew sent")
    for minute in (1, 2):
        assert store.sync([cond("command:000000000001:trip", kind=AlarmKind.RELAY_STUCK)],
                          ["command:000000000001:trip"], T0 + timedelta(minutes=minute)) == ([], [])
    assert store.sync([], ["command:000000000001:trip"], T0 + timedelta(minutes=3)) == ([], [a])
    done = store.alarm(a)
    assert done is not None and [s.action for s in done.history] == [Action.RAISED, Action.CLOSED, Action.RESOLVED]
    assert done.closed_at == T0  # the operator's close stands
    [b], _ = store.sync([cond("command:000000000001:trip", kind=AlarmKind.RELAY_STUCK)], [], T0 + timedelta(hours=1))
    assert b > a


def test_steps_with_their_audit_line_and_refusals_write_nothing(state_where: Location, store: AlarmStore) -> None:
    [a], _ = store.sync([cond("outage:1", kind=AlarmKind.OUTAGE, subject="TA-9")], [], T0)
    acked = store.act(a, Action.ACKNOWLEDGED, actor=" li ", now=T0, audit={"token_id": "t1"})
    assert acked.state is AlarmState.ACKNOWLEDGED and acked.history[-1].by == "li"
    assigned = store.act(a, Action.ASSIGNED, actor="li", now=T0, to="wang")
    assert assigned.assignee == "wang" and assigned.state is AlarmState.ACKNOWLEDGED
    refusals = [
        (lambda: store.act(a, Action.ACKNOWLEDGED, actor="li", now=T0), AlarmConflictError, "acknowledged already"),
        (lambda: store.act(a, Action.ASSIGNED, actor="li", now=T0, to="wang"), AlarmConflictError, "wang already"),
        (lambda: store.act(a, Action.CLOSED, actor="li", now=T0), AlarmInputError, "comment is required"),
        (lambda: store.act(a, Action.CLOSED, actor="li", now=T0, comment="x" * 2001), AlarmInputError, "at most 2000"),
        (lambda: store.act(a, Action.CLOSED, actor="li", now=T0, comment=b"bytes"), AlarmInputError, "must be text"),
        (lambda: store.act(a, Action.CLOSED, actor="", now=T0, comment="c"), AlarmInputError, "operator"),
        (lambda: store.act(a, Action.ASSIGNED, actor="li", now=T0, to="a\nb"), AlarmInputError, "one line"),
        (lambda: store.act(a, Action.RAISED, actor="li", now=T0), AlarmInputError, "not an operator's step"),
        (lambda: store.act(999, Action.CLOSED, actor="li", now=T0, comment="c"), AlarmNotFoundError, "no alarm #999"),
        (lambda: store.act(10**30, Action.CLOSED, actor="li", now=T0, comment="c"), AlarmNotFoundError, "no alarm"),
        (lambda: store.act(-1, Action.CLOSED, actor="li", now=T0, comment="c"), AlarmNotFoundError, "no alarm #-1"),
    ]
    before = store.alarm(a)
    for call, error, words in refusals:
        with pytest.raises(error, match=words):
            call()
    assert store.alarm(a) == before
    closed = store.act(a, Action.CLOSED, actor="wang", now=T0 + timedelta(hours=1), comment="breaker reset")
    assert closed.state is AlarmState.CLOSED and closed.closed_at == T0 + timedelta(hours=1)
    with pytest.raises(AlarmConflictError, match="closed already"):
        store.act(a, Action.CLOSED, actor="wang", now=T0, comment="again")
    with ControlStore(state_where) as control:  # the audit log the prepaid store keeps
        rows = [(r.actor, r.action, r.subject, r.detail["id"], r.detail["from"]) for r in control.audit_log(
            subject="TA-9")]
        token = control.audit_log(subject="TA-9")[0].detail["token_id"]
    assert rows == [("li", "alarm-acknowledge", "TA-9", a, "open"), ("li", "alarm-assign", "TA-9", a, "acknowledged"),
                    ("wang", "alarm-close", "TA-9", a, "acknowledged")]
    assert token == "t1"


def test_pages_newest_first_with_filters(store: AlarmStore) -> None:
    ids, _ = store.sync([cond(f"anomaly:{i}", subject=f"M{i % 3}") for i in range(25)], [], T0)
    seen: list[int] = []
    before = None
    while True:
        page, before = store.alarms(limit=10, before=before)
        seen += [a.id for a in page]
        if before is None:
            break
    assert seen == sorted(ids, reverse=True)
    m1, _ = store.alarms(subject="M1", limit=100)
    assert {a.subject for a in m1} == {"M1"} and len(m1) == 8
    assert store.alarms(kind=AlarmKind.OUTAGE)[0] == []
    store.act(ids[0], Action.ACKNOWLEDGED, actor="li", now=T0)
    assert [a.id for a in store.alarms(state=AlarmState.ACKNOWLEDGED)[0]] == [ids[0]]
    assert store.counts(subject="M0") == {"open": 8, "acknowledged": 1, "closed": 0}


def test_a_huge_detail_is_bounded(store: AlarmStore) -> None:
    [a], _ = store.sync([cond("anomaly:1", text="x" * 100_000, title="t" * 1000)], [], T0)
    found = store.alarm(a)
    assert found is not None and len(found.title) == 300 and "truncated" in found.detail


def test_migrated_once_and_refused_when_newer(state_where: Location, store: AlarmStore) -> None:
    from meterd.errors import ConfigError

    assert store._schema_version() == 1
    with AlarmStore(state_where) as again:  # opened again: nothing left to do
        assert again._schema_version() == 1
        with again._write() as conn:
            conn.execute("UPDATE schema_versions SET version = 7 WHERE store = 'alarms'")
    with pytest.raises(ConfigError, match="newer than this meterd knows"):
        AlarmStore(state_where)


def test_meterd_migrate_brings_the_alarm_tables_too() -> None:
    from meterd.cli.migrate import known_versions, stores

    assert dict(stores())["alarms"] is AlarmStore
    assert known_versions()["alarms"] == len(AlarmStore.MIGRATIONS) == 1


def test_since_when_a_polled_terminal_is_offline(state_where: Location) -> None:
    from meterd.api.alarms import terminal_offline_since
    from meterd.storage.quality import QualityStore

    with QualityStore(state_where) as quality:
        for channel in ("d1", "d2", "d3"):
            quality.record_watch(channel, T0)
        quality.record_online("d1", T0, T0 + timedelta(minutes=30))  # online, then dropped twice
        quality.record_online("d1", T0 + timedelta(hours=1), T0 + timedelta(hours=2))
        quality.record_online("d3", T0)  # online now
        quality.record_online("d4", T0, T0 + timedelta(hours=1))  # never polled by the master's rounds
        assert terminal_offline_since(quality) == {"d1": T0 + timedelta(hours=2), "d2": T0,
                                                   "d4": T0 + timedelta(hours=1)}
