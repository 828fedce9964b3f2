"""One way to open the state database for the stores that share it.

``state.sqlite3`` holds the meter archive, the prepaid ledger and commands, the analytics tables,
the sync jobs' progress and the API tokens.  Each store keeps its own connection, opened here the
same way: WAL (readers never block the writer), ``busy_timeout`` 30 s (the daemon, the CLI and
reports are separate processes writing the same file), autocommit mode with explicit
``BEGIN IMMEDIATE`` for writes (a writer takes the database lock up front instead of failing
half-way), and one re-entrant lock per connection so a store may be shared by the event loop and
``asyncio.to_thread`` workers.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator, Self, Sequence

from meterd.storage.sqlite import STATE_FILE


class StateDatabase:
    """Base of the state-database stores: one connection to ``data_dir/state.sqlite3`` and the
    subclass's ``SCHEMA``.  ``ROWS`` gives :class:`sqlite3.Row` results (else plain tuples);
    ``PRAGMAS`` are extra settings for this connection."""

    SCHEMA: ClassVar[str] = ""
    ROWS: ClassVar[bool] = True
    PRAGMAS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        try:
            if self.ROWS:
                self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            for pragma in self.PRAGMAS:
                self._conn.execute(f"PRAGMA {pragma}")
            with self._lock:
                self._conn.executescript(self.SCHEMA)
        except BaseException:
            self._conn.close()
            raise
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, database lock taken up front; rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def counts(self, table: str, column: str, where: str = "") -> dict[str, int]:
        """Rows of ``table`` per value of ``column``, optionally filtered by ``where`` -- for
        dashboards and metrics.  The names and the filter come from code, never from a request."""
        sql = f"SELECT {column}, COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "") + f" GROUP BY {column}"
        return {str(r[0]): int(r[1]) for r in self._read(sql)}
