"""A durable, append-only on-disk spool: what a remote store cannot take yet waits here.

:class:`Spool` keeps opaque records (for :class:`~meterd.storage.influx.InfluxStore`, one line of
line protocol each) in *segment* files in one directory and hands them back oldest first.  It is
the reason a store that is down never loses a reading: :meth:`Spool.append` returns only after the
records are on disk (``fdatasync``), so they survive a daemon restart, a ``kill -9`` and a power
cut.

Files in the directory::

    00000000000000000001.seg   segments, replayed in the order of their number
    00000000000000000002.seg
    LOCK                       flock'ed while a Spool is open: one process per directory

Other files (the store's ``rejected.jsonl``) are left alone.

Segment format (all integers little-endian)::

    b"MDSPOOL1"                                      8-byte magic, once per segment
    { u32 length | u32 crc32(length bytes + payload) | payload[length] } ...   records

Edge cases worth knowing:

- **Torn records.**  A crash in the middle of :meth:`Spool.append` leaves part of a record at the
  end of the segment (or zeros, if the file system had extended the file but not written it).  Its
  checksum does not match: it is logged once and skipped, and every record before it is replayed.
  Corruption in the middle of a segment is skipped the same way -- reading resynchronises on the
  next record whose checksum matches -- so one bad sector costs only the records it hit.
- **A process never appends to a segment it did not create.**  Each :class:`Spool` starts a new
  segment on its first append, so new records never land behind a torn tail of a crashed run.
  Segments are also rotated when they reach ``segment_bytes``.
- **Acknowledgement.**  :meth:`Spool.batches` yields :class:`SpoolBatch` objects; :meth:`Spool.ack`
  marks one as delivered.  Acks go in order.  A segment file is deleted only once every byte of it
  has been acknowledged.  Ack positions live in memory: after a crash a partly acknowledged
  segment is replayed from its start, so consumers must be idempotent (InfluxDB is: a point with
  the same series and timestamp replaces the earlier one).
- A batch may carry no records at all (``lines == []``) when all that is left of a segment is
  garbage; ack it like any other so the segment can be deleted.
- :attr:`Spool.records` and :attr:`Spool.size_bytes` count what is not yet acknowledged (bytes on
  disk, headers included) -- the figures for metrics and alarms.

A Spool is thread-safe (one lock), but one consumer should iterate and ack at a time.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from meterd.errors import StorageError

log = logging.getLogger(__name__)

MAGIC: Final = b"MDSPOOL1"
HEADER: Final = struct.Struct("<II")  # length, crc32(length bytes + payload)
MAX_RECORD: Final = 64 * 1024 * 1024  # a longer "length" is corruption, not a record
LOCK_FILE: Final = "LOCK"
SEGMENT_SUFFIX: Final = ".seg"
_SEGMENT_NAME: Final = re.compile(r"^(\d{20})\.seg$")


class SpoolLockedError(StorageError, RuntimeError):
    """Another process (or another Spool in this one) has the directory open."""


def encode_record(payload: bytes) -> bytes:
    """One record as it is stored: header then payload."""
    length = len(payload)
    if length > MAX_RECORD:
        raise ValueError(f"spool record of {length} bytes is larger than {MAX_RECORD}")
    len_bytes = length.to_bytes(4, "little")
    return len_bytes + zlib.crc32(payload, zlib.crc32(len_bytes)).to_bytes(4, "little") + payload


def _record_at(buf: bytes | memoryview, pos: int) -> int:
    """End offset of a valid record starting at ``pos`` in ``buf``, or -1."""
    if pos + HEADER.size > len(buf):
        return -1
    length, crc = HEADER.unpack_from(buf, pos)
    end = pos + HEADER.size + length
    if length > MAX_RECORD or end > len(buf):
        return -1
    if zlib.crc32(buf[pos + HEADER.size : end], zlib.crc32(buf[pos : pos + 4])) != crc:
        return -1
    return end


def _resync(buf: bytes | memoryview, pos: int) -> int:
    """The offset of the next valid record after corruption at ``pos`` (``len(buf)`` if none)."""
    for candidate in range(pos + 1, len(buf) - HEADER.size + 1):
        if _record_at(buf, candidate) >= 0:
            return candidate
    return len(buf)


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Consecutive records of one segment: ``lines`` from byte ``start`` up to ``end``."""

    segment: int
    start: int
    end: int
    lines: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int  # bytes in the file (as far as this process wrote or found them)
    acked: int = 0  # bytes [0, acked) are delivered (or were the magic)
    records: int = 0  # valid records in [acked, size)


def _segment_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:020d}{SEGMENT_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class Spool:
    """Durable FIFO of byte records in ``directory`` (created if missing)."""

    def __init__(self, directory: Path | str, *, segment_bytes: int = 8 * 1024 * 1024) -> None:
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes must be at least 1024, got {segment_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.RLock()
        self._lock_fd = self._take_lock()
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None  # the segment this Spool appends to
        self._active_fd: int | None = None
        self._reported: set[tuple[int, int]] = set()  # corrupt regions already logged
        self._next_seq = 1
        self._closed = False
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # --- opening -------------------------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolLockedError(f"spool {self.directory} is already open (another meterd running?)") from None
            raise
        return fd

    def _load(self) -> None:
        for path in sorted(self.directory.iterdir()):
            m = _SEGMENT_NAME.match(path.name)
            if not m:
                continue
            seq = int(m.group(1))
            data = path.read_bytes()
            seg = _Segment(seq, path, size=len(data))
            seg.acked = len(MAGIC) if data.startswith(MAGIC) else 0
            seg.records = sum(is_record for is_record, _, _ in self._parse(seg, data[seg.acked :], seg.acked))
            if seg.acked >= seg.size:  # created but never written to: nothing to replay
                path.unlink()
                continue
            self._segments[seq] = seg
        self._next_seq = max(self._segments, default=0) + 1
        if self._segments:
            records, size = self.size()
            log.info(
                "spool %s: %d records (%d bytes) in %d segments waiting to be replayed",
                self.directory, records, size, len(self._segments),
            )

    def _parse(self, seg: _Segment, buf: bytes, base: int) -> Iterator[tuple[bool, int, int]]:
        """(is_record, start, end) for the bytes of ``seg`` from file offset ``base``, read into ``buf``.

        Offsets are file offsets.  Corrupt stretches come out as ``is_record=False``, logged once.
        """
        n = len(buf)
        pos = 0
        while pos < n:
            end = _record_at(buf, pos)
            if end >= 0:
                yield True, base + pos, base + end
                pos = end
                continue
            nxt = _resync(buf, pos)
            if (seg.seq, base + pos) not in self._reported:
                self._reported.add((seg.seq, base + pos))
                what = "has no valid segment header" if base + pos == 0 else "failed its checksum"
                where = "at the end (torn write after a crash?)" if nxt == n else "in the middle (corruption)"
                log.warning(
                    "spool segment %s: %d bytes at offset %d %s, %s; skipped",
                    seg.path.name, nxt - pos, base + pos, what, where,
                )
            yield False, base + pos, base + nxt
            pos = nxt

    # --- sizes ---------------------------------------------------------------------------------

    @property
    def records(self) -> int:
        """Valid records not yet acknowledged."""
        with self._lock:
            return sum(s.records for s in self._segments.values())

    @property
    def size_bytes(self) -> int:
        """Bytes of segment files not yet acknowledged (headers and any garbage included)."""
        with self._lock:
            return sum(s.size - s.acked for s in self._segments.values())

    def size(self) -> tuple[int, int]:
        """(records, bytes) waiting; see :attr:`records` and :attr:`size_bytes`."""
        with self._lock:
            return self.records, self.size_bytes

    # --- appending -----------------------------------------------------------------------------

    def append(self, lines: Sequence[bytes]) -> None:
        """Add ``lines`` as records, in order; on disk (fdatasync'ed) when this returns."""
        if not lines:
            return
        data = b"".join([encode_record(line) for line in lines])
        with self._lock:
            self._check_open()
            if self._active is None or self._active.size >= self.segment_bytes:
                self._rotate()
            assert self._active is not None and self._active_fd is not None
            seg, fd = self._active, self._active_fd
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                _datasync(fd)
            except BaseException:
                # Leave no half-written records behind in a file this process keeps appending to.
                try:
                    os.ftruncate(fd, seg.size)
                    os.lseek(fd, seg.size, os.SEEK_SET)
                except OSError:
                    self._close_active()  # the next append starts a fresh segment
                raise
            seg.size += len(data)
            seg.records += len(lines)

    def _rotate(self) -> None:
        self._close_active()
        seq = self._next_seq
        self._next_seq += 1
        path = _segment_path(self.directory, seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            os.write(fd, MAGIC)
            os.fsync(fd)
            _fsync_dir(self.directory)  # the new file's name must survive a crash too
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        seg = _Segment(seq, path, size=len(MAGIC), acked=len(MAGIC))
        self._segments[seq] = seg
        self._active, self._active_fd = seg, fd

    def _close_active(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active, self._active_fd = None, None

    # --- reading -------------------------------------------------------------------------------

    def batches(self, max_records: int = 5000, max_bytes: int = 4 * 1024 * 1024) -> Iterator[SpoolBatch]:
        """Unacknowledged records, oldest first, in batches of at most ``max_records``.

        The iterator has its own cursor: it moves on whether or not a batch is acked.  Records
        appended while iterating are included.  Stop iterating when a delivery fails; the next
        call to :meth:`batches` starts again at the oldest unacknowledged record.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        seq, pos = 0, 0  # cursor: next byte to read in segment seq
        while True:
            with self._lock:
                self._check_open()
                seg = self._segments.get(seq)
                if seg is None or pos >= seg.size:
                    later = [s for s in sorted(self._segments) if s > seq]
                    if not later:
                        return
                    seg = self._segments[later[0]]
                    seq, pos = seg.seq, seg.acked
                    if pos >= seg.size:  # e.g. an empty active segment
                        continue
                pos = max(pos, seg.acked)
                size = seg.size
                path = seg.path
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read(size - pos)
            lines: list[bytes] = []
            base = start = pos
            nbytes = 0
            for is_record, rstart, rend in self._parse(seg, data, base):
                if is_record:
                    lines.append(data[rstart - base + HEADER.size : rend - base])
                    nbytes += rend - rstart
                pos = rend
                if len(lines) >= max_records or nbytes >= max_bytes:
                    yield SpoolBatch(seq, start, pos, lines)
                    lines, start, nbytes = [], pos, 0
            if pos > start:
                yield SpoolBatch(seq, start, pos, lines)

    def ack(self, batch: SpoolBatch) -> None:
        """Mark ``batch`` delivered; deletes its segment when all of that has been delivered."""
        with self._lock:
            self._check_open()
            seg = self._segments.get(batch.segment)
            if seg is None or batch.end <= seg.acked:
                return  # already acknowledged (a repeated ack is harmless)
            if batch.start != seg.acked:
                raise ValueError(
                    f"spool batch {batch.segment}:{batch.start}-{batch.end} acknowledged out of order;"
                    f" segment is acknowledged up to {seg.acked}"
                )
            seg.acked = batch.end
            seg.records -= len(batch.lines)
            if seg.acked < seg.size:
                return
            if seg is self._active:
                self._close_active()
            seg.path.unlink(missing_ok=True)
            del self._segments[seg.seq]

    # --- closing -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.directory} is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_active()
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["MAGIC", "Spool", "SpoolBatch", "SpoolLockedError", "encode_record"]
