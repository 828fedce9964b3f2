"""Retention on both backends (real SQLite files, a PostgreSQL server of the tests' own): readings
and attempts older than the policy go, the recent ones stay, the newest reading of each meter and
quantity stays whatever its age, and daily registers, the ledger, the audit log and the quality
rollup are untouched; a dry run counts the same rows and changes nothing; SQLite prunes in many
small transactions and stops between two when told to."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from meterd.analytics.energy import IMPORT_DAILY, DailyRegisterStore
from meterd.clock import CST
from meterd.control.state import AccountSpec, ControlStore
from meterd.readings import Quality, Reading
from meterd.storage import open_store
from meterd.storage.database import Database
from meterd.storage.quality import QualityStore
from meterd.storage.retention import Policy, prune
from meterd.storage.sqlite import Attempt, Pruned, SqliteStore

NOW = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)  # 12:00 site time
LIVE, SILENT = "000000000001", "000000000002"
QUANTITIES = ("energy.active.import.total", "voltage.a")
DAYS = 30
POLICY = Policy(keep_readings=timedelta(days=10), keep_attempts=timedelta(days=5), at=time(3, 30))
READINGS_CUT = datetime(2026, 11, 21, tzinfo=UTC)  # the UTC day 10 days before NOW
ATTEMPTS_CUT = datetime(2026, 11, 25, 16, 0, tzinfo=UTC)  # the site day (CST) 5 days before NOW


def _store(where):
    return open_store(where, clock=lambda: NOW)


def _site(where, now: datetime = NOW) -> dict[str, int]:
    """A site with 30 days of history before ``now``: LIVE read every 6 hours until now, SILENT
    (dead for 20 days) until 20 days ago; an attempt an hour; daily registers and payments.
    Returns what :data:`POLICY` should prune from each table at ``now``."""
    readings, attempts = [], []
    for hours in range(0, DAYS * 24, 6):
        at = now - timedelta(hours=hours)
        for q in QUANTITIES:
            readings.append(Reading(LIVE, q, at, Decimal(10_000 - hours), "kWh"))
            if hours >= 20 * 24:
                readings.append(Reading(SILENT, q, at, Decimal(5_000 - hours), "kWh"))
    for hours in reversed(range(DAYS * 24)):  # recorded as they happen, oldest first
        attempts.append(Attempt(LIVE, "bus1", "00010000", now - timedelta(hours=hours, minutes=1), "ok", 0.1))
    with open_store(where, clock=lambda: now) as store:
        store.write_readings(readings)
        store.record_attempts(attempts)
    with DailyRegisterStore(where) as registers:
        registers.record([Reading(LIVE, IMPORT_DAILY, datetime(2026, 11, d, tzinfo=UTC) - timedelta(hours=8),
                                  Decimal(1000 + d), "kWh", Quality.GOOD) for d in range(1, 31)])
    with ControlStore(where) as control:
        control.upsert_accounts([AccountSpec("A1", "res", {LIVE: Decimal(1)})], actor="test", now=now - timedelta(days=DAYS))
        for d in range(DAYS):
            control.pay("A1", "10.00", f"R{d}", actor="counter", now=now - timedelta(days=d))
    readings_cut, attempts_cut = POLICY.readings_cut(now), POLICY.attempts_cut(now)
    old_live = sum(1 for r in readings if r.meter == LIVE and r.timestamp < readings_cut)
    old_silent = sum(1 for r in readings if r.meter == SILENT) - len(QUANTITIES)  # its newest per quantity stays
    return {"readings": old_live + old_silent, "attempts": sum(1 for a in attempts if a.timestamp < attempts_cut)}


def _kept(where) -> dict[str, object]:
    """Everything retention must not touch."""
    with DailyRegisterStore(where) as registers, ControlStore(where) as control, QualityStore(where) as quality:
        quality_rows = quality._conn.execute("SELECT day, meter, outcome, count FROM quality_daily ORDER BY day").fetchall()
        return {"registers": registers.days_of(LIVE), "ledger": [(r.key, r.amount) for r in control.ledger("A1")],
                "audit": len(control.audit_log(subject="A1")), "balance": control.balance("A1"),
                "quality": [tuple(r) for r in quality_rows]}


def _counts(where) -> tuple[int, int]:
    with _store(where) as store:
        return store.count_readings(), len(store.attempts())


def test_old_rows_go_recent_ones_and_everything_else_stay(state_where):
    due = _site(state_where)
    with QualityStore(state_where) as quality:
        quality.update()  # the daemon's rollup has counted the attempts
    kept = _kept(state_where)
    before = _counts(state_where)

    with _store(state_where) as store:
        dry = prune(store, POLICY, NOW, dry_run=True)
    assert (dry.readings.rows, dry.attempts.rows) == (due["readings"], due["attempts"])
    assert _counts(state_where) == before  # the dry run changed nothing

    with _store(state_where) as store:
        done = prune(store, POLICY, NOW)
        assert (done.readings.rows, done.attempts.rows) == (due["readings"], due["attempts"])
        assert done.readings_before == READINGS_CUT and done.attempts_before == ATTEMPTS_CUT
        assert _counts(state_where) == (before[0] - due["readings"], before[1] - due["attempts"])
        for q in QUANTITIES:
            live = store.readings(LIVE, quantity=q)
            assert min(r.timestamp for r in live) >= READINGS_CUT  # the old ones gone
            assert len(live) == sum(1 for h in range(0, DAYS * 24, 6) if NOW - timedelta(hours=h) >= READINGS_CUT)
            [last] = store.readings(SILENT, quantity=q)  # dead for 20 days: its last value stays
            assert last == store.latest(SILENT)[q] and last.timestamp == NOW - timedelta(days=20)
        assert min(a.timestamp for a in store.attempts()) >= ATTEMPTS_CUT
    assert _kept(state_where) == kept  # registers, ledger, audit, balance, quality rollup untouched

    with _store(state_where) as store:  # again: nothing left to do
        again = prune(store, POLICY, NOW)
    assert (again.readings.rows, again.attempts.rows) == (0, 0)


def test_attempts_not_yet_counted_by_the_quality_rollup_are_folded_in_before_they_go(state_where):
    _site(state_where)  # no rollup has run
    with _store(state_where) as store:
        prune(store, POLICY, NOW)
    with QualityStore(state_where) as quality:
        total = quality._conn.execute("SELECT SUM(count) FROM quality_daily").fetchone()[0]
    assert total == DAYS * 24  # every attempt counted, the pruned ones included


def test_forever_keeps_everything(state_where):
    _site(state_where)
    before = _counts(state_where)
    with _store(state_where) as store:
        report = prune(store, Policy(None, None), NOW)
    assert report.readings is None and report.attempts is None
    assert _counts(state_where) == before
    assert "no readings (readings kept for ever)" in report.line()


def test_the_newest_attempt_stays_so_sqlite_never_hands_out_an_id_again(tmp_path):
    with SqliteStore(tmp_path) as store:
        store.record_attempts([Attempt(LIVE, "bus1", "00010000", NOW - timedelta(days=100 - i), "ok") for i in range(3)])
        pruned = store.prune_attempts(NOW)
        assert (pruned.rows, pruned.transactions) == (2, 1)
        [left] = store.attempts()
        assert left.timestamp == NOW - timedelta(days=98)
        store.record_attempts([Attempt(LIVE, "bus1", "00010000", NOW, "ok")])
    conn = sqlite3.connect(tmp_path / "state.sqlite3")
    assert [r[0] for r in conn.execute("SELECT id FROM attempts ORDER BY id")] == [3, 4]  # ids go on counting
    conn.close()


class StopAfter(threading.Event):
    """A stop event that is set once it has been looked at ``n`` times."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_sqlite_prunes_in_small_transactions_and_stops_between_two(tmp_path):
    with SqliteStore(tmp_path) as store:
        store.write_readings([Reading(f"{m:012d}", q, NOW - timedelta(days=40, minutes=15 * i), Decimal(i))
                              for m in range(3) for q in QUANTITIES for i in range(200)]
                             + [Reading(f"{m:012d}", q, NOW, Decimal(1)) for m in range(3) for q in QUANTITIES])
        total = store.count_readings()
        halt = StopAfter(1)  # told to stop during the first transaction: it ends after it
        first = store.prune_readings(NOW - timedelta(days=1), rows=50, pause=0, stop=halt)
        assert first == Pruned(50, 1, first.longest)
        assert store.count_readings() == total - 50
        rest = store.prune_readings(NOW - timedelta(days=1), rows=50, pause=0)
        assert rest.rows == 3 * 2 * 200 - 50 and rest.transactions == rest.rows // 50  # 50 rows each
        assert store.count_readings() == 3 * 2  # the recent ones
        assert all(len(store.readings(f"{m:012d}")) == 2 for m in range(3))


def test_the_writer_goes_on_while_sqlite_prunes(tmp_path):
    """A prune of a backlog lets the collector's writer in between its transactions: batches
    written from another thread meanwhile all land."""
    with SqliteStore(tmp_path) as store:
        store.write_readings([Reading(LIVE, "p", NOW - timedelta(days=50, seconds=i), Decimal(i)) for i in range(20_000)])
        written = []

        def writer() -> None:
            for i in range(20):
                store.write_readings([Reading(SILENT, "p", NOW + timedelta(seconds=i), Decimal(i))])
                written.append(i)

        thread = threading.Thread(target=writer)
        thread.start()
        pruned = store.prune_readings(NOW - timedelta(days=1), rows=1000, pause=0.005)
        thread.join()
        assert pruned.rows == 20_000 - 1 and pruned.transactions >= 20
        assert len(written) == 20 and len(store.readings(SILENT)) == 20


def test_postgresql_drops_whole_day_partitions_and_keeps_the_silent_meters_last_value(pg_url):
    db = Database(pg_url)
    _site(db)
    import psycopg

    def partitions() -> list[str]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            return sorted(r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'readings'::regclass AND c.relname <> 'readings_outside'"))

    assert partitions()[0] == f"readings_{(NOW - timedelta(hours=DAYS * 24 - 6)).date():%Y%m%d}"
    with _store(db) as store:
        prune(store, POLICY, NOW)
    assert partitions()[0] == f"readings_{READINGS_CUT.date():%Y%m%d}"  # every older day dropped whole
    with psycopg.connect(pg_url, autocommit=True) as conn:
        outside = conn.execute("SELECT meter, quantity FROM readings_outside ORDER BY quantity").fetchall()
    assert outside == [(SILENT, q) for q in sorted(QUANTITIES)]  # the kept last values, their days gone


def test_policy_cuts_and_the_daily_time():
    policy = Policy(timedelta(days=400), timedelta(days=90), time(3, 30))
    at = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)  # 04:00 site time on 12-02
    assert policy.readings_cut(at) == datetime(2025, 10, 27, tzinfo=UTC)
    assert policy.attempts_cut(at) == datetime(2026, 9, 2, 16, 0, tzinfo=UTC)  # 2026-09-03 00:00 site time
    assert policy.next_run(at) == datetime(2026, 12, 2, 19, 30, tzinfo=UTC)  # 03:30 site time on 12-03
    assert policy.next_run(datetime(2026, 12, 1, 19, 29, tzinfo=UTC)) == datetime(2026, 12, 1, 19, 30, tzinfo=UTC)
    assert Policy.from_seconds(None, 86400.0, time(1, 0)) == Policy(None, timedelta(days=1), time(1, 0))


def test_recomputing_the_quality_of_a_day_whose_attempts_were_pruned_keeps_its_rollup(state_where):
    """``meterd quality --recompute`` of a day older than keep_attempts: the rollup is all that is
    left of it, and a recompute from an empty log must not wipe it."""
    _site(state_where)
    old_day = (ATTEMPTS_CUT - timedelta(days=2)).astimezone(CST).date()
    with QualityStore(state_where) as quality:
        quality.update()
        counted = quality.rollup(old_day)
    assert counted == 24
    with _store(state_where) as store:
        prune(store, POLICY, NOW)
    with QualityStore(state_where) as quality:
        assert quality.rollup(old_day) == counted
        recent = (NOW - timedelta(days=1)).astimezone(CST).date()
        assert quality.rollup(recent) == 24  # a day still in the log is recomputed from it as before
