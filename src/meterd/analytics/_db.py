"""The analytics tables' connection to ``state.sqlite3``, opened the way every state store opens it.

WAL (readers never block the writer), ``busy_timeout`` 30 s (the daemon, the CLI and reports are
separate processes writing the same file), autocommit mode with explicit ``BEGIN IMMEDIATE`` for
writes (a writer takes the database lock up front instead of failing half-way), and one lock per
connection so a store may be shared by the event loop and ``asyncio.to_thread`` workers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from meterd.storage.sqlite import STATE_FILE


class StateTables:
    """Base of the analytics stores: one connection to ``data_dir/state.sqlite3`` and its schema."""

    SCHEMA = ""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
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

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()
