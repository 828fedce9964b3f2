"""meterd.storage against real databases: round trips, replays, queries, batching.

The store tests run on both backends (``state_where``: SQLite files in tmp_path, and a fresh
PostgreSQL database); those about SQLite's files are marked SQLite-only.  PostgreSQL's own
(partitions, retention by partition, absurd timestamps) are in test_pg_readings.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.clock import CST
from meterd.readings import Quality, Reading, Value
from meterd.storage import Attempt, BatchWriter, MeterRecord, PostgresStore, SqliteStore, open_store
from meterd.storage.database import Location
from meterd.storage.sqlite import decode_value, encode_value

T0 = datetime(2024, 3, 1, 0, 0, tzinfo=timezone.utc)
Store = SqliteStore | PostgresStore


def reading(
    minute: int,
    quantity: str = "energy.active.import.total",
    value: Value = Decimal("1.00"),
    meter: str = "000000000001",
) -> Reading:
    return Reading(meter, quantity, T0 + timedelta(minutes=minute), value, "kWh")


@pytest.fixture
def store(state_where: Location) -> Iterator[Store]:
    with open_store(state_where) as s:
        yield s


def stored_ts(store: Store) -> list[int]:
    """The ``ts`` column as stored, read past the store."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.data_dir / "readings.sqlite3")
        try:
            return [ts for (ts,) in conn.execute("SELECT ts FROM readings ORDER BY ts")]
        finally:
            conn.close()
    with store.database.pool().connection() as pg:
        return [ts for (ts,) in pg.execute("SELECT ts FROM readings ORDER BY ts")]


# --- files (SQLite only) -----------------------------------------------------------------------


def test_sqlite_creates_data_dir_with_two_wal_databases(tmp_path: Path) -> None:
    data = tmp_path / "a" / "b"
    with SqliteStore(data):
        pass
    for name in ("readings.sqlite3", "state.sqlite3"):
        conn = sqlite3.connect(data / name)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()


def test_sqlite_readings_are_indexed_by_meter_and_time(tmp_path: Path) -> None:
    with SqliteStore(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / "readings.sqlite3")
    query = "SELECT sql FROM sqlite_master WHERE name = 'readings_meter_ts'"
    (sql,) = conn.execute(query).fetchone()
    conn.close()
    assert "(meter, ts)" in sql


def test_open_store_picks_the_backend(tmp_path: Path, pg_url: str) -> None:
    from meterd.storage.database import Database

    with open_store(tmp_path) as s:
        assert type(s) is SqliteStore
    with open_store(str(tmp_path)) as s:
        assert type(s) is SqliteStore and s.data_dir == tmp_path
    with open_store(Database(pg_url)) as s:
        assert type(s) is PostgresStore
    with open_store(pg_url) as s:  # a URL as text names a database too
        assert type(s) is PostgresStore


# --- both backends -----------------------------------------------------------------------------


def test_data_survives_reopening(state_where: Location) -> None:
    with open_store(state_where) as s:
        s.write_readings([reading(0)])
        s.upsert_meters([MeterRecord("000000000001", "bus1", "dlt645-2007", Decimal(1), Decimal(1))])
        s.record_attempts([Attempt("000000000001", "bus1", "0001FF00", T0, "ok")])
    with open_store(state_where) as s:
        assert s.readings("000000000001") == [reading(0)]
        assert [m.address for m in s.meters()] == ["000000000001"]
        assert len(s.attempts()) == 1


def test_close_is_idempotent(state_where: Location) -> None:
    s = open_store(state_where)
    s.close()
    s.close()


# --- values ------------------------------------------------------------------------------------

VALUES: list[Value] = [
    Decimal("12345.67"),
    Decimal("0.10"),  # trailing zero kept
    Decimal("-0.001"),
    Decimal("1E+3"),
    0,
    -42,
    2**70,
    True,
    False,
    "",
    "08:30:00",
    "电表 ✓",
    "a\x00b",  # NUL: SQLite's text holds it, PostgreSQL's does not (stored escaped there)
    'tab\tnewline\n back\\slash "quoted" \'single\'',  # what COPY's text format escapes
    datetime(2024, 2, 29, 23, 59, 1, tzinfo=CST),
    datetime(2024, 2, 29, 23, 59, 1, 123456, tzinfo=timezone.utc),
    datetime(2024, 2, 29, 23, 59),  # naive meter clock value
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_value_type_round_trips_exactly(store: Store, value: Value) -> None:
    original = Reading("000000000001", "q", T0, value, "u", Quality.SUSPECT)
    store.write_readings([original])
    (back,) = store.readings("000000000001")
    assert back == original
    assert type(back.value) is type(value)
    assert str(back.value) == str(value)  # same digits, same exponent, same offset
    if isinstance(value, datetime):
        assert back.value.utcoffset() == value.utcoffset()


@settings(max_examples=200)
@given(
    st.one_of(
        st.decimals(allow_nan=False),
        st.integers(),
        st.booleans(),
        st.text(),
        st.datetimes(timezones=st.just(CST)),
    )
)
def test_value_encoding_round_trips(value: Value) -> None:
    text, kind = encode_value(value)
    back = decode_value(text, kind)
    assert type(back) is type(value) and str(back) == str(value)


def test_unsupported_value_is_refused(store: Store) -> None:
    with pytest.raises(TypeError):
        store.write_readings([Reading("m", "q", T0, 1.5, "")])  # type: ignore[arg-type]
    assert store.count_readings() == 0


def test_timestamps_are_utc_milliseconds(store: Store) -> None:
    local = datetime(2024, 3, 1, 8, 0, 0, 999_999, tzinfo=CST)
    store.write_readings([Reading("m", "q", local, 1)])
    assert stored_ts(store) == [1709251200999]
    (back,) = store.readings("m")
    assert back.timestamp == datetime(2024, 3, 1, 0, 0, 0, 999_000, tzinfo=timezone.utc)
    assert back.timestamp.tzinfo is timezone.utc


def test_naive_timestamp_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        store.write_readings([Reading("m", "q", datetime(2024, 3, 1), 1)])


def test_a_failed_batch_writes_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        bad = Reading("m", "q", T0, object())  # type: ignore[arg-type]
        store.write_readings([reading(0), bad])
    assert store.count_readings() == 0


# --- readings ----------------------------------------------------------------------------------


def test_replay_is_idempotent(store: Store) -> None:
    batch = [reading(i, value=Decimal(i)) for i in range(10)]
    assert store.write_readings(batch) == 10
    assert store.write_readings(batch) == 10
    assert store.count_readings() == 10
    # a corrected value for the same key replaces the old one
    store.write_readings([reading(3, value=Decimal("3.5"))])
    assert store.count_readings() == 10
    (third,) = store.readings("000000000001", since=T0 + timedelta(minutes=3), limit=1)
    assert third.value == Decimal("3.5")


def test_range_queries(store: Store) -> None:
    store.write_readings(
        [reading(m, q, Decimal(m)) for m in range(0, 60, 15) for q in ("voltage.a", "current.a")]
        + [reading(0, meter="000000000002")]
    )
    everything = store.readings("000000000001")
    assert [(r.timestamp.minute, r.quantity) for r in everything] == [
        (m, q) for m in (0, 15, 30, 45) for q in ("current.a", "voltage.a")
    ]
    since, until = T0 + timedelta(minutes=15), T0 + timedelta(minutes=45)
    window = store.readings("000000000001", since=since, until=until)
    # since inclusive, until exclusive
    assert [r.timestamp.minute for r in window] == [15, 15, 30, 30]
    voltage = store.readings("000000000001", quantity="voltage.a")
    assert [r.value for r in voltage] == [Decimal(0), Decimal(15), Decimal(30), Decimal(45)]
    assert len(store.readings("000000000001", limit=3)) == 3
    assert store.readings("000000000009") == []
    assert store.count_readings() == 9


def test_latest(store: Store) -> None:
    store.write_readings(
        [
            reading(0, "voltage.a", Decimal("220.1")),
            reading(15, "voltage.a", Decimal("221.0")),
            reading(5, "clock", datetime(2024, 3, 1, 8, 5, tzinfo=CST)),
            reading(30, "voltage.a", Decimal("999"), meter="000000000002"),
        ]
    )
    latest = store.latest("000000000001")
    assert latest == {
        "voltage.a": reading(15, "voltage.a", Decimal("221.0")),
        "clock": reading(5, "clock", datetime(2024, 3, 1, 8, 5, tzinfo=CST)),
    }
    assert store.latest("000000000009") == {}


def test_one_key_twice_in_a_batch_the_later_wins(store: Store) -> None:
    batch = [reading(0, value=Decimal("1.0")), reading(1), reading(0, value=Decimal("2.0"))]
    assert store.write_readings(batch) == 3
    assert store.count_readings() == 2
    assert [r.value for r in store.readings("000000000001")] == [Decimal("2.0"), Decimal("1.00")]
    assert store.write_readings([]) == 0


def test_a_rewrite_replaces_every_column_but_the_key(store: Store) -> None:
    store.write_readings([reading(0)])
    again = Reading("000000000001", "energy.active.import.total", T0, 7, "Wh", Quality.ESTIMATED)
    store.write_readings([again])
    assert store.readings("000000000001") == [again]


def test_queries_with_nothing_to_match(store: Store) -> None:
    assert store.readings("000000000001") == []
    assert store.latest("000000000001") == {}
    assert store.count_readings() == 0
    assert store.meters() == [] and store.meter("000000000001") is None
    assert store.attempts() == []


def test_retention_forgets_readings_before_the_day(store: Store) -> None:
    days = [T0 + timedelta(days=d, hours=h) for d in range(4) for h in (0, 23)]
    store.write_readings([Reading("m", "q", at, Decimal(i)) for i, at in enumerate(days)])
    store.drop_readings_before((T0 + timedelta(days=2)).date())
    assert [r.timestamp for r in store.readings("m")] == days[4:]
    store.drop_readings_before(T0.date())  # nothing that old is left: a no-op
    assert store.count_readings() == 4
    store.write_readings([Reading("m", "q", T0, Decimal(0))])  # a dropped day can be written again
    assert store.count_readings() == 5


def test_nul_in_a_key_is_refused_on_postgresql_only(store: Store) -> None:
    bad = Reading("000000000001", "q\x00", T0, Decimal(1))
    if isinstance(store, SqliteStore):
        store.write_readings([bad])
        assert store.readings("000000000001") == [bad]
        return
    with pytest.raises(ValueError, match="000000000001.*NUL"):
        store.write_readings([reading(0), bad])
    assert store.count_readings() == 0  # nothing of the batch


# --- meters and attempts -----------------------------------------------------------------------


def test_meter_archive_upsert(store: Store) -> None:
    a = MeterRecord(
        "000000000001", "bus1", "dlt645-2007", Decimal("50"), Decimal("1.0"), "Building A", "residential"
    )
    b = MeterRecord("000000000002", "bus1", "dlt645-2007", Decimal(1), Decimal(1))
    store.upsert_meters([b, a])
    assert store.meters() == [a, b]
    moved = MeterRecord("000000000001", "dtu7", "dlt645-2007", Decimal("0.5"), Decimal(1), "A")
    store.upsert_meters(iter([moved]))
    assert store.meters() == [moved, b]
    assert str(store.meters()[0].ct) == "0.5"


def test_meter_archive_pages_and_lookup(store: Store) -> None:
    records = [MeterRecord(f"{n:012d}", "bus1", "dlt645-2007", Decimal(n), Decimal(1)) for n in range(1, 8)]
    store.upsert_meters(reversed(records))
    store.upsert_meters([])
    assert store.meters(limit=3) == records[:3]
    assert store.meters(after=records[2].address, limit=3) == records[3:6]
    assert store.meters(after=records[5].address) == records[6:]
    assert store.meters(after=records[6].address) == []
    assert store.meter(records[4].address) == records[4]
    assert store.meter("000000000099") is None


def test_attempts(store: Store) -> None:
    attempts = [
        Attempt("000000000001", "bus1", "0001FF00", T0, "ok", 0.312),
        Attempt("000000000002", "bus1", "0001FF00", T0, "timeout", None, "no reply in 2.0 s"),
        Attempt("000000000001", "bus1", "02010100", T0 + timedelta(minutes=15), "abnormal", 0.2, "ERR"),
    ]
    store.record_attempts(attempts)
    assert store.attempts() == attempts
    assert store.attempts(meter="000000000001") == [attempts[0], attempts[2]]
    assert store.attempts(since=T0 + timedelta(minutes=1)) == [attempts[2]]


def test_unknown_attempt_outcome_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="outcome"):
        store.record_attempts([Attempt("m", "c", "0001FF00", T0, "timed_out")])
    assert store.attempts() == []


def test_usable_from_worker_threads(store: Store) -> None:
    def work(n: int) -> None:
        store.write_readings([reading(i, meter=f"{n:012d}") for i in range(50)])
        store.readings(f"{n:012d}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_readings() == 400


# --- BatchWriter -------------------------------------------------------------------------------


class FakeTimer:
    """Stands in for asyncio.sleep: the flush interval 'elapses' only when the test says so."""

    def __init__(self) -> None:
        self._ticks: asyncio.Queue[None] = asyncio.Queue()
        self.sleeping = 0

    async def sleep(self, delay: float) -> None:
        self.sleeping += 1
        try:
            await self._ticks.get()
        finally:
            self.sleeping -= 1

    def elapse(self) -> None:
        self._ticks.put_nowait(None)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for the worker thread of asyncio.to_thread to finish; not a timing assumption."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class FlakyStore:
    """A store that fails while ``down`` is set; records what it took."""

    def __init__(self) -> None:
        self.down = False
        self.readings: list[Reading] = []
        self.attempts: list[Attempt] = []
        self.calls = 0

    def write_readings(self, readings: Sequence[Reading]) -> int:
        self.calls += 1
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        self.readings.extend(readings)
        return len(readings)

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        self.attempts.extend(attempts)


@pytest.mark.asyncio
async def test_writer_flushes_when_a_batch_is_full(store: Store) -> None:
    timer = FakeTimer()
    writer = BatchWriter(store, batch_size=10, flush_interval=60.0, sleep=timer.sleep)
    writer.start()
    writer.add_many(reading(i) for i in range(9))
    await settle()
    assert (writer.written, writer.pending) == (0, 9)
    writer.add(reading(9))
    await eventually(lambda: writer.written == 10)
    assert writer.pending == 0 and store.count_readings() == 10
    await writer.close()


@pytest.mark.asyncio
async def test_writer_flushes_when_the_interval_elapses(store: Store) -> None:
    timer = FakeTimer()
    writer = BatchWriter(store, batch_size=500, flush_interval=1.0, sleep=timer.sleep)
    writer.start()
    writer.add(reading(0))
    writer.add_attempts([Attempt("000000000001", "bus1", "0001FF00", T0, "ok", 0.3)])
    await settle()
    assert writer.written == 0 and timer.sleeping == 1
    timer.elapse()
    await eventually(lambda: writer.written == 1 and writer.attempts_written == 1)
    assert store.readings("000000000001") == [reading(0)]
    assert len(store.attempts()) == 1
    await writer.close()


@pytest.mark.asyncio
async def test_close_writes_everything(store: Store) -> None:
    timer = FakeTimer()
    writer = BatchWriter(store, batch_size=7, flush_interval=60.0, sleep=timer.sleep)
    writer.start()
    writer.add_many(reading(i) for i in range(20))  # two full batches and six left over
    writer.add_attempts([Attempt("000000000001", "bus1", "0001FF00", T0, "ok")])
    await writer.close()
    assert (writer.written, writer.pending, writer.pending_attempts) == (20, 0, 0)
    assert store.count_readings() == 20 and len(store.attempts()) == 1
    with pytest.raises(RuntimeError):
        writer.add(reading(99))


@pytest.mark.asyncio
async def test_explicit_flush_without_background_task(store: Store) -> None:
    writer = BatchWriter(store, batch_size=3)
    writer.add_many(reading(i) for i in range(8))
    await writer.flush()
    assert writer.written == 8 and store.count_readings() == 8
    await writer.close()


@pytest.mark.asyncio
async def test_failed_write_keeps_the_batch_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    sink = FlakyStore()
    timer = FakeTimer()
    writer = BatchWriter(sink, batch_size=2, flush_interval=1.0, sleep=timer.sleep)
    sink.down = True
    writer.start()
    with caplog.at_level(logging.WARNING, logger="meterd.storage.writer"):
        writer.add_many(reading(i) for i in range(5))
        await eventually(lambda: writer.failing)
        # While down, full batches do not trigger retries; only the interval does.
        writer.add(reading(5))
        await settle()
        assert sink.calls == 1
        for retry in range(2, 5):
            timer.elapse()
            await eventually(lambda: sink.calls == retry and timer.sleeping == 1)
        assert writer.pending == 6 and writer.written == 0
        failures = [r for r in caplog.records if "store write failed" in r.getMessage()]
        assert len(failures) == 1  # logged once, not on every retry

        sink.down = False
        timer.elapse()
        await eventually(lambda: writer.written == 6)
        assert [r.timestamp.minute for r in sink.readings] == list(range(6))  # in order
        assert any("recovered" in r.getMessage() for r in caplog.records)
    await writer.close()


@pytest.mark.asyncio
async def test_close_with_the_store_down_raises_and_keeps_readings() -> None:
    sink = FlakyStore()
    writer = BatchWriter(sink, batch_size=100)
    writer.add(reading(0))
    sink.down = True
    with pytest.raises(sqlite3.OperationalError):
        await writer.close()
    assert writer.pending == 1 and sink.readings == []


@pytest.mark.asyncio
async def test_naive_reading_is_refused_at_add() -> None:
    writer = BatchWriter(FlakyStore())
    with pytest.raises(ValueError, match="naive"):
        writer.add(Reading("m", "q", datetime(2024, 3, 1), 1))
    assert writer.pending == 0


def test_writer_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        BatchWriter(FlakyStore(), batch_size=0)
    with pytest.raises(ValueError):
        BatchWriter(FlakyStore(), flush_interval=0)


@pytest.mark.asyncio
async def test_a_steady_stream_of_readings_never_starves_attempts() -> None:
    """A flush writes what was queued when it began, readings and attempts in turn: attempts get
    written while readings keep arriving faster than one batch per write."""
    import time as _time

    class SlowSink:
        def __init__(self) -> None:
            self.readings = 0
            self.attempts = 0

        def write_readings(self, readings: Sequence[Reading]) -> int:
            _time.sleep(0.005)
            self.readings += len(readings)
            return len(readings)

        def record_attempts(self, attempts: Sequence[Attempt]) -> None:
            self.attempts += len(attempts)

    sink = SlowSink()
    writer = BatchWriter(sink, batch_size=5, flush_interval=0.01)
    writer.start()
    writer.add_attempts([Attempt("000000000001", "bus1", "0001FF00", T0, "ok", 0.3)])
    n = 0
    deadline = asyncio.get_running_loop().time() + 0.5
    while asyncio.get_running_loop().time() < deadline and sink.attempts == 0:
        writer.add_many(reading(n + i) for i in range(20))  # 4 batches per tick: always behind
        n += 20
        await asyncio.sleep(0.002)
    assert sink.attempts == 1, "the attempt waited behind an endless stream of readings"
    await writer.close()
    assert sink.readings == n
