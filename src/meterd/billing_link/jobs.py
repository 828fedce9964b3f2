"""Running one billing job: :func:`run_job`.

A run takes a per-job lock -- on SQLite ``data_dir/sync-<job>.lock`` (flock), on PostgreSQL a
session advisory lock, which every node of the site sees; either is released when the process
dies, so kill -9 leaves nothing stale -- marks the job ``running`` in ``sync_jobs``, opens
its own :class:`ControlStore` and :class:`SyncStore` connections, does the work and records
``ok`` (with the run's counts) or ``error`` (with the message).  A job killed half-way shows
``running`` until the next run, which resumes it: a drop-folder file at its committed record
count, an HTTP import at its watermark (advanced only after a page is fully applied), an export
by writing the same file again.

Time is ``now``, passed in; nothing here reads the clock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Final

from meterd.billing_link.exports import export_balances, export_readings
from meterd.billing_link.imports import import_folder, import_http, sink_for
from meterd.billing_link.model import JobKind, JobResult, JobSpec, RegisterOf, Run
from meterd.billing_link.store import SyncStore
from meterd.clock import CST
from meterd.control.amounts import DEFAULT_LIMITS, AmountLimits
from meterd.control.state import ControlStore
from meterd.errors import SyncError
from meterd.storage.database import Database, Location, as_database

__all__ = ["JobKind", "JobResult", "JobSpec", "SyncStore", "run_job"]

log = logging.getLogger(__name__)


JOB_LOCK: Final = 0x73796E63  # 'sync': the advisory-lock family of the billing jobs on PostgreSQL


@contextmanager
def job_lock(where: Location, name: str) -> Iterator[None]:
    """One run of a job at a time (the daemon's schedule and ``meterd sync run`` may meet, on one
    machine or, on PostgreSQL, on any node of the site)."""
    db = as_database(where)
    if db is not None:
        with _advisory_lock(db, name):
            yield
        return
    assert not isinstance(where, Database)
    path = Path(where) / f"sync-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(f"job {name} is already running (lock {path})") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(db: Database, name: str) -> Iterator[None]:
    """A session-level advisory lock on a pooled connection held for the run: the session's end
    (the process killed, the connection lost) releases it."""
    pool = db.pool()
    conn = pool.getconn()
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (JOB_LOCK, name)).fetchone()
        if not (row and row[0]):
            raise SyncError(f"job {name} is already running (advisory lock in {db})")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (JOB_LOCK, name))
    finally:
        pool.putconn(conn)


def _check(spec: JobSpec, now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError(f"job {spec.name}: now {now.isoformat()} has no time zone")
    if (spec.folder is None) == (spec.url is None):
        raise ValueError(f"job {spec.name}: needs exactly one of folder (a drop folder) or url (HTTP JSON)")
    if spec.chunk < 1:
        raise ValueError(f"job {spec.name}: chunk must be at least 1, not {spec.chunk}")


def _work(run: Run) -> None:
    kind = run.spec.kind
    if kind.imports:
        sink = sink_for(run)
        (import_folder if run.spec.folder is not None else import_http)(run, sink)
    elif kind is JobKind.EXPORT_READINGS:
        export_readings(run)
    else:
        export_balances(run)


def run_job(
    spec: JobSpec,
    *,
    where: Location,
    now: datetime,
    known_tariffs: Collection[str] = (),
    register_of: RegisterOf | Callable[..., object] | None = None,
    day: date | None = None,
    amounts: AmountLimits = DEFAULT_LIMITS,
    zone: tzinfo = CST,
) -> JobResult:
    """Run ``spec`` once, now, on the stores at ``where`` (the data directory, or the PostgreSQL
    database).  ``known_tariffs``: tariff names an imported account may use (the
    others are quarantined).  ``register_of(meter, day)``: the register value at the start of
    ``day`` -- ``Decimal``, ``(Decimal, estimated)`` or None -- for reading-day exports.  ``day``:
    export that reading day (default: the days after the watermark through today).  ``amounts``:
    the site's ``[prepaid] max_payment``; a payment over it is quarantined with the reason.
    ``zone``: the site's (``[site] timezone``): which day is today for an export, the time in a
    balances file's name, the zone of a payment time written without an offset.

    Raises :class:`SyncError` (HTTP failure, a job already running, a drop folder that cannot be
    used) after recording it as the job's last status; bad files and records do not raise, they
    are quarantined."""
    _check(spec, now)
    kind = JobKind(spec.kind)
    if spec.kind is not kind:  # "import_payments" given as text
        spec = dataclasses.replace(spec, kind=kind)
    with job_lock(where, spec.name):
        sync = SyncStore(where)
        try:
            control = ControlStore(where)
        except BaseException:
            sync.close()
            raise
        try:
            result = JobResult(job=spec.name, kind=kind)
            run = Run(spec=spec, now=now, sync=sync, control=control, result=result,
                      known_tariffs=frozenset(known_tariffs), register_of=register_of,  # type: ignore[arg-type]
                      day=day, amounts=amounts, zone=zone)
            sync.begin_run(spec.name, str(kind), now)
            try:
                _work(run)
            except OSError as exc:
                sync.finish_run(spec.name, status="error", counts=result.summary(), error=str(exc))
                raise SyncError(f"job {spec.name}: {exc}") from exc
            except Exception as exc:
                sync.finish_run(spec.name, status="error", counts=result.summary(), error=str(exc))
                raise
            result.finish()
            if result.watermark is None:
                result.watermark = sync.watermark(spec.name)
            sync.finish_run(spec.name, status="ok", counts=result.summary())
            log.info("sync job %s (%s): %d applied, %d duplicates, %d replayed, %d quarantined, %d file(s)",
                     spec.name, kind, result.applied, result.duplicates, result.replayed, result.quarantined,
                     len(result.files))
            return result
        finally:
            control.close()
            sync.close()
