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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from meterd.analytics.anomalies import AnomalyStore, detect
from meterd.analytics.energy import DailyRegisterStore, LossHistory
from meterd.analytics.lineloss import line_loss_all
from meterd.analytics.outages import OutageStore, detect_outages
from meterd.readings import Quality, Reading
from meterd.storage.anomalies import DETECTED
from meterd.storage.database import Location

if TYPE_CHECKING:
    from meterd.config.analytics import AnalyticsConfig

log = logging.getLogger(__name__)

WINDOW = timedelta(hours=2)
FROZEN = ("frozen.daily.energy.active.import.total", "frozen.daily.energy.active.export.total")


class AnalyticsRuntime:
    def __init__(self, config: AnalyticsConfig, *, meters: Sequence[str], where: Location,
                 clock: Callable[[], datetime], accounts_of: Callable[[], dict[str, str]] | None = None) -> None:
        """``meters``: the configured meters' addresses; ``where``: the state's location (the data
        directory, or the PostgreSQL database); ``accounts_of``: meter -> account of the assigned
        meters (prepaid control's), named in outages."""
        self.config = config
        self.clock = clock
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
        self._loss_done: set = set()
        self.checks = 0

    def observe(self, readings: list) -> None:
        for r in readings:
            if r.quality is Quality.IMPLAUSIBLE:
                continue  # flagged at the door; it has its own anomaly
            if r.quantity in FROZEN:
                self._frozen.append(r)
                continue
            if r.quality is Quality.ESTIMATED:
                continue
            self._recent[r.meter].append(r)
            seen = self._last_seen.get(r.meter)
            if seen is None or r.timestamp > seen:
                self._last_seen[r.meter] = r.timestamp

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), self.config.check_every)
                except TimeoutError:
                    pass
                try:
                    await asyncio.to_thread(self.check, self.clock())
                except Exception:
                    log.exception("analytics check failed; trying again next time")
        finally:
            frozen, self._frozen = self._frozen, []
            if frozen:
                await asyncio.to_thread(self.registers.record, frozen)
            for store in (self.registers, self.anomalies, self.outages, self.history):
                store.close()

    def check(self, now: datetime) -> dict[str, int]:
        frozen, self._frozen = self._frozen, []
        recorded = self.registers.record(frozen) if frozen else 0
        findings = []
        for meter in self.meters:
            window = self._recent[meter]
            while window and window[0].timestamp < now - WINDOW:
                window.popleft()
            findings += detect(meter, list(window), now, self.config.limits,
                               last_seen=self._last_seen.get(meter, self.started),
                               generator=meter in self.config.generators)
        opened, closed = self.anomalies.update(findings, [(m, k) for m in self.meters for k in DETECTED], now)
        for event in opened:
            log.warning("anomaly opened: meter %s %s: %s", event.meter, event.kind, event.detail)
        outages_opened = outages_closed = 0
        topology = self.config.topology
        if topology.units:
            status = {p.meter: (self._last_seen.get(p.meter, self.started), False) for p in topology.points}
            found = detect_outages(topology, status, now, silent_after=self.config.outage_silent_after,
                                   min_share=self.config.outage_min_share, min_meters=self.config.outage_min_meters)
            accounts = self._accounts_of()
            o_opened, o_closed = self.outages.update(found, now, accounts.get)
            outages_opened, outages_closed = len(o_opened), len(o_closed)
            for o in o_opened:
                log.warning("outage in %s since %s: %d meters silent", o.unit, o.started.isoformat(), len(o.meters))
            self._daily_loss(now)
        self.checks += 1
        return {"registers": recorded, "findings": len(findings), "opened": len(opened), "closed": len(closed),
                "outages_opened": outages_opened, "outages_closed": outages_closed}

    def open_anomalies(self) -> int:
        """Anomaly events open now (``/metrics``)."""
        return self.anomalies.open_count()

    def open_outages(self) -> int:
        """Outages going on now (``/metrics``)."""
        return self.outages.open_count()

    def _daily_loss(self, now: datetime) -> None:
        """Yesterday's loss per unit, into the history the jump flag compares with (once a day)."""
        from meterd.clock import today_cst

        day = today_cst(now) - timedelta(days=1)
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
