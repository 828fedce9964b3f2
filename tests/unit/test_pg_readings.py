"""PostgresStore's own behaviour, against the tests' PostgreSQL: day partitions made on demand (and
by several stores at once), retention by whole partitions, absurd timestamps kept out of the
partition scheme, schema versions, the lock that keeps attempt ids in commit order.

What both backends share (round trips, replays, queries) is in test_storage.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from meterd.errors import ConfigError, StorageError
from meterd.readings import Reading
from meterd.storage import Attempt, PostgresStore
from meterd.storage.database import WRITE_LOCK, Database
from meterd.storage.postgres import OUTSIDE

NOW = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)  # the stores' clock: partitions up to 2024-03-07


def clock() -> datetime:
    return NOW


@pytest.fixture
def db(pg_url: str) -> Database:
    return Database(pg_url, pool_size=2)


@pytest.fixture
def store(db: Database) -> Iterator[PostgresStore]:
    with PostgresStore(db, clock=clock) as s:
        yield s


def sql(db: Database, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with db.pool().connection() as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def day_partitions(db: Database) -> list[str]:
    rows = sql(db, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                   " WHERE i.inhparent = 'readings'::regclass ORDER BY 1")
    return [str(name) for (name,) in rows if name != OUTSIDE]


def outside(db: Database) -> int:
    ((n,),) = sql(db, f"SELECT COUNT(*) FROM {OUTSIDE}")
    return int(n)  # type: ignore[call-overload]


def r(at: datetime, meter: str = "000000000001", quantity: str = "energy.active.import.total",
      value: Decimal = Decimal("1.00")) -> Reading:
    return Reading(meter, quantity, at, value, "kWh")


# --- partitions ----------------------------------------------------------------------------------


def test_a_batch_over_three_days_makes_three_partitions(db: Database, store: PostgresStore) -> None:
    assert day_partitions(db) == []
    batch = [
        r(datetime(2024, 3, 1, 23, 59, 59, 999_000, tzinfo=UTC)),  # the last millisecond of a day
        r(datetime(2024, 3, 2, tzinfo=UTC)),  # the first of the next
        r(datetime(2024, 3, 3, 12, tzinfo=UTC), quantity="voltage.a"),
        r(datetime(2024, 3, 3, 12, tzinfo=UTC)),
    ]
    assert store.write_readings(batch) == 4
    assert day_partitions(db) == ["readings_20240301", "readings_20240302", "readings_20240303"]
    placed = sql(db, "SELECT tableoid::regclass::text, ts FROM readings ORDER BY ts, quantity")
    assert [name for name, _ in placed] == ["readings_20240301", "readings_20240302", "readings_20240303",
                                            "readings_20240303"]
    assert outside(db) == 0
    store.write_readings(batch)  # the same days again: nothing new
    assert day_partitions(db) == ["readings_20240301", "readings_20240302", "readings_20240303"]
    assert store.count_readings() == 4
    assert store.readings("000000000001") == sorted(batch, key=lambda x: (x.timestamp, x.quantity))


def test_each_partition_has_the_key_and_the_meter_time_index(db: Database, store: PostgresStore) -> None:
    store.write_readings([r(NOW)])
    defs = sorted(str(d) for (d,) in sql(db, "SELECT indexdef FROM pg_indexes WHERE tablename = 'readings_20240305'"))
    assert len(defs) == 2
    assert "UNIQUE" in defs[1] and "(meter, quantity, ts)" in defs[1]  # the primary key, through the parent's
    assert "(meter, ts)" in defs[0]
    with pytest.raises(psycopg.errors.UniqueViolation), db.pool().connection() as conn:
        conn.execute("INSERT INTO readings_20240305 SELECT * FROM readings_20240305")


def test_stores_making_the_same_days_at_once_all_succeed(db: Database) -> None:
    """Four stores (four nodes: each knows no partition yet) write batches over the same three new
    days at the same moment; each day is made once and every batch lands."""
    stores = [PostgresStore(db, clock=clock) for _ in range(4)]
    days = [datetime(2024, 3, d, 6, tzinfo=UTC) for d in (2, 3, 4)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def write(i: int, s: PostgresStore) -> None:
        start.wait()
        try:
            s.write_readings([r(at, meter=f"{i:012d}") for at in days])
        except BaseException as exc:  # noqa: BLE001 -- the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert day_partitions(db) == ["readings_20240302", "readings_20240303", "readings_20240304"]
    assert stores[0].count_readings() == 12 and outside(db) == 0
    for s in stores:
        s.close()


def test_a_partition_someone_else_made_is_used(db: Database, store: PostgresStore) -> None:
    lo = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
    sql(db, f"CREATE TABLE readings_20240304 PARTITION OF readings FOR VALUES FROM ({lo}) TO ({lo + 86_400_000})")
    store.write_readings([r(datetime(2024, 3, 4, 1, tzinfo=UTC))])
    assert day_partitions(db) == ["readings_20240304"]
    assert sql(db, "SELECT COUNT(*) FROM readings_20240304") == [(1,)]


def test_a_long_query_does_not_hold_up_the_writer(db: Database) -> None:
    """A report holding the table while a new day's partition is due: the batch goes to
    readings_outside after the lock timeout instead of waiting (and making every query after it
    wait); the partition is made on a later try and the rows move in."""
    now = [NOW]
    with PostgresStore(db, clock=lambda: now[0], lock_timeout=timedelta(milliseconds=200)) as s:
        s.write_readings([r(NOW)])
        with psycopg.connect(db.url, autocommit=True) as report, report.transaction():
            report.execute("SELECT COUNT(*) FROM readings")  # holds every partition until it ends
            started = time.monotonic()
            writer = threading.Thread(target=lambda: (s.write_readings([r(NOW + timedelta(days=1))]),
                                                      # the next batch does not try again
                                                      s.write_readings([r(NOW + timedelta(days=1, minutes=1))])))
            writer.start()
            writer.join(5)
            took = time.monotonic() - started
            stuck = writer.is_alive()
        writer.join()
        assert not stuck and took < 2.0  # one lock timeout (0.2 s), not two, not the report's length
        assert (day_partitions(db), outside(db)) == (["readings_20240305"], 2)
        now[0] += timedelta(seconds=31)
        s.write_readings([r(NOW + timedelta(days=1, minutes=2))])
        assert (day_partitions(db), outside(db)) == (["readings_20240305", "readings_20240306"], 0)
        assert s.count_readings() == 4


# --- retention -----------------------------------------------------------------------------------


def test_retention_behind_a_long_query_gives_up_and_drops_nothing(db: Database) -> None:
    with PostgresStore(db, clock=clock, lock_timeout=timedelta(milliseconds=200)) as s:
        s.write_readings([r(datetime(2024, 3, d, tzinfo=UTC)) for d in (1, 2, 3)])
        with psycopg.connect(db.url, autocommit=True) as report, report.transaction():
            report.execute("SELECT COUNT(*) FROM readings")
            with pytest.raises(StorageError, match="readings before 2024-03-03 not dropped"):
                s.drop_readings_before(date(2024, 3, 3))
        assert s.count_readings() == 3
        s.drop_readings_before(date(2024, 3, 3))
        assert s.count_readings() == 1


def test_retention_drops_older_partitions_and_keeps_newer_readings(db: Database, store: PostgresStore) -> None:
    kept = [r(datetime(2024, 3, d, h, tzinfo=UTC)) for d in (3, 4) for h in (0, 23)]
    far = [r(datetime(1970, 1, 1, tzinfo=UTC), quantity="clock"), r(datetime(9999, 1, 1, tzinfo=UTC), quantity="clock")]
    store.write_readings([r(datetime(2024, 3, d, h, tzinfo=UTC)) for d in (1, 2) for h in (0, 23)] + kept + far)
    other = PostgresStore(db, clock=clock)  # another node, which has written to 2024-03-01 before
    other.write_readings([r(datetime(2024, 3, 1, 12, tzinfo=UTC))])

    store.drop_readings_before(date(2024, 3, 3))
    assert day_partitions(db) == ["readings_20240303", "readings_20240304"]
    assert store.readings("000000000001") == [*kept, far[1]]  # 1970 went with the cut, 9999 stays
    assert outside(db) == 1

    other.write_readings([r(datetime(2024, 3, 1, 13, tzinfo=UTC))])  # its partition gone under it: not lost
    assert other.readings("000000000001", until=datetime(2024, 3, 2, tzinfo=UTC))[0].timestamp.hour == 13
    store.drop_readings_before(date(2024, 3, 3))
    assert other.readings("000000000001", until=datetime(2024, 3, 2, tzinfo=UTC)) == []
    store.write_readings([r(datetime(2024, 3, 1, 14, tzinfo=UTC))])  # this store made it again
    assert "readings_20240301" in day_partitions(db)
    other.close()


# --- absurd timestamps ---------------------------------------------------------------------------


def test_absurd_timestamps_are_stored_without_partitions(db: Database, store: PostgresStore,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    absurd = [
        r(datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC), meter="000000000042"),
        r(datetime(1970, 1, 1, tzinfo=UTC)),
        r(datetime(1999, 12, 31, 23, 59, tzinfo=UTC)),  # the day before EARLIEST
        r(NOW + timedelta(days=3)),  # a day past the window (today + 2)
        # a terminal pushing a thousand days of garbage: still no table
        *(r(datetime(3000, 1, 1, tzinfo=UTC) + timedelta(days=n), quantity="q") for n in range(1000)),
    ]
    with caplog.at_level(logging.WARNING, logger="meterd.storage.postgres"):
        store.write_readings([*absurd, r(NOW)])
        store.write_readings(absurd[:2])  # again within the minute: logged once
    assert day_partitions(db) == ["readings_20240305"]  # the one sane day only
    assert outside(db) == len(absurd)
    assert store.count_readings() == len(absurd) + 1
    (top,) = store.readings("000000000042")
    assert top == absurd[0]
    assert store.latest("000000000042") == {"energy.active.import.total": absurd[0]}
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1004 reading(s)" in warnings[0] and "000000000001, 000000000042" in warnings[0]


def test_the_window_edges(db: Database, store: PostgresStore) -> None:
    store.write_readings([r(datetime(2000, 1, 1, tzinfo=UTC)), r(datetime(2024, 3, 7, 23, 59, 59, tzinfo=UTC))])
    assert day_partitions(db) == ["readings_20000101", "readings_20240307"]
    store.write_readings([r(datetime(2024, 3, 8, tzinfo=UTC))])
    assert outside(db) == 1


def test_a_day_coming_within_the_window_moves_into_its_partition(db: Database) -> None:
    now = [NOW]
    later = NOW + timedelta(days=10)
    with PostgresStore(db, clock=lambda: now[0]) as s:
        s.write_readings([r(later), r(later + timedelta(days=1))])  # a meter clock ten days ahead
        assert (day_partitions(db), outside(db)) == ([], 2)
        now[0] = NOW + timedelta(days=9)  # ... and nine days on
        s.write_readings([r(later, quantity="voltage.a")])
        assert day_partitions(db) == ["readings_20240315"]
        assert outside(db) == 1  # the day after stays outside until its turn
        placed = sql(db, "SELECT tableoid::regclass::text, quantity FROM readings WHERE ts = %s",
                     (int(later.timestamp() * 1000),))
        assert sorted(placed) == [("readings_20240315", "energy.active.import.total"),
                                  ("readings_20240315", "voltage.a")]
        assert len(s.readings("000000000001")) == 3


# --- schema and attempts -------------------------------------------------------------------------


def test_schema_versions_are_recorded_and_a_newer_schema_is_refused(db: Database) -> None:
    PostgresStore(db).close()
    PostgresStore(db).close()  # at its version: nothing to do
    assert sorted(sql(db, "SELECT store, version FROM schema_versions")) == [("archive", 1), ("readings", 1)]
    for name in ("readings", "archive"):
        sql(db, "UPDATE schema_versions SET version = 99 WHERE store = %s", (name,))
        with pytest.raises(ConfigError, match=f"{name} tables are at schema version 99, newer than this meterd"):
            PostgresStore(db)
        sql(db, "UPDATE schema_versions SET version = 1 WHERE store = %s", (name,))


def test_attempt_writers_take_turns(db: Database, store: PostgresStore) -> None:
    """Ids are drawn and committed in one order: a writer waits while another holds the lock."""
    done = threading.Event()
    with psycopg.connect(db.url, autocommit=True) as holder:
        with holder.transaction():
            holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext('attempts'))", (WRITE_LOCK,))
            writer = threading.Thread(target=lambda: (store.record_attempts(
                [Attempt("000000000001", "bus1", "0001FF00", NOW, "ok")]), done.set()))
            writer.start()
            deadline = time.monotonic() + 10
            while not sql(db, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
                assert time.monotonic() < deadline, "the writer never waited for the lock"
                time.sleep(0.01)
            assert not done.is_set()
        writer.join(10)
    assert done.is_set() and len(store.attempts()) == 1
