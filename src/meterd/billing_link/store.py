"""The billing link's own tables in the state database: job watermarks, per-file progress, quarantine.

Layout::

    sync_jobs(job, kind, watermark, last_run_ts, last_status, last_error, counts)   PRIMARY KEY (job)
    sync_files(id, job, name, sha256, records_done, records_total, status, encoding,
               started_ts, finished_ts, moved_to, counts)
    sync_quarantine(id, job, source, record_no, raw, reason, ts)

How a kill -9 is survived: a file's ``records_done``, the quarantine rows of that chunk and the
file's running counts are committed in one transaction after the chunk was applied to the ledger
or the archive (a separate transaction on :class:`~meterd.control.state.ControlStore`'s own
connection).  A kill between the two replays at most one chunk, which the ledger key (payments)
or the upsert (accounts) makes harmless; a quarantined record is never recorded twice.

``sync_files.status``: running -> done | quarantined (whole file) | abandoned (the inbox file was
replaced under the same name before it was finished).  ``record_no`` 0 in the quarantine is a whole
file.  This connection is our own; it never holds a transaction while the control store writes
(on SQLite both take the file's one write lock, on PostgreSQL the same advisory lock), so the two
cannot wait on each other.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from meterd.storage.sqlite import from_ms, to_ms
from meterd.storage.statedb import StateDatabase

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sync_jobs (
    job         TEXT NOT NULL PRIMARY KEY,
    kind        TEXT NOT NULL,
    watermark   TEXT,
    last_run_ts INTEGER,
    last_status TEXT NOT NULL DEFAULT 'never run',
    last_error  TEXT,
    counts      TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS sync_files (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job           TEXT NOT NULL,
    name          TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    records_done  INTEGER NOT NULL DEFAULT 0,
    records_total INTEGER,
    status        TEXT NOT NULL,
    encoding      TEXT,
    started_ts    INTEGER NOT NULL,
    finished_ts   INTEGER,
    moved_to      TEXT,
    counts        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sync_files_name ON sync_files (job, name, sha256, id);
CREATE TABLE IF NOT EXISTS sync_quarantine (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    job       TEXT NOT NULL,
    source    TEXT NOT NULL,
    record_no INTEGER NOT NULL,
    raw       TEXT NOT NULL,
    reason    TEXT NOT NULL,
    ts        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sync_quarantine_job ON sync_quarantine (job, id);
CREATE INDEX IF NOT EXISTS sync_quarantine_source ON sync_quarantine (job, source, record_no);
"""

RAW_LIMIT: Final = 4000  # characters of a quarantined record kept


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    name: str
    sha256: str
    records_done: int
    records_total: int | None
    status: str
    moved_to: str | None
    counts: dict[str, int]


# (record number, raw text, reason)
Refusal = tuple[int, str, str]


def _add(counts: dict[str, int], delta: Mapping[str, int]) -> dict[str, int]:
    out = dict(counts)
    for k, v in delta.items():
        out[k] = out.get(k, 0) + v
    return out


class SyncStore(StateDatabase):
    """Watermarks, file progress and quarantine of the billing jobs in the state database."""

    SCHEMA = _SCHEMA

    # --- jobs ----------------------------------------------------------------------------------

    def _ensure_job(self, conn: sqlite3.Connection, job: str, kind: str) -> None:
        conn.execute("INSERT OR IGNORE INTO sync_jobs (job, kind) VALUES (?, ?)", (job, kind))

    def begin_run(self, job: str, kind: str, now: datetime) -> None:
        with self._write() as conn:
            self._ensure_job(conn, job, kind)
            conn.execute("UPDATE sync_jobs SET kind = ?, last_run_ts = ?, last_status = 'running', last_error = NULL "
                         "WHERE job = ?", (kind, to_ms(now), job))

    def finish_run(self, job: str, *, status: str, counts: Mapping[str, int] | None = None,
                   error: str | None = None) -> None:
        with self._write() as conn:
            sets = "last_status = ?, last_error = ?" + (", counts = ?" if counts is not None else "")
            params: list[Any] = [status, error]
            if counts is not None:
                params.append(json.dumps(dict(counts), sort_keys=True))
            conn.execute(f"UPDATE sync_jobs SET {sets} WHERE job = ?", (*params, job))

    def watermark(self, job: str) -> str | None:
        rows = self._read("SELECT watermark FROM sync_jobs WHERE job = ?", (job,))
        return rows[0][0] if rows else None

    def set_watermark(self, job: str, kind: str, watermark: str | None) -> None:
        with self._write() as conn:
            self._ensure_job(conn, job, kind)
            conn.execute("UPDATE sync_jobs SET watermark = ? WHERE job = ?", (watermark, job))

    def commit_page(self, job: str, kind: str, *, watermark: str | None, source: str,
                    refused: Sequence[Refusal], now: datetime) -> int:
        """An HTTP page fully applied: its quarantined records and the advanced watermark, together.
        A page asked for again (the last one, whose ``next`` was null) brings the same bad records:
        those already quarantined from the same page are not recorded twice; returns how many."""
        with self._write() as conn:
            self._ensure_job(conn, job, kind)
            fresh = [r for r in refused if conn.execute(
                "SELECT 1 FROM sync_quarantine WHERE job = ? AND source = ? AND record_no = ? AND raw = ? "
                "AND reason = ?", (job, source, r[0], r[1][:RAW_LIMIT], r[2])).fetchone() is None]
            self._quarantine(conn, job, source, fresh, now)
            conn.execute("UPDATE sync_jobs SET watermark = ? WHERE job = ?", (watermark, job))
        return len(refused) - len(fresh)

    # --- files ---------------------------------------------------------------------------------

    def _file(self, r: sqlite3.Row) -> FileRow:
        return FileRow(r["id"], r["name"], r["sha256"], r["records_done"], r["records_total"], r["status"],
                       r["moved_to"], json.loads(r["counts"]))

    def latest_file(self, job: str, name: str, sha256: str) -> FileRow | None:
        rows = self._read("SELECT * FROM sync_files WHERE job = ? AND name = ? AND sha256 = ? ORDER BY id DESC "
                          "LIMIT 1", (job, name, sha256))
        return self._file(rows[0]) if rows else None

    def finished_twin(self, job: str, sha256: str) -> FileRow | None:
        """The latest file with these exact bytes that this job finished, under any name."""
        rows = self._read("SELECT * FROM sync_files WHERE job = ? AND sha256 = ? AND status = 'done' ORDER BY id DESC "
                          "LIMIT 1", (job, sha256))
        return self._file(rows[0]) if rows else None

    def start_file(self, job: str, name: str, sha256: str, *, total: int, encoding: str, now: datetime) -> int:
        with self._write() as conn:
            conn.execute("UPDATE sync_files SET status = 'abandoned', finished_ts = ? WHERE job = ? AND name = ? "
                         "AND status = 'running'", (to_ms(now), job, name))
            cur = conn.execute(
                "INSERT INTO sync_files (job, name, sha256, records_total, status, encoding, started_ts) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?)", (job, name, sha256, total, encoding, to_ms(now)))
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def commit_chunk(self, file_id: int, job: str, source: str, *, records_done: int, refused: Sequence[Refusal],
                     counts: Mapping[str, int], now: datetime) -> None:
        with self._write() as conn:
            row = conn.execute("SELECT counts FROM sync_files WHERE id = ?", (file_id,)).fetchone()
            self._quarantine(conn, job, source, refused, now)
            conn.execute("UPDATE sync_files SET records_done = ?, counts = ? WHERE id = ?",
                         (records_done, json.dumps(_add(json.loads(row[0]), counts), sort_keys=True), file_id))

    def finish_file(self, file_id: int, *, status: str, moved_to: str | None, now: datetime) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sync_files SET status = ?, moved_to = ?, finished_ts = ? WHERE id = ?",
                         (status, moved_to, to_ms(now), file_id))

    def reject_file(self, job: str, name: str, sha256: str, *, reason: str, raw: str, moved_to: str,
                    now: datetime) -> None:
        """A file that cannot be read at all: one quarantine row (record 0) and its file row."""
        with self._write() as conn:
            conn.execute("UPDATE sync_files SET status = 'abandoned', finished_ts = ? WHERE job = ? AND name = ? "
                         "AND status = 'running'", (to_ms(now), job, name))
            conn.execute(
                "INSERT INTO sync_files (job, name, sha256, records_done, status, started_ts, finished_ts, moved_to) "
                "VALUES (?, ?, ?, 0, 'quarantined', ?, ?, ?)", (job, name, sha256, to_ms(now), to_ms(now), moved_to))
            self._quarantine(conn, job, name, [(0, raw, reason)], now)

    def files(self, job: str | None = None) -> list[FileRow]:
        sql, params = "SELECT * FROM sync_files", []
        if job is not None:
            sql += " WHERE job = ?"
            params.append(job)
        return [self._file(r) for r in self._read(sql + " ORDER BY id", params)]

    # --- quarantine ----------------------------------------------------------------------------

    def _quarantine(self, conn: sqlite3.Connection, job: str, source: str, refused: Sequence[Refusal],
                    now: datetime) -> None:
        if refused:
            conn.executemany(
                "INSERT INTO sync_quarantine (job, source, record_no, raw, reason, ts) VALUES (?, ?, ?, ?, ?, ?)",
                [(job, source, no, raw[:RAW_LIMIT], reason, to_ms(now)) for no, raw, reason in refused])

    def quarantine(self, job: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest quarantined records first: job, source, record_no, raw, reason, ts."""
        sql, params = "SELECT * FROM sync_quarantine", []
        if job is not None:
            sql += " WHERE job = ?"
            params.append(job)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [{"id": r["id"], "job": r["job"], "source": r["source"], "record_no": r["record_no"], "raw": r["raw"],
                 "reason": r["reason"], "ts": from_ms(r["ts"])} for r in rows]

    # --- status --------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Per job: watermark, last run, last status (``ok``, ``running`` -- or interrupted --,
        ``error``), the last run's counts, files not finished and records quarantined in all."""
        open_files = {r[0]: r[1] for r in self._read(
            "SELECT job, COUNT(*) FROM sync_files WHERE status = 'running' GROUP BY job")}
        quarantined = {r[0]: r[1] for r in self._read("SELECT job, COUNT(*) FROM sync_quarantine GROUP BY job")}
        return [{
            "job": r["job"], "kind": r["kind"], "watermark": r["watermark"],
            "last_run": None if r["last_run_ts"] is None else from_ms(r["last_run_ts"]),
            "last_status": r["last_status"], "last_error": r["last_error"], "counts": json.loads(r["counts"]),
            "files_unfinished": open_files.get(r["job"], 0), "quarantined_total": quarantined.get(r["job"], 0),
        } for r in self._read("SELECT * FROM sync_jobs ORDER BY job")]
