"""The billing link inside the daemon: each ``[[sync.jobs]]`` with a ``schedule`` runs on its cron
(China Standard Time) through APScheduler, in a worker thread, one run of a job at a time (a run
still going when the next is due is not started twice; the misfire is logged).  ``meterd sync run``
runs the same :func:`run_named` by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from meterd.errors import ConfigError, MeterdError, SyncError

log = logging.getLogger(__name__)


def register_lookup(where: Any):
    """``register_of(meter, day)`` for reading-day exports, from the daily frozen registers the
    daemon keeps at ``where``; returns it and the store to close."""
    from meterd.analytics.energy import DailyRegisterStore

    store = DailyRegisterStore(where)
    cache: dict[date, dict] = {}

    def register_of(meter: str, day: date):
        if day not in cache:
            cache[day] = store.registers([day])
        return cache[day].get((meter, day))

    return register_of, store


def run_named(config: Any, name: str, *, now: datetime, day: date | None = None):
    """Run the configured job ``name`` once (blocking)."""
    from meterd.billing_link.jobs import run_job
    from meterd.control.amounts import AmountLimits

    jobs = {j.name: j for j in (config.sync.jobs if config.sync else ())}
    if name not in jobs:
        raise ConfigError(f"unknown sync job {name!r}" + (f" (configured: {', '.join(sorted(jobs))})" if jobs
                                                           else ": the config has no [[sync.jobs]]"))
    tariffs = tuple(config.prepaid.tariffs) if config.prepaid else ()
    register_of, store = register_lookup(config.store.state)
    try:
        return run_job(jobs[name], where=config.store.state, now=now, known_tariffs=tariffs,
                       register_of=register_of, day=day,
                       amounts=config.prepaid.amounts if config.prepaid else AmountLimits(), zone=config.site.zone)
    finally:
        store.close()


def check_tokens(jobs: Any) -> None:
    """Every job's ``token_env`` must be set when the daemon starts: a missing token stops start-up
    naming the job and the variable, instead of failing the job at its first scheduled run."""
    from meterd import secrets

    problems = [f"sync job {job.name}: token_env: {secrets.where(job.token_env)} (the billing system's token) "
                "is not set" for job in jobs if job.token_env is not None and not secrets.lookup(job.token_env)]
    if problems:
        raise ConfigError(problems)


class SyncRuntime:
    def __init__(self, config: Any, *, clock: Callable[[], datetime],
                 accounts_imported: Callable[[], None] | None = None) -> None:
        """``config``: the site config (its ``[sync]`` jobs); ``accounts_imported`` is called after
        an accounts import applied (prepaid control re-reads its meter assignments)."""
        self.config = config
        self.clock = clock
        self.accounts_imported = accounts_imported
        self.runs: dict[str, int] = {}
        self._running: set[str] = set()
        check_tokens(config.sync.jobs)

    async def run(self, stop: asyncio.Event) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.cron import CronTrigger

        from meterd.clock import zone_name

        zone = self.config.site.zone  # schedules are the site's clock times
        scheduler = AsyncIOScheduler(timezone=zone)
        for name, cron in self.config.sync.schedules.items():
            scheduler.add_job(self.run_once, CronTrigger.from_crontab(cron, timezone=zone), args=[name], id=name,
                              max_instances=1, coalesce=True, misfire_grace_time=300)
            log.info("sync job %s scheduled: %s (%s)", name, cron, zone_name(zone))
        scheduler.start()
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)

    def is_running(self, name: str) -> bool:
        return name in self._running

    async def run_once(self, name: str) -> Any:
        """A scheduled run: a run still going is skipped, a failure logged."""
        try:
            return await self.run_now(name)
        except SyncBusy:
            log.warning("sync job %s is still running; this run is skipped", name)
        except MeterdError as exc:
            log.error("sync job %s failed: %s", name, exc)
        except Exception:  # a bug: said with its traceback; the next scheduled run tries again
            log.exception("sync job %s failed", name)
        return None

    async def run_now(self, name: str) -> Any:
        """Run ``name`` now (the API's "start a sync job"); :class:`SyncBusy` while a run of it is
        going, :class:`~meterd.errors.MeterdError` when it fails."""
        if name in self._running:
            raise SyncBusy(f"sync job {name} is already running")
        self._running.add(name)
        try:
            result = await asyncio.to_thread(run_named, self.config, name, now=self.clock())
            self.runs[name] = self.runs.get(name, 0) + 1
            log.info("sync job %s: %d applied, %d duplicates, %d quarantined", name, result.applied,
                     result.duplicates, result.quarantined)
            if self.accounts_imported is not None and result.kind.value == "import_accounts":
                self.accounts_imported()
            return result
        finally:
            self._running.discard(name)


class SyncBusy(SyncError):
    """A run of the job is already going."""
