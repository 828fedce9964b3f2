"""Storage: where readings, the meter archive and collection attempts are kept.

What lives here: :class:`SqliteStore` (:mod:`.sqlite`), the embedded default -- two SQLite files
in the data directory, ``readings.sqlite3`` for the time series and ``state.sqlite3`` for meters
and attempts -- :class:`PostgresStore` (:mod:`.postgres`), the same methods on PostgreSQL
(readings in day partitions, meters and attempts beside the state stores' tables), and
:class:`BatchWriter` (:mod:`.writer`), which batches what the collector produces and writes it off
the event loop.  :func:`open_store` opens the one a location names (a data directory or a
:class:`~meterd.storage.database.Database`).

May import: ``meterd.readings``, ``meterd.clock`` and ``meterd.errors`` only (never ``collector``, ``config`` or
``protocols``: the store knows readings, not how they were read).

Contract:

- Every value round-trips to the same Python type and digits (``Decimal`` stays ``Decimal``);
  timestamps are timezone-aware, stored as UTC milliseconds and returned in UTC.
- Readings are keyed by (meter, quantity, timestamp); writing the same key again replaces the
  row, so replays are idempotent.  A batch is written in one transaction, all or nothing.
- Store methods are blocking and thread-safe; async code calls them through
  :class:`BatchWriter` or ``asyncio.to_thread``.
- The writer never drops a reading: a failed batch stays queued and is retried.
"""

from meterd.clock import Clock, utc_now
from meterd.storage.database import Database, Location, as_database
from meterd.storage.postgres import PostgresStore
from meterd.storage.sqlite import OUTCOMES, Attempt, MeterRecord, SqliteStore
from meterd.storage.writer import BatchWriter, ReadingSink


def open_store(where: Location, *, clock: Clock = utc_now) -> SqliteStore | PostgresStore:
    """The readings / archive / attempts store at ``where``: a data directory (SQLite) or a
    PostgreSQL database (a :class:`~meterd.storage.database.Database` or a ``postgresql://`` URL).
    ``clock`` tells a PostgreSQL store what day it is (the days it makes partitions for)."""
    db = as_database(where)
    if db is not None:
        return PostgresStore(db, clock=clock)
    assert not isinstance(where, Database)
    return SqliteStore(where)


__all__ = ["OUTCOMES", "Attempt", "BatchWriter", "MeterRecord", "PostgresStore", "ReadingSink", "SqliteStore",
           "open_store"]
