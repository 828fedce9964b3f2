"""Analytics inside the daemon: daily registers, anomaly events, outages and the line-loss history.

``meterd.app`` builds one :class:`AnalyticsRuntime` when the config has ``[topology]`` or
``[analytics]``, subscribes :meth:`~AnalyticsRuntime.observe` to every reading the collector lets
through and runs :meth:`~AnalyticsRuntime.run` as a service; every ``check_every``:

- daily frozen energy registers go to the daily-register table (line loss, reading-day exports);
- each meter's recent readings (a two-hour window) are checked by the anomaly detectors, and the
  anomaly events opened, kept or closed; a configured meter that has not answered for
  ``no_data_after`` is a no-data event even if it never answered since the start;
- meters of an area going silent together open an outage (with the affected prepaid accounts), and
  close it when they answer again;
- once a day, the previous day's line loss per unit goes to the history the jump flag compares with.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, TypeVar

from meterd.analytics.anomalies import AnomalyStore, detect
from meterd.analytics.energy import DailyRegisterStore, LossHistory
from meterd.analytics.lineloss import line_loss_all
from meterd.analytics.outages import OutageFinding, OutageStore, detect_outages
from meterd.clock import CST, local_date, local_text
from meterd.readings import Quality, Reading
from meterd.storage.anomalies import DETECTED, EVIDENCE_EVERY
from meterd.storage.database import Location

if TYPE_CHECKING:
    from meterd.config.analytics import AnalyticsConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW = timedelta(hours=2)
FROZEN = ("frozen.daily.energy.active.import.total", "frozen.daily.energy.active.export.total")
# power-down reports (a meter's own event record, or a terminal's ERC14 for the meters behind it):
# the value is when power went off / came back
POWER_DOWN, POWER_UP = "event.power_down.start", "event.power_down.end"


class AnalyticsRuntime:
    def __init__(self, config: AnalyticsConfig, *, meters: Sequence[str], where: Location,
                 clock: Callable[[], datetime], accounts_of: Callable[[], dict[str, str]] | None = None,
                 zone: tzinfo = CST) -> None:
        """``meters``: the configured meters' addresses; ``where``: the state's location (the data
        directory, or the PostgreSQL database); ``accounts_of``: meter -> account of the assigned
        meters (prepaid control's), named in outages; ``zone``: the site's (``[site] timezone``), for
        the times in findings and which day is yesterday."""
        self.config = config
        self.clock = clock
        self.zone = zone
        self._accounts_of = accounts_of or dict
        self.registers = DailyRegisterStore(where)
        self.anomalies = AnomalyStore(where)
        self.outages = OutageStore(where)
        self.history = LossHistory(where)
        self.meters = list(meters)
        self.started = clock()
        self._recent: dict[str, deque[Reading]] = defaultdict(deque)
        self._last_seen: dict[str, datetime] = {}
        self._frozen: list[Reading] = []
        self._power: dict[str, tuple[datetime | None, datetime | None]] = {}  # meter -> (last off, last on)
        self._loss_done: set = set()
        self.checks = 0
        self._working: asyncio.Future | None = None  # the worker thread of the check half running

    def observe(self, readings: list) -> None:
        for r in readings:
            if r.quality is Quality.IMPLAUSIBLE:
                continue  # flagged at the door; it has its own anomaly
            if r.quantity in FROZEN:
                self._frozen.append(r)
                continue
            if r.quantity in (POWER_DOWN, POWER_UP):  # a report, not a sign of life
                if isinstance(r.value, datetime):
                    off, on = self._power.get(r.meter, (None, None))
                    if r.quantity == POWER_DOWN and (off is None or r.value > off):
                        off = r.value
                    elif r.quantity == POWER_UP and (on is None or r.value > on):
                        on = r.value
                    self._power[r.meter] = (off, on)
                continue
            if r.quality is Quality.ESTIMATED:
                continue
            self._recent[r.meter].append(r)
            seen = self._last_seen.get(r.meter)
            if seen is None or r.timestamp > seen:
                self._last_seen[r.meter] = r.timestamp

    async def run(self, stop: asyncio.Event) -> None:
        """A check every ``check_every`` until ``stop``; then the frozen registers still held are
        recorded and the stores closed.

        Stopping.  No check begins once ``stop`` is set.  A check runs in a worker thread in two
        halves (:meth:`_detect`, :meth:`_record`); the stores close only after the half in its
        thread has ended, also when this service is cancelled meanwhile (an error it raises then
        is still logged).  The accounts an outage names come from prepaid control's store, which
        closes at stop: they are read on the event loop between the halves, only while ``stop``
        is not set (an outage found as the daemon stops is found again at the next start)."""
        try:
            while True:
                try:
                    await asyncio.wait_for(stop.wait(), self.config.check_every)
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
                try:
                    await self._check(stop)
                except Exception:
                    log.exception("analytics check failed; trying again next time")
        finally:
            await self._thread_done()
            frozen, self._frozen = self._frozen, []
            if frozen:
                await asyncio.to_thread(self.registers.record, frozen)
            for store in (self.registers, self.anomalies, self.outages, self.history):
                store.close()

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a worker thread.  Cancelling the caller does not let go of the thread:
        :meth:`_thread_done` waits for it (its stores must stay open until it ends)."""
        working = self._working = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            result = await asyncio.shield(working)
        except asyncio.CancelledError:
            raise  # the thread may still run: _thread_done waits for it
        except BaseException:
            self._working = None  # func's own error, raised to the caller
            raise
        self._working = None
        return result

    async def _thread_done(self) -> None:
        """Wait for the worker thread of a check this service was cancelled out of; its error is logged."""
        working, self._working = self._working, None
        if working is None:
            return
        await asyncio.wait([working])
        if not working.cancelled() and (exc := working.exception()) is not None:
            log.error("analytics check failed while stopping", exc_info=exc)

    async def _check(self, stop: asyncio.Event) -> dict[str, int]:
        now = self.clock()
        counts, outages = await self._in_thread(self._detect, now)
        if outages is not None:
            if stop.is_set():
                return counts
            accounts = self._accounts_of() if outages else {}  # prepaid's store: open while stop is not set
            counts |= await self._in_thread(self._record, outages, now, accounts)
        self.checks += 1
        return counts

    def check(self, now: datetime) -> dict[str, int]:
        """One whole check at ``now``, blocking (what :meth:`run` does every ``check_every``)."""
        counts, outages = self._detect(now)
        if outages is not None:
            counts |= self._record(outages, now, self._accounts_of() if outages else {})
        self.checks += 1
        return counts

    def _detect(self, now: datetime) -> tuple[dict[str, int], list[OutageFinding] | None]:
        """Frozen registers recorded, anomaly events updated, outages detected (None without a
        topology): everything of a check that uses this runtime's own stores only."""
        frozen, self._frozen = self._frozen, []
        recorded = self.registers.record(frozen) if frozen else 0
        findings = []
        for meter in self.meters:
            window = self._recent[meter]
            while window and window[0].timestamp < now - WINDOW:
                window.popleft()
            findings += detect(meter, list(window), now, self.config.limits,
                               last_seen=self._last_seen.get(meter, self.started),
                               generator=meter in self.config.generators, zone=self.zone)
        opened, closed = self.anomalies.update(findings, [(m, k) for m in self.meters for k in DETECTED], now,
                                               evidence_every=EVIDENCE_EVERY)
        for event in opened:
            log.warning("anomaly opened: meter %s %s: %s", event.meter, event.kind, event.detail)
        counts = {"registers": recorded, "findings": len(findings), "opened": len(opened), "closed": len(closed),
                  "outages_opened": 0, "outages_closed": 0}
        topology = self.config.topology
        if not topology.units:
            return counts, None
        status = {p.meter: (self._last_seen.get(p.meter, self.started), self._powered_down(p.meter))
                  for p in topology.points}
        return counts, detect_outages(topology, status, now, silent_after=self.config.outage_silent_after,
                                      min_share=self.config.outage_min_share, min_meters=self.config.outage_min_meters)

    def _powered_down(self, meter: str) -> bool:
        """Whether the meter's latest power report says the power is off (an off with no on after it)."""
        off, on = self._power.get(meter, (None, None))
        return off is not None and (on is None or on < off)

    def _record(self, outages: list[OutageFinding], now: datetime, accounts: dict[str, str]) -> dict[str, int]:
        """The outages found opened, kept or closed (naming the affected ``accounts``: meter ->
        account), and yesterday's line loss saved once a day."""
        o_opened, o_closed = self.outages.update(outages, now, accounts.get)
        for o in o_opened:
            log.warning("outage in %s since %s: %d meters silent", o.unit, local_text(o.started, self.zone),
                        len(o.meters))
        self._daily_loss(now)
        return {"outages_opened": len(o_opened), "outages_closed": len(o_closed)}

    def open_anomalies(self) -> int:
        """Anomaly events open now (``/metrics``)."""
        return self.anomalies.open_count()

    def open_outages(self) -> int:
        """Outages going on now (``/metrics``)."""
        return self.outages.open_count()

    def _daily_loss(self, now: datetime) -> None:
        """Yesterday's loss per unit, into the history the jump flag compares with (once a day)."""
        day = local_date(now, self.zone) - timedelta(days=1)
        if day in self._loss_done:
            return
        registers = self.registers.registers([day, day + timedelta(days=1)])
        if not registers:
            return
        history = self.history.recent_all(before=day)
        reports = line_loss_all(self.config.topology, registers, day, day, history=history)
        saved = self.history.save(reports)
        if saved:
            self._loss_done.add(day)
