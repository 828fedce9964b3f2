"""What the state database records of the site itself: a few named values (``site_settings``).

One for now, ``timezone``: the IANA name of the site's zone (``[site] timezone``).  The daemon
(``meterd run``, ``meterd demo``) and every command given a config write it when they open the
state database, so a command given only the data directory or the database (``--data-dir``, no
config) prints its times in the site's zone and not in the default one.  A config always wins:
a zone that differs from the recorded one replaces it.

:func:`recorded` reads without writing and without making anything (a technician's command on a
copy of the data directory, or one they may only read); :func:`record` writes only what differs.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Final

from meterd.errors import ConfigError, StorageFullError
from meterd.storage.database import Location, as_database
from meterd.storage.sqlite import STATE_FILE, to_ms
from meterd.storage.statedb import StateDatabase

log = logging.getLogger(__name__)

TIMEZONE: Final = "timezone"  # the site's zone, an IANA name

_V1: Final = (
    """CREATE TABLE IF NOT EXISTS site_settings (
        name        TEXT NOT NULL PRIMARY KEY,
        value       TEXT NOT NULL,
        updated_ts  INTEGER NOT NULL
    )""",
)


def storage_errors() -> tuple[type[BaseException], ...]:
    """What reading or writing the record may fail with: a file that cannot be read or written, a
    database out of reach or newer than this meterd, a full disk."""
    import psycopg

    return sqlite3.Error, OSError, ConfigError, StorageFullError, psycopg.Error


class SiteSettings(StateDatabase):
    """The ``site_settings`` rows: name -> value, with when each was last changed."""

    STORE = "site"
    MIGRATIONS = (_V1,)
    ROWS = False

    def get(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM site_settings WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def put(self, name: str, value: str, now: datetime) -> str | None:
        """Set ``name`` to ``value``; the value it had before (None when it had none).  Nothing is
        written when the value is already ``value``."""
        with self._write() as conn:
            row = conn.execute("SELECT value FROM site_settings WHERE name = ?", (name,)).fetchone()
            before = None if row is None else str(row[0])
            if before != value:
                conn.execute("INSERT INTO site_settings (name, value, updated_ts) VALUES (?, ?, ?) "
                             "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_ts = excluded.updated_ts",
                             (name, value, to_ms(now)))
        return before


def state_exists(where: Location) -> bool:
    """Whether there is a state database at ``where``: a PostgreSQL database always (it is made by
    the operator), a data directory when it holds ``state.sqlite3``."""
    return as_database(where) is not None or (Path(str(where)) / STATE_FILE).exists()


def recorded(where: Location, name: str = TIMEZONE) -> str | None:
    """The value ``where``'s state database records under ``name``, read without writing; None
    when there is no state database, no ``site_settings`` table (written by a meterd before it) or
    no such row."""
    db = as_database(where)
    if db is not None:
        conn = db.connect()
        try:
            if not conn.table_exists("site_settings"):
                return None
            row = conn.execute("SELECT value FROM site_settings WHERE name = ?", (name,)).fetchone()
        finally:
            conn.close()
        return None if row is None else str(row[0])
    path = Path(str(where)) / STATE_FILE
    if not path.exists():
        return None
    conn_ = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    try:
        if conn_.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'site_settings'"
                         ).fetchone() is None:
            return None
        row_ = conn_.execute("SELECT value FROM site_settings WHERE name = ?", (name,)).fetchone()
    finally:
        conn_.close()
    return None if row_ is None else str(row_[0])


def record(where: Location, name: str, value: str, now: datetime) -> tuple[bool, str | None]:
    """Record ``value`` under ``name`` at ``where`` (the table made or migrated first);
    ``(changed, before)``: whether anything was written, and what was recorded before."""
    before = recorded(where, name)
    if before == value:
        return False, before
    with SiteSettings(where) as settings:
        before = settings.put(name, value, now)
    return before != value, before
