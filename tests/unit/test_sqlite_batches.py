"""Multi-row batch inserts (meterd.storage.sqlite._insert_rows) against the executemany they replace.

The fast path steps once per chunk instead of once per row (a worker thread gives the GIL back to
a busy event loop per step); these tests hold it to what ``executemany`` stores, row for row.  The
store-level check (a batch reads back like the same readings written one by one) also runs on
PostgreSQL, whose batches take another fast path (COPY into a staging table, then one upsert).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.readings import Quality, Reading
from meterd.storage import Attempt, open_store
from meterd.storage.database import Database, Location
from meterd.storage.sqlite import _chunks, _insert_rows

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SIZES = [0, 1, 2, 3, 127, 256, 500, 511, 512, 513, 2047, 2048, 2049, 5000]


@pytest.mark.parametrize("largest", [1, 2, 64, 512, 2048])
@pytest.mark.parametrize("total", SIZES)
def test_chunks_cover_the_rows_in_few_sizes(total: int, largest: int) -> None:
    sizes = _chunks(total, largest)
    assert sum(sizes) == total
    assert all(0 < s <= largest for s in sizes)
    assert sizes[:-1] == [largest] * (len(sizes) - 1)  # full chunks, then the rest
    assert len(sizes) == -(-total // largest)


def _table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB)")


@pytest.mark.parametrize("limit", [None, 7, 100])
@pytest.mark.parametrize("total", SIZES)
def test_insert_rows_matches_executemany(total: int, limit: int | None) -> None:
    # keys repeat: with OR REPLACE the later row of one key wins, as with executemany
    rows = [(i % 300, f"v{i}", i / 7 if i % 3 else None, bytes([i % 256])) for i in range(total)]
    slow, fast = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    for conn in (slow, fast):
        _table(conn)
    if limit is not None:
        fast.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)  # chunks shrink to fit
    slow.executemany("INSERT OR REPLACE INTO t (k, a, b, c) VALUES (?, ?, ?, ?)", rows)
    _insert_rows(fast, "INSERT OR REPLACE INTO t (k, a, b, c) VALUES", 4, rows)
    query = "SELECT * FROM t ORDER BY k"
    assert fast.execute(query).fetchall() == slow.execute(query).fetchall()


def _readings(n: int) -> list[Reading]:
    out = []
    for i in range(n):
        value = Decimal(f"{i}.{i % 100:02d}") if i % 5 else i  # an int now and then
        out.append(Reading(f"{i % 37:012d}", "energy.active.import.total" if i % 2 else "voltage.a",
                           T0 + timedelta(seconds=i // 74), value, "kWh", Quality.GOOD if i % 4 else Quality.SUSPECT))
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def two_places(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Location, Location]]:
    """Two empty stores' locations of one backend."""
    if request.param == "sqlite":
        yield tmp_path / "batched", tmp_path / "single"
        return
    url = request.getfixturevalue("pg_url")  # its teardown closes the pools of both
    yield Database(url), Database(request.getfixturevalue("pg_server").new_database())


@pytest.mark.parametrize("total", [1, 257, 2100])
def test_store_batches_read_back_like_single_rows(two_places: tuple[Location, Location], total: int) -> None:
    batch = _readings(total)
    with open_store(two_places[0]) as batched, open_store(two_places[1]) as single:
        assert batched.write_readings(batch) == total
        for r in batch:
            single.write_readings([r])
        meters = {r.meter for r in batch}
        for meter in meters:
            assert batched.readings(meter) == single.readings(meter)
        assert batched.count_readings() == single.count_readings()

        attempts = [Attempt(f"{i % 13:012d}", "DTU1", "00010000", T0 + timedelta(milliseconds=i // 3),
                            "ok" if i % 6 else "timeout", i / 1000 if i % 6 else None, "" if i % 6 else "no reply")
                    for i in range(total)]
        batched.record_attempts(attempts)
        for a in attempts:
            single.record_attempts([a])
        assert batched.attempts() == single.attempts() == attempts  # recording order kept within a ms


def test_a_batch_is_not_starved_by_a_busy_thread(state_where: Location) -> None:
    """500 readings while another thread holds the GIL: per-row steps (SQLite) or per-row round
    trips (PostgreSQL) took seconds here."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    with open_store(state_where) as store:
        batch = _readings(500)
        busy = threading.Thread(target=spin)
        busy.start()
        try:
            started = time.perf_counter()
            store.write_readings(batch)
            took = time.perf_counter() - started
        finally:
            stop.set()
            busy.join()
        assert store.count_readings() == len({(r.meter, r.quantity, r.timestamp) for r in batch})
    assert took < 1.0  # SQLite ~0.02 s with chunks, PostgreSQL ~0.05 s; executemany ~2 s (5 ms switch interval per row)


def test_reading_rows_shortcut_matches_the_plain_row() -> None:
    """_reading_rows builds a Decimal reading of a Quality member inline; every reading's row is
    the one the plain _reading_row gives (values of every kind, qualities given as members and as
    plain strings, timestamps shared and not)."""
    from meterd.storage.sqlite import _reading_row, _reading_rows

    class Dec(Decimal):
        pass

    t1 = T0 + timedelta(seconds=1, microseconds=999)
    values = [Decimal("12.30"), Decimal("-0.001"), Decimal("1E+3"), Decimal("NaN"), Dec("7.5"), 3, True, False,
              "text", T0, t1]
    readings = [
        Reading(f"00000000000{i % 3}", f"q{i}", T0 if i % 4 else t1, value, "kWh" if i % 2 else "",
                quality)
        for i, value in enumerate(values)
        for quality in (Quality.GOOD, Quality.SUSPECT, "estimated")
    ]
    readings.append(Reading("000000000009", "q", datetime(2024, 3, 1, 8, tzinfo=T0.tzinfo), Decimal(1)))
    assert _reading_rows(readings) == [_reading_row(r) for r in readings]
    assert [type(x) for x in _reading_rows(readings)[0]] == [type(x) for x in _reading_row(readings[0])]


def test_insert_statements_are_made_once_per_shape() -> None:
    from meterd.storage.sqlite import _insert_sql

    one = _insert_sql("INSERT INTO t (k, a) VALUES", 2, 3)
    assert one == "INSERT INTO t (k, a) VALUES (?, ?), (?, ?), (?, ?)"
    assert _insert_sql("INSERT INTO t (k, a) VALUES", 2, 3) is one
    assert _insert_sql("INSERT INTO t (k, a) VALUES", 2, 1) == "INSERT INTO t (k, a) VALUES (?, ?)"
