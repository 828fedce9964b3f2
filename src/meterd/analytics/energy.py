"""Daily frozen registers and daily line-loss rates, kept in the state database.

``daily_registers`` holds one value per (meter, day, quantity): the meter's daily freeze (日冻结),
taken at 00:00 China Standard Time, so the row for day D is the register *at the start of* D and
the energy of D is ``register(D + 1) - register(D)``.  The day is the CST date of the reading's
timestamp (the meter's own freeze time); a meter configured to freeze at another hour is filed
under the date of its freeze all the same.

Layout::

    daily_registers(meter, day 'YYYY-MM-DD', quantity, value TEXT, estimated 0|1, ts ms UTC)
        PRIMARY KEY (meter, day, quantity)  -- a meter's history in order
        INDEX daily_registers_day (day, quantity, meter, value, estimated)  -- covering: one day
                                                                           -- of every meter
    lineloss_history(unit, day, rate TEXT)  PRIMARY KEY (unit, day)

Estimated values (filled in by the master, ``Quality.ESTIMATED``) are stored with ``estimated = 1``
and handed back marked.  A measured value replaces an estimated one, never the other way round;
a measured value read again replaces the earlier one (a replay is harmless).

Speed: the day index covers the query, so reading 100,000 meters for two days is two index range
scans.  Rows are fetched as (meter, value) pairs -- the estimated ones, rare, in a second small
query -- because building Python rows, not SQLite, is what costs.  On PostgreSQL one query per day
returns the flag with the value (a second query would see another snapshot under READ COMMITTED).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from meterd.clock import CST
from meterd.readings import Quality, Reading
from meterd.storage.sqlite import to_ms
from meterd.storage.statedb import StateDatabase

if TYPE_CHECKING:
    from meterd.analytics.lineloss import LossReport

IMPORT_DAILY: Final = "frozen.daily.energy.active.import.total"
EXPORT_DAILY: Final = "frozen.daily.energy.active.export.total"
DAILY_QUANTITIES: Final = frozenset({IMPORT_DAILY, EXPORT_DAILY})

Registers = dict[tuple[str, date], tuple[Decimal, bool]]

_REGISTERS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS daily_registers (
    meter     TEXT    NOT NULL,
    day       TEXT    NOT NULL,
    quantity  TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    estimated INTEGER NOT NULL DEFAULT 0,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (meter, day, quantity)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS daily_registers_day
    ON daily_registers (day, quantity, meter, value, estimated);
"""

_HISTORY_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS lineloss_history (
    unit TEXT NOT NULL,
    day  TEXT NOT NULL,
    rate TEXT NOT NULL,
    PRIMARY KEY (unit, day)
) WITHOUT ROWID;
"""

# Upsert; the WHERE keeps a measured row (estimated = 0) from being overwritten by an estimate.
_UPSERT: Final = (
    "INSERT INTO daily_registers (meter, day, quantity, value, estimated, ts) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (meter, day, quantity) DO UPDATE SET value = excluded.value, "
    "estimated = excluded.estimated, ts = excluded.ts "
    "WHERE daily_registers.estimated >= excluded.estimated"
)
_IN_CHUNK: Final = 500  # meters per "IN (...)" query, well under SQLite's variable limit
_FEW_METERS: Final = 2_000  # above this, one scan of the day index and a filter is faster


class DailyRegisterStore(StateDatabase):
    """Daily frozen registers of every meter, in the state database (SQLite or PostgreSQL)."""

    SCHEMA = _REGISTERS_SCHEMA
    ROWS = False  # plain tuples

    def record(self, readings: Iterable[Reading]) -> int:
        """Keep the daily frozen import/export totals among ``readings``; other quantities and
        non-numeric values are ignored.  Returns how many rows were written or replaced."""
        rows = []
        for r in readings:
            if r.quantity not in DAILY_QUANTITIES or r.quality is Quality.IMPLAUSIBLE:
                continue  # an impossible value never reaches line loss
            value = r.value
            if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
                continue
            ts = to_ms(r.timestamp)  # first: refuses a naive timestamp (astimezone would guess)
            day = r.timestamp.astimezone(CST).date().isoformat()
            estimated = 1 if r.quality == Quality.ESTIMATED else 0
            rows.append((r.meter, day, r.quantity, str(value), estimated, ts))
        if not rows:
            return 0
        # Key order: each b-tree page is visited once.  Stable, so for one key the later reading of
        # the batch is applied last, as it would be unsorted.
        rows.sort(key=lambda row: (row[0], row[1], row[2]))
        with self._write() as conn:
            if self.postgres:  # psycopg's executemany counts the rows of every statement
                return max(0, conn.executemany(_UPSERT, rows).rowcount)
            before = conn.total_changes
            conn.executemany(_UPSERT, rows)
            return conn.total_changes - before

    def registers(
        self,
        days: Iterable[date],
        *,
        quantity: str = IMPORT_DAILY,
        meters: Iterable[str] | None = None,
    ) -> Registers:
        """(meter, day) -> (value, estimated) for the given days; meters without a row are absent."""
        wanted = None if meters is None else set(meters)
        out: Registers = {}
        if self.postgres:  # one statement: one snapshot, no read transaction needed
            with self._lock:
                for day in sorted(set(days)):
                    self._registers_pg(out, day, quantity, wanted)
            return out
        with self._lock:
            # One read transaction: both queries of a day see the same snapshot, so a value made
            # measured in between can never come back with the estimated flag of the other.
            self._conn.execute("BEGIN")
            try:
                self._registers(out, sorted(set(days)), quantity, wanted)
            finally:
                self._conn.execute("COMMIT")
        return out

    def _registers(self, out: Registers, days: Sequence[date], quantity: str, wanted: set[str] | None) -> None:
        for day in days:
            key = day.isoformat()
            if wanted is not None and len(wanted) <= _FEW_METERS:
                self._few(out, day, key, quantity, sorted(wanted))
                continue
            rows = self._conn.execute(
                "SELECT meter, value FROM daily_registers WHERE day = ? AND quantity = ?", (key, quantity)
            ).fetchall()
            if wanted is None:
                out.update({(m, day): (Decimal(v), False) for m, v in rows})
            else:
                out.update({(m, day): (Decimal(v), False) for m, v in rows if m in wanted})
            for (m,) in self._conn.execute(
                "SELECT meter FROM daily_registers WHERE day = ? AND quantity = ? AND estimated = 1", (key, quantity)
            ):
                k = (m, day)
                if k in out:
                    out[k] = (out[k][0], True)

    def _registers_pg(self, out: Registers, day: date, quantity: str, wanted: set[str] | None) -> None:
        if wanted is not None and len(wanted) <= _FEW_METERS:
            self._few(out, day, day.isoformat(), quantity, sorted(wanted))
            return
        rows = self._conn.execute("SELECT meter, value, estimated FROM daily_registers WHERE day = ? AND quantity = ?",
                                  (day.isoformat(), quantity)).fetchall()
        out.update({(m, day): (Decimal(v), e == 1) for m, v, e in rows if wanted is None or m in wanted})

    def _few(self, out: Registers, day: date, key: str, quantity: str, meters: Sequence[str]) -> None:
        for i in range(0, len(meters), _IN_CHUNK):
            chunk = meters[i:i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for m, v, e in self._conn.execute(
                f"SELECT meter, value, estimated FROM daily_registers WHERE day = ? AND quantity = ?"
                f" AND meter IN ({marks})",
                (key, quantity, *chunk),
            ):
                out[(m, day)] = (Decimal(v), e == 1)

    def days_of(self, meter: str, *, quantity: str = IMPORT_DAILY) -> list[tuple[date, Decimal, bool]]:
        """One meter's stored registers in day order (for a technician looking at a meter)."""
        rows = self._read(
            "SELECT day, value, estimated FROM daily_registers WHERE meter = ? AND quantity = ? ORDER BY day",
            (meter, quantity),
        )
        return [(date.fromisoformat(d), Decimal(v), e == 1) for d, v, e in rows]

    def prune(self, before: date) -> int:
        """Drop every register of a day before ``before`` (retention); returns rows deleted."""
        with self._write() as conn:
            return conn.execute("DELETE FROM daily_registers WHERE day < ?", (before.isoformat(),)).rowcount


class LossHistory(StateDatabase):
    """Daily line-loss rates per unit: what the jump flag compares today's rate with."""

    SCHEMA = _HISTORY_SCHEMA
    ROWS = False  # plain tuples

    def save(self, reports: Iterable[LossReport], *, include_incomplete: bool = False) -> int:
        """Store the rate of each one-day report (a rerun of a day replaces it); returns how many.

        Reports without a rate (no supply) are skipped, and so are incomplete ones unless asked:
        a rate with a sales meter missing is not a norm to compare later days with.  A report over
        several days is refused -- the history holds daily rates.
        """
        rows = []
        for r in reports:
            if r.start != r.end:
                raise ValueError(f"unit {r.unit}: the loss history holds daily rates, not {r.start}..{r.end}")
            if r.rate is None or ("incomplete" in r.flags and not include_incomplete):
                continue
            rows.append((r.unit, r.start.isoformat(), str(r.rate)))
        if rows:
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO lineloss_history (unit, day, rate) VALUES (?, ?, ?) "
                    "ON CONFLICT (unit, day) DO UPDATE SET rate = excluded.rate",
                    rows,
                )
        return len(rows)

    def recent(self, unit: str, before: date, days: int = 30) -> list[Decimal]:
        """The unit's daily rates of the ``days`` days before ``before`` (exclusive), oldest first."""
        rows = self._read(
            "SELECT rate FROM lineloss_history WHERE unit = ? AND day >= ? AND day < ? ORDER BY day",
            (unit, (before - timedelta(days=days)).isoformat(), before.isoformat()),
        )
        return [Decimal(r) for (r,) in rows]

    def recent_all(self, before: date, days: int = 30) -> dict[str, list[Decimal]]:
        """:meth:`recent` for every unit at once (what :func:`line_loss_all` takes as ``history``)."""
        rows = self._read(
            "SELECT unit, rate FROM lineloss_history WHERE day >= ? AND day < ? ORDER BY unit, day",
            ((before - timedelta(days=days)).isoformat(), before.isoformat()),
        )
        out: dict[str, list[Decimal]] = {}
        for unit, rate in rows:
            out.setdefault(unit, []).append(Decimal(rate))
        return out
