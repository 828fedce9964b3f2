"""One way to open the state database for the stores that share it.

``state.sqlite3`` holds the meter archive, the prepaid ledger and commands, the analytics tables,
the sync jobs' progress and the API tokens.  Each store keeps its own connection, opened here the
same way: WAL (readers never block the writer), ``busy_timeout`` 30 s (the daemon, the CLI and
reports are separate processes writing the same file), autocommit mode with explicit
``BEGIN IMMEDIATE`` for writes (a writer takes the database lock up front instead of failing
half-way), and one re-entrant lock per connection so a store may be shared by the event loop and
``asyncio.to_thread`` workers.

Schema changes are versioned per store: ``SCHEMA`` is the store's first version (``CREATE ... IF
NOT EXISTS``), and each entry of ``MIGRATIONS`` is one step after it -- a few statements run in
one write transaction together with the new version number in ``schema_versions``.  Every
database, new or years old, goes through the same steps in the same order, once: a new file is
created at version 0 and migrated like an old one, so the upgrade path is the path every test
takes.  A process that finds the version already there skips the step (two processes opening an
old file at once serialise on the write lock and the second finds nothing left to do); a file
newer than the code is refused rather than written with an older idea of its tables.

A big transaction (a charging pass writes tens of MB) is committed without waiting for the disk
and without the automatic checkpoint, which would copy all of it back into the database file
inside the COMMIT; a thread with a connection of its own checkpoints instead, while the caller
goes on.  See :meth:`StateDatabase._write`.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Final, Self, cast

from meterd.errors import ConfigError, StorageFullError
from meterd.storage.database import Database, Location, as_database, first_table, schema_line, translate_schema
from meterd.storage.sqlite import STATE_FILE, has_table

log = logging.getLogger(__name__)


NEARLY_FULL: Final = 1024 * 1024  # bytes free below which SQLite's I/O errors are taken for a full disk


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT``, rolled back on any error, a failed COMMIT included.

    After some errors (``SQLITE_FULL`` among them) SQLite has already rolled the transaction back
    itself; a second ROLLBACK would fail with "no transaction is active" and hide the real error,
    so it is sent only while a transaction is open."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def disk_full(exc: BaseException, directory: Path | None = None) -> bool:
    """Whether ``exc``, or an error it was raised from, is a write refused for want of space:
    :class:`StorageFullError`, SQLite's ``SQLITE_FULL``, ``ENOSPC``/``EDQUOT``, or -- with the
    ``directory`` of the database -- an SQLite I/O error while that file system has (almost) no
    space left (SQLite reports a shared-memory or WAL file it cannot grow as ``disk I/O error``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageFullError):
            return True
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is None:
                if "database or disk is full" in str(current):
                    return True
            elif code & 0xFF == sqlite3.SQLITE_FULL or code & 0xFF == sqlite3.SQLITE_IOERR and directory is not None and _space_left(directory) < NEARLY_FULL:
                return True
        current = current.__cause__ or current.__context__
    return False


def _space_left(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return NEARLY_FULL
    return st.f_bavail * st.f_frsize


class StateDatabase:
    """Base of the state-database stores: one connection to ``data_dir/state.sqlite3`` and the
    subclass's ``SCHEMA``.  ``ROWS`` gives :class:`sqlite3.Row` results (else plain tuples);
    ``PRAGMAS`` are extra settings for this connection."""

    SCHEMA: ClassVar[str] = ""
    STORE: ClassVar[str] = ""  # the name ``schema_versions`` keeps this store's version under
    MIGRATIONS: ClassVar[tuple[tuple[str, ...], ...]] = ()  # version n+1 = statements of MIGRATIONS[n]
    ROWS: ClassVar[bool] = True
    PRAGMAS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_dir: Location) -> None:
        self._lock = threading.RLock()
        self._checkpointer: threading.Thread | None = None
        self._closed = True
        db = as_database(data_dir)
        self._wal = False
        if db is not None:  # PostgreSQL: a PgConnection shaped like the sqlite3 one
            self.database: Database | None = db
            self.path = Path(str(db))  # for messages only
            # PgConnection has the surface of sqlite3.Connection the stores use (storage/database.py)
            self._conn: sqlite3.Connection = cast("sqlite3.Connection", db.connect())
            with self._lock, _transaction(self._conn):  # the schema under the write lock: nodes start at once
                self._conn.executescript(self.SCHEMA)
            self._migrate()
            self._closed = False
            return
        self.database = None
        self.path = Path(cast("Path | str", data_dir)) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        try:
            if self.ROWS:
                self._conn.row_factory = sqlite3.Row
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._wal = str(mode).lower() == "wal"  # else (a file system without WAL) nothing is relaxed
            self._conn.execute("PRAGMA busy_timeout=30000")
            for pragma in self.PRAGMAS:
                self._conn.execute(f"PRAGMA {pragma}")
            with self._lock:
                self._conn.executescript(self.SCHEMA)
            self._migrate()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error) and disk_full(exc, self.path.parent):
                raise StorageFullError("the state database", self.path) from exc
            raise
        self._closed = False

    @property
    def postgres(self) -> bool:
        return self.database is not None

    def _schema_version(self) -> int:
        if self.database is not None:
            if not self._conn.table_exists("schema_versions"):  # type: ignore[attr-defined]
                return 0
        elif self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'"
                                ).fetchone() is None:
            return 0
        row = self._conn.execute("SELECT version FROM schema_versions WHERE store = ?", (self.STORE,)).fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Bring this store's tables to ``len(MIGRATIONS)`` (see the module docstring)."""
        if not self.MIGRATIONS:
            return
        latest = len(self.MIGRATIONS)
        with self._lock:
            if self._schema_version() == latest:
                return
            with self._write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (store TEXT NOT NULL PRIMARY KEY, "
                             "version INTEGER NOT NULL)")
                done = self._schema_version()  # again, under the write lock
                if done > latest:
                    raise ConfigError(f"state database {self.path}: the {self.STORE} tables are at schema version "
                                      f"{done}, newer than this meterd knows ({latest}): upgrade meterd")
                table = first_table(self.MIGRATIONS) if done == 0 else None
                new = table is not None and not (cast(Any, conn).table_exists(table) if self.database is not None
                                                 else has_table(conn, table))
                for step in self.MIGRATIONS[done:]:
                    for statement in step:
                        if self.database is not None:
                            for translated in translate_schema(statement):
                                conn.execute(translated)
                        else:
                            conn.execute(statement)
                if done < latest:
                    conn.execute("INSERT INTO schema_versions (store, version) VALUES (?, ?) ON CONFLICT (store) "
                                 "DO UPDATE SET version = excluded.version", (self.STORE, latest))
                    log.info("%s", schema_line(f"state database {self.path}", self.STORE, done, latest, new=new))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
            if self._checkpointer is not None:
                self._checkpointer.join()
                self._checkpointer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, *, redoable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, database lock taken up front; rolled back on any error.

        ``redoable``, for a big transaction whose work is redone when it is lost (a charging pass:
        its cursors are lost with its entries), never for a payment: the COMMIT does not wait for
        the disk (``synchronous=NORMAL`` in WAL mode, for this transaction only) and does not
        checkpoint; :meth:`_checkpoint_soon` does, in the background.  The transaction still
        survives the process being killed at any point; an OS crash or power cut may lose it
        (never half of it, never the file) until the next ordinary commit, whose wait for the disk
        covers it too."""
        with self._lock, self._full_named():
            conn = self._conn
            if not (redoable and self._wal):  # NORMAL outside WAL mode could corrupt on a power cut
                with _transaction(conn):
                    yield conn
                return
            level = conn.execute("PRAGMA synchronous").fetchone()[0]
            every = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            conn.execute(f"PRAGMA synchronous={min(int(level), 1)}")  # NORMAL, unless set lower
            conn.execute("PRAGMA wal_autocheckpoint=0")
            try:
                with _transaction(conn):
                    yield conn
            finally:
                conn.execute(f"PRAGMA wal_autocheckpoint={int(every)}")
                conn.execute(f"PRAGMA synchronous={int(level)}")
            if every > 0:
                self._checkpoint_soon()

    @contextmanager
    def _full_named(self) -> Iterator[None]:
        """A write refused for want of space becomes :class:`StorageFullError` naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            if disk_full(exc, self.path.parent):
                raise StorageFullError("the state database", self.path) from exc
            raise

    def _checkpoint_soon(self) -> None:
        """Copy the WAL back into the database file from a thread with its own connection
        (``PASSIVE``: it waits for nobody and nobody waits for it; a writer's automatic checkpoint
        meanwhile finds the checkpoint taken and skips).  What it does not finish, the next
        automatic checkpoint does."""
        if self._checkpointer is not None and self._checkpointer.is_alive():
            return
        path = self.path

        def checkpoint() -> None:
            try:
                conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    conn.close()
            except sqlite3.Error as exc:  # the next automatic checkpoint does it
                log.debug("background checkpoint of %s: %s", path, exc)

        self._checkpointer = threading.Thread(target=checkpoint, name="wal-checkpoint", daemon=True)
        self._checkpointer.start()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _count_by(self, table: str, column: str, where: str = "") -> dict[str, int]:
        """Rows of ``table`` per value of ``column``, optionally filtered by ``where``: for the
        stores' own typed counting methods (their table, column and filter are constants)."""
        sql = f"SELECT {column}, COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "") + f" GROUP BY {column}"
        return {str(r[0]): int(r[1]) for r in self._read(sql)}
