"""The prepaid engine: readings in, ledger entries, control states and commands out.

It wraps the pure parts (:mod:`~meterd.control.charging`, :mod:`~meterd.control.policy`,
:mod:`~meterd.control.limits`) with the state database:

1. :meth:`PrepaidEngine.observe` keeps the good energy-register readings of assigned meters
   (real-time registers and daily frozen registers, the latter at the meter's own freeze time) and
   active-power samples of meters under a power limit.  Nothing is lost if the daemon dies before
   the next pass: charging works from cursors, so the next reading charges the whole delta.  It
   also keeps, per assigned meter, the newest good value of each relay flag the regular polls read
   (:data:`RELAY_FLAGS`); :meth:`relays` writes them into the stored relay states at the start of
   a pass (one batch), so an account shows a relay the customer closed by the button.
2. :meth:`charge` turns them into ledger entries with the account's tariff, plus fixed monthly
   charges, and commits entries, cursors, tier usage and flags in one transaction.
3. :meth:`decide` runs the policy over every account whose ledger moved since the last pass
   (payments made by another process, e.g. ``meterd pay``, included) and every account not in the
   normal state (a held trip is re-decided until it can go out), stores the new control states and
   queues the commands; :meth:`power` does the same for 定值控制.
4. Notices go to the notifier.

One account never stops the others: an exception while charging or deciding one account is
logged, reported as a ``prepaid_failed`` anomaly on its meters (through ``report``), and that
account is skipped (its readings are dropped: charging works from cursors, so its next good
reading charges the whole delta once the fault is fixed); every other account of the pass is
charged and decided as usual.  Charging's IMPLAUSIBLE flags (a register ahead of the last
charged value by more than the meter can carry) are reported as ``implausible_advance``
anomalies, closed when the register charges normally again.

Every function takes ``now``; the daemon's clock is the only clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice
from typing import Any, Final, NamedTuple

from meterd.clock import CST
from meterd.control.charging import DistrictCharger, FlagKind, MeterReplacement, Usage, fixed_charges
from meterd.control.command_store import Command, RelayChange
from meterd.control.limits import PowerLimit, PowerSample, evaluate_power
from meterd.control.model import QUANTITY_RATE, CommandKind, CommandRequest, Rate, RegisterReading
from meterd.control.policy import (
    AccountView,
    ControlState,
    Notice,
    SafetyRules,
    Threshold,
    Thresholds,
    check_manual,
    decide_all,
    quiet_level,
)
from meterd.control.state import Account, ChargingBatch, ControlStore, entry_fields, from_fen
from meterd.control.tariff import Tariff, TierPeriod
from meterd.errors import LedgerError
from meterd.heap import collector_paused
from meterd.plausibility import Rating
from meterd.protocols.relay import said
from meterd.readings import Quality, Reading
from meterd.storage.anomalies import Finding, Kind, Severity
from meterd.storage.sqlite import from_ms, to_ms

log = logging.getLogger(__name__)

# What the engine tells the anomaly store: findings to open or update, and (meter, kind) pairs
# whose condition is gone.
Report = Callable[[list[Finding], list[tuple[str, Kind]]], None]

FROZEN_PREFIX = "frozen.daily."
POWER_QUANTITY = "power.active.total"
POWER_WINDOW = timedelta(hours=2)  # power samples kept per meter for 定值控制
REPLACEMENT_WINDOW = timedelta(days=7)  # replacements passed to charging (re-applying one is harmless)
# quantity -> the register it reads, live or frozen daily
_REGISTER_RATE: Final = {**QUANTITY_RATE, **{FROZEN_PREFIX + q: r for q, r in QUANTITY_RATE.items()}}
_FROZEN_QUANTITIES: Final = frozenset(FROZEN_PREFIX + q for q in QUANTITY_RATE)
#: How far ahead of the master's clock a frozen register's own time may be (meter clocks drift).
#: A frozen value is stamped by the meter's clock; one stamped later than this would become a cursor
#: in the future, and every live reading until then would be LATE: the meter's charging would stall.
CLOCK_AHEAD_SLACK: Final = timedelta(minutes=5)
CLOCK_AHEAD: Final = "clock_ahead"
#: The relay flags the regular polls read (DL/T 645-2007 status word 3, a Modbus map's relay
#: entries, a terminal's pushed readings): kept for the relay state of the account's meters.
RELAY_FLAGS: Final = frozenset(("relay.open", "relay.command_open", "alarm.pre_trip", "relay.protected"))


class _Observed(NamedTuple):
    """A :class:`RegisterReading` kept for the next pass, as a named tuple with the same fields
    (charging only reads them): a district's round keeps 100,000s, and a frozen dataclass costs
    twice as much to build."""

    meter: str
    rate: Rate
    at: datetime
    value: Decimal


CHARGE_CHUNK = 5000  # accounts charged between two writes of the pass's transaction


@dataclass(frozen=True, slots=True)
class PrepaidSettings:
    thresholds: Thresholds
    rules: SafetyRules
    command_ttl: timedelta = timedelta(hours=2)
    retry_every: timedelta = timedelta(minutes=5)
    valid_for: timedelta = timedelta(minutes=10)
    settle: float = 0.0
    check_every: float = 60.0
    manual_hold: timedelta = timedelta(hours=24)


@dataclass(slots=True)
class PassSummary:
    accounts: int = 0
    entries: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    commands: list[Command] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # account -> why charging or deciding it failed
    held: dict[tuple[str, Rate], tuple[datetime, str]] = field(default_factory=dict)  # implausible registers
    relays: list[RelayChange] = field(default_factory=list)  # relay changes polls saw with no command under way


def thresholds_for(defaults: Thresholds, overrides: Mapping[str, str]) -> Thresholds:
    """The site's thresholds with an account's overrides (``{"alarm": "3d"}``) applied."""
    if not overrides:
        return defaults
    values = {name: getattr(defaults, name) for name in ("reminder", "alarm", "trip", "reclose")}
    for name, text in overrides.items():
        if name not in values:
            raise LedgerError(f"unknown threshold {name!r} (use reminder, alarm, trip, reclose)")
        values[name] = Threshold.parse(text)
    return Thresholds(**values)


def register_reading(reading: Reading) -> RegisterReading | None:
    """The energy-register reading charging needs, or None (other quantities, bad quality)."""
    if reading.quality is not Quality.GOOD or not isinstance(reading.value, Decimal):
        return None
    quantity = reading.quantity
    quantity = quantity.removeprefix(FROZEN_PREFIX)
    rate = QUANTITY_RATE.get(quantity)
    if rate is None:
        return None
    return RegisterReading(reading.meter, rate, reading.timestamp, reading.value)


class PrepaidEngine:
    def __init__(
        self,
        store: ControlStore,
        settings: PrepaidSettings,
        tariffs: Mapping[str, Tariff],
        *,
        limits: Iterable[PowerLimit] = (),
        capabilities: Callable[[str], frozenset[CommandKind] | None] | None = None,
        ratings: Mapping[str, Rating] | None = None,
        report: Report | None = None,
    ) -> None:
        self.store = store
        self.ratings = dict(ratings or {})  # meter -> what its circuit can carry (charging's plausibility)
        self.report = report
        self._held: set[tuple[str, Rate]] = set()  # registers charging holds as implausible
        self._failing: set[str] = set()  # accounts whose last charge failed
        # What each meter can take (None: unknown, everything): DL/T 645-2007 all commands, Modbus
        # meters TRIP and RECLOSE through their map's relay, DL/T 645-1997 none.
        self.capabilities = capabilities
        self.settings = settings
        self.tariffs = dict(tariffs)
        self.limits = {limit.meter: limit for limit in limits}
        self._pending: dict[str, list[RegisterReading | _Observed]] = defaultdict(list)
        self._frozen: list[tuple[str, _Observed]] = []  # (account, reading) of the frozen ones in _pending
        self._relays: dict[str, dict[str, tuple[datetime, bool]]] = {}  # meter -> flag -> newest (read at, value)
        self._samples: dict[str, list[PowerSample]] = defaultdict(list)
        self._power_active: dict[str, bool] = {}
        self._power_held: dict[str, str | None] = {}
        self._seq = -1  # ledger watermark of the last policy pass; -1: every account on the first
        self.refresh()

    def refresh(self) -> None:
        """Reload meter -> account assignments (after an account import)."""
        self._meters = self.store.meter_accounts()

    # --- 1. observe ----------------------------------------------------------------------------

    def observe(self, readings: Iterable[Reading]) -> int:
        """Keep what charging, power control and the relay states need; returns how many register
        readings were kept.  A quantity that is neither a register nor a relay flag costs a dict lookup."""
        with collector_paused():  # a district's round keeps 100,000s of objects: as in a pass
            return self._observe(readings)

    def _observe(self, readings: Iterable[Reading]) -> int:
        kept = 0
        limits, meters, pending, rates, good = self.limits, self._meters, self._pending, _REGISTER_RATE, Quality.GOOD
        frozen, relay_flags, relays = _FROZEN_QUANTITIES, RELAY_FLAGS, self._relays
        for reading in readings:
            meter = reading.meter
            if limits and meter in limits and reading.quantity == POWER_QUANTITY \
                    and isinstance(reading.value, Decimal) and reading.quality is good:
                self._samples[meter].append(PowerSample(reading.timestamp, reading.value))
            owner = meters.get(meter)
            if owner is None:
                continue
            rate = rates.get(reading.quantity)  # register_reading(), inlined: a round has 100,000s
            if rate is None:
                if reading.quantity in relay_flags and reading.quality is good and isinstance(reading.value, bool):
                    flags = relays.get(meter)
                    if flags is None:
                        relays[meter] = {reading.quantity: (reading.timestamp, reading.value)}
                    else:
                        known = flags.get(reading.quantity)
                        if known is None or reading.timestamp >= known[0]:
                            flags[reading.quantity] = (reading.timestamp, reading.value)
                continue
            if reading.quality is good and isinstance(reading.value, Decimal):
                observed = _Observed(meter, rate, reading.timestamp, reading.value)
                pending[owner[0]].append(observed)
                if reading.quantity in frozen:  # stamped by the meter's clock: checked at the pass
                    self._frozen.append((owner[0], observed))
                kept += 1
        return kept

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    @staticmethod
    def _frozen_ahead(frozen: list[tuple[str, _Observed]], pending: dict[str, list[Any]],
                      now: datetime) -> list[tuple[str, _Observed]]:
        """Take out of ``pending`` the frozen register values whose meter's clock stamped them
        later than ``now`` + :data:`CLOCK_AHEAD_SLACK`, and return them: they are not charged (live
        readings charge that energy), so a meter whose clock runs ahead never stalls its account's
        charging.  The common case -- none ahead -- only compares each frozen value's time."""
        limit = now + CLOCK_AHEAD_SLACK
        ahead = [(account, r) for account, r in frozen if r.at > limit]
        for account, r in ahead:
            readings = pending.get(account)
            if readings is not None:
                with contextlib.suppress(ValueError):
                    readings.remove(r)
        return ahead

    def charge(self, now: datetime) -> PassSummary:
        """Charge what was observed (and fixed monthly charges due by ``now``); one transaction."""
        pending, self._pending = self._pending, defaultdict(list)
        frozen, self._frozen = self._frozen, []
        try:
            # A district's pass allocates millions of objects that live until its end (views,
            # cursors, entries) and make no cycles worth collecting early: without the pause the
            # collector walks everything again and again (about a fifth of a 100,000-account pass).
            with collector_paused():
                ahead = self._frozen_ahead(frozen, pending, now)
                summary = self._charge(pending, now)
            if ahead:
                self._clock_ahead(ahead, now, summary)
            return summary
        except BaseException:
            for account, readings in pending.items():  # nothing was committed: try again next pass
                self._pending[account][:0] = readings
            self._frozen[:0] = frozen
            raise

    def _clock_ahead(self, ahead: list[tuple[str, _Observed]], now: datetime, summary: PassSummary) -> None:
        """Flag (one per meter and register) the frozen values stamped ahead of ``now``."""
        first: dict[tuple[str, Rate], _Observed] = {}
        for _, r in ahead:
            first.setdefault((r.meter, r.rate), r)
        summary.flags[CLOCK_AHEAD] = summary.flags.get(CLOCK_AHEAD, 0) + len(ahead)
        rows = [(meter, rate, r.at, CLOCK_AHEAD,
                 (f"frozen value {r.value} stamped {r.at.astimezone(CST).isoformat()} by the meter's clock, "
                  f"{r.at - now} ahead of the master's: not charged (the live register charges that energy)"))
                for (meter, rate), r in first.items()]
        self.store.commit_charging([], [], [], rows, {}, now=now)
        log.warning("prepaid: %d frozen register value(s) stamped ahead of the master's clock (meter %s first), "
                    "not charged", len(ahead), rows[0][0])

    def _moved_meters(self, pending: dict[str, list[Any]], accounts: dict[str, tuple[Any, ...]],
                      replaced: list[tuple[Any, ...]]) -> None:
        """An account import may move a meter to another account after some of its readings were
        observed (过户).  Those readings were taken while the old account held the meter, so the
        old account is charged for them: the meter joins its meters for this pass.  The new
        owner's own readings of that meter wait one pass, so its charge starts from the cursor
        the old account's leaves (charging reads cursors, it never shares them within a pass)."""
        old_meters: dict[str, set[str]] = defaultdict(set)
        for _, acct, old, *_ in replaced:
            old_meters[acct].add(old)
        moved: dict[str, dict[str, Decimal]] = {}
        owner_now: dict[str, Decimal] | None = None
        for name, readings in pending.items():
            info = accounts.get(name)
            if info is None:
                continue
            own, olds = info[1], old_meters.get(name)
            for r in readings:
                meter = r.meter
                if meter not in own and not (olds and meter in olds):
                    if owner_now is None:  # the same meter keeps its CT x PT
                        owner_now = {m: k for _, v in accounts.items() for m, k in v[1].items()}
                    moved.setdefault(name, {})[meter] = owner_now.get(meter, Decimal(1))
        if not moved:
            return
        taken = {m for extra in moved.values() for m in extra}
        for name, readings in pending.items():
            if name not in moved and any(r.meter in taken for r in readings):
                self._pending[name].extend(r for r in readings if r.meter in taken)
                pending[name] = [r for r in readings if r.meter not in taken]
        for name, extra in moved.items():
            tariff, meters, opened, through = accounts[name]
            accounts[name] = (tariff, {**meters, **extra}, opened, through)
            log.info("account %s: charged for meter(s) %s read before an import moved them", name,
                     ", ".join(sorted(extra)))

    def _charge(self, pending: dict[str, list[RegisterReading | _Observed]], now: datetime) -> PassSummary:
        summary = PassSummary()
        accounts = self.store.charging_view()
        replaced = self.store.replacements(since=now - REPLACEMENT_WINDOW)
        replacements: dict[str, list[MeterReplacement]] = defaultdict(list)
        for key, acct, old, new, at, old_final, new_initial in replaced:
            replacements[acct].append(MeterReplacement(key, acct, old, new, at, old_final, new_initial))
            pending.setdefault(acct, [])
        self._moved_meters(pending, accounts, replaced)
        meters = [m for acct in pending if acct in accounts for m in accounts[acct][1]] + [r[2] for r in replaced]
        # One mapping of every cursor needed, passed to every account (charging only reads it): no
        # per-account mappings to build for a district.
        cursors = self.store.cursor_map(meters) if meters else {}
        usage_by_account: dict[str, dict[str, Usage]] = defaultdict(dict)
        for (acct, period), kwh in (self.store.tier_usage() if pending else {}).items():
            usage_by_account[acct][period] = Usage(acct, period, kwh)
        local = now.astimezone(CST)  # fixed charges are due for accounts not charged through this month
        # both bounds in UTC, like the instants they are compared with (no time zone arithmetic)
        month_start = datetime(local.year, local.month, 1, tzinfo=CST).astimezone(UTC)
        month_end = TierPeriod.MONTH.next_start(now)
        charger = DistrictCharger(self.ratings)
        failed: dict[str, str] = {}  # account -> why it was skipped
        failing, ok = self._failing, set()  # accounts that failed before; those charged this time
        none: dict[str, Usage] = {}
        in_chunks = iter(accounts.items())
        charged = 0
        entries: list[tuple[Any, ...]] = []
        fixed_through: dict[str, datetime] = {}
        late, implausible = FlagKind.LATE, FlagKind.IMPLAUSIBLE
        held_before = self._held  # registers held as implausible
        resumed: set[tuple[str, Rate]] = set()  # those charged again

        def write(batch: ChargingBatch | None) -> ChargingBatch | None:
            """Hand what was charged since the last write to the pass's transaction."""
            taken, moved, usage_rows, found = charger.take()
            if held_before:
                resumed.update(k for c in moved if (k := (c.meter, c.rate)) in held_before)
            flags = []
            for flag in found:
                if flag.kind is implausible:
                    register = (flag.meter, flag.rate)
                    if register not in held_before and register not in summary.held:  # once, not every pass
                        log.warning("meter %s %s register: %s", flag.meter, flag.rate, flag.detail)
                    summary.held[register] = (flag.at, flag.detail)
                summary.flags[flag.kind] = summary.flags.get(flag.kind, 0) + 1
                if flag.kind is not late:  # a frozen value arriving after a live one: routine
                    flags.append((flag.meter, flag.rate, flag.at, str(flag.kind), flag.detail))
            if not (taken or entries or moved or usage_rows or flags or fixed_through):
                return batch
            batch = batch or transaction.enter_context(self.store.charging_batch(now=now, pipelined=True))
            batch.add(taken + entries if entries else taken, moved, usage_rows, flags, fixed_through)
            entries.clear()
            fixed_through.clear()
            return batch

        # The pass is one transaction, written in parts as the accounts are charged (memory stays
        # flat for a district), opened when there is something to write.  The store is not used
        # otherwise until the block ends.
        tariff_of, readings_of, usage_of, charge = self.tariffs.get, pending.get, usage_by_account.get, charger.charge
        with ExitStack() as transaction:
            batch: ChargingBatch | None = None
            while chunk := list(islice(in_chunks, CHARGE_CHUNK)):
                batch = write(batch)  # the previous chunk's (nothing before the first)
                for name, (tariff_name, account_meters, opened, charged_through) in chunk:
                    tariff = tariff_of(tariff_name)
                    if tariff is None:
                        if name in pending:
                            log.error("account %s: tariff %r is not configured; %d reading(s) not charged",
                                      name, tariff_name, len(pending[name]))
                            self._pending[name].extend(pending[name])  # keep them for when it is
                        continue
                    readings = readings_of(name)
                    try:
                        if replacements and name in replacements:
                            charge(name, tariff, readings or [], cursors, usage_of(name, none), account_meters,
                                   replacements[name])
                            charged += 1
                        elif readings:
                            charge(name, tariff, readings, cursors, usage_of(name, none), account_meters)
                            charged += 1
                        if readings and failing and name in failing:
                            ok.add(name)
                        start = charged_through or opened
                        if charged_through is None or not month_start <= start < month_end:
                            fixed = [entry_fields(e) for e in fixed_charges(name, tariff, start, now)]
                            entries += fixed
                            fixed_through[name] = now
                    except Exception as exc:  # one account's fault never stops the district's pass
                        failed[name] = f"charging failed: {type(exc).__name__}: {str(exc)[:200]}"
                        log.error("account %s: %s; %d reading(s) skipped, the other accounts charged",
                                  name, failed[name], len(readings or ()), exc_info=len(failed) <= 3)
            batch = write(batch)
        summary.accounts = charged
        summary.entries = batch.applied if batch is not None else 0
        summary.failed = failed
        self._report_charging(failed, accounts, summary, resumed, ok, now)
        return summary

    def _report_charging(self, failed: dict[str, str], accounts: dict[str, tuple[Any, ...]], summary: PassSummary,
                         resumed: set[tuple[str, Rate]], charged_now: set[str], now: datetime) -> None:
        """Failed accounts and registers held as implausible, as anomalies (after the commit).  A
        held register whose cursor moved again is no longer held; its meter's event closes when
        none of its registers is."""
        held = summary.held
        still = (self._held - resumed) | held.keys()
        released = {meter for meter, _ in self._held - still} - {meter for meter, _ in still}
        self._held = still
        recovered = [name for name in self._failing - failed.keys() if name in charged_now]
        self._failing = (self._failing - set(recovered)) | failed.keys()
        if self.report is None or not (failed or held or released or recovered):
            return
        findings = [Finding(meter, Kind.PREPAID_FAILED, Severity.CRITICAL, now, f"account {name}: {why}; skipped",
                            ()) for name, why in failed.items() for meter in sorted(accounts[name][1])]
        findings += [Finding(meter, Kind.IMPLAUSIBLE_ADVANCE, Severity.WARNING, at, detail, ())
                     for (meter, _), (at, detail) in held.items()]
        resolved = [(meter, Kind.IMPLAUSIBLE_ADVANCE) for meter in sorted(released)]
        resolved += [(meter, Kind.PREPAID_FAILED) for name in recovered for meter in accounts.get(name, ((), {}))[1]]
        try:
            self.report(findings, resolved)
        except Exception:
            log.exception("reporting %d prepaid anomaly finding(s) failed", len(findings))

    # --- 3. decide -----------------------------------------------------------------------------

    def views(self, now: datetime, accounts: list[Account]) -> list[AccountView]:
        thresholds = {a.account: thresholds_for(self.settings.thresholds, a.thresholds) for a in accounts}
        needs_average = any(t.days is not None for ts in set(thresholds.values()) for t in _all(ts))
        averages = self.store.average_daily_cost(now) if needs_average else {}
        zero = Decimal(0)
        views = []
        for a in accounts:
            manual_hold = a.manual_until is not None and now < a.manual_until
            views.append(AccountView(
                account=a.account, area=a.area, protected=a.protected_at(now) or manual_hold, balance=a.balance,
                avg_daily_cost=averages.get(a.account, zero), state=ControlState(a.state),
                meters=tuple(a.meters), thresholds=thresholds[a.account], held=a.held, alarmed_at=a.alarmed_at))
        return views

    def _row_views(self, now: datetime, rows: list[tuple[Any, ...]]) -> list[AccountView]:
        """:meth:`views` from :meth:`ControlStore.policy_rows` tuples."""
        defaults = self.settings.thresholds
        by_text: dict[str, Thresholds] = {"{}": defaults}
        for row in rows:
            if row[3] not in by_text:
                by_text[row[3]] = thresholds_for(defaults, json.loads(row[3]))
        needs_average = any(t.days is not None for ts in by_text.values() for t in _all(ts))
        averages = self.store.average_daily_cost(now) if needs_average else {}
        zero = Decimal(0)
        now_ms = to_ms(now)
        states = {s.value: s for s in ControlState}
        return [
            AccountView(account=account, area=area,
                        protected=bool(protected) or (manual_until is not None and now_ms < manual_until),
                        balance=from_fen(fen), avg_daily_cost=averages.get(account, zero), state=states[state],
                        meters=meters, thresholds=by_text[thresholds], held=held,
                        alarmed_at=None if alarmed is None else from_ms(alarmed))
            for account, area, protected, thresholds, state, held, fen, manual_until, alarmed, meters in rows
        ]

    def decide(self, now: datetime) -> PassSummary:
        """The policy over accounts whose money moved, or that are not back to normal.  Of those
        whose money moved, the ones :func:`~meterd.control.policy.quiet_level` says the policy
        leaves alone (normal, nothing held, balance above the reminder level) are not even read."""
        with collector_paused():
            return self._decide(now)

    def _decide(self, now: datetime) -> PassSummary:
        summary = PassSummary()
        seq = self.store.last_seq()
        rows = self.store.policy_rows(changed_since=None if self._seq < 0 else self._seq,
                                      quiet_above=quiet_level(self.settings.thresholds), now=now)
        self._seq = seq
        if not rows:
            return summary
        area_trips = self.store.area_trips_since(now - timedelta(hours=1))
        views = self._row_views(now, rows)
        failures: dict[str, Exception] = {}  # one account's fault never stops the others
        decisions = decide_all(views, self.settings.rules, now, area_trips, failed=failures)
        if failures:
            self._report_decide_failures(failures, views, now, summary)
        summary.decisions = len(decisions)
        requests: list[CommandRequest] = []
        updates = []
        for d in decisions:
            requests.extend(self._adapt(d.commands, now, summary.notices))
            summary.notices.extend(d.notices)
            updates.append((d.account, str(d.new_state), d.held, d.alarmed_at))
        # the new states and their commands in one transaction (one wait for the disk)
        summary.commands = self.store.record_decisions(updates, requests, now=now, ttl=self.settings.command_ttl,
                                                       dry_run=self.settings.rules.dry_run)
        return summary

    def _report_decide_failures(self, failures: dict[str, Exception], views: list[AccountView], now: datetime,
                                summary: PassSummary) -> None:
        """Accounts whose decision raised: logged, reported as anomalies on their meters (the
        others of the pass were decided as usual)."""
        for account, exc in failures.items():
            why = summary.failed[account] = f"deciding failed: {type(exc).__name__}: {str(exc)[:200]}"
            log.error("account %s: %s; skipped, the other accounts decided", account, why,
                      exc_info=exc if len(summary.failed) <= 3 else None)
        if self.report is None:
            return
        meters = {v.account: v.meters for v in views}
        try:
            self.report([Finding(m, Kind.PREPAID_FAILED, Severity.CRITICAL, now, f"account {a}: {summary.failed[a]}; "
                                 "skipped", ()) for a in failures for m in meters.get(a, ())], [])
        except Exception:
            log.exception("reporting prepaid failures failed")

    def power(self, now: datetime) -> PassSummary:
        """定值控制: meters whose load stayed above their limit long enough."""
        summary = PassSummary()
        if not self.limits:
            return summary
        area_trips = self.store.area_trips_since(now - timedelta(hours=1))
        requests: list[CommandRequest] = []
        overrides = self.store.protection_overrides(now)  # 保电 set or released by an operator (meterd protect)
        for meter, limit in self.limits.items():
            if limit.account in overrides:
                limit = replace(limit, protected=overrides[limit.account].protected)
            samples = [s for s in self._samples.get(meter, []) if s.at >= now - POWER_WINDOW]
            self._samples[meter] = samples
            samples.sort(key=lambda s: s.at)
            decision = evaluate_power(limit, samples, now, self.settings.rules,
                                      active=self._power_active.get(meter, False),
                                      area_trips_last_hour=area_trips.get(limit.area, 0),
                                      held=self._power_held.get(meter))
            self._power_held[meter] = decision.held
            self._power_active[meter] = decision.exceeded_since is not None and (
                self._power_active.get(meter, False) or decision.command is not None)
            if decision.command is not None:
                requests.extend(self._adapt([decision.command], now, summary.notices))
                if decision.command.kind is CommandKind.TRIP:
                    area_trips[limit.area] = area_trips.get(limit.area, 0) + 1
            if decision.notice is not None:
                summary.notices.append(decision.notice)
        if requests:
            summary.commands = self.store.queue_commands(requests, now=now, ttl=self.settings.command_ttl,
                                                         dry_run=self.settings.rules.dry_run)
        return summary

    def _adapt(self, commands: Iterable[CommandRequest], now: datetime, notices: list[Notice]) -> list[CommandRequest]:
        """Fit commands to what each meter can take: a Modbus relay has no 合闸允许, so
        RECLOSE_ALLOWED becomes RECLOSE; a command a meter cannot take at all is not queued, and a
        notice says so (its account's state still moves: the operator must act)."""
        out = []
        for c in commands:
            caps = self.capabilities(c.meter) if self.capabilities is not None else None
            if caps is None or c.kind in caps:
                out.append(c)
            elif c.kind is CommandKind.RECLOSE_ALLOWED and CommandKind.RECLOSE in caps:
                out.append(replace(c, kind=CommandKind.RECLOSE, reason=f"{c.reason} (direct: the meter has no "
                                                                       "reclose-allowed)"))
            elif c.kind in (CommandKind.TRIP, CommandKind.RECLOSE, CommandKind.RECLOSE_ALLOWED):
                notices.append(Notice(account=c.account or "", kind="anomaly", meter=c.meter, at=now,
                                      message=f"meter {c.meter} cannot be switched remotely: {c.kind} not sent "
                                              f"({c.reason}); switch it on site"))
        return out

    # --- relay states read by the polls ---------------------------------------------------------

    def relays(self, now: datetime) -> list[RelayChange]:
        """Write the relay flags observed since the last pass into the stored relay states (one
        transaction; see :meth:`~meterd.control.command_store.CommandStore.observe_relays`) and
        log the changes nobody commanded.  A failed write is logged and its flags are kept for
        the next pass: charging and deciding go on."""
        observed, self._relays = self._relays, {}
        if not observed:
            return []
        try:
            changes = self.store.observe_relays(observed, now=now)
        except Exception:
            log.exception("prepaid: the relay states of %d meter(s) read by the polls not stored; "
                          "kept for the next pass", len(observed))
            for meter, flags in observed.items():  # those read meanwhile are newer, or as new
                kept = self._relays.setdefault(meter, {})
                for flag, seen in flags.items():
                    if flag not in kept or kept[flag][0] < seen[0]:
                        kept[flag] = seen
            return []
        for c in changes:
            log.info("meter %s (account %s): relay state changed with no command under way (read %s): %s", c.meter,
                     c.account or "none", c.at.astimezone(CST).isoformat(),
                     ", ".join(f"{f} {said(c.before[f])} -> {said(c.after[f])}" for f in c.changed))
        return changes

    def run_pass(self, now: datetime) -> PassSummary:
        """relays, charge, decide, power: one pass (blocking; the daemon runs it in a worker thread)."""
        self.refresh()  # meters moved by an import or a replacement since the last pass
        changes = self.relays(now)
        charged = self.charge(now)
        charged.relays = changes
        decided = self.decide(now)
        powered = self.power(now)
        charged.decisions = decided.decisions
        charged.commands = decided.commands + powered.commands
        charged.notices = decided.notices + powered.notices
        charged.failed.update(decided.failed)
        return charged


def _all(t: Thresholds) -> tuple[Threshold, ...]:
    return (t.reminder, t.alarm, t.trip, t.reclose)


def queue_manual(
    store: ControlStore,
    meter: str,
    kind: CommandKind,
    *,
    operator: str | None,
    reason: str | None,
    now: datetime,
    ttl: timedelta,
    known_meters: Iterable[str],
    manual_hold: timedelta = timedelta(hours=24),
) -> Command:
    """An operator's command: validated (operator, reason, known meter, protected accounts), queued
    ahead of nothing but sent by the daemon ahead of routine reads.  Raises LedgerError with the
    reason when refused; the refusal is audited too."""
    owner = store.meter_accounts().get(meter)
    account = store.account(owner[0]) if owner else None
    refusal = None
    if meter not in set(known_meters) and owner is None:
        refusal = f"unknown meter {meter}: not in the configuration and not assigned to an account"
    else:
        refusal = check_manual(kind, operator=operator, reason=reason,
                               protected=bool(account and account.protected_at(now)),
                               account=account.account if account else None)
    if refusal is not None:
        store.audit(operator or "unknown", "command-refused", meter,
                    {"kind": str(kind), "reason": reason, "refusal": refusal}, now=now)
        raise LedgerError(refusal)
    assert operator is not None and reason is not None
    request = CommandRequest(meter=meter, kind=kind, reason=reason.strip(), requested_by=operator.strip(),
                             account=account.account if account else None, manual=True)
    queued = store.queue_commands([request], now=now, ttl=ttl)
    if not queued:
        active = [c for c in store.commands(meter=meter) if not c.state.final and c.kind is kind]
        raise LedgerError(f"meter {meter}: a {kind} command is already {active[0].state} as #{active[0].id}"
                          if active else f"meter {meter}: {kind} not queued")
    if account is not None and kind in (CommandKind.RECLOSE, CommandKind.RECLOSE_ALLOWED) \
            and account.state == ControlState.TRIPPED:
        # An operator's reclose of a tripped account holds automatic trips for a while, else the
        # next policy pass would trip it straight back.
        store.set_manual_until(account.account, now + manual_hold, now=now, actor=operator,
                               reason=f"manual {kind}: {reason}")
        store.set_control_state([(account.account, str(ControlState.ALARMED), None)], now=now, actor=operator)
    return queued[0]
