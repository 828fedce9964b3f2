"""Retention: raw readings and collection attempts older than the site keeps them are pruned.

What goes, and what never does.  Only two tables are pruned: ``readings`` (the raw time series:
register values, load curves, instantaneous values) after ``[store] keep_readings`` (default 400
days), and ``attempts`` (one row per request to a meter, for diagnostics) after ``keep_attempts``
(default 90 days).  Daily registers, line-loss history, the ledger and balances, commands, the
audit log, collection-quality rollups, anomalies and outages are kept: money, audit and the daily
figures are never pruned here.  ``"forever"`` (or 0) keeps a table whole.

The newest reading of each (meter, quantity) is never pruned, whatever its age: a meter silent for
longer than the retention keeps its last value (what the API's ``latest`` and a dispute about a
dead meter need); one row per meter and quantity is all that costs.  Readings go by whole UTC days
(the PostgreSQL store drops day partitions): a day goes at the first prune after all of it is older
than ``keep_readings``.  Attempts go by whole site days (collection quality counts by site day, and
a day whose attempts are all gone keeps its rollup when recomputed), only once the quality rollup
has folded them in (:func:`prune` folds first), and the newest attempt always stays (see
:meth:`~meterd.storage.sqlite.SqliteStore.prune_attempts`).

How: the stores' ``prune_readings`` / ``prune_attempts`` -- on SQLite in transactions of at most
2,000 rows (and 32 statements) with the database let go between them, so the collector's writer never waits
long; on PostgreSQL whole day partitions dropped in one short transaction, attempts in batches.

When: :class:`RetentionJob` prunes once shortly after the daemon starts (:data:`START_DELAY`) and
then every day at ``[store] prune_at`` site time (default 03:30, after the 00:10 daily-frozen reads
and their re-reads, before the morning's billing runs).  Among collector nodes only the node leading
the ``retention`` job runs it (``meterd.app``).  ``meterd prune`` runs the same by hand.

Each prune logs one INFO line: rows per table, the cut-offs, the time taken and the longest
transaction.

May import: ``meterd.clock``, ``meterd.errors`` and the rest of ``meterd.storage`` (the config's
values come in as a :class:`Policy`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any, Final, Protocol

from meterd.clock import CST, Clock, day_start, local_date, local_text, utc_now
from meterd.errors import MeterdError
from meterd.storage.sqlite import Pruned

log = logging.getLogger(__name__)

#: Seconds after start before the first prune: after start-up's own work, soon enough that a daemon
#: restarted now and then still prunes.
START_DELAY: Final = 60.0
#: A prune that failed (a long query holding the PostgreSQL table, a database locked for long) is
#: tried again this much later.
RETRY: Final = timedelta(hours=1)
_LONGEST_WAIT: Final = 3600.0  # the clock is looked at again at least this often while waiting


class PrunableStore(Protocol):
    def prune_readings(self, before: datetime, *, keep_latest: bool = ..., dry_run: bool = ..., rows: int = ...,
                       pause: float = ..., stop: threading.Event | None = ...) -> Pruned: ...

    def prune_attempts(self, before: datetime, *, dry_run: bool = ..., rows: int = ..., pause: float = ...,
                       stop: threading.Event | None = ...) -> Pruned: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """How long each table is kept (``None``: for ever), the site time of the daily prune and the
    site's zone (``[site] timezone``) that time and the attempts' days are in."""

    keep_readings: timedelta | None
    keep_attempts: timedelta | None
    at: time = time(3, 30)
    zone: tzinfo = CST

    @classmethod
    def from_seconds(cls, keep_readings: float | None, keep_attempts: float | None, at: time,
                     zone: tzinfo = CST) -> Policy:
        """From the config's values (seconds, ``None`` for ever)."""
        return cls(None if keep_readings is None else timedelta(seconds=keep_readings),
                   None if keep_attempts is None else timedelta(seconds=keep_attempts), at, zone)

    def readings_cut(self, now: datetime) -> datetime | None:
        """Readings before this go: the start of the UTC day ``keep_readings`` before ``now``."""
        if self.keep_readings is None:
            return None
        day = (now - self.keep_readings).astimezone(UTC).date()
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def attempts_cut(self, now: datetime) -> datetime | None:
        """Attempts before this go: the start of the site day ``keep_attempts`` before ``now``
        (collection quality counts by site day: a day's attempts go all together)."""
        if self.keep_attempts is None:
            return None
        return day_start(local_date(now - self.keep_attempts, self.zone), self.zone).astimezone(UTC)

    def next_run(self, now: datetime) -> datetime:
        """The first ``at`` (site time) after ``now``."""
        local = now.astimezone(self.zone)
        due = datetime.combine(local.date(), self.at, self.zone)
        if due <= local:
            due = datetime.combine(local.date() + timedelta(days=1), self.at, self.zone)
        return due.astimezone(UTC)

    def describe(self) -> str:
        return (f"readings {_keep(self.keep_readings)}, attempts {_keep(self.keep_attempts)}, "
                f"daily at {self.at:%H:%M} site time")


def _keep(keep: timedelta | None) -> str:
    if keep is None:
        return "kept for ever"
    days = keep / timedelta(days=1)
    return f"kept {days:g} days" if days >= 1 else f"kept {keep}"


@dataclass(frozen=True, slots=True)
class Report:
    """One prune: what went from each table (``None``: the table is kept for ever) before which
    instant, and how long it took."""

    now: datetime
    dry_run: bool
    readings_before: datetime | None
    readings: Pruned | None
    attempts_before: datetime | None
    attempts: Pruned | None
    seconds: float
    zone: tzinfo = CST  # the site's: the times shown

    @property
    def longest(self) -> float:
        return max((p.longest for p in (self.readings, self.attempts) if p is not None), default=0.0)

    def line(self) -> str:
        """The log line (and ``meterd prune``'s summary)."""
        verb = "would prune" if self.dry_run else "pruned"
        parts = [_part("readings", self.readings, self.readings_before, self.zone),
                 _part("attempts", self.attempts, self.attempts_before, self.zone)]
        text = f"retention: {verb} {', '.join(parts)} in {self.seconds:.1f} s"
        if not self.dry_run:
            text += f" (longest transaction {self.longest * 1000:.0f} ms)"
        return text

    def as_dict(self) -> dict[str, Any]:
        def table(p: Pruned | None, before: datetime | None) -> dict[str, Any]:
            if p is None:
                return {"kept_forever": True, "rows": 0}
            return {"kept_forever": False, "before": _site(before, self.zone), "rows": p.rows, "transactions": p.transactions,
                    "longest_transaction_s": round(p.longest, 4)}

        return {"now": _site(self.now, self.zone), "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
                "readings": table(self.readings, self.readings_before),
                "attempts": table(self.attempts, self.attempts_before)}


def _site(at: datetime | None, zone: tzinfo) -> str | None:
    return None if at is None else at.astimezone(zone).isoformat(timespec="seconds")


def _part(name: str, pruned: Pruned | None, before: datetime | None, zone: tzinfo) -> str:
    if pruned is None or before is None:
        return f"no {name} ({name} kept for ever)"
    return f"{pruned.rows:,} {name} before {local_text(before, zone, timespec='minutes')}"


def prune(store: PrunableStore, policy: Policy, now: datetime, *, dry_run: bool = False,
          stop: threading.Event | None = None, fold: Callable[[], object] | None = None) -> Report:
    """Prune ``store`` by ``policy`` at ``now`` (or, ``dry_run``, count what would go) and log it.

    ``fold``: the collection-quality rollup's update, called before attempts are pruned so that
    every attempt is counted before it goes (default: a :class:`~meterd.storage.quality.QualityStore`
    on ``store``, opened for the call).  ``stop`` set: each table ends after the transaction in
    hand; the rest goes next time."""
    started = _time.monotonic()
    readings_before, attempts_before = policy.readings_cut(now), policy.attempts_cut(now)
    readings = attempts = None
    if readings_before is not None:
        readings = store.prune_readings(readings_before, keep_latest=True, dry_run=dry_run, stop=stop)
    if attempts_before is not None:
        if not dry_run:
            _fold(store, fold, policy.zone)
        attempts = store.prune_attempts(attempts_before, dry_run=dry_run, stop=stop)
    report = Report(now, dry_run, readings_before, readings, attempts_before, attempts, _time.monotonic() - started,
                    policy.zone)
    log.info("%s", report.line())
    return report


def _fold(store: PrunableStore, fold: Callable[[], object] | None, zone: tzinfo) -> None:
    if fold is not None:
        fold()
        return
    from meterd.storage.quality import QualityStore

    with QualityStore(store, zone=zone) as quality:  # type: ignore[arg-type]
        quality.update()


class RetentionJob:
    """The daemon's background prune: once :data:`START_DELAY` seconds after start, then daily at
    the policy's time.  :meth:`run` is a collector service (``service(stop)``)."""

    def __init__(self, store: PrunableStore, policy: Policy, *, clock: Clock = utc_now,
                 fold: Callable[[], object] | None = None, start_delay: float = START_DELAY) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.fold = fold
        self.start_delay = start_delay
        self.runs = 0  # prunes finished (for tests and the log)
        self.last: Report | None = None

    async def run(self, stop: asyncio.Event) -> None:
        if self.policy.keep_readings is None and self.policy.keep_attempts is None:
            log.info("retention: readings and attempts kept for ever; nothing to prune")
            await stop.wait()
            return
        log.info("retention: %s; first prune in %g s", self.policy.describe(), self.start_delay)
        due = self.clock() + timedelta(seconds=self.start_delay)
        while not stop.is_set():
            if await self._wait_until(due, stop):
                return
            try:
                await self._prune_once(stop)
            except Exception as exc:  # said, and tried again later
                log.warning("retention: the prune failed (%s); trying again in %s", exc, RETRY,
                            exc_info=not isinstance(exc, (MeterdError, sqlite3.OperationalError)))
                due = self.clock() + RETRY
                continue
            due = self.policy.next_run(self.clock())

    async def _wait_until(self, due: datetime, stop: asyncio.Event) -> bool:
        """Wait until the clock says ``due``; True if stopped first."""
        while not stop.is_set():
            left = (due - self.clock()).total_seconds()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(stop.wait(), min(left, _LONGEST_WAIT))
            except TimeoutError:
                pass
        return True

    async def _prune_once(self, stop: asyncio.Event) -> None:
        halt = threading.Event()  # tells the worker thread to end after the transaction in hand
        work = asyncio.ensure_future(asyncio.to_thread(prune, self.store, self.policy, self.clock(), stop=halt,
                                                       fold=self.fold))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the leadership was lost: let the thread end before giving up
            halt.set()
            await asyncio.gather(work, return_exceptions=True)
            raise
        finally:
            stopped.cancel()
            if not work.done():
                halt.set()
                await asyncio.gather(work, return_exceptions=True)
        self.last = work.result()
        self.runs += 1
