"""Storage: where readings, the meter archive and collection attempts are kept.

What lives here: :class:`SqliteStore` (:mod:`.sqlite`), the embedded default -- two SQLite files
in the data directory, ``readings.sqlite3`` for the time series and ``state.sqlite3`` for meters
and attempts -- and :class:`BatchWriter` (:mod:`.writer`), which batches what the collector
produces and writes it off the event loop.  Stores for InfluxDB and PostgreSQL join here later
behind the same methods.

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

from meterd.storage.sqlite import OUTCOMES, Attempt, MeterRecord, SqliteStore
from meterd.storage.writer import BatchWriter, ReadingSink

__all__ = ["OUTCOMES", "Attempt", "BatchWriter", "MeterRecord", "ReadingSink", "SqliteStore"]
