"""The embedded default store: two SQLite files in the data directory.

``readings.sqlite3`` holds the time series, ``state.sqlite3`` the meter archive and the log of
collection attempts.  Both run in WAL mode so readers (API, reports) do not block the writer.

Layout::

    readings(meter, quantity, ts, value, kind, unit, quality)   PRIMARY KEY (meter, quantity, ts)
    meters(address, channel, protocol, ct, pt, name, meter_group)          PRIMARY KEY (address)
    attempts(id, meter, channel, item, ts, outcome, latency, detail)

Edge cases worth knowing:

- ``ts`` is INTEGER milliseconds since the Unix epoch, UTC.  Timestamps must be timezone-aware;
  they come back in UTC, and anything finer than a millisecond is cut off.
- ``value`` is TEXT with a ``kind`` beside it (``decimal``, ``int``, ``bool``, ``str``,
  ``datetime``) so every value comes back as the same Python type with the same digits:
  ``Decimal("12.30")`` stays ``Decimal("12.30")``, never a float.
- Writing a reading whose (meter, quantity, ts) already exists replaces it, so replaying a batch
  (after a crash, from a spool) is harmless.
- A meter is identified by its address, as in readings; upserting a meter that moved to another
  channel updates it.

One lock serialises every call, so a store may be shared by the event loop and the worker threads
that ``asyncio.to_thread`` uses.

Batches are inserted with multi-row ``INSERT ... VALUES (...), (...), ...`` statements
(:func:`_insert_rows`), not ``executemany``: the sqlite3 module lets go of the GIL around every
``sqlite3_step``, i.e. once per row with ``executemany``, and a worker thread that lets go of the GIL
waits a whole switch interval (5 ms) to get it back from a busy event loop -- 500 rows took
seconds and the writer fell behind the collector exactly when the loop was busiest.  A multi-row
statement steps once per chunk of up to 2,048 rows; the rows go in in order, so of two rows with one
key the later still wins, and attempt ids still count up in recording order.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from itertools import chain
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from meterd.errors import ConfigError
from meterd.readings import Quality, Reading, Value, quick_init
from meterd.storage.database import first_table, schema_line

log = logging.getLogger(__name__)

READINGS_FILE: Final = "readings.sqlite3"
STATE_FILE: Final = "state.sqlite3"
#: ``no_record``: the meter answered "no requested data" for a record it makes at set times (a freeze,
#: a settlement, a load-curve record) -- the record is not there (yet); see :mod:`meterd.storage.quality`.
OUTCOMES: Final = frozenset({"ok", "no_record", "timeout", "garbled", "incomplete", "wrong_address", "abnormal",
                             "link"})

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)

_READINGS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
    meter    TEXT    NOT NULL,
    quantity TEXT    NOT NULL,
    ts       INTEGER NOT NULL,
    value    TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    unit     TEXT    NOT NULL DEFAULT '',
    quality  TEXT    NOT NULL DEFAULT 'good',
    PRIMARY KEY (meter, quantity, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_meter_ts ON readings (meter, ts);
"""

_STATE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meters (
    address     TEXT NOT NULL PRIMARY KEY,
    channel     TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    ct          TEXT NOT NULL,
    pt          TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    meter_group TEXT NOT NULL DEFAULT 'default'
);
CREATE TABLE IF NOT EXISTS attempts (
    id      INTEGER PRIMARY KEY,
    meter   TEXT    NOT NULL,
    channel TEXT    NOT NULL,
    item    TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    outcome TEXT    NOT NULL,
    latency REAL,
    detail  TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attempts_meter_ts ON attempts (meter, ts);
CREATE INDEX IF NOT EXISTS attempts_ts ON attempts (ts);
"""
#: Schema versions, kept in each file's ``schema_versions`` as the state stores keep theirs
#: (:mod:`meterd.storage.statedb`), under the names the PostgreSQL store uses: ``readings`` in
#: readings.sqlite3, ``archive`` (meters, attempts) in state.sqlite3.  Version 1 is the layout above,
#: which meterd made with ``CREATE ... IF NOT EXISTS`` before it kept versions (such a file is at 0
#: and takes the same step); each later entry is one step of statements.  A file at a version
#: newer than this code knows is refused before anything is written to it.
READINGS_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = ((),)
ARCHIVE_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = ((),)


@dataclass(frozen=True, slots=True)
class MeterRecord:
    address: str
    channel: str
    protocol: str
    ct: Decimal
    pt: Decimal
    name: str = ""
    group: str = "default"


@dataclass(frozen=True, slots=True)
class Pruned:
    """What pruning one table did (or, in a dry run, would do): ``rows`` deleted, in
    ``transactions`` write transactions, the longest of which held the table ``longest`` seconds."""

    rows: int
    transactions: int = 0
    longest: float = 0.0


#: Retention's batches (see :meth:`SqliteStore.prune_readings`): a prune transaction deletes at most
#: PRUNE_ROWS rows with at most PRUNE_PAIRS statements; the next waits PRUNE_PAUSE seconds, or as
#: long as the last one took if that was longer, so writers get the database at least half of the
#: time.
PRUNE_ROWS: Final = 2000
PRUNE_PAIRS: Final = 32  # the most (meter, quantity) DELETE statements in one prune transaction
#: Attempts per prune transaction: an attempt deleted touches two indexes besides its row, the one by
#: meter a page of its own per meter (300 meters' attempts: ~30 ms a transaction, against ~45 for 2,000)
PRUNE_ATTEMPT_ROWS: Final = 1000
PRUNE_PAUSE: Final = 0.02
PRUNE_LOCKED_TRIES: Final = 10  # a prune transaction that finds the database locked tries again this often


@quick_init  # one per read: made in half the instructions (meterd.readings.quick_init)
@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to one meter and how it ended; ``outcome`` is one of :data:`OUTCOMES`."""

    meter: str
    channel: str
    item: str  # the data identifier asked for, e.g. "0001FF00"
    timestamp: datetime
    outcome: str
    latency: float | None = None  # seconds from request to complete reply
    detail: str = ""


# --- encoding ----------------------------------------------------------------------------------


def to_ms(moment: datetime) -> int:
    """Aware datetime -> integer milliseconds since the epoch (exact, no float rounding)."""
    try:
        d = moment - _EPOCH  # TypeError for a naive datetime
    except TypeError:
        raise ValueError(f"timestamp {moment.isoformat()} has no time zone; meterd stores UTC") from None
    return d.days * 86_400_000 + d.seconds * 1000 + d.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def encode_value(value: Value) -> tuple[str, str]:
    """A reading value -> (text, kind) that :func:`decode_value` turns back into an equal value."""
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return ("1" if value else "0"), "bool"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, Decimal):
        return str(value), "decimal"
    if isinstance(value, datetime):
        return value.isoformat(), "datetime"
    if isinstance(value, str):
        return value, "str"
    raise TypeError(f"cannot store a {type(value).__name__} reading value: {value!r}")


def decode_value(text: str, kind: str) -> Value:
    if kind == "decimal":
        return Decimal(text)
    if kind == "int":
        return int(text)
    if kind == "bool":
        return text == "1"
    if kind == "datetime":
        return datetime.fromisoformat(text)
    if kind == "str":
        return text
    raise ValueError(f"unknown value kind {kind!r} in the readings table")


def _reading_row(reading: Reading, ms: int | None = None) -> tuple[str, str, int, str, str, str, str]:
    """The row of ``reading``; ``ms``: ``to_ms(reading.timestamp)`` when the caller has it."""
    value = reading.value
    if type(value) is Decimal:  # nearly every reading: skip the isinstance ladder
        text, kind = str(value), "decimal"
    else:
        text, kind = encode_value(value)
    quality = reading.quality
    # Quality(...) validates a plain string; for a member it is a slow no-op (an enum call per row)
    quality_text = quality._value_ if type(quality) is Quality else Quality(quality).value
    return (
        reading.meter,
        reading.quantity,
        to_ms(reading.timestamp) if ms is None else ms,
        text,
        kind,
        reading.unit,
        quality_text,
    )


def _reading_rows(readings: Iterable[Reading]) -> list[tuple[str, str, int, str, str, str, str]]:
    """:func:`_reading_row` of each; a round's readings share one timestamp object, whose
    milliseconds are worked out once.  The common row -- a Decimal value of a Quality member --
    is built here without a call per reading; anything else goes through :func:`_reading_row`
    (tests/unit/test_sqlite_batches.py holds the two to the same rows)."""
    rows: list[tuple[str, str, int, str, str, str, str]] = []
    append = rows.append
    last: datetime | None = None
    ms = 0
    for r in readings:
        stamp = r.timestamp
        if stamp is not last:
            last = stamp
            ms = to_ms(stamp)
        value = r.value
        quality = r.quality
        if type(value) is Decimal and type(quality) is Quality:
            append((r.meter, r.quantity, ms, str(value), "decimal", r.unit, quality._value_))
        else:
            append(_reading_row(r, ms))
    return rows


_ROW_KEY: Final = itemgetter(0, 1, 2)  # (meter, quantity, ts): the readings table's primary key


def _reading(row: sqlite3.Row) -> Reading:
    return Reading(
        meter=row["meter"],
        quantity=row["quantity"],
        timestamp=from_ms(row["ts"]),
        value=decode_value(row["value"], row["kind"]),
        unit=row["unit"],
        quality=Quality(row["quality"]),
    )


_CHUNK_ROWS: Final = 2048  # the most rows one INSERT statement takes (14,336 values of 7 columns)


def _chunks(total: int, largest: int) -> list[int]:
    """Split ``total`` rows into chunks of ``largest`` rows and one of the rest.

    A batch is nearly always the writer's ``batch_size`` rows, so the statements' texts repeat and
    sqlite3's statement cache keeps them prepared; an odd size costs one prepare.
    """
    sizes = [largest] * (total // largest)
    if total % largest:
        sizes.append(total % largest)
    return sizes


def _insert_rows(conn: sqlite3.Connection, head: str, width: int, rows: Sequence[tuple[object, ...]]) -> None:
    """``head`` (``INSERT ... (cols) VALUES``) with ``rows`` of ``width`` values, in order.

    Does what ``conn.executemany(head + " (?, ...)", rows)`` does, in one ``sqlite3_step`` per chunk
    instead of one per row (see the module docstring for why that matters).
    """
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    largest = _CHUNK_ROWS
    while largest > 1 and largest * width > limit:
        largest //= 2
    start = 0
    for size in _chunks(len(rows), largest):
        conn.execute(_insert_sql(head, width, size), list(chain.from_iterable(rows[start:start + size])))
        start += size


_INSERT_SQL: dict[tuple[str, int, int], str] = {}  # (head, width, rows) -> the statement's text
_INSERT_SQL_KEPT: Final = 64


def _insert_sql(head: str, width: int, size: int) -> str:
    """``head`` followed by ``size`` groups of ``width`` ``?``: the same str object for the same
    shape, so sqlite3's statement cache finds it without hashing and comparing ~10 kB of text
    made anew per batch."""
    key = (head, width, size)
    sql = _INSERT_SQL.get(key)
    if sql is None:
        one = "(" + ", ".join("?" * width) + ")"
        sql = f"{head} {', '.join([one] * size)}"
        if len(_INSERT_SQL) >= _INSERT_SQL_KEPT:
            _INSERT_SQL.clear()
        _INSERT_SQL[key] = sql
    return sql


# The archive's SQL, shared with the PostgreSQL store (which takes it through database.translate).
UPSERT_METERS: Final = (
    "INSERT INTO meters (address, channel, protocol, ct, pt, name, meter_group)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (address) DO UPDATE SET channel = excluded.channel,"
    " protocol = excluded.protocol, ct = excluded.ct, pt = excluded.pt,"
    " name = excluded.name, meter_group = excluded.meter_group"
)


def meters_query(*, after: str | None, limit: int | None, address: str | None) -> tuple[str, list[object]]:
    """The archive's meters by address (one, or a page after ``after``): SQL with ``?`` and its parameters."""
    sql, params = "SELECT address, channel, protocol, ct, pt, name, meter_group FROM meters", list[object]()
    if address is not None:
        sql += " WHERE address = ?"
        params.append(address)
    elif after is not None:
        sql += " WHERE address > ?"
        params.append(after)
    sql += " ORDER BY address"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


def meter_record(row: Sequence[object]) -> MeterRecord:
    """A row of :func:`meters_query` as a :class:`MeterRecord`."""
    address, channel, protocol, ct, pt, name, group = row
    return MeterRecord(address=str(address), channel=str(channel), protocol=str(protocol), ct=Decimal(str(ct)),
                       pt=Decimal(str(pt)), name=str(name), group=str(group))


# --- the store ---------------------------------------------------------------------------------


def _connect(path: Path, schema: str, store: str, steps: Sequence[Sequence[str]]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
    try:
        conn.row_factory = sqlite3.Row
        _check_version(conn, path, store, len(steps))  # before anything is written to a newer file
        conn.execute("PRAGMA journal_mode=WAL")
        # synchronous stays FULL (the default): a committed batch of readings survives a power cut.
        new = not has_table(conn, first_table([[schema]]))  # the schema is made before the steps run
        conn.executescript(schema)
        _migrate(conn, path, store, steps, new=new)
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_version(conn: sqlite3.Connection, store: str) -> int:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'").fetchone() is None:
        return 0
    row = conn.execute("SELECT version FROM schema_versions WHERE store = ?", (store,)).fetchone()
    return int(row[0]) if row else 0


def _check_version(conn: sqlite3.Connection, path: Path, store: str, latest: int) -> int:
    done = _schema_version(conn, store)
    if done > latest:
        raise ConfigError(f"{path}: the {store} tables are at schema version {done}, newer than this meterd knows "
                          f"({latest}): upgrade meterd")
    return done


def has_table(conn: sqlite3.Connection, table: str | None) -> bool:
    """Whether the SQLite database of ``conn`` has the table ``table`` (None: no)."""
    return table is not None and conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


def _migrate(conn: sqlite3.Connection, path: Path, store: str, steps: Sequence[Sequence[str]], *,
             new: bool | None = None) -> None:
    """Bring ``store``'s tables in ``conn`` to ``len(steps)``, in one write transaction (two
    processes opening an old file at once: the second finds nothing left to do)."""
    latest = len(steps)
    if _schema_version(conn, store) == latest:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (store TEXT NOT NULL PRIMARY KEY, "
                     "version INTEGER NOT NULL)")
        done = _check_version(conn, path, store, latest)  # again, under the write lock
        if new is None:  # a new store: the first table its steps make was not there
            new = done == 0 and (table := first_table(steps)) is not None and not has_table(conn, table)
        for step in steps[done:]:
            for statement in step:
                conn.execute(statement)
        if done < latest:
            conn.execute("INSERT INTO schema_versions (store, version) VALUES (?, ?) ON CONFLICT (store) "
                         "DO UPDATE SET version = excluded.version", (store, latest))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    if done < latest:
        log.info("%s", schema_line(path, store, done, latest, new=new and done == 0))


class SqliteStore:
    """Readings, meters and attempts in ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._readings = _connect(self.data_dir / READINGS_FILE, _READINGS_SCHEMA, "readings", READINGS_MIGRATIONS)
        try:
            self._state = _connect(self.data_dir / STATE_FILE, _STATE_SCHEMA, "archive", ARCHIVE_MIGRATIONS)
        except BaseException:
            self._readings.close()
            raise
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._readings.close()
            self._state.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- meters --------------------------------------------------------------------------------

    def upsert_meters(self, meters: Iterable[MeterRecord]) -> None:
        rows = [
            (m.address, m.channel, m.protocol, str(m.ct), str(m.pt), m.name, m.group) for m in meters
        ]
        with self._lock, self._state:
            self._state.executemany(UPSERT_METERS, rows)

    def meter(self, address: str) -> MeterRecord | None:
        """The archive's record of one meter, None if it has none."""
        found = self.meters(after=None, limit=1, address=address)
        return found[0] if found else None

    def meters(self, *, after: str | None = None, limit: int | None = None,
               address: str | None = None) -> list[MeterRecord]:
        """The archive's meters by address; a page of them with ``after`` (an address) and ``limit``."""
        sql, params = meters_query(after=after, limit=limit, address=address)
        with self._lock:
            rows = self._state.execute(sql, params).fetchall()
        return [meter_record(r) for r in rows]

    # --- readings ------------------------------------------------------------------------------

    def write_readings(self, readings: Sequence[Reading]) -> int:
        """Store ``readings`` in one transaction; all or nothing.  Returns how many were written."""
        rows = _reading_rows(readings)  # encode first: a bad value fails before BEGIN
        # in key order: neighbouring rows share B-tree pages, so a batch touches (and the WAL
        # takes) fewer pages -- a fifth less CPU per row on a big table.  The sort is stable, so
        # of two rows with one key the later still wins.
        rows.sort(key=_ROW_KEY)
        with self._lock, self._readings:
            _insert_rows(
                self._readings,
                "INSERT OR REPLACE INTO readings (meter, quantity, ts, value, kind, unit, quality) VALUES",
                7,
                rows,
            )
        return len(rows)

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
        sql = "SELECT * FROM readings WHERE meter = ?"
        params: list[object] = [meter]
        if since is not None:
            sql += " AND ts >= ?"
            params.append(to_ms(since))
        if until is not None:
            sql += " AND ts < ?"
            params.append(to_ms(until))
        if quantity is not None:
            sql += " AND quantity = ?"
            params.append(quantity)
        sql += " ORDER BY ts, quantity"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = self._readings.execute(sql, params).fetchall()
        return [_reading(r) for r in rows]

    def latest(self, meter: str) -> dict[str, Reading]:
        """The newest reading of each quantity of ``meter``."""
        # SQLite takes the bare columns of an aggregate query from the row that holds MAX(ts).
        with self._lock:
            rows = self._readings.execute(
                "SELECT meter, quantity, MAX(ts) AS ts, value, kind, unit, quality"
                " FROM readings WHERE meter = ? GROUP BY quantity ORDER BY quantity",
                (meter,),
            ).fetchall()
        return {r["quantity"]: _reading(r) for r in rows}

    def prune_readings(self, before: datetime, *, keep_latest: bool = True, dry_run: bool = False,
                       rows: int = PRUNE_ROWS, pause: float = PRUNE_PAUSE,
                       stop: threading.Event | None = None) -> Pruned:
        """Retention: delete the readings stamped before ``before``, in small transactions.

        With ``keep_latest`` the newest reading of each (meter, quantity) stays whatever its age:
        a meter silent for longer than the retention keeps its last value.  The table is walked
        one (meter, quantity) at a time along its key (:class:`_PairWalk`: index seeks on a
        read-only connection of its own, so the walk holds no lock and keeps nobody waiting), and
        the old rows it finds go in slices of at most ``rows`` rows and :data:`PRUNE_PAIRS`
        statements per transaction -- nothing but those DELETEs between BEGIN and COMMIT (every
        statement lets go of the GIL, and getting it back from a busy event loop can take a switch
        interval) -- with the store (the writer's lock and SQLite's) let go for ``pause`` at least
        in between.  ``stop`` set: ends after the transaction in hand, with what is done (the
        rest goes next time).  ``dry_run`` counts, deleting nothing and holding no lock.
        """
        conn = self._readings
        reader = sqlite3.connect(f"{(self.data_dir / READINGS_FILE).resolve().as_uri()}?mode=ro", uri=True,
                                 timeout=30.0)
        try:
            walk = _PairWalk(reader, to_ms(before), keep_latest=keep_latest, whole=dry_run)
            tally = _Tally(pause)
            while not (stop is not None and stop.is_set()):
                plan = walk.slice(rows, PRUNE_PAIRS)
                if not plan:
                    break
                if dry_run:
                    tally.rows += sum(n for *_, n in plan)
                    continue
                with self._lock, tally.transaction(conn, dry_run=False) as tx:
                    for meter, quantity, upto, _ in plan:
                        tx.deleted += conn.execute("DELETE FROM readings WHERE meter = ? AND quantity = ? AND ts < ?",
                                                   (meter, quantity, upto)).rowcount
                tally.rest(stop)
        finally:
            reader.close()
        return tally.result()

    def count_readings(self) -> int:
        with self._lock:
            (count,) = self._readings.execute("SELECT COUNT(*) FROM readings").fetchone()
        return int(count)

    def drop_readings_before(self, day: date) -> None:
        """Retention: forget every reading before ``day`` (00:00 UTC)."""
        cut = to_ms(datetime.combine(day, time(), UTC))
        with self._lock, self._readings:
            self._readings.execute("DELETE FROM readings WHERE ts < ?", (cut,))

    # --- attempts ------------------------------------------------------------------------------

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        rows = []
        last: datetime | None = None  # a round's attempts share its time: one to_ms for them all
        ts = 0
        for a in attempts:
            if a.outcome not in OUTCOMES:
                raise ValueError(f"attempt outcome {a.outcome!r} is not one of {sorted(OUTCOMES)}")
            if a.timestamp is not last:
                last = a.timestamp
                ts = to_ms(last)
            rows.append((a.meter, a.channel, a.item, ts, a.outcome, a.latency, a.detail))
        with self._lock, self._state:
            _insert_rows(
                self._state,
                "INSERT INTO attempts (meter, channel, item, ts, outcome, latency, detail) VALUES",
                7,
                rows,
            )

    def prune_attempts(self, before: datetime, *, dry_run: bool = False, rows: int = PRUNE_ATTEMPT_ROWS,
                       pause: float = PRUNE_PAUSE, stop: threading.Event | None = None) -> Pruned:
        """Retention: delete the attempts stamped before ``before``, ``rows`` at a time (oldest
        first, along ``attempts_ts``), letting go of the state database between transactions as
        :meth:`prune_readings` does.  The newest attempt stays whatever its age: SQLite draws a new
        row's id after the largest there is, and the collection-quality rollup folds attempts by
        id after its watermark, so an emptied log would hand out ids it has already counted."""
        cut = to_ms(before)
        conn = self._state
        with self._lock:
            (keep,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()
        if dry_run:
            with self._lock:
                (n,) = conn.execute("SELECT COUNT(*) FROM attempts WHERE ts < ? AND id < ?", (cut, keep)).fetchone()
            return Pruned(int(n))
        tally = _Tally(pause)
        while not (stop is not None and stop.is_set()):
            with self._lock, tally.transaction(conn, False) as tx:
                tx.deleted = conn.execute("DELETE FROM attempts WHERE id IN (SELECT id FROM attempts WHERE ts < ? AND "
                                          "id < ? ORDER BY ts LIMIT ?)", (cut, keep, rows)).rowcount
            if tx.deleted < rows:
                break
            tally.rest(stop)
        return tally.result()

    def attempts(self, *, meter: str | None = None, since: datetime | None = None,
                 last: int | None = None) -> list[Attempt]:
        """Recorded attempts, oldest first (in recording order within one millisecond); with
        ``last``, only the newest ``last`` of them (read newest first, so no more are read)."""
        sql = "SELECT * FROM attempts WHERE 1 = 1"
        params: list[object] = []
        if meter is not None:
            sql += " AND meter = ?"
            params.append(meter)
        if since is not None:
            sql += " AND ts >= ?"
            params.append(to_ms(since))
        if last is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY ts DESC, id DESC LIMIT ?)"
            params.append(last)
        sql += " ORDER BY ts, id"
        with self._lock:
            rows = self._state.execute(sql, params).fetchall()
        return [
            Attempt(
                meter=r["meter"],
                channel=r["channel"],
                item=r["item"],
                timestamp=from_ms(r["ts"]),
                outcome=r["outcome"],
                latency=r["latency"],
                detail=r["detail"],
            )
            for r in rows
        ]


# --- retention's transactions --------------------------------------------------------------------


@dataclass(slots=True)
class _Tx:
    started: float
    write: bool
    deleted: int = 0

    def running(self) -> float:
        return _time.monotonic() - self.started


class _PairWalk:
    """The old rows of the readings table, one (meter, quantity) after another along the key: what
    a prune transaction deletes next, found on a connection of its own (reads hold no lock in WAL
    mode).  ``whole``: each pair's rows counted at once (a dry run, which deletes nothing, cannot
    count a pair slice by slice)."""

    def __init__(self, conn: sqlite3.Connection, cut: int, *, keep_latest: bool, whole: bool) -> None:
        self.conn, self.cut, self.keep_latest, self.whole = conn, cut, keep_latest, whole
        self.after: tuple[str, str] | None = None  # the last (meter, quantity) taken up
        self.pair: tuple[str, str, int] | None = None  # the one in hand and its bound (ts < bound goes)

    def slice(self, rows: int, pairs: int) -> list[tuple[str, str, int, int]]:
        """(meter, quantity, ts bound, rows) to delete next: at most ``rows`` rows, ``pairs`` entries."""
        plan: list[tuple[str, str, int, int]] = []
        total = 0
        while total < rows and len(plan) < pairs:
            if self.pair is None and not self._next_pair():
                break
            assert self.pair is not None
            meter, quantity, bound = self.pair
            want = rows - total
            key = (meter, quantity, bound)
            if self.whole:
                (n,) = self.conn.execute("SELECT COUNT(*) FROM readings WHERE meter = ? AND quantity = ? AND ts < ?",
                                         key).fetchone()
                upto, self.pair = bound, None
            else:
                (n,) = self.conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM readings WHERE meter = ? AND quantity = ? "
                                         "AND ts < ? LIMIT ?)", (*key, want)).fetchone()
                edge = None
                if n == want:  # the slice is full: up to the first row past it
                    edge = self.conn.execute("SELECT ts FROM readings WHERE meter = ? AND quantity = ? AND ts < ? "
                                             "ORDER BY ts LIMIT 1 OFFSET ?", (*key, want)).fetchone()
                if edge is None:
                    upto, self.pair = bound, None
                else:
                    upto = edge[0]
            if n:
                plan.append((meter, quantity, upto, n))
                total += n
        return plan

    def _next_pair(self) -> bool:
        """Take up the next (meter, quantity) with rows before the cut; False at the end of the table."""
        while True:
            found = self.conn.execute(
                "SELECT meter, quantity, ts FROM readings" + (" WHERE (meter, quantity) > (?, ?)" if self.after else "")
                + " ORDER BY meter, quantity, ts LIMIT 1", self.after or ()).fetchone()
            if found is None:
                return False
            meter, quantity, oldest = found
            self.after = (meter, quantity)
            if oldest >= self.cut:
                continue  # nothing of this one is old
            bound = self.cut
            if self.keep_latest:
                (newest,) = self.conn.execute("SELECT MAX(ts) FROM readings WHERE meter = ? AND quantity = ?",
                                              (meter, quantity)).fetchone()
                bound = min(bound, newest)
            self.pair = (meter, quantity, bound)
            return True


class _Tally:
    """The write transactions of one prune: begun with the write lock taken up front (``BEGIN
    IMMEDIATE``, tried again while another process holds it), timed, and rested between."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.rows = 0
        self.transactions = 0
        self.longest = 0.0
        self.last = 0.0

    @contextmanager
    def transaction(self, conn: sqlite3.Connection, dry_run: bool) -> Iterator[_Tx]:
        """One write transaction (none in a dry run), committed at the end, rolled back on any error."""
        if dry_run:
            tx = _Tx(_time.monotonic(), write=False)
            yield tx
            self.rows += tx.deleted
            return
        for attempt in range(PRUNE_LOCKED_TRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")  # waits up to the connection's busy timeout
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == PRUNE_LOCKED_TRIES - 1:
                    raise
        tx = _Tx(_time.monotonic(), write=True)
        try:
            yield tx
            conn.commit()
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        self.last = tx.running()
        self.longest = max(self.longest, self.last)
        self.transactions += 1
        self.rows += tx.deleted

    def rest(self, stop: threading.Event | None) -> None:
        wait = max(self.pause, self.last)
        if stop is not None:
            stop.wait(wait)
        elif wait > 0:
            _time.sleep(wait)

    def result(self) -> Pruned:
        return Pruned(self.rows, self.transactions, self.longest)
