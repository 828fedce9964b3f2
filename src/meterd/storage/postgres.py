"""Readings, the meter archive and collection attempts in PostgreSQL: the scale-out store.

:class:`PostgresStore` has the methods and the contract of :class:`~meterd.storage.sqlite.SqliteStore`
(values round-trip to the same type and digits, UTC millisecond timestamps, a (meter, quantity, ts)
key replaced on rewrite, a batch all or nothing, blocking and thread-safe).  On PostgreSQL there is
one database for everything, so the meter archive and the attempts log sit beside the state
stores' tables.  It talks psycopg 3 through the database's pool directly (not the
:class:`~meterd.storage.database.PgConnection` shim): every call borrows a connection for itself,
so threads share a store without a lock of its own.

Layout::

    readings(meter, quantity, ts, value, kind, unit, quality)   PARTITION BY RANGE (ts)
        readings_YYYYMMDD     one partition per UTC day, PRIMARY KEY (meter, quantity, ts), (meter, ts)
        readings_outside      the DEFAULT partition: readings of days that have no partition
    meters(address, channel, protocol, ct, pt, name, meter_group)          PRIMARY KEY (address)
    attempts(id, meter, channel, item, ts, outcome, latency, detail)

``meter`` and ``quantity`` of readings compare byte-wise (``COLLATE "C"``) as SQLite's do: the
same order of quantities within one timestamp, and cheaper comparisons in the key's B-tree.

Writing a batch.  Rows are encoded as SQLite's are (``value`` TEXT with its ``kind``), reduced to
one per key (the later wins, as with SQLite's ``INSERT OR REPLACE``; one upsert statement may not
touch a row twice), sorted by key (two nodes writing overlapping batches lock rows in one order:
no deadlock), and sent as seven column arrays, in binary, to one ``INSERT ... SELECT * FROM
unnest(...) ON CONFLICT DO UPDATE``: one statement, so atomic without BEGIN/COMMIT, and one round
trip.  Round trips count: the writer runs in a worker thread, and every wait on the server gives
the GIL to the busy event loop, which may keep it for a switch interval (5 ms).  Measured with
benchmarks/bench_store.py (``--paths``; 500 and 2,000 rows, loopback, two shared cores): unnest ≈
2 µs of client CPU per row and the most rows/s; one JSON array parameter ≈ 1 µs of client CPU but
about a quarter fewer rows/s (the server parses it: the dear side when many nodes share one
server); COPY into a staging table + an upsert from it ≈ 1.5 µs, but five round trips, and about
twice as slow per batch as unnest while another thread holds the GIL; a multi-row ``VALUES`` ≈
20 µs, ``executemany`` ≈ 11 µs.  A text value with a NUL character (SQLite's text holds one,
PostgreSQL's cannot) is stored as JSON under the kind :data:`NUL_KIND` and reads back the same;
a NUL in a meter, quantity or unit is refused with a ValueError naming the reading.

Partitions.  Before a batch is written, the partitions of its UTC days are created if they do
not exist yet, in a transaction of their own under an advisory lock (two nodes that need the same
day at once: the second finds it made), as a table attached to ``readings`` (``ATTACH`` blocks
neither readers nor writers of the other days, ``CREATE TABLE ... PARTITION OF`` would lock the
whole table).  Days this store knows to exist are remembered, so a batch of an existing day costs
no query.

Locks.  Attaching a partition takes an exclusive lock on ``readings_outside``, dropping one an
exclusive lock on ``readings``: each waits for the queries running on the table, and the queries
after it queue behind it.  So partition DDL gives up after ``lock_timeout`` (2 s): a batch whose
day's partition could not be made goes to ``readings_outside`` (moved into the partition when it
is made, :data:`DDL_RETRY` later at the soonest), and retention raises :class:`StorageError`
with nothing dropped.  Nobody waits behind a long report for long.

Absurd timestamps.  A partition is made only for days from :data:`EARLIEST` up to
``future_days`` (default 2) after the store's clock.  Year 9999 from a terminal whose clock is
wrong, 1970 from a meter that lost its clock, a load-curve record dated next month: such
readings are stored all the same -- in ``readings_outside``, readable like any other, with a
warning (once a minute) naming a meter and the timestamp -- and create no partition, so garbage
can never make thousands of tables.  Refusing them was the other choice, and the worse one: the
collector's :class:`~meterd.storage.writer.BatchWriter` keeps a refused batch at the head of its
queue and retries it, so one bad timestamp would stop every write after it.  When a day comes
within the window its partition is created and that day's rows move out of ``readings_outside``
in the same transaction (a partition cannot be attached over rows the default one holds).

Retention.  :meth:`PostgresStore.drop_readings_before` drops the partitions of whole days before
the cut (no row-by-row DELETE, no bloat) and deletes the same span from ``readings_outside``.
:meth:`PostgresStore.prune_readings` does the same for the days wholly before a cut, keeping the
newest reading of each (meter, quantity) that has nothing newer (it moves to ``readings_outside``);
:meth:`PostgresStore.prune_attempts` deletes old attempts in batches of their own transactions.

Attempt ids.  The quality rollup folds attempts in by id after a watermark (``MAX(id)`` when it
last ran), which is only right if every id below the newest committed one is committed too.  With
several nodes writing attempts, a transaction that drew lower ids could commit after one that drew
higher ids, and the rollup would skip it for ever; so writers of attempts take an advisory lock of
their own for the transaction (a few ms per batch), and ids are drawn and committed in one order.

Schema versions.  The ``readings`` and ``archive`` (meters, attempts) tables are versioned in
``schema_versions`` like the state stores' (:class:`~meterd.storage.statedb.StateDatabase`): the
first version is step 1 of the migrations, every database goes through the same steps under the
state stores' write lock, and a database newer than this code is refused.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time as _time
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from meterd.clock import Clock, utc_now
from meterd.errors import ConfigError, StorageError
from meterd.readings import Quality, Reading
from meterd.storage.database import WRITE_LOCK, Database, first_table, schema_line, translate
from meterd.storage.sqlite import (
    _ROW_KEY,
    OUTCOMES,
    PRUNE_ATTEMPT_ROWS,
    PRUNE_PAUSE,
    PRUNE_ROWS,
    UPSERT_METERS,
    Attempt,
    MeterRecord,
    Pruned,
    _reading_row,
    decode_value,
    from_ms,
    meter_record,
    meters_query,
    to_ms,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

DAY_MS: Final = 86_400_000
EPOCH_DAY: Final = date(1970, 1, 1)
#: No partition is made for a day before this one: no meter of a meterd site was read before it
#: (DL/T 645 clocks count years from 2000).
EARLIEST: Final = date(2000, 1, 1)
FUTURE_DAYS: Final = 2  # partitions are made up to this many days after the store's clock
OUTSIDE: Final = "readings_outside"
#: The kind of a text value with a NUL character, kept as a JSON string (PostgreSQL's text cannot
#: hold NUL; SQLite's can): it reads back as the same ``str``.
NUL_KIND: Final = "str-json"
WARN_EVERY: Final = timedelta(minutes=1)
#: How long partition DDL waits for the table locks it needs before giving up (see "Locks" above),
#: and how long a store then leaves it before trying again.
DDL_LOCK_TIMEOUT: Final = timedelta(seconds=2)
DDL_RETRY: Final = timedelta(seconds=30)

_PARTITION: Final = re.compile(r"readings_(\d{8})")
_PARTITION_LOCK: Final = "readings partitions"  # advisory lock (WRITE_LOCK, hashtext(this)) for partition DDL
_ATTEMPTS_LOCK: Final = "attempts"  # advisory lock that orders attempt ids (see the module docstring)
_STATE_LOCK: Final = "state"  # the state stores' write lock (database.PgConnection's family "state")

_READINGS_MIGRATIONS: Final = (
    (
        """CREATE TABLE IF NOT EXISTS readings (
            meter    TEXT COLLATE "C" NOT NULL,
            quantity TEXT COLLATE "C" NOT NULL,
            ts       BIGINT NOT NULL,
            value    TEXT   NOT NULL,
            kind     TEXT   NOT NULL,
            unit     TEXT   NOT NULL DEFAULT '',
            quality  TEXT   NOT NULL DEFAULT 'good',
            PRIMARY KEY (meter, quantity, ts)
        ) PARTITION BY RANGE (ts)""",
        "CREATE INDEX IF NOT EXISTS readings_meter_ts ON readings (meter, ts)",
        f"CREATE TABLE IF NOT EXISTS {OUTSIDE} PARTITION OF readings DEFAULT",
    ),
)

_ARCHIVE_MIGRATIONS: Final = (
    (
        """CREATE TABLE IF NOT EXISTS meters (
            address     TEXT NOT NULL PRIMARY KEY,
            channel     TEXT NOT NULL,
            protocol    TEXT NOT NULL,
            ct          TEXT NOT NULL,
            pt          TEXT NOT NULL,
            name        TEXT NOT NULL DEFAULT '',
            meter_group TEXT NOT NULL DEFAULT 'default'
        )""",
        """CREATE TABLE IF NOT EXISTS attempts (
            id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            meter   TEXT   NOT NULL,
            channel TEXT   NOT NULL,
            item    TEXT   NOT NULL,
            ts      BIGINT NOT NULL,
            outcome TEXT   NOT NULL,
            latency DOUBLE PRECISION,
            detail  TEXT   NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX IF NOT EXISTS attempts_meter_ts ON attempts (meter, ts)",
        "CREATE INDEX IF NOT EXISTS attempts_ts ON attempts (ts)",
    ),
)

_COLUMNS: Final = "meter, quantity, ts, value, kind, unit, quality"
# A batch is seven arrays, one per column, sent in binary in one statement: no parsing on either side.
_UPSERT: Final = (
    f"INSERT INTO readings ({_COLUMNS})"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[])"
    " ON CONFLICT (meter, quantity, ts) DO UPDATE SET value = excluded.value, kind = excluded.kind,"
    " unit = excluded.unit, quality = excluded.quality"
)


# --- days and partitions -------------------------------------------------------------------------


def day_number(day: date) -> int:
    """Days since 1970-01-01 (the partition of a UTC day)."""
    return (day - EPOCH_DAY).days


def partition_name(day: int) -> str:
    return f"readings_{EPOCH_DAY + timedelta(days=day):%Y%m%d}"


def _partition_day(name: str) -> int | None:
    m = _PARTITION.fullmatch(name)
    if m is None:
        return None
    text = m.group(1)
    try:
        return day_number(date(int(text[:4]), int(text[4:6]), int(text[6:])))
    except ValueError:
        return None


def _partitions(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """The day partitions attached to ``readings``: day number -> table name."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass").fetchall()
    out: dict[int, str] = {}
    for (name,) in rows:
        day = _partition_day(name)
        if day is not None:
            out[day] = name
    return out


def _lock(conn: psycopg.Connection[Any], name: str) -> None:
    """A transaction-scoped advisory lock (released by COMMIT or ROLLBACK)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (WRITE_LOCK, name))


# --- schema versions -----------------------------------------------------------------------------


def _version(conn: psycopg.Connection[Any], store: str) -> int:
    (exists,) = conn.execute("SELECT to_regclass('schema_versions') IS NOT NULL").fetchone() or (False,)
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM schema_versions WHERE store = %s", (store,)).fetchone()
    return int(row[0]) if row else 0


def migrate_store(conn: psycopg.Connection[Any], db: Database, store: str, steps: Sequence[Sequence[str]]) -> None:
    """Bring ``store``'s tables to ``len(steps)``, as :meth:`StateDatabase._migrate` does (also for the
    other tables kept through psycopg directly: the cluster's leases and forwarded readings)."""
    latest = len(steps)
    if _version(conn, store) == latest:
        return
    with conn.transaction():
        _lock(conn, _STATE_LOCK)  # the state stores' write lock: their migrations and ours in turn
        conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (store TEXT NOT NULL PRIMARY KEY, "
                     "version BIGINT NOT NULL)")
        done = _version(conn, store)  # again, under the lock
        if done > latest:
            raise ConfigError(f"state database {db}: the {store} tables are at schema version {done}, newer than "
                              f"this meterd knows ({latest}): upgrade meterd")
        table = first_table(steps) if done == 0 else None
        missing = conn.execute("SELECT to_regclass(%s) IS NULL", (table,)).fetchone() if table is not None else None
        new = missing is not None and bool(missing[0])
        for step in steps[done:]:
            for statement in step:
                conn.execute(statement)
        if done < latest:
            conn.execute("INSERT INTO schema_versions (store, version) VALUES (%s, %s) ON CONFLICT (store) "
                         "DO UPDATE SET version = excluded.version", (store, latest))
            log.info("%s", schema_line(f"state database {db}", store, done, latest, new=new))


def prepare_archive(db: Database) -> None:
    """Create (or migrate) the meter archive and the attempts log in ``db``: for stores that read
    them without a :class:`PostgresStore` of their own (the quality rollup)."""
    with db.pool().connection() as conn:
        migrate_store(conn, db, "archive", _ARCHIVE_MIGRATIONS)


# --- the store -----------------------------------------------------------------------------------


_Row = tuple[str, str, int, str, str, str, str]  # a readings row as _reading_row encodes it


def _reading(row: Sequence[Any]) -> Reading:
    meter, quantity, ts, value, kind, unit, quality = row
    decoded = json.loads(value) if kind == NUL_KIND else decode_value(value, kind)
    return Reading(meter, quantity, from_ms(ts), decoded, unit, Quality(quality))


class PostgresStore:
    """Readings, meters and attempts in the PostgreSQL database ``db`` (tables made if missing).

    ``clock`` tells the store what day it is, for the window of days it makes partitions for
    (:data:`EARLIEST` .. today + ``future_days``); readings outside it go to ``readings_outside``.
    """

    def __init__(self, db: Database, *, clock: Clock = utc_now, future_days: int = FUTURE_DAYS,
                 lock_timeout: timedelta = DDL_LOCK_TIMEOUT) -> None:
        self.database = db
        self.clock = clock
        self.future_days = future_days
        self.lock_timeout = lock_timeout
        self._ddl_after: datetime | None = None  # partition DDL gave up on a busy table: not before then
        self._pool = db.pool()
        self._days: set[int] = set()  # days known to have a partition
        self._days_lock = threading.Lock()
        self._warned: datetime | None = None  # when readings outside the window were last logged
        self._outside = 0  # such readings since then
        with self._pool.connection() as conn:
            migrate_store(conn, db, "readings", _READINGS_MIGRATIONS)
            migrate_store(conn, db, "archive", _ARCHIVE_MIGRATIONS)
        self._closed = False

    def close(self) -> None:
        """Nothing to give back (connections are borrowed per call); later calls are refused."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the store in {self.database} is closed")

    # --- meters --------------------------------------------------------------------------------

    def upsert_meters(self, meters: Iterable[MeterRecord]) -> None:
        rows = [
            (m.address, m.channel, m.protocol, str(m.ct), str(m.pt), m.name, m.group) for m in meters
        ]
        self._check_open()
        if not rows:
            return
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(translate(UPSERT_METERS).sql, rows)

    def meter(self, address: str) -> MeterRecord | None:
        """The archive's record of one meter, None if it has none."""
        found = self.meters(after=None, limit=1, address=address)
        return found[0] if found else None

    def meters(self, *, after: str | None = None, limit: int | None = None,
               address: str | None = None) -> list[MeterRecord]:
        """The archive's meters by address; a page of them with ``after`` (an address) and ``limit``."""
        if limit is not None and limit < 0:  # SQLite takes a negative LIMIT for none; PostgreSQL refuses it
            limit = None
        sql, params = meters_query(after=after, limit=limit, address=address)
        return [meter_record(r) for r in self._fetch(translate(sql).sql, params)]

    # --- readings ------------------------------------------------------------------------------

    def write_readings(self, readings: Sequence[Reading]) -> int:
        """Store ``readings`` in one transaction; all or nothing.  Returns how many were written."""
        rows = [_reading_row(r) for r in readings]  # encode first: a bad value fails before anything is sent
        self._check_open()
        if not rows:
            return 0
        unique: dict[tuple[str, str, int], _Row] = {}
        for row in rows:
            if row[4] == "str" and "\x00" in row[3]:
                row = (*row[:3], json.dumps(row[3]), NUL_KIND, *row[5:])
            unique[_ROW_KEY(row)] = row  # one row per key, the later wins
        batch = sorted(unique.values(), key=_ROW_KEY)
        columns = [list(column) for column in zip(*batch, strict=True)]
        self._make_partitions(batch)
        import psycopg

        with self._pool.connection() as conn:
            try:
                conn.execute(_UPSERT, columns)  # one statement: atomic without BEGIN/COMMIT
            except psycopg.DataError as exc:
                for row in batch:
                    if any("\x00" in text for text in row[:2] + row[5:]):
                        raise ValueError(f"reading {row[0]!r} {row[1]!r} has a NUL character in its meter, quantity "
                                         "or unit: PostgreSQL text cannot hold it") from exc
                raise
        return len(rows)

    def _window(self) -> tuple[int, int]:
        """The first and the last day this store makes partitions for."""
        today = to_ms(self.clock()) // DAY_MS
        return day_number(EARLIEST), today + self.future_days

    def _make_partitions(self, batch: Sequence[_Row]) -> None:
        """Create the partitions of the days of ``batch`` that are within the window and missing."""
        days = {row[2] // DAY_MS for row in batch}
        missing = days - self._days
        if not missing:
            return
        first, last = self._window()
        inside = {d for d in missing if first <= d <= last}
        if len(inside) < len(missing):
            self._note_outside([row for row in batch if not first <= row[2] // DAY_MS <= last], first, last)
        if not inside:
            return
        import psycopg

        now = self.clock()
        if self._ddl_after is not None and now < self._ddl_after:
            return  # the batch's rows of those days wait in readings_outside
        try:
            self.ensure_partitions(inside)
        except psycopg.errors.LockNotAvailable:
            self._ddl_after = now + DDL_RETRY
            log.warning("readings partition(s) %s not made: a long query holds the table; the readings of "
                        "those days go to %s until a try %d s from now succeeds",
                        ", ".join(partition_name(d) for d in sorted(inside)), OUTSIDE, DDL_RETRY.total_seconds())
            return
        self._ddl_after = None

    def ensure_partitions(self, days: Iterable[int]) -> None:
        """Create the partitions of ``days`` (day numbers, :func:`day_number`) that do not exist,
        moving any rows of those days out of ``readings_outside``.  Idempotent; safe while other
        stores, in this process or on other nodes, create the same ones."""
        import psycopg

        wanted = set(days)
        for attempt in range(3):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    _lock(conn, _PARTITION_LOCK)
                    self._limit_lock_waits(conn)
                    existing = _partitions(conn)
                    for day in sorted(wanted - existing.keys()):
                        self._create_partition(conn, day)
                        existing[day] = partition_name(day)
                with self._days_lock:
                    self._days.update(existing)
                return
            except psycopg.errors.DuplicateTable:  # made by someone who did not take the lock
                if attempt == 2:
                    raise

    @staticmethod
    def _create_partition(conn: psycopg.Connection[Any], day: int) -> None:
        name = partition_name(day)
        lo, hi = day * DAY_MS, (day + 1) * DAY_MS
        conn.execute(f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS)")
        moved = conn.execute(
            f"WITH gone AS (DELETE FROM {OUTSIDE} WHERE ts >= %s AND ts < %s RETURNING {_COLUMNS})"
            f" INSERT INTO {name} ({_COLUMNS}) SELECT {_COLUMNS} FROM gone", (lo, hi)).rowcount
        conn.execute(f"ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
        if moved:
            log.info("readings partition %s created; %d reading(s) of that day moved in from %s", name, moved,
                     OUTSIDE)
        else:
            log.debug("readings partition %s created", name)

    def _note_outside(self, rows: list[_Row], first: int, last: int) -> None:
        now = self.clock()
        with self._days_lock:
            self._outside += len(rows)
            if self._warned is not None and now - self._warned < WARN_EVERY:
                return
            self._warned, count, self._outside = now, self._outside, 0
        meters = sorted({row[0] for row in rows})
        named = ", ".join(meters[:3]) + (f" and {len(meters) - 3} more" if len(meters) > 3 else "")
        _, quantity, ts = rows[0][:3]
        log.warning("%d reading(s) with a timestamp outside %s .. %s stored in %s without a partition of their "
                    "day (a wrong meter or terminal clock?): meter(s) %s, e.g. %s at %s", count,
                    EPOCH_DAY + timedelta(days=first), EPOCH_DAY + timedelta(days=last), OUTSIDE, named,
                    quantity, from_ms(ts).isoformat())

    def _limit_lock_waits(self, conn: psycopg.Connection[Any]) -> None:
        ms = max(1, int(self.lock_timeout.total_seconds() * 1000))
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{ms}ms",))  # this transaction only

    def drop_readings_before(self, day: date) -> None:
        """Retention: forget every reading before ``day`` (00:00 UTC), a whole partition at a time.

        Raises :class:`~meterd.errors.StorageError` (nothing dropped) when a long query holds the
        table past the store's ``lock_timeout``; try again later."""
        import psycopg

        self._check_open()
        cut = day_number(day)
        try:
            with self._pool.connection() as conn, conn.transaction():
                _lock(conn, _PARTITION_LOCK)
                self._limit_lock_waits(conn)
                old = {d: name for d, name in _partitions(conn).items() if d < cut}
                for name in old.values():
                    conn.execute(f"DROP TABLE {name}")
                conn.execute(f"DELETE FROM {OUTSIDE} WHERE ts < %s", (cut * DAY_MS,))
        except psycopg.errors.LockNotAvailable as exc:
            raise StorageError(f"readings before {day} not dropped: a long query holds the readings table in "
                               f"{self.database}; nothing was dropped, try again later") from exc
        with self._days_lock:
            self._days.difference_update(old)
        if old:
            log.info("readings before %s dropped: %d day partition(s)", day, len(old))

    def prune_readings(self, before: datetime, *, keep_latest: bool = True, dry_run: bool = False,
                       rows: int = PRUNE_ROWS, pause: float = PRUNE_PAUSE,
                       stop: threading.Event | None = None) -> Pruned:
        """Retention: forget the readings of the UTC days wholly before ``before``, a partition at a
        time, and the same span of ``readings_outside``; one transaction.

        With ``keep_latest`` the newest reading of each (meter, quantity) that has no reading from
        the cut on is kept whatever its age (a meter silent for longer than the retention keeps its
        last value): such rows are found first (a scan of the doomed days, which blocks nobody) and
        put back after the drop, into ``readings_outside`` since their day has no partition any
        more.  The count and that search come first in the transaction and block nobody; the
        drops' lock on the table is held from then to COMMIT, and that span is the result's
        ``longest``.  Raises :class:`~meterd.errors.StorageError` (nothing dropped) when a long query
        holds the table past ``lock_timeout``.  ``dry_run`` counts what would go.  (``rows``, ``pause``
        and ``stop`` are the SQLite store's batching: a partition goes in one statement.)"""
        import psycopg

        self._check_open()
        cut = (to_ms(before) // DAY_MS) * DAY_MS  # whole days: a partition goes whole or not at all
        keepers = (f"SELECT k.* FROM (SELECT DISTINCT ON (meter, quantity) {_COLUMNS} FROM readings WHERE ts < %s"
                   " ORDER BY meter, quantity, ts DESC) k WHERE NOT EXISTS (SELECT 1 FROM readings n WHERE"
                   " n.meter = k.meter AND n.quantity = k.quantity AND n.ts >= %s)")
        if dry_run:
            (old,) = self._fetch("SELECT COUNT(*) FROM readings WHERE ts < %s", [cut])[0]
            kept = self._fetch(f"SELECT COUNT(*) FROM ({keepers}) x", [cut, cut])[0][0] if keep_latest and old else 0
            return Pruned(int(old) - int(kept))
        locked = 0.0
        try:
            with self._pool.connection() as conn, conn.transaction():
                (old,) = conn.execute("SELECT COUNT(*) FROM readings WHERE ts < %s", (cut,)).fetchone() or (0,)
                kept = 0
                if keep_latest and old:
                    kept = conn.execute(f"CREATE TEMPORARY TABLE retention_keep ON COMMIT DROP AS {keepers}",
                                        (cut, cut)).rowcount
                locked = _time.monotonic()  # from here to COMMIT the drops hold the table: writers queue
                _lock(conn, _PARTITION_LOCK)
                self._limit_lock_waits(conn)
                gone = {d: name for d, name in _partitions(conn).items() if (d + 1) * DAY_MS <= cut}
                for name in gone.values():
                    conn.execute(f"DROP TABLE {name}")
                conn.execute(f"DELETE FROM {OUTSIDE} WHERE ts < %s", (cut,))
                if kept:
                    conn.execute(f"INSERT INTO readings ({_COLUMNS}) SELECT {_COLUMNS} FROM retention_keep")
        except psycopg.errors.LockNotAvailable as exc:
            raise StorageError(f"readings before {from_ms(cut).date()} not pruned: a long query holds the readings "
                               f"table in {self.database}; nothing was dropped, try again later") from exc
        held = _time.monotonic() - locked
        with self._days_lock:
            self._days.difference_update(gone)
        return Pruned(int(old) - kept, 1, held)

    def readings(
        self,
        meter: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        quantity: str | None = None,
        limit: int | None = None,
    ) -> list[Reading]:
        """A meter's readings with ``since <= timestamp < until``, by time then quantity."""
        sql = f"SELECT {_COLUMNS} FROM readings WHERE meter = %s"
        params: list[object] = [meter]
        if since is not None:
            sql += " AND ts >= %s"
            params.append(to_ms(since))
        if until is not None:
            sql += " AND ts < %s"
            params.append(to_ms(until))
        if quantity is not None:
            sql += " AND quantity = %s"
            params.append(quantity)
        sql += " ORDER BY ts, quantity"
        if limit is not None and limit >= 0:
            sql += " LIMIT %s"
            params.append(limit)
        return [_reading(r) for r in self._fetch(sql, params)]

    def latest(self, meter: str) -> dict[str, Reading]:
        """The newest reading of each quantity of ``meter``."""
        rows = self._fetch(
            f"SELECT DISTINCT ON (quantity) {_COLUMNS} FROM readings WHERE meter = %s ORDER BY quantity, ts DESC",
            [meter])
        return {r[1]: _reading(r) for r in rows}

    def count_readings(self) -> int:
        (count,) = self._fetch("SELECT COUNT(*) FROM readings", [])[0]
        return int(count)

    # --- attempts ------------------------------------------------------------------------------

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        rows = []
        for a in attempts:
            if a.outcome not in OUTCOMES:
                raise ValueError(f"attempt outcome {a.outcome!r} is not one of {sorted(OUTCOMES)}")
            rows.append((a.meter, a.channel, a.item, to_ms(a.timestamp), a.outcome, a.latency, a.detail))
        self._check_open()
        if not rows:
            return
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            _lock(conn, _ATTEMPTS_LOCK)  # ids drawn and committed in one order (module docstring)
            with cur.copy("COPY attempts (meter, channel, item, ts, outcome, latency, detail) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def prune_attempts(self, before: datetime, *, dry_run: bool = False, rows: int = PRUNE_ATTEMPT_ROWS,
                       pause: float = PRUNE_PAUSE, stop: threading.Event | None = None) -> Pruned:
        """Retention: delete the attempts stamped before ``before``, oldest first, ``rows`` per
        statement (each its own transaction), pausing between as the SQLite store does.  The newest
        attempt stays, as there (ids are never reused here, but both backends keep the same rows)."""
        self._check_open()
        cut = to_ms(before)
        (keep,) = self._fetch("SELECT COALESCE(MAX(id), 0) FROM attempts", [])[0]
        if dry_run:
            (n,) = self._fetch("SELECT COUNT(*) FROM attempts WHERE ts < %s AND id < %s", [cut, keep])[0]
            return Pruned(int(n))
        total = transactions = 0
        longest = last = 0.0
        while not (stop is not None and stop.is_set()):
            started = _time.monotonic()
            with self._pool.connection() as conn:
                deleted = conn.execute("DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE ts < %s AND "
                                       "id < %s ORDER BY ts LIMIT %s)", (cut, keep, rows)).rowcount
            last = _time.monotonic() - started
            longest, total, transactions = max(longest, last), total + deleted, transactions + 1
            if deleted < rows:
                break
            if stop is not None:
                stop.wait(max(pause, last))
            else:
                _time.sleep(max(pause, last))
        return Pruned(total, transactions, longest)

    def attempts(self, *, meter: str | None = None, since: datetime | None = None,
                 last: int | None = None) -> list[Attempt]:
        """Recorded attempts, oldest first (in recording order within one millisecond); with
        ``last``, only the newest ``last`` of them (read newest first, so no more are read)."""
        sql = "SELECT id, meter, channel, item, ts, outcome, latency, detail FROM attempts WHERE TRUE"
        params: list[object] = []
        if meter is not None:
            sql += " AND meter = %s"
            params.append(meter)
        if since is not None:
            sql += " AND ts >= %s"
            params.append(to_ms(since))
        if last is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY ts DESC, id DESC LIMIT %s) AS newest"
            params.append(last)
        sql += " ORDER BY ts, id"
        return [
            Attempt(meter=m, channel=c, item=i, timestamp=from_ms(ts), outcome=o, latency=lat, detail=d)
            for _, m, c, i, ts, o, lat, d in self._fetch(sql, params)
        ]

    # --- plumbing ------------------------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        self._check_open()
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
