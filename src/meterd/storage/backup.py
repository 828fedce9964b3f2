"""Backups of the system of record, and restoring them.

SQLite (the embedded default): an *online* copy of ``state.sqlite3`` and ``readings.sqlite3``
through SQLite's backup API (:meth:`sqlite3.Connection.backup`).  The copy is one consistent
snapshot of each file taken while the daemon goes on writing (WAL mode: the copy reads a snapshot,
writers are not blocked); a plain ``cp`` of a live database, its ``-wal`` file beside it, is not.
Each copy is checked (``PRAGMA integrity_check``) and listed in ``MANIFEST.json`` with its size and
SHA-256, which :func:`restore` verifies before it writes anything.

PostgreSQL: ``pg_dump --format=custom`` of the database (consistent: one snapshot transaction,
the nodes go on running), restored with ``pg_restore --clean --if-exists`` into an empty or
existing database.  For a city-sized site use the server's own continuous archiving (base backup +
WAL archive, point-in-time recovery); see ``docs/deploy.md``.

A restore replaces what is there: the daemon (every node) must be stopped first.  After a restore
the daemon resumes from the restored state: the ledger's keys make the charging passes and billing
imports since the backup apply once, when they are replayed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from meterd import __version__
from meterd.errors import MeterdError
from meterd.storage.database import Database, Location, as_database, redact
from meterd.storage.sqlite import READINGS_FILE, STATE_FILE

MANIFEST: Final = "MANIFEST.json"
PG_DUMP_FILE: Final = "meterd.pgdump"
MAX_MANIFEST_BYTES: Final = 1 * 2**20
SQLITE_FILES: Final = (STATE_FILE, READINGS_FILE)


class BackupError(MeterdError):
    """A backup or restore that cannot be done; the message says why and nothing was changed."""


@dataclass(frozen=True, slots=True)
class BackedUp:
    file: str
    bytes: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _empty_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"backup directory {target} exists and is not empty: give a new directory")
    target.mkdir(parents=True, exist_ok=True)


def backup(where: Location, target: Path, *, now: datetime) -> list[BackedUp]:
    """Back up the store at ``where`` into the new (or empty) directory ``target``."""
    target = Path(target)
    db = as_database(where)
    _empty_target(target)
    if db is not None:
        files = [_pg_dump(db, target / PG_DUMP_FILE)]
        backend = "postgresql"
    else:
        files = _sqlite_backup(Path(where), target)  # type: ignore[arg-type]
        backend = "sqlite"
    manifest = {"meterd": __version__, "backend": backend, "created": now.isoformat(),
                "source": str(db) if db is not None else str(Path(where)),  # type: ignore[arg-type]
                "files": [{"file": f.file, "bytes": f.bytes, "sha256": f.sha256} for f in files]}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return files


def _sqlite_backup(data_dir: Path, target: Path) -> list[BackedUp]:
    present = [name for name in SQLITE_FILES if (data_dir / name).exists()]
    if STATE_FILE not in present:
        raise BackupError(f"no {STATE_FILE} in {data_dir}: nothing to back up (is this the data directory?)")
    done = []
    for name in present:
        copy = target / name
        source = sqlite3.connect(f"file:{data_dir / name}?mode=ro", uri=True, timeout=30.0)
        try:
            dest = sqlite3.connect(copy)
            try:
                source.backup(dest)  # one consistent snapshot, writers not blocked (WAL)
                dest.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
                check = dest.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                dest.close()
        finally:
            source.close()
        if check != "ok":
            raise BackupError(f"the copy of {name} fails its integrity check: {check}")
        done.append(BackedUp(name, copy.stat().st_size, _sha256(copy)))
    return done


def _tool(name: str) -> str:
    """The newest installed PostgreSQL client tool ``name`` (Debian keeps them per major version)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return on_path


def _pg_env(db: Database) -> dict[str, str]:
    env = dict(os.environ)
    if db.password is not None:
        env["PGPASSWORD"] = db.password
    return env


def _pg_dump(db: Database, file: Path) -> BackedUp:
    result = subprocess.run([_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={file}", db.url],
                            check=False, capture_output=True, text=True, env=_pg_env(db))
    if result.returncode != 0:
        raise BackupError(f"pg_dump of {redact(db.url)} failed: {result.stderr.strip()}")
    return BackedUp(file.name, file.stat().st_size, _sha256(file))


def read_manifest(source: Path) -> dict[str, Any]:
    path = Path(source) / MANIFEST
    try:
        with path.open("rb") as f:  # a few lines per file backed up; a 1 GB one was read whole (2.1 GB)
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BackupError(f"{path}: larger than {MAX_MANIFEST_BYTES // 2**20} MiB: not a meterd backup manifest")
        manifest = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{source} is not a meterd backup: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise BackupError(f"{path}: not a meterd backup manifest")
    return manifest


def verify(source: Path) -> dict[str, Any]:
    """The manifest of the backup in ``source``, every file's size and checksum checked."""
    manifest = read_manifest(source)
    for entry in manifest["files"]:
        file = Path(source) / str(entry.get("file", ""))
        if Path(str(entry.get("file", ""))).name != entry.get("file") or not file.is_file():
            raise BackupError(f"backup {source}: {entry.get('file')!r} is missing")
        if file.stat().st_size != entry.get("bytes") or _sha256(file) != entry.get("sha256"):
            raise BackupError(f"backup {source}: {file.name} does not match its checksum (damaged or changed)")
    return manifest


def restore(source: Path, where: Location, *, force: bool = False) -> dict[str, Any]:
    """Restore the backup in ``source`` into the store at ``where`` (the daemon stopped).  Without
    ``force`` an SQLite data directory that already holds a state database is refused."""
    manifest = verify(source)
    db = as_database(where)
    backend = manifest.get("backend")
    if (backend == "postgresql") != (db is not None):
        raise BackupError(f"backup {source} is of a {backend} store; the target is "
                          f"{'PostgreSQL' if db is not None else 'an SQLite data directory'}")
    if db is not None:
        result = subprocess.run([_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
                                 f"--dbname={db.url}", str(Path(source) / PG_DUMP_FILE)],
                                check=False, capture_output=True, text=True, env=_pg_env(db))
        if result.returncode != 0:
            raise BackupError(f"pg_restore into {redact(db.url)} failed: {result.stderr.strip()}")
        return manifest
    data_dir = Path(where)  # type: ignore[arg-type]
    if (data_dir / STATE_FILE).exists() and not force:
        raise BackupError(f"{data_dir} already holds {STATE_FILE}: stop the daemon and give --force to replace it")
    data_dir.mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        name = str(entry["file"])
        staged = data_dir / f".{name}.restoring"
        shutil.copyfile(Path(source) / name, staged)
        for suffix in ("-wal", "-shm"):  # the old file's log would be replayed onto the restored one
            (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
        os.replace(staged, data_dir / name)
    return manifest
