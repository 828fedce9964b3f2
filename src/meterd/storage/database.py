"""Where the state lives: an SQLite file in the data directory (the default) or a PostgreSQL database.

A store is opened on a *location*: a data directory (``Path`` or ``str``), or a :class:`Database`
naming a ``postgresql://`` URL.  On SQLite the stores keep their ``sqlite3`` connections.  On
PostgreSQL each store gets a :class:`PgConnection`: the same small surface as
``sqlite3.Connection`` (``execute``, ``executemany``, ``executescript``, ``in_transaction``, rows
read by index or by column name, ``lastrowid``), over psycopg 3 connections taken from one
``psycopg_pool.ConnectionPool`` per URL and process.  The stores' SQL is written once, in the
subset both engines share, and :func:`translate` turns the few spellings that differ:

- placeholders ``?`` and ``?N`` become psycopg's ``%s`` / ``%(pN)s`` (a ``%`` in the text is doubled);
- ``INSERT OR IGNORE INTO t ...`` becomes ``INSERT INTO t ... ON CONFLICT DO NOTHING``;
- ``NOT INDEXED`` (an SQLite planner hint) is dropped; ``IFNULL`` is ``COALESCE``;
- in schema text (:func:`translate_schema`): ``INTEGER`` is ``BIGINT`` (SQLite's integers are
  64-bit), ``INTEGER PRIMARY KEY [AUTOINCREMENT]`` an identity column, ``REAL`` ``DOUBLE PRECISION``,
  ``BLOB`` ``BYTEA``; ``WITHOUT ROWID`` is dropped.

What cannot be translated (``INSERT OR REPLACE``, SQLite's scalar ``MAX(a, b)``, ``sqlite_master``)
is not used by the stores: they write ``ON CONFLICT (...) DO UPDATE``, ``CASE``, and ask
:meth:`PgConnection.table_exists`.

Transactions.  SQLite's ``BEGIN IMMEDIATE`` takes the database's one write lock up front, and the
stores' read-then-write steps (a payment reads the balance it moves) rely on it.  On PostgreSQL a
write transaction takes a transaction-scoped advisory lock of the store's family instead
(:data:`WRITE_LOCK`), which serialises the same writers across every process and node of the site,
and is released by COMMIT, ROLLBACK, or the death of the session that held it.

A connection lost to a PostgreSQL restart is given back to the pool as broken and the next
statement runs on a fresh one; a transaction in flight fails whole (nothing half-written) and its
caller retries as it would after any storage error.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

SCHEMES: Final = ("postgresql://", "postgres://")
WRITE_LOCK: Final = 0x6D657465  # 'mete': the advisory-lock key of the state stores' write lock
MAX_PARAMS: Final = 65_535  # PostgreSQL's bind-parameter limit per statement


_CREATE_TABLE: Final = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


def first_table(steps: Sequence[Sequence[str]]) -> str | None:
    """The first table a store's migration steps create.  Absent before the first step runs, the
    store is new (its tables are *created* at the latest version); present, its tables predate
    schema versions (they are *migrated* from version 0)."""
    for step in steps:
        for statement in step:
            if (found := _CREATE_TABLE.search(statement)) is not None:
                return found.group(1)
    return None


def schema_line(where: object, store: str, done: int, latest: int, *, new: bool) -> str:
    """The log line of a store brought to ``latest``: created (a new database), or migrated from ``done``."""
    if new:
        return f"{where}: {store} tables created at schema version {latest}"
    return f"{where}: {store} tables migrated from schema version {done} to {latest}"


def is_postgres_url(text: object) -> bool:
    return isinstance(text, str) and text.startswith(SCHEMES)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class Database:
    """A PostgreSQL database the stores live in: its URL (``postgresql://user@host:port/db``),
    the password kept apart (from the environment or the secrets file, never the config), and the
    pool size per process."""

    url: str
    password: str | None = field(default=None, repr=False)
    pool_size: int = 8
    timeout: float = 10.0  # seconds a statement waits for a connection while the server is unreachable

    def __post_init__(self) -> None:
        if not is_postgres_url(self.url):
            raise ValueError(f"not a PostgreSQL URL (postgresql://...): {redact(self.url)!r}")

    def __str__(self) -> str:
        return redact(self.url)

    def pool(self) -> ConnectionPool:
        """This process's pool for this database (one per URL, opened on first use)."""
        return _pools.get(self)

    def connect(self, family: str = "state") -> PgConnection:
        return PgConnection(self, family)


Location = Path | str | Database  # where a store lives: a data directory, or a PostgreSQL database


def is_postgres(where: object) -> bool:
    return isinstance(where, Database) or is_postgres_url(where)


def as_database(where: object) -> Database | None:
    """The :class:`Database` ``where`` names, or None for a data directory."""
    if isinstance(where, Database):
        return where
    if is_postgres_url(where):
        assert isinstance(where, str)
        return Database(where)
    return None


class _Pools:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str | None], ConnectionPool] = {}

    def get(self, db: Database) -> ConnectionPool:
        key = (db.url, db.password)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                from psycopg_pool import ConnectionPool

                kwargs: dict[str, Any] = {"autocommit": True}
                if db.password is not None:
                    kwargs["password"] = db.password
                pool = ConnectionPool(db.url, kwargs=kwargs, min_size=1, max_size=max(2, db.pool_size),
                                      open=True, name=f"meterd {redact(db.url)}",
                                      timeout=db.timeout, reconnect_timeout=60.0)
                self._pools[key] = pool
            return pool

    def close_all(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


_pools: Final = _Pools()


def close_pools() -> None:
    """Close every pool this process opened (tests and the daemon's shutdown)."""
    _pools.close_all()


# --- SQL translation -----------------------------------------------------------------------------

_TOKEN: Final = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?(\d*)|%|[^'\"?%]+", re.DOTALL)
_OR_IGNORE: Final = re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_OR_REPLACE: Final = re.compile(r"\bINSERT\s+OR\s+REPLACE\b", re.IGNORECASE)
_NOT_INDEXED: Final = re.compile(r"\s+NOT\s+INDEXED\b", re.IGNORECASE)
_IFNULL: Final = re.compile(r"\bIFNULL\s*\(", re.IGNORECASE)
_RETURNING: Final = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_WRITES: Final = re.compile(r"\b(INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|TRUNCATE|nextval|setval)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Translated:
    sql: str
    numbered: bool  # ``?N`` placeholders: parameters go as a mapping pN -> params[N-1]


@lru_cache(maxsize=4096)
def translate(sql: str) -> Translated:
    """SQLite-flavoured SQL as PostgreSQL takes it through psycopg (see the module docstring)."""
    if _OR_REPLACE.search(sql):
        raise ValueError(f"INSERT OR REPLACE has no PostgreSQL spelling; write ON CONFLICT ... DO UPDATE: {sql[:80]}")
    out: list[str] = []
    numbered = False
    plain = False
    for m in _TOKEN.finditer(sql):
        token = m.group(0)
        if token.startswith("?"):
            if m.group(1):
                numbered = True
                out.append(f"%(p{m.group(1)})s")
            else:
                plain = True
                out.append("%s")
        elif token == "%" or token[0] in "'\"":
            out.append(token.replace("%", "%%"))
        else:
            out.append(token)
    if numbered and plain:
        raise ValueError(f"mixed ? and ?N placeholders: {sql[:80]}")
    text = "".join(out)
    if _OR_IGNORE.search(text):
        text = _OR_IGNORE.sub("INSERT INTO", text, count=1)
        returning = _RETURNING.search(text)
        if returning:
            text = text[:returning.start()] + "ON CONFLICT DO NOTHING " + text[returning.start():]
        else:
            text = text.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    text = _NOT_INDEXED.sub("", text)
    text = _IFNULL.sub("COALESCE(", text)
    return Translated(text, numbered)


_SCHEMA_RULES: Final = (
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.IGNORECASE),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.IGNORECASE), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID", re.IGNORECASE), ")"),
)


def translate_schema(script: str) -> list[str]:
    """An SQLite schema script as PostgreSQL statements, one per item."""
    statements: list[str] = []
    for raw in _split_statements(script):
        text = raw
        for pattern, replacement in _SCHEMA_RULES:
            text = pattern.sub(replacement, text)
        statements.append(text)
    return statements


def _split_statements(script: str) -> Iterator[str]:
    current: list[str] = []
    for m in re.finditer(r"'(?:[^']|'')*'|--[^\n]*|;|[^';-]+|-", script):
        token = m.group(0)
        if token == ";":
            text = "".join(current).strip()
            if text:
                yield text
            current = []
        elif not token.startswith("--"):
            current.append(token)
    text = "".join(current).strip()
    if text:
        yield text


# --- rows and cursors ----------------------------------------------------------------------------


class Row(tuple[Any, ...]):
    """A result row read by position or by column name, as ``sqlite3.Row`` is."""

    __slots__ = ()
    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    index = {name: i for i, name in enumerate(names)}
    return type("Row", (Row,), {"__slots__": (), "_names": index})


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    cls = _row_class(tuple(c.name for c in description))
    return cls


def _params(params: Sequence[Any] | Mapping[str, Any], numbered: bool) -> Sequence[Any] | Mapping[str, Any]:
    if isinstance(params, Mapping):
        return params
    values = [int(p) if p is True or p is False else p for p in params]
    if numbered:
        return {f"p{i}": v for i, v in enumerate(values, 1)}
    return values


class PgCursor:
    """What :meth:`PgConnection.execute` returns: fetchone/fetchall/iteration, ``rowcount`` and
    ``lastrowid`` (the identity value the statement's INSERT drew, via ``lastval()``)."""

    def __init__(self, session: psycopg.Connection[Any] | None, rows: list[Any] | None, rowcount: int,
                 lastrowid: int | None = None) -> None:
        self._session = session  # the connection the statement ran on, while its transaction is open
        self._rows = rows or []
        self._at = 0
        self.rowcount = rowcount
        self._lastrowid = lastrowid

    def fetchone(self) -> Any:
        if self._at >= len(self._rows):
            return None
        row = self._rows[self._at]
        self._at += 1
        return row

    def fetchall(self) -> list[Any]:
        rows = self._rows[self._at:]
        self._at = len(self._rows)
        return rows

    def fetchmany(self, size: int = 1) -> list[Any]:
        rows = self._rows[self._at:self._at + size]
        self._at += len(rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    @property
    def lastrowid(self) -> int | None:
        if self._lastrowid is None and self._session is not None and not self._session.closed:
            self._lastrowid = _lastval(self._session)
        return self._lastrowid


def _psycopg() -> Any:
    import psycopg

    return psycopg


def _lastval(conn: psycopg.Connection[Any]) -> int | None:
    import psycopg

    try:
        with conn.transaction():  # a savepoint inside a transaction: an error here spoils nothing
            row = conn.execute("SELECT lastval()").fetchone()
    except psycopg.errors.ObjectNotInPrerequisiteState:  # no sequence drawn in this session
        return None
    return int(row[0]) if row else None


class PgConnection:
    """One store's connection to PostgreSQL, shaped like the ``sqlite3.Connection`` the store uses
    on SQLite.  It holds a pooled connection while a transaction is open (``BEGIN`` .. ``COMMIT``
    or ``ROLLBACK``) and otherwise borrows one per statement, so an idle store holds none."""

    def __init__(self, db: Database, family: str = "state") -> None:
        self.db = db
        self.family = family
        self._pool = db.pool()
        self._held: psycopg.Connection[Any] | None = None
        self._closed = False

    # -- sqlite3.Connection's surface --

    @property
    def in_transaction(self) -> bool:
        return self._held is not None

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        head = " ".join(sql[:32].split()[:2]).upper()
        if head.startswith(("ROLLBACK TO", "SAVEPOINT", "RELEASE")):
            pass  # a savepoint inside the open transaction: runs as it is
        elif head.startswith("BEGIN"):
            self._begin()
            return PgCursor(None, None, -1)
        elif head.startswith(("COMMIT", "END")):
            self._end("COMMIT")
            return PgCursor(None, None, -1)
        elif head.startswith("ROLLBACK"):
            self._end("ROLLBACK")
            return PgCursor(None, None, -1)
        elif head.startswith("PRAGMA"):
            return PgCursor(None, [], -1)
        t = translate(sql)
        args = _params(params, t.numbered)
        if self._held is not None:
            return self._run(self._held, t.sql, args, held=True)
        retry = t.sql.lstrip()[:6].upper() == "SELECT" and _WRITES.search(t.sql) is None  # safe to run twice
        for attempt in range(self._pool.max_size + 1):
            with self._pool.connection() as conn:
                try:
                    return self._run(conn, t.sql, args, held=False)
                except _psycopg().OperationalError:
                    # a pooled connection the server dropped (a restart, a failover) is found out on
                    # use, not by a check on every borrow: a read goes again on another connection
                    if not (retry and conn.closed) or attempt == self._pool.max_size:
                        raise
        raise AssertionError("unreachable")

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> PgCursor:
        t = translate(sql)
        rows = [_params(p, t.numbered) for p in seq]
        if self._held is not None:
            with self._held.cursor() as cur:
                cur.executemany(t.sql, rows)
                return PgCursor(None, None, cur.rowcount)
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(t.sql, rows)
            return PgCursor(None, None, cur.rowcount)

    def executescript(self, script: str) -> None:
        statements = translate_schema(script)
        if self._held is not None:
            for statement in statements:
                self._held.execute(statement)
            return
        with self._pool.connection() as conn, conn.transaction():
            for statement in statements:
                conn.execute(statement)

    def getlimit(self, _category: int) -> int:
        return MAX_PARAMS

    def copy_rows(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """``COPY table (columns) FROM STDIN`` of ``rows``, in the open transaction: the fastest way
        for many rows in (a charging pass copies into a temporary table, ``ON COMMIT DROP``)."""
        if self._held is None:
            raise RuntimeError("copy_rows needs an open transaction (BEGIN)")
        with self._held.cursor() as cur, cur.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)

    def copy_data(self, sql: str, data: str | bytes) -> None:
        """:meth:`copy_rows` of ``data`` formatted by the caller already (COPY's text format, all
        rows in one piece), in the open transaction: one write, no per-row work in this thread."""
        if self._held is None:
            raise RuntimeError("copy_data needs an open transaction (BEGIN)")
        with self._held.cursor() as cur, cur.copy(sql) as copy:
            copy.write(data)

    def close(self) -> None:
        if self._held is not None:
            self._end("ROLLBACK")
        self._closed = True

    def commit(self) -> None:
        if self._held is not None:
            self._end("COMMIT")

    # -- PostgreSQL's own --

    def table_exists(self, name: str) -> bool:
        row = self.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()
        return bool(row[0])

    def _begin(self) -> None:
        if self._held is not None:
            raise RuntimeError("a transaction is already open on this connection")
        for attempt in range(self._pool.max_size + 1):
            conn = self._pool.getconn()
            try:
                conn.execute("BEGIN")
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (WRITE_LOCK, self.family))
            except _psycopg().OperationalError:
                self._give_back(conn)  # a dropped connection is discarded by the pool; nothing was written
                if not conn.closed or attempt == self._pool.max_size:
                    raise
                continue
            except BaseException:
                self._give_back(conn)
                raise
            self._held = conn
            return

    def _end(self, verb: str) -> None:
        conn = self._held
        if conn is None:
            return
        self._held = None
        try:
            conn.execute(verb)
        finally:
            self._give_back(conn)

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        try:
            if not conn.closed and conn.info.transaction_status != 0:  # not IDLE: end whatever is open
                conn.rollback()
        except psycopg.Error as exc:  # a broken connection: the pool's check discards it
            log.debug("giving back a broken connection: %s", exc)
        self._pool.putconn(conn)

    def _run(self, conn: psycopg.Connection[Any], sql: str, args: Any, *, held: bool) -> PgCursor:
        with conn.cursor(row_factory=_row_factory) as cur:
            cur.execute(sql, args)  # always with parameters, so a doubled % in the text is one %
            rows = cur.fetchall() if cur.description is not None else None
            rowcount = cur.rowcount
        if held:
            return PgCursor(conn, rows, rowcount)
        lastrowid = _lastval(conn) if rows is None and sql.lstrip()[:6].upper() == "INSERT" else None
        return PgCursor(None, rows, rowcount, lastrowid)
