"""Readings into InfluxDB 2 (line protocol over ``/api/v2/write``), with a durable spool.

:class:`InfluxStore` writes readings through ``influxdb-client``'s synchronous write API at
millisecond precision.  Attempts, meters and other state stay in the SQLite state store
(:class:`~meterd.storage.sqlite.SqliteStore`); SQLite remains the default store for readings too.

Schema (see ``docs/influxdb.md`` for Grafana queries)
------------------------------------------------------

One point per reading, in measurement ``reading``::

    reading,area=<area>,channel=<channel>,group=<group>,meter=<address>,quantity=<quantity>,role=<role>,unit=<unit> <fields> <ms>

Tags (sorted by key, as InfluxDB prefers; an empty one is left out):

- ``meter``: the meter's address (asset number), e.g. ``000000000001``.
- ``quantity``: meterd's quantity name, e.g. ``energy.active.import.total``.
- ``unit``: ``kWh``, ``V``, ...: fixed per quantity, so it costs the series nothing and no point
  repeats it.
- ``area``, ``role``, ``group``, ``channel``: where the meter sits -- its topology area (台区; the
  first ``[[topology.units]]`` of kind ``area`` it is a point of) and its role there (``supply``,
  ``sales``, ``auxiliary``), its ``[[meters]] group`` and the channel that reads it -- from
  ``tags`` (meterd's config), so Grafana can sum an area's sales or supply without a list of meters.

Fields, by the value's type (which of them is present says the type; no constant string rides
on every point):

- ``quality`` (string): ``good``, ``suspect`` or ``estimated`` -- the one string every point has,
  since it changes from reading to reading.
- ``value`` (float) for decimals, ints and bools (``1.0``/``0.0``): what Grafana plots.
  ``float(Decimal)`` is correctly rounded; a NaN or infinite decimal has no ``value``.
- ``exact`` (string) only where ``value`` cannot hold the number: a decimal of more than 15
  significant digits (or beyond a float's exponent range, or NaN/infinite), an int beyond 2**53.
  DL/T 645 registers (at most 8 digits, 12 with the CT x PT multiplier) never need it.
- ``state`` (boolean) for bools: relay open, alarm raised...
- ``time_value`` (string) for datetimes: ISO 8601 / RFC 3339 text.  Aware values carry their
  offset; the naive times meters report (their own local clock) have none.
- ``text`` (string) for strings.

Each field always has the same type, so InfluxDB never sees a field type conflict.  Timestamps
are the reading's timestamp in integer milliseconds since the epoch (``precision=ms``), like
:class:`~meterd.storage.sqlite.SqliteStore`.

Edge cases worth knowing:

- **Idempotent.**  ``quality`` is a field, so a reading written again (a replay from the spool,
  after a crash) lands on the same series and timestamp and replaces the point's fields.  The
  spool holds encoded lines, so a replay carries the tags the reading was first written with; a
  meter moved to another area, role, group or channel starts new series from then on.
- Tag values escape ``\\``, ``,``, ``=`` and space; string fields escape ``\\`` and ``"``.  Line
  protocol has no newline: CR, LF and TAB in tags and text are written as the two characters
  ``\\r``, ``\\n``, ``\\t``.  An empty tag value is left out (InfluxDB has no empty tags).
- InfluxDB keeps strings of up to 64 KiB.

Never losing a reading
----------------------

:meth:`InfluxStore.write_readings` posts the readings (``batch`` lines per request).  If the server
cannot be reached, times out, or answers 401/403/404/429/5xx, the lines not yet written go to the
:class:`~meterd.storage.spool.Spool` in ``spool_dir`` -- on disk, fdatasync'ed -- before the call
returns, and the server is left alone for ``retry_interval`` seconds (or its ``Retry-After``).
While anything is spooled, new readings are appended behind it (order is kept), and each write
then pushes up to ``4 * batch`` spooled lines; :meth:`InfluxStore.replay` pushes all of it.  A
spool batch is acknowledged (and a segment deleted) only after the server accepted it.

A point the server refuses (HTTP 400, 413 or 422 -- bad line, too large, type conflict, outside
retention) must not block the spool: the request is split in halves until the refused line is
alone, and that line goes to ``spool_dir/rejected.jsonl`` (one JSON object per line: ``line``,
``status``, ``reason``, ``rejected_at``), is logged, and is dropped from the stream.  Its
neighbours may be posted twice on the way, which is harmless (idempotent).

Methods are blocking and thread-safe (one lock); async code calls them through
:class:`~meterd.storage.writer.BatchWriter` or ``asyncio.to_thread``.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self

import urllib3.exceptions
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from meterd.errors import StorageError
from meterd.logthrottle import LogThrottle
from meterd.readings import Quality, Reading
from meterd.storage.spool import HEADER as SPOOL_HEADER
from meterd.storage.spool import Spool
from meterd.storage.sqlite import Attempt, to_ms

log = logging.getLogger(__name__)
MIB: Final = 1024 * 1024
#: Bytes the spool leaves free on its file system, at least (``[store.influxdb] spool_keep_free_mb``).
KEEP_FREE: Final = 1024 * MIB

MEASUREMENT: Final = "reading"
REJECTED_FILE: Final = "rejected.jsonl"
REJECT_STATUSES: Final = frozenset({400, 413, 422})  # the point is bad, not the server
DRAIN_PER_WRITE: Final = 4  # write_readings pushes up to this many batches of spooled lines

# --- line protocol -----------------------------------------------------------------------------

_TAG_ESCAPES: Final = str.maketrans(
    {"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def _string(value: str) -> str:
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def _float(number: Decimal | int) -> str | None:
    """Line-protocol float text, or None when InfluxDB cannot hold it (NaN, infinity, overflow)."""
    if isinstance(number, Decimal) and not number.is_finite():
        return None
    try:
        f = float(number)
    except OverflowError:
        return None
    if not math.isfinite(f):
        return None
    return repr(f)


#: The tags a meter's place gives its points, besides meter, quantity and unit.
METER_TAGS: Final = ("area", "channel", "group", "role")
_EXACT_DIGITS: Final = 15  # a decimal of at most this many significant digits survives float64 exactly
_EXACT_INT: Final = 2**53

#: A meter's place as :func:`encode_reading` takes it: (tag, value) pairs.
Place = tuple[tuple[str, str], ...]


def meter_tags(tags: Mapping[str, str]) -> Place:
    """A meter's place (``area``, ``channel``, ``group``, ``role``) as :func:`encode_reading` takes
    it; empty values are left out."""
    unknown = set(tags) - set(METER_TAGS)
    if unknown:
        raise ValueError(f"meter tags must be among {', '.join(METER_TAGS)}, not {', '.join(sorted(unknown))}")
    return tuple((key, tags[key]) for key in METER_TAGS if tags.get(key))


# Meters, quantities, units and timestamps repeat from reading to reading: cache their encodings.


@lru_cache(maxsize=65536)
def _series(meter: str, quantity: str, unit: str, place: Place) -> str:
    """The series key, tags sorted by key (as InfluxDB prefers), empty ones left out."""
    tags = sorted((*place, ("meter", meter), ("quantity", quantity), ("unit", unit)))
    return MEASUREMENT + "".join(f",{key}={_tag(value)}" for key, value in tags if value) + " "


_QUALITY: Final = {q.value: f',quality="{q.value}" ' for q in Quality}


def _quality(quality: str) -> str:
    found = _QUALITY.get(quality)
    return found if found is not None else _QUALITY[Quality(quality).value]  # ValueError names a bad one


_ms = lru_cache(maxsize=4096)(to_ms)


def _exact_text(value: Decimal | int, number: str) -> str | None:
    """``value``'s text where the float ``number`` (its ``repr``) loses digits of it, else None."""
    if isinstance(value, int):
        return None if -_EXACT_INT <= value <= _EXACT_INT else str(value)
    text = str(value)
    if len(text) <= _EXACT_DIGITS + 1 and "E" not in text:  # at most 15 digits and a point: float64 keeps them
        return None
    return None if Decimal(number) == value else text


def encode_reading(reading: Reading, place: Place = ()) -> bytes:
    """One reading as one line of line protocol (no trailing newline), timestamp in ms.  ``place``:
    the meter's extra tags, from :func:`meter_tags`."""
    value = reading.value
    # bool before int: bool is an int subclass.
    if isinstance(value, Decimal) or (isinstance(value, int) and not isinstance(value, bool)):
        number = _float(value)
        # str() of an int or Decimal has no character that needs escaping.
        if number is None:
            fields = f'exact="{value}"'
        elif (exact := _exact_text(value, number)) is not None:
            fields = f'value={number},exact="{exact}"'
        else:
            fields = "value=" + number
    elif isinstance(value, bool):
        fields = "value=1.0,state=true" if value else "value=0.0,state=false"
    elif isinstance(value, datetime):
        fields = "time_value=" + _string(value.isoformat())
    elif isinstance(value, str):
        fields = "text=" + _string(value)
    else:
        raise TypeError(f"cannot store a {type(value).__name__} reading value: {value!r}")
    return (_series(reading.meter, reading.quantity, reading.unit, place) + fields + _quality(reading.quality)
            + str(_ms(reading.timestamp))).encode()


# --- the store ---------------------------------------------------------------------------------


class AttemptSink(Protocol):
    def record_attempts(self, attempts: Sequence[Attempt]) -> None: ...


@dataclass(slots=True)
class InfluxStats:
    """Counters since the store was opened (points = readings)."""

    written: int = 0  # points the server accepted (directly or from the spool)
    replayed: int = 0  # of those, points that came from the spool
    spooled: int = 0  # points put in the spool
    rejected: int = 0  # points the server refused, quarantined in rejected.jsonl
    failures: int = 0  # requests that failed because the server was unavailable
    dropped: int = 0  # points not spooled: the spool would have left less than keep_free on its disk


class _Rejected(StorageError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class _Unavailable(StorageError):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _reason(exc: ApiException) -> str:
    message = getattr(exc, "message", None) or exc.body or exc.reason or ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split())[:2000]


def _retry_after(exc: ApiException) -> float | None:
    value = getattr(exc, "retry_after", None)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to retry_interval


class InfluxStore:
    """Readings to InfluxDB ``bucket`` of ``org`` at ``url``; a spool in ``spool_dir`` meanwhile.

    ``timeout`` (seconds) bounds each HTTP request; ``batch`` is the most lines per request (and
    per spool batch).  ``retry_interval`` is how long writes go straight to the spool after the
    server failed.  ``state`` (e.g. a :class:`~meterd.storage.sqlite.SqliteStore`) receives
    :meth:`record_attempts`, so an InfluxStore can be a :class:`~meterd.storage.writer.ReadingSink`.
    ``tags``: meter address -> its ``area``, ``channel``, ``group`` and ``role``
    (:data:`METER_TAGS`), put on each of its points.
    ``clock`` (monotonic seconds) and ``wall_clock`` (for the quarantine file) are injectable.
    """

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str,
        spool_dir: Path,
        *,
        timeout: float = 10.0,
        batch: int = 5000,
        retry_interval: float = 5.0,
        gzip: bool = False,
        state: AttemptSink | None = None,
        tags: Mapping[str, Mapping[str, str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        keep_free: int = KEEP_FREE,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.url = url
        self.org = org
        self.bucket = bucket
        self.batch = batch
        self.retry_interval = retry_interval
        self.state = state
        self._places = {meter: meter_tags(t) for meter, t in (tags or {}).items()}
        self._clock = clock
        self._wall_clock = wall_clock
        self.spool_dir = Path(spool_dir)
        self.keep_free = keep_free
        self._log = LogThrottle()  # dropped points: once a minute, with a count
        self.spool = Spool(self.spool_dir)
        self.rejected_path = self.spool_dir / REJECTED_FILE
        try:
            self._client = InfluxDBClient(
                url=url, token=token, org=org, timeout=int(timeout * 1000), enable_gzip=gzip
            )
            self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        except BaseException:
            self.spool.close()
            raise
        self._lock = threading.Lock()
        self._retry_at: float | None = None  # while set, the server is considered down
        self._closed = False
        self.stats = InfluxStats()

    # --- ReadingSink ---------------------------------------------------------------------------

    def write_readings(self, readings: Sequence[Reading]) -> int:
        """Write (or spool) ``readings``; how many went to the server or the spool.

        Only points the server refused (quarantined in ``rejected.jsonl``) are not counted.

        Never raises because the server is down.  It raises for a reading that cannot be encoded
        (naive timestamp, unknown value type) before anything is written, and when the spool
        cannot be written (disk full): then the readings of this call may be on the server only in
        part, and the caller's retry (:class:`~meterd.storage.writer.BatchWriter` keeps the batch)
        may write some twice, which is harmless.
        """
        places = self._places
        lines = [encode_reading(r, places.get(r.meter, ())) for r in readings]
        if not lines:
            return 0
        with self._lock:
            self._check_open()
            if self.spool.size_bytes or self._backing_off():
                spooled = self._to_spool(lines)  # behind what is already waiting: order is kept
                if not self._backing_off():
                    self._drain(limit=DRAIN_PER_WRITE * self.batch)
                return spooled
            accepted = 0
            for start in range(0, len(lines), self.batch):
                chunk = lines[start : start + self.batch]
                handled, ok = self._push(chunk)
                accepted += ok
                if handled < len(chunk):
                    accepted += self._to_spool(lines[start + handled :])
                    break
            return accepted

    def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Attempts belong to the state store; passed on to ``state``."""
        if self.state is None:
            raise RuntimeError("InfluxStore keeps no attempts: give it state=SqliteStore(...)")
        self.state.record_attempts(attempts)

    # --- spool ---------------------------------------------------------------------------------

    def replay(self) -> int:
        """Push everything spooled, oldest first, until done or the server fails; points written.

        Tries the server even while writes are backing off.
        """
        with self._lock:
            self._check_open()
            return self._drain(limit=None)

    def spool_size(self) -> tuple[int, int]:
        """(records, bytes) waiting in the spool; a record is one reading."""
        return self.spool.size()

    def healthy(self) -> bool:
        """Whether the server answers ``/ping`` now (bounded by ``timeout``; never raises)."""
        if self._closed:
            return False
        return bool(self._client.ping())

    @property
    def unavailable(self) -> bool:
        """Whether the last request failed for want of a server (writes go to the spool)."""
        return self._retry_at is not None

    # --- internals -----------------------------------------------------------------------------

    def _backing_off(self) -> bool:
        return self._retry_at is not None and self._clock() < self._retry_at

    def _to_spool(self, lines: list[bytes]) -> int:
        """Spool ``lines``; how many were spooled: none when that would leave less than ``keep_free``
        bytes free on the spool's file system -- an InfluxDB down for days must not fill the disk
        the state database (balances, commands) is written to.  Dropped points are counted and logged."""
        need = sum(len(line) for line in lines) + SPOOL_HEADER.size * len(lines)
        st = os.statvfs(self.spool_dir)
        free = st.f_bavail * st.f_frsize
        if free - need < self.keep_free:
            self.stats.dropped += len(lines)
            self._log.log(log, logging.ERROR, "InfluxDB spool full: readings dropped",
                          "InfluxDB unavailable and its spool %s would leave less than %d MiB free on its disk "
                          "(%d MiB free, %d MiB spooled): %d reading(s) dropped", self.spool_dir,
                          self.keep_free // MIB, free // MIB, self.spool.size_bytes // MIB, len(lines))
            return 0
        self.spool.append(lines)
        self.stats.spooled += len(lines)
        return len(lines)

    def _drain(self, limit: int | None) -> int:
        written = 0
        for batch in self.spool.batches(max_records=self.batch):
            if batch.lines:
                handled, ok = self._push(batch.lines)
                if handled < len(batch.lines):
                    break  # unavailable: the batch stays, to be sent again from its start
                written += ok
                self.stats.replayed += ok
            self.spool.ack(batch)
            if limit is not None and written >= limit:
                break
        if written and not self.spool.records:
            log.info("InfluxDB spool replayed; %d points written from it in this pass", written)
        return written

    def _push(self, lines: list[bytes]) -> tuple[int, int]:
        """Post ``lines``: (leading lines dealt with -- written or quarantined --, lines written).

        Fewer than ``len(lines)`` dealt with means the server became unavailable.
        """
        try:
            self._post(lines)
        except _Rejected as exc:
            if len(lines) == 1:
                self._quarantine(lines[0], exc)
                return 1, 0
            mid = len(lines) // 2
            handled, ok = self._push(lines[:mid])
            if handled < mid:
                return handled, ok
            handled2, ok2 = self._push(lines[mid:])
            return mid + handled2, ok + ok2
        except _Unavailable as exc:
            self._mark_unavailable(exc)
            return 0, 0
        self._mark_available()
        self.stats.written += len(lines)
        return len(lines), len(lines)

    def _post(self, lines: list[bytes]) -> None:
        try:
            # influxdb-client annotates write_precision as WritePrecision, but its members (MS, ...)
            # are plain str constants ("ms"): the library's own annotation is wrong, the value is right.
            self._write_api.write(
                bucket=self.bucket, org=self.org, record=b"\n".join(lines),
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            if status in REJECT_STATUSES:
                raise _Rejected(status, _reason(exc)) from None
            raise _Unavailable(f"HTTP {status}: {_reason(exc)}", _retry_after(exc)) from None
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise _Unavailable(f"{type(exc).__name__}: {exc}") from None

    def _mark_unavailable(self, exc: _Unavailable) -> None:
        self.stats.failures += 1
        first = self._retry_at is None
        delay = max(self.retry_interval, exc.retry_after or 0.0)
        self._retry_at = self._clock() + delay
        if first:
            log.warning(
                "InfluxDB at %s is unavailable (%s); readings go to the spool in %s, retry in %gs",
                self.url, exc.reason, self.spool_dir, delay,
            )
        else:
            log.debug("InfluxDB at %s still unavailable (%s)", self.url, exc.reason)

    def _mark_available(self) -> None:
        if self._retry_at is not None:
            log.warning("InfluxDB at %s is available again; %d readings spooled", self.url, self.spool.records)
            self._retry_at = None

    def _quarantine(self, line: bytes, exc: _Rejected) -> None:
        record = {
            "rejected_at": self._wall_clock().isoformat(),
            "status": exc.status,
            "reason": exc.reason,
            "line": line.decode("utf-8", "replace"),
        }
        with open(self.rejected_path, "ab") as f:
            f.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.stats.rejected += 1
        log.error(
            "InfluxDB refused a point (HTTP %d: %s); quarantined in %s: %.200s",
            exc.status, exc.reason, self.rejected_path, record["line"],
        )

    # --- closing -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("InfluxStore is closed")

    def close(self) -> None:
        """Release the HTTP client and the spool; spooled readings stay on disk for next time."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._write_api.close()
                self._client.close()
            finally:
                self.spool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["MEASUREMENT", "METER_TAGS", "REJECTED_FILE", "InfluxStats", "InfluxStore", "Place", "encode_reading",
           "meter_tags"]
