"""Collection quality: per meter, terminal (channel) and area, per day of the site's zone --
attempts, successes, "no record yet" answers, failures by kind, success rate, terminal online time
and rate, and meters that gave no data.

It lives in the state store (``state.sqlite3``, or the PostgreSQL database, beside the
``attempts`` log it is computed from)::

    quality_daily(day, meter, channel, outcome, area, count, latency_sum, latency_n, first_ts, last_ts)
        PRIMARY KEY (day, meter, channel, outcome)      -- one row per outcome, so any new outcome counts
    terminal_online(terminal, start_ts, end_ts)          -- online intervals fed in; end NULL = still online
        PRIMARY KEY (terminal, start_ts)
    terminal_watch(terminal, since_ts)                   -- the master's first round on the terminal
    quality_areas(meter, area)                           -- each meter's topology area (the daemon's config)
    quality_state(key, value)                            -- 'attempts_watermark': last attempts.id folded in

``day`` is ``YYYY-MM-DD`` in the site's zone (``[site] timezone``: the ``zone`` a
:class:`QualityStore` is opened with; default China Standard Time, UTC+8), cut at its midnight;
``*_ts`` are epoch milliseconds, UTC, like the rest of the store.  The day is fixed when an attempt
is folded in: the daemon and ``meterd quality -c`` open the store with the config's zone, and a
site that changes its zone recomputes the days it wants cut the new way (``--recompute``).  The rollup is incremental: :meth:`QualityStore.update` folds in the
attempts recorded since the last call (by ``attempts.id``); :meth:`QualityStore.rollup` recomputes
one day from scratch (after a back-dated import).

Areas.  A meter's area is the topology area (``[[topology.units]]`` of kind ``area``, 台区) it is a
point of -- the units line loss is computed for, not the meter group polls are bound to.  The
daemon writes the mapping from its config at start (:meth:`QualityStore.set_areas`,
:func:`topology_areas`); a report takes every meter's area from it as it is then, for past days
too, as line loss does.  A meter in no area is in the area ``-`` (:data:`NO_AREA`).  (The
``area`` column of ``quality_daily`` is no longer written; old databases keep what it held.)

Outcomes.  ``ok`` is a success; ``no_record`` (the meter answered "no requested data" for a record
it makes at set times -- a freeze, a settlement, a load-curve record: today's freeze of a meter
that has not yet passed a midnight) is neither a success nor a failure: the request was not due.
Every other outcome is a failure of its kind.

Rates.  ``success_rate`` = ok / attempts due (attempts - no_record).  For a channel, area or the
total, ``data_rate`` = meters with at least one ok attempt that day / meters due (the archive's
meters of that channel or area count even with no attempt at all; a meter whose every attempt of
the day was answered ``no_record`` is not due that day).  ``online_rate`` = the union of the
terminal's online intervals / the part of the day the terminal was watched: from the later of
00:00 and the master's first round on it (``terminal_watch``, else its first online interval)
to the end of the day (``now`` for today).  The time before the master first polled a terminal
-- before the system started, or before the terminal was configured -- is not offline time; the
time a master that had been running was stopped is (the terminals could not reach it).  The
operators' line is 97 %: a row under it on any of its rates is flagged.

On PostgreSQL the watermark is as safe as on SQLite: attempts ids are drawn and committed in one
order there (:mod:`meterd.storage.postgres`), so no attempt below ``MAX(id)`` can still be on its
way when the rollup moves the watermark past it.
"""

from __future__ import annotations

import bisect
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from meterd.clock import CST, Clock, utc_now, zone_name
from meterd.clock import day_bounds as _zone_day_bounds
from meterd.storage.database import Database, Location, PgConnection, as_database
from meterd.storage.postgres import PostgresStore
from meterd.storage.sqlite import _STATE_SCHEMA, OUTCOMES, STATE_FILE, Attempt, SqliteStore, from_ms, to_ms

THRESHOLD: Final = 0.97
DAY: Final = timedelta(days=1)
#: Failure kinds in the order reports show them (outcomes not listed here follow, sorted).
FAILURE_ORDER: Final = ("timeout", "link", "garbled", "incomplete", "wrong_address", "abnormal")
OK: Final = "ok"
#: The meter answered that the record asked for is not there (yet): not due, neither success nor failure.
NO_RECORD: Final = "no_record"
#: The area of a meter that is a point of no topology area.
NO_AREA: Final = "-"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS quality_daily (
    day         TEXT    NOT NULL,
    meter       TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    area        TEXT    NOT NULL DEFAULT 'default',
    count       INTEGER NOT NULL,
    latency_sum REAL    NOT NULL DEFAULT 0,
    latency_n   INTEGER NOT NULL DEFAULT 0,
    first_ts    INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    PRIMARY KEY (day, meter, channel, outcome)
) WITHOUT ROWID;
DROP INDEX IF EXISTS quality_daily_area;
CREATE TABLE IF NOT EXISTS terminal_online (
    terminal TEXT    NOT NULL,
    start_ts INTEGER NOT NULL,
    end_ts   INTEGER,
    PRIMARY KEY (terminal, start_ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS terminal_watch (
    terminal TEXT    NOT NULL PRIMARY KEY,
    since_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quality_areas (
    meter TEXT NOT NULL PRIMARY KEY,
    area  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quality_state (
    key   TEXT NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# attempts.ts (ms, UTC) -> the China Standard Time day (the default site zone: a fixed offset)
_DAY_SQL: Final = "date(a.ts / 1000 + 28800, 'unixepoch')"
_DAY_PG: Final = "to_char(DATE '1970-01-01' + ((a.ts + 28800000) / 86400000)::integer, 'YYYY-MM-DD')"
# ... and the day in any other zone: SQLite asks Python (a function on the connection, zoneinfo's
# rules), PostgreSQL its own copy of the IANA database.
_DAY_SQL_ZONE: Final = "meterd_site_day(a.ts)"
_DAY_PG_ZONE: Final = "to_char(to_timestamp(a.ts / 1000.0) AT TIME ZONE '{zone}', 'YYYY-MM-DD')"
_ZONE_NAME: Final = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")

_FOLD: Final = """
INSERT INTO quality_daily (day, meter, channel, outcome, count, latency_sum, latency_n, first_ts, last_ts)
SELECT {day}, a.meter, a.channel, a.outcome, COUNT(*), COALESCE(SUM(a.latency), 0), COUNT(a.latency),
       MIN(a.ts), MAX(a.ts)
FROM attempts a
WHERE a.id > ? AND a.id <= ? {extra}
GROUP BY 1, 2, 3, 4
ON CONFLICT (day, meter, channel, outcome) DO UPDATE SET
    count = count + excluded.count,
    latency_sum = latency_sum + excluded.latency_sum,
    latency_n = latency_n + excluded.latency_n,
    first_ts = MIN(first_ts, excluded.first_ts),
    last_ts = MAX(last_ts, excluded.last_ts)
"""

# The same on PostgreSQL: its day arithmetic, LEAST/GREATEST for the scalar MIN/MAX, and the
# target's columns named in SET.
_FOLD_PG: Final = """
INSERT INTO quality_daily (day, meter, channel, outcome, count, latency_sum, latency_n, first_ts, last_ts)
SELECT {day}, a.meter, a.channel, a.outcome, COUNT(*), COALESCE(SUM(a.latency), 0), COUNT(a.latency),
       MIN(a.ts), MAX(a.ts)
FROM attempts a
WHERE a.id > ? AND a.id <= ? {extra}
GROUP BY 1, 2, 3, 4
ON CONFLICT (day, meter, channel, outcome) DO UPDATE SET
    count = quality_daily.count + excluded.count,
    latency_sum = quality_daily.latency_sum + excluded.latency_sum,
    latency_n = quality_daily.latency_n + excluded.latency_n,
    first_ts = LEAST(quality_daily.first_ts, excluded.first_ts),
    last_ts = GREATEST(quality_daily.last_ts, excluded.last_ts)
"""


def day_bounds(day: date, zone: tzinfo = CST) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``day`` in ``zone`` (:func:`meterd.clock.day_bounds`)."""
    return _zone_day_bounds(day, zone)


def _fold_sql(postgres: bool, zone: tzinfo) -> str:
    """The fold statement with the day expression of ``zone``; ``{extra}`` is left for a condition."""
    if zone is CST:
        day = _DAY_PG if postgres else _DAY_SQL
    elif postgres:
        name = zone_name(zone)
        if not _ZONE_NAME.fullmatch(name):  # names come from zoneinfo's keys; never quote anything else
            raise ValueError(f"time zone {name!r} cannot be named to PostgreSQL")
        day = _DAY_PG_ZONE.format(zone=name)
    else:
        day = _DAY_SQL_ZONE
    return (_FOLD_PG if postgres else _FOLD).replace("{day}", day)


def _site_day(zone: tzinfo) -> Any:
    """``meterd_site_day(ts_ms)`` for SQLite: the ``YYYY-MM-DD`` of an epoch-milliseconds instant in
    ``zone``, remembered per minute (offsets and their changes fall on whole minutes since 1972)."""
    cache: dict[int, str] = {}

    def site_day(ts: int) -> str:
        minute = ts // 60_000
        day = cache.get(minute)
        if day is None:
            if len(cache) > 100_000:
                cache.clear()
            day = cache[minute] = datetime.fromtimestamp(minute * 60.0, zone).date().isoformat()
        return day

    return site_day


def _rate(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class QualityRow:
    """One line of a report: a meter, a channel (terminal), an area, or the total."""

    level: str  # "meter", "channel", "area" or "total"
    key: str  # meter address, channel name, area name, or "total"
    area: str = ""
    channel: str = ""
    attempts: int = 0  # every attempt, no_record ones included
    ok: int = 0
    no_record: int = 0  # answered "no record (yet)": not due
    failures: dict[str, int] = field(default_factory=dict)
    latency_sum: float = 0.0
    latency_n: int = 0
    meters: int = 0  # meters counted (1 for a meter row)
    no_data: list[str] = field(default_factory=list)  # meters due without an ok attempt that day
    not_due: list[str] = field(default_factory=list)  # meters whose every attempt was answered no_record
    online_seconds: float | None = None
    span_seconds: float = 0.0  # the watched time the online rate is over, summed over its terminals
    terminals: int = 0  # terminals whose online time is known (aggregates)
    flags: list[str] = field(default_factory=list)  # which rates are under the threshold

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def due(self) -> int:
        """Attempts that count for the success rate: all but the ``no_record`` ones."""
        return self.attempts - self.no_record

    @property
    def success_rate(self) -> float | None:
        return _rate(self.ok, self.due)

    @property
    def meters_due(self) -> int:
        return self.meters - len(self.not_due)

    @property
    def meters_with_data(self) -> int:
        return self.meters_due - len(self.no_data)

    @property
    def data_rate(self) -> float | None:
        return _rate(self.meters_with_data, self.meters_due)

    @property
    def online_rate(self) -> float | None:
        if self.online_seconds is None or not self.span_seconds or not self.terminals:
            return None
        return self.online_seconds / self.span_seconds

    @property
    def latency_mean(self) -> float | None:
        return _rate(self.latency_sum, self.latency_n)

    @property
    def below(self) -> bool:
        return bool(self.flags)

    def flag(self, threshold: float) -> None:
        self.flags = []
        if self.success_rate is not None and self.success_rate < threshold:
            self.flags.append("success")
        if self.level == "meter":
            if self.no_data:
                self.flags.append("no_data")
        elif self.data_rate is not None and self.data_rate < threshold:
            self.flags.append("data")
        if self.online_rate is not None and self.online_rate < threshold:
            self.flags.append("online")

    def add(self, other: QualityRow) -> None:
        self.attempts += other.attempts
        self.ok += other.ok
        self.no_record += other.no_record
        for k, n in other.failures.items():
            self.failures[k] = self.failures.get(k, 0) + n
        self.latency_sum += other.latency_sum
        self.latency_n += other.latency_n
        self.meters += other.meters
        self.no_data += other.no_data
        self.not_due += other.not_due

    def add_online(self, online: float, span: float) -> None:
        """One more terminal's online time over the span it was watched."""
        self.online_seconds = (self.online_seconds or 0.0) + online
        self.span_seconds += span
        self.terminals += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level, "key": self.key, "area": self.area, "channel": self.channel,
            "attempts": self.attempts, "ok": self.ok, "no_record": self.no_record, "due": self.due,
            "failed": self.failed, "failures": dict(self.failures), "success_rate": self.success_rate,
            "meters": self.meters, "meters_due": self.meters_due, "meters_with_data": self.meters_with_data,
            "data_rate": self.data_rate, "no_data": list(self.no_data), "not_due": list(self.not_due),
            "online_seconds": self.online_seconds, "span_seconds": self.span_seconds,
            "online_rate": self.online_rate, "latency_mean": self.latency_mean,
            "flags": list(self.flags), "below": self.below,
        }


@dataclass
class QualityReport:
    day: date
    area: str | None
    threshold: float
    start: datetime  # the span covered (the site's day, cut at ``now`` for today)
    end: datetime
    meters: list[QualityRow]
    channels: list[QualityRow]
    areas: list[QualityRow]
    total: QualityRow
    zone: tzinfo = CST  # the site's, whose day this is

    @property
    def whole_day(self) -> bool:
        """Whether the span is the whole day (not cut at ``now``)."""
        return self.end >= day_bounds(self.day, self.zone)[1]

    @property
    def rows(self) -> list[QualityRow]:
        return [*self.meters, *self.channels, *self.areas, self.total]

    @property
    def flagged(self) -> list[QualityRow]:
        return [r for r in self.rows if r.below]

    @property
    def failure_kinds(self) -> list[str]:
        """The failure kinds that occur in this report, in display order."""
        seen = {k for r in self.meters for k, n in r.failures.items() if n}
        return [k for k in FAILURE_ORDER if k in seen] + sorted(seen - set(FAILURE_ORDER))

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(), "area": self.area, "threshold": self.threshold,
            "start": self.start.isoformat(), "end": self.end.isoformat(),
            "meters": [r.as_dict() for r in self.meters], "channels": [r.as_dict() for r in self.channels],
            "areas": [r.as_dict() for r in self.areas], "total": self.total.as_dict(),
        }


@dataclass(slots=True)
class QualityCell:
    """What :meth:`QualityStore.report` of one day counts for the meters of one area on one channel
    (terminal): the sums a channel, area or total row of that day is made of.

    ``attempts``, ``ok`` and ``no_record`` are of the rollup rows on the channel; a meter-day is
    counted once, on the channel the report counts it on (the first of the day's channels by name
    for a meter that moved that day, the archive's for a meter with no attempt), as not due, as
    without data, or (the rest) with data."""

    attempts: int = 0
    ok: int = 0
    no_record: int = 0
    meters: int = 0
    not_due: int = 0
    no_data: int = 0


@dataclass
class QualityDay:
    """A day of :meth:`QualityStore.days`: its cells by ``(area, channel)`` -- a pair is there when
    the day's report has a meter row of that area on that channel -- and, per channel watched, its
    online and watched seconds as :meth:`QualityStore.online` gives them for the day."""

    day: date
    cells: dict[tuple[str, str], QualityCell]
    online: dict[str, tuple[float, float]]


def merged_seconds(intervals: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime) -> float:
    """Seconds of ``[start, end)`` covered by the union of ``intervals``."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end and b > a)
    total = 0.0
    cur_a: datetime | None = None
    cur_b: datetime | None = None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_a is not None and cur_b is not None:
                total += (cur_b - cur_a).total_seconds()
            cur_a, cur_b = a, b
        elif b > cur_b:
            cur_b = b
    if cur_a is not None and cur_b is not None:
        total += (cur_b - cur_a).total_seconds()
    return total


class QualityStore:
    """The quality tables in ``state.sqlite3`` (a path to it, its data directory, or a SqliteStore),
    or in a PostgreSQL database (a :class:`Database`, its URL, or a PostgresStore).

    It keeps its own connection (WAL: the daemon's writer is not blocked), so it may live in
    another process, e.g. ``meterd quality``.  On PostgreSQL that is a
    :class:`~meterd.storage.database.PgConnection` whose write transactions take the ``quality``
    advisory lock: two nodes never fold the same attempts in twice, and the state stores' writers
    (the ledger) are not held up by a rollup.
    """

    def __init__(
        self,
        state: Location | SqliteStore | PostgresStore,
        *,
        clock: Clock = utc_now,
        threshold: float = THRESHOLD,
        zone: tzinfo = CST,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self.zone = zone  # the site's: days are cut at its midnight
        self._lock = threading.Lock()
        db = state.database if isinstance(state, PostgresStore) else as_database(state)
        self.database = db
        if db is not None:
            from meterd.storage.postgres import prepare_archive

            self.path = Path(str(db))  # for messages only
            self._fold_sql = _fold_sql(True, zone)
            prepare_archive(db)  # the attempts and meters it reads
            self._conn: sqlite3.Connection | PgConnection = db.connect("quality")
            with self._transaction():
                self._conn.executescript(_SCHEMA)
            self._closed = False
            return
        if isinstance(state, SqliteStore):
            path = state.data_dir / STATE_FILE
        else:
            assert not isinstance(state, (Database, PostgresStore))
            path = Path(state)
            if path.is_dir():
                path = path / STATE_FILE
        self.path = path
        self._fold_sql = _fold_sql(False, zone)
        # autocommit: writes are explicit BEGIN IMMEDIATE transactions (see _transaction)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=5.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        if zone is not CST:
            conn.create_function("meterd_site_day", 1, _site_day(zone), deterministic=True)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_STATE_SCHEMA + _SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._closed = False

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (the caller holds the lock), rolled back on any error.

        The write lock is taken up front -- ``BEGIN IMMEDIATE`` on SQLite, the ``quality`` advisory
        lock on PostgreSQL -- so the watermark read inside is the one the transaction moves: two
        processes (the daemon and ``meterd quality``, or the API) updating at once fold each attempt
        in once.  (sqlite3's implicit transaction began at the first INSERT, after the watermark
        had been read, and both folded the same attempts in.)"""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE" if isinstance(conn, sqlite3.Connection) else "BEGIN")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back itself (SQLITE_FULL)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- rollup --------------------------------------------------------------------------------

    def _watermark(self) -> int:
        row = self._conn.execute("SELECT value FROM quality_state WHERE key = 'attempts_watermark'").fetchone()
        return int(row[0]) if row else 0

    def _set_watermark(self, value: int) -> None:
        self._conn.execute(
            "INSERT INTO quality_state (key, value) VALUES ('attempts_watermark', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (value,))

    def _fold_new(self) -> tuple[int, int]:
        """Fold attempts after the watermark; (how many, the new watermark).  Caller holds the lock
        and the transaction."""
        mark = self._watermark()
        (top,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()
        if top < mark:  # the attempts log was emptied and ids started again
            mark = 0
        if top == mark:
            return 0, mark
        (n,) = self._conn.execute("SELECT COUNT(*) FROM attempts WHERE id > ? AND id <= ?", (mark, top)).fetchone()
        self._conn.execute(self._fold_sql.format(extra=""), (mark, top))
        self._set_watermark(top)
        return int(n), int(top)

    def update(self) -> int:
        """Fold the attempts recorded since the last update into ``quality_daily``; how many."""
        with self._lock, self._transaction():
            n, _ = self._fold_new()
        return n

    def rollup(self, day: date) -> int:
        """Recompute ``day`` from the attempts log (other days are brought up to date as well);
        returns the attempts counted for ``day``.  A day the log holds no attempt of keeps its
        rollup: its attempts were pruned (retention goes by whole days), and the rollup is all
        that is left of it."""
        start, end = day_bounds(day, self.zone)
        with self._lock, self._transaction():
            _, top = self._fold_new()
            if self._conn.execute("SELECT 1 FROM attempts WHERE ts >= ? AND ts < ? LIMIT 1",
                                  (to_ms(start), to_ms(end))).fetchone() is not None:
                self._conn.execute("DELETE FROM quality_daily WHERE day = ?", (day.isoformat(),))
            self._conn.execute(self._fold_sql.format(extra="AND a.ts >= ? AND a.ts < ?"),
                               (0, top, to_ms(start), to_ms(end)))
            (n,) = self._conn.execute("SELECT COALESCE(SUM(count), 0) FROM quality_daily WHERE day = ?",
                                      (day.isoformat(),)).fetchone()
        return int(n)

    # --- terminal online time ------------------------------------------------------------------

    def record_online(self, terminal: str, start: datetime, end: datetime | None = None) -> None:
        """Terminal ``terminal`` (a channel name) was online from ``start`` to ``end``; ``end`` None
        while it still is (record it again with the same ``start`` and the real end later)."""
        if end is not None and end < start:
            raise ValueError(f"terminal {terminal}: online interval ends ({end}) before it starts ({start})")
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT INTO terminal_online (terminal, start_ts, end_ts) VALUES (?, ?, ?)"
                " ON CONFLICT (terminal, start_ts) DO UPDATE SET end_ts = excluded.end_ts",
                (terminal, to_ms(start), None if end is None else to_ms(end)))

    def record_watch(self, terminal: str, at: datetime) -> None:
        """The master polled ``terminal`` at ``at``: its online time is measured from the earliest
        such moment on (what came before is not offline time)."""
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT INTO terminal_watch (terminal, since_ts) VALUES (?, ?) ON CONFLICT (terminal) DO UPDATE"
                " SET since_ts = CASE WHEN excluded.since_ts < terminal_watch.since_ts THEN excluded.since_ts"
                " ELSE terminal_watch.since_ts END", (terminal, to_ms(at)))

    def watched_since(self) -> dict[str, datetime]:
        """Since when the master has watched each terminal: its first round on it, or (data from before
        rounds were recorded) the start of its first online interval, whichever is earlier."""
        with self._lock:
            rows = [*self._conn.execute("SELECT terminal, since_ts FROM terminal_watch").fetchall(),
                    *self._conn.execute("SELECT terminal, MIN(start_ts) FROM terminal_online GROUP BY terminal"
                                        ).fetchall()]
        out: dict[str, int] = {}
        for terminal, ts in rows:
            out[terminal] = min(ts, out.get(terminal, ts))
        return {t: from_ms(ts) for t, ts in out.items()}

    def _intervals(self, terminals: Iterable[str] | None, start: datetime,
                   end: datetime) -> dict[str, list[tuple[datetime, datetime]]]:
        """The online intervals of ``terminals`` (None: all) that overlap ``[start, end)``; an open
        one ends at ``end``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT terminal, start_ts, end_ts FROM terminal_online WHERE start_ts < ?"
                " AND (end_ts IS NULL OR end_ts > ?)", (to_ms(end), to_ms(start))).fetchall()
        wanted = None if terminals is None else set(terminals)
        out: dict[str, list[tuple[datetime, datetime]]] = {}
        for terminal, a, b in rows:
            if wanted is None or terminal in wanted:
                out.setdefault(terminal, []).append((from_ms(a), end if b is None else from_ms(b)))
        return out

    def online_seconds(self, terminal: str, start: datetime, end: datetime) -> float | None:
        """Seconds ``terminal`` was online within ``[start, end)``; None if nothing is recorded for it."""
        with self._lock:
            known = self._conn.execute("SELECT 1 FROM terminal_online WHERE terminal = ? LIMIT 1",
                                       (terminal,)).fetchone()
        if known is None:
            return None
        return merged_seconds(self._intervals([terminal], start, end).get(terminal, ()), start, end)

    def online(self, terminals: Iterable[str], start: datetime, end: datetime) -> dict[str, tuple[float, float]]:
        """Per terminal watched within ``[start, end)``: (seconds online, seconds watched) -- the
        span runs from the later of ``start`` and the terminal's :meth:`watched_since`.  Terminals
        never watched before ``end`` are left out (their online time is unknown)."""
        terminals = list(terminals)
        since = self.watched_since()
        intervals = self._intervals(terminals, start, end)
        out: dict[str, tuple[float, float]] = {}
        for terminal in terminals:
            first = since.get(terminal)
            if first is None or first >= end:
                continue
            begin = max(start, first)
            out[terminal] = (merged_seconds(intervals.get(terminal, ()), begin, end), (end - begin).total_seconds())
        return out

    def close_open(self) -> int:
        """Close intervals left open (a daemon that stopped without saying so) at the terminal's last
        answered attempt after the interval's start (or its start); how many were closed."""
        with self._lock, self._transaction():
            cur = self._conn.execute(
                "UPDATE terminal_online SET end_ts = COALESCE((SELECT MAX(a.ts) FROM attempts a"
                " WHERE a.channel = terminal_online.terminal AND a.outcome != 'link'"
                " AND a.ts >= terminal_online.start_ts), start_ts) WHERE end_ts IS NULL")
        return cur.rowcount

    def online_since(self) -> dict[str, datetime]:
        """Terminals online now (an interval with no end): when each came online."""
        with self._lock:
            rows = self._conn.execute("SELECT terminal, MAX(start_ts) FROM terminal_online WHERE end_ts IS NULL"
                                      " GROUP BY terminal").fetchall()
        return {r[0]: from_ms(r[1]) for r in rows}

    def last_online_end(self) -> dict[str, datetime]:
        """Each terminal's latest end of an online interval (terminals never offline are left out)."""
        with self._lock:
            rows = self._conn.execute("SELECT terminal, MAX(end_ts) FROM terminal_online WHERE end_ts IS NOT NULL"
                                      " GROUP BY terminal").fetchall()
        return {str(t): from_ms(ts) for t, ts in rows}

    def online_intervals(self, terminal: str, since: datetime, *, limit: int = 500) -> list[tuple[datetime,
                                                                                                    datetime | None]]:
        """``terminal``'s online intervals that end after ``since`` (or have not ended: None), newest
        first, at most ``limit``."""
        with self._lock:
            rows = self._conn.execute("SELECT start_ts, end_ts FROM terminal_online WHERE terminal = ? AND"
                                      " (end_ts IS NULL OR end_ts > ?) ORDER BY start_ts DESC LIMIT ?",
                                      (terminal, to_ms(since), limit)).fetchall()
        return [(from_ms(a), None if b is None else from_ms(b)) for a, b in rows]

    def recent_failures(self, channel: str, *, limit: int = 50) -> list[Attempt]:
        """The newest attempts on ``channel`` that failed (every outcome but ``ok`` and ``no_record``),
        newest first, at most ``limit``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT meter, channel, item, ts, outcome, latency, detail FROM attempts WHERE channel = ? AND"
                " outcome NOT IN ('ok', 'no_record') ORDER BY ts DESC LIMIT ?", (channel, limit)).fetchall()
        return [Attempt(m, c, i, from_ms(ts), o, lat, d) for m, c, i, ts, o, lat, d in rows]

    # --- areas ---------------------------------------------------------------------------------

    def set_areas(self, areas: Mapping[str, str]) -> int:
        """Make ``areas`` (meter -> its topology area) the meters' areas: meters not in it are in no
        area from now on.  Writes only what changed; returns how many meters changed."""
        for meter, name in areas.items():
            if not name or name == NO_AREA:
                raise ValueError(f"meter {meter}: area {name!r} is not an area name")
        with self._lock, self._transaction():
            old = {r[0]: r[1] for r in self._conn.execute("SELECT meter, area FROM quality_areas").fetchall()}
            gone = [(m,) for m in old if m not in areas]
            changed = [(m, a) for m, a in areas.items() if old.get(m) != a]
            if gone:
                self._conn.executemany("DELETE FROM quality_areas WHERE meter = ?", gone)
            if changed:
                self._conn.executemany("INSERT INTO quality_areas (meter, area) VALUES (?, ?)"
                                       " ON CONFLICT (meter) DO UPDATE SET area = excluded.area", changed)
        return len(gone) + len(changed)

    def areas(self) -> dict[str, str]:
        """meter -> its topology area, as the daemon last wrote them (meters in no area are absent)."""
        with self._lock:
            return {r[0]: r[1] for r in self._conn.execute("SELECT meter, area FROM quality_areas").fetchall()}

    # --- reports -------------------------------------------------------------------------------

    def _archive(self) -> list[Any]:
        with self._lock:
            return self._conn.execute("SELECT address, channel FROM meters ORDER BY address").fetchall()

    def report(self, day: date, area: str | None = None, *, now: datetime | None = None,
               refresh: bool = True) -> QualityReport:
        """The quality of ``day`` (the site's zone): rows per meter, channel and area, and the total.

        ``area`` keeps only the meters of that topology area (:data:`NO_AREA` for those in none).
        ``now`` (default: the clock) cuts today's span for online rates; ``refresh`` folds in new
        attempts first.
        """
        if refresh:
            self.update()
        start, end = day_bounds(day, self.zone)
        now = now or self.clock()
        span_end = max(start, min(end, now))
        areas = self.areas()
        with self._lock:
            rows = self._conn.execute(
                "SELECT meter, channel, outcome, count, latency_sum, latency_n FROM quality_daily"
                " WHERE day = ? ORDER BY meter, channel", (day.isoformat(),)).fetchall()
        meters: dict[tuple[str, str], QualityRow] = {}
        for meter, channel, outcome, count, latency_sum, latency_n in rows:
            where = areas.get(meter, NO_AREA)
            if area is not None and where != area:
                continue
            row = meters.setdefault((meter, channel), QualityRow("meter", meter, area=where, channel=channel,
                                                                 meters=1))
            row.attempts += count
            if outcome == OK:
                row.ok += count
                row.latency_sum += latency_sum
                row.latency_n += latency_n
            elif outcome == NO_RECORD:
                row.no_record += count
            else:
                row.failures[outcome] = row.failures.get(outcome, 0) + count
        seen = {m for m, _ in meters}
        for address, channel in self._archive():
            where = areas.get(address, NO_AREA)
            if address in seen or (area is not None and where != area):
                continue
            meters[(address, channel)] = QualityRow("meter", address, area=where, channel=channel, meters=1)
        # a meter with rows on two channels (it moved that day) counts once: as a meter with data if
        # any of its rows has an ok attempt, as not due if every attempt of its rows was no_record
        per_meter: dict[str, tuple[int, int, int]] = {}  # meter -> (attempts, no_record, ok)
        for (m, _), row in meters.items():
            n, nr, ok = per_meter.get(m, (0, 0, 0))
            per_meter[m] = (n + row.attempts, nr + row.no_record, ok + row.ok)
        counted: set[str] = set()
        for (m, _), row in sorted(meters.items()):
            if m in counted:
                row.meters = 0
                continue
            counted.add(m)
            n, nr, ok = per_meter[m]
            if not ok:
                (row.not_due if n and nr == n else row.no_data).append(m)
        meter_rows = sorted(meters.values(), key=lambda r: (r.area, r.channel, r.key))

        channels: dict[str, QualityRow] = {}
        areas_rows: dict[str, QualityRow] = {}
        area_channels: dict[str, set[str]] = {}
        total = QualityRow("total", "total")
        for row in meter_rows:
            channels.setdefault(row.channel, QualityRow("channel", row.channel, channel=row.channel)).add(row)
            areas_rows.setdefault(row.area, QualityRow("area", row.area, area=row.area)).add(row)
            area_channels.setdefault(row.area, set()).add(row.channel)
            total.add(row)
        online = self.online(channels, start, span_end)
        for ch, row in channels.items():
            if area is not None:
                row.area = area
            if ch in online:
                row.add_online(*online[ch])
        for name, row in areas_rows.items():
            for ch in sorted(area_channels[name]):
                if ch in online:
                    row.add_online(*online[ch])
        for ch in sorted(online):
            total.add_online(*online[ch])
        if area is not None:
            total.area = area
        channel_rows = [channels[k] for k in sorted(channels)]
        area_rows = [areas_rows[k] for k in sorted(areas_rows)]
        for row in (*meter_rows, *channel_rows, *area_rows, total):
            row.flag(self.threshold)
        return QualityReport(day, area, self.threshold, start, span_end, meter_rows, channel_rows, area_rows, total,
                             zone=self.zone)

    def days(self, first: date, last: date, *, now: datetime | None = None) -> list[QualityDay]:
        """The days ``first`` .. ``last`` that have begun by ``now`` (default: the clock), each with
        what :meth:`report` of the day (every area) adds up in its channel, area and total rows,
        per ``(area, channel)``: so the rows of a period are sums of cells, without a report per day.

        The rollup of the whole span is read with one query, grouped in the database by day, area,
        the channel a meter-day is counted on and the meter's archive channel, and the archive
        with another (a meter with no rollup row on a day is counted on its archive channel,
        without data); only a meter on several channels in a day (it moved) has its attempts of
        that day read on their own.  The terminals' intervals are read once and cut per day.  No
        folding: call :meth:`update` first."""
        now = now or self.clock()
        spans: list[tuple[date, datetime, datetime, datetime]] = []  # day, start, end, end cut at now
        day = first
        while day <= last:
            start, end = day_bounds(day, self.zone)
            if start > now:
                break
            spans.append((day, start, end, max(start, min(end, now))))
            day += DAY
        if not spans:
            return []
        lo, hi = spans[0][0].isoformat(), spans[-1][0].isoformat()
        postgres = not isinstance(self._conn, sqlite3.Connection)
        # a meter's day is counted on its first channel as Python orders names (code points), as
        # report() does: SQLite's BINARY collation is UTF-8 byte order, which is code point order;
        # PostgreSQL's may be a locale's
        by_name = 'channel COLLATE "C"' if postgres else "channel"
        ok_n = f"SUM(CASE WHEN outcome = '{OK}' THEN count ELSE 0 END)"
        no_record_n = f"SUM(CASE WHEN outcome = '{NO_RECORD}' THEN count ELSE 0 END)"
        with self._lock:
            # per (day, meter), then per day, area, counting channel and archive channel (None: not
            # in the archive); a meter on more than one channel that day (it moved) is a group of
            # its own, so its attempts can be put on their channels below
            meter_days = self._conn.execute(
                "SELECT p.day, COALESCE(qa.area, ?), p.channel, m.channel,"
                " CASE WHEN p.last <> p.channel THEN p.meter END, COUNT(*), SUM(p.n), SUM(p.ok), SUM(p.nr),"
                " SUM(CASE WHEN p.ok = 0 AND p.n <> 0 AND p.nr = p.n THEN 1 ELSE 0 END),"
                " SUM(CASE WHEN p.ok = 0 AND NOT (p.n <> 0 AND p.nr = p.n) THEN 1 ELSE 0 END)"
                f" FROM (SELECT day, meter, MIN({by_name}) AS channel, MAX({by_name}) AS last, SUM(count) AS n,"
                f"       {ok_n} AS ok, {no_record_n} AS nr"
                "       FROM quality_daily WHERE day >= ? AND day <= ? GROUP BY day, meter) p"
                " LEFT JOIN quality_areas qa ON qa.meter = p.meter LEFT JOIN meters m ON m.address = p.meter"
                " GROUP BY 1, 2, 3, 4, 5", (NO_AREA, lo, hi)).fetchall()
            archive = self._conn.execute(
                "SELECT COALESCE(qa.area, ?), m.channel, COUNT(*) FROM meters m"
                " LEFT JOIN quality_areas qa ON qa.meter = m.address GROUP BY 1, 2", (NO_AREA,)).fetchall()
        cells: dict[str, dict[tuple[str, str], QualityCell]] = {d.isoformat(): {} for d, *_ in spans}
        seen: dict[str, dict[tuple[str, str], int]] = {d: {} for d in cells}  # archive meters with rows
        moved: dict[str, dict[str, str]] = {}  # day -> meter on several channels -> its area
        for d, where, first_channel, kept, mover, count, n, ok, no_record, not_due, no_data in meter_days:
            if d not in cells:  # not a day's name as the fold writes it
                continue
            cell = cells[d].setdefault((where, first_channel), QualityCell())
            cell.meters += int(count)
            cell.not_due += int(not_due)
            cell.no_data += int(no_data)
            if mover is None:
                cell.attempts += int(n)
                cell.ok += int(ok)
                cell.no_record += int(no_record)
            else:
                moved.setdefault(d, {})[mover] = where
            if kept is not None:
                seen[d][(where, kept)] = seen[d].get((where, kept), 0) + int(count)
        for d, movers in moved.items():  # their attempts on each of their channels
            names = sorted(movers)
            for i in range(0, len(names), 500):
                chunk = names[i:i + 500]
                with self._lock:
                    rows = self._conn.execute(
                        f"SELECT meter, channel, SUM(count), {ok_n}, {no_record_n} FROM quality_daily"
                        f" WHERE day = ? AND meter IN ({', '.join('?' * len(chunk))}) GROUP BY meter, channel",
                        (d, *chunk)).fetchall()
                for meter, on, n, ok, no_record in rows:
                    cell = cells[d].setdefault((movers[meter], on), QualityCell())
                    cell.attempts += int(n)
                    cell.ok += int(ok)
                    cell.no_record += int(no_record)
        for d, day_cells in cells.items():
            for where, channel, n in archive:
                missing = int(n) - seen[d].get((where, channel), 0)
                if missing > 0:  # archive meters without a row that day: due, no data
                    cell = day_cells.setdefault((where, channel), QualityCell())
                    cell.meters += missing
                    cell.no_data += missing
        # each day's intervals as _intervals() reads them for [start, cut): those that overlap it,
        # an open one ending at cut
        starts = [to_ms(start) for _, start, _, _ in spans]
        cuts = [to_ms(cut) for *_, cut in spans]
        with self._lock:
            rows = self._conn.execute(
                "SELECT terminal, start_ts, end_ts FROM terminal_online WHERE start_ts < ?"
                " AND (end_ts IS NULL OR end_ts > ?)", (cuts[-1], starts[0])).fetchall()
        per_day: list[dict[str, list[tuple[datetime, datetime]]]] = [{} for _ in spans]
        for terminal, a, b in rows:
            i = bisect.bisect_right(cuts, a)
            while i < len(spans) and (b is None or starts[i] < b):
                per_day[i].setdefault(terminal, []).append((from_ms(a), spans[i][3] if b is None else from_ms(b)))
                i += 1
        since = self.watched_since()
        out = []
        for (day, start, _, cut), intervals in zip(spans, per_day, strict=True):
            day_cells = cells[day.isoformat()]
            online: dict[str, tuple[float, float]] = {}
            for channel in {ch for _, ch in day_cells}:  # as online() for the day's channels
                watched = since.get(channel)
                if watched is None or watched >= cut:
                    continue
                begin = max(start, watched)
                online[channel] = (merged_seconds(intervals.get(channel, ()), begin, cut),
                                   (cut - begin).total_seconds())
            out.append(QualityDay(day, day_cells, online))
        return out

    def metrics(self, day: date, *, now: datetime | None = None) -> dict[str, float]:
        """Flat numbers for dashboards / Prometheus: ``quality.<level>[.<key>].<name>``.

        ``quality.total.attempts``, ``quality.total.success_rate``, ``quality.area.<area>.data_rate``,
        ``quality.channel.<channel>.online_rate``, ``quality.meter.<address>.failures.timeout``, ...
        Rates are fractions (0..1); a rate with nothing to count is left out.
        """
        report = self.report(day, now=now)
        out: dict[str, float] = {}

        def put(prefix: str, row: QualityRow) -> None:
            out[f"{prefix}.attempts"] = row.attempts
            out[f"{prefix}.ok"] = row.ok
            out[f"{prefix}.no_record"] = row.no_record
            out[f"{prefix}.failed"] = row.failed
            for kind, n in row.failures.items():
                out[f"{prefix}.failures.{kind}"] = n
            out[f"{prefix}.below_threshold"] = 1 if row.below else 0
            rates = {"success_rate": row.success_rate, "online_rate": row.online_rate,
                     "latency_mean": row.latency_mean}
            if row.level != "meter":
                out[f"{prefix}.meters"] = row.meters
                out[f"{prefix}.meters_no_data"] = len(row.no_data)
                out[f"{prefix}.meters_not_due"] = len(row.not_due)
                rates["data_rate"] = row.data_rate
            if row.online_seconds is not None:
                out[f"{prefix}.online_seconds"] = row.online_seconds
            for name, value in rates.items():
                if value is not None:
                    out[f"{prefix}.{name}"] = value

        for row in report.meters:
            put(f"quality.meter.{row.key}", row)
        for row in report.channels:
            put(f"quality.channel.{row.key}", row)
        for row in report.areas:
            put(f"quality.area.{row.key}", row)
        put("quality.total", report.total)
        return out


class OnlineTracker:
    """Feeds :meth:`QualityStore.record_online` from what rounds saw: a terminal (channel) is online
    from the first round with any attempt that got past the link (an answer, or at least a meter
    that did not answer on a working link) until the first round whose attempts all failed on the
    link.  Open intervals are written with no end, so a report during the day counts them up to
    ``now``; :meth:`start` closes the ones a previous run left open.  The first round on a terminal
    is recorded as the start of its watch (:meth:`QualityStore.record_watch`): its online time is
    measured from there."""

    def __init__(self, quality: QualityStore) -> None:
        self.quality = quality
        self.open: dict[str, datetime] = {}
        self.watched: set[str] = set()

    def start(self) -> None:
        self.quality.close_open()

    def up(self, terminal: str, at: datetime) -> None:
        if terminal not in self.open:
            self.open[terminal] = at
            self.quality.record_online(terminal, at, None)

    def down(self, terminal: str, at: datetime) -> None:
        since = self.open.pop(terminal, None)
        if since is not None:
            self.quality.record_online(terminal, since, max(since, at))

    def observe(self, terminal: str, attempts: Iterable[Attempt], at: datetime) -> None:
        """A round on ``terminal`` that started ``at`` made ``attempts``."""
        outcomes = [a.outcome for a in attempts]
        if not outcomes:
            return
        if terminal not in self.watched:
            self.quality.record_watch(terminal, at)
            self.watched.add(terminal)
        if any(o != "link" for o in outcomes):
            self.up(terminal, at)
        else:
            self.down(terminal, at)

    def stop(self, at: datetime) -> None:
        for terminal in list(self.open):
            self.down(terminal, at)


def topology_areas(topology: Any) -> dict[str, str]:
    """meter -> the topology area (a unit of kind ``area``) it is a point of, from a
    :class:`~meterd.analytics.topology.Topology`; a meter listed in several areas (a tie meter)
    is in the first, in ``[[topology.points]]`` order.  ``None`` (no topology): no meter is in an
    area."""
    out: dict[str, str] = {}
    if topology is None:
        return out
    for point in topology.points:
        unit = topology.units.get(point.unit)
        if unit is not None and unit.kind == "area":
            out.setdefault(point.meter, unit.name)
    return out


__all__ = [
    "FAILURE_ORDER", "NO_AREA", "NO_RECORD", "OUTCOMES", "THRESHOLD", "OnlineTracker", "QualityReport", "QualityRow",
    "QualityStore", "day_bounds", "merged_seconds", "topology_areas",
]
