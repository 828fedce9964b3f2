"""The drop folder shared with the billing system::

    ROOT/inbox/        the billing system drops files here: written as NAME.tmp, then renamed
    ROOT/outbox/       our exports, written the same way (NAME.tmp, fsync, rename)
    ROOT/processed/    imported files, renamed NAME.<UTC stamp>.EXT
    ROOT/quarantine/   files that could not be read at all, each with NAME....EXT.reason.txt beside it

Only ``*.csv`` and ``*.json`` are taken from the inbox (never ``.tmp`` or anything else), oldest
first by modification time, then by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

INBOX: Final = "inbox"
OUTBOX: Final = "outbox"
PROCESSED: Final = "processed"
QUARANTINE: Final = "quarantine"
FORMATS: Final = {".csv": "csv", ".json": "json"}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class DropFolder:
    root: Path

    def ensure(self) -> None:
        for sub in (INBOX, OUTBOX, PROCESSED, QUARANTINE):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def incoming(self) -> list[Path]:
        files = [p for p in (self.root / INBOX).iterdir() if p.suffix.lower() in FORMATS and p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def stamped(self, sub: str, name: str, now: datetime) -> Path:
        """A free name in ``sub`` for ``name``, with the time it was handled before the extension."""
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        for n in range(10_000):
            candidate = self.root / sub / (f"{stem}.{stamp}" + (f"-{n}" if n else "") + (f".{ext}" if ext else ""))
            if not candidate.exists() and not candidate.with_name(candidate.name + ".reason.txt").exists():
                return candidate
        raise FileExistsError(f"no free name for {name} in {self.root / sub}")

    def move(self, src: Path, dest: Path) -> None:
        os.replace(src, dest)
        _fsync_dir(dest.parent)

    def write_atomic(self, sub: str, name: str, data: bytes) -> Path:
        """Write ``sub/name`` as ``name.tmp``, fsync, rename: a reader sees all of it or nothing."""
        target = self.root / sub / name
        tmp = target.with_name(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return target
