"""Scheduled collection: tasks bound to meter groups, run on cron / interval triggers, and the
missed-data re-read that fetches only what the store does not hold yet.

A :class:`TaskSpec` names what to read from which meter groups, when, and how:

=================  ===========================================================================
kind               what a run reads
=================  ===========================================================================
``realtime``       present values and load-curve records (last ``curve_points`` records), e.g.
                   every 15 minutes
``hourly``         the same for large customers, by default at every full hour
``daily_frozen``   the meter's own daily frozen record (``05060101`` ... the 1st last freeze by
                   default), stamped with the meter's freeze time; by default at 00:15 CST
``reading_day``    settlement / reading-day data (``0001FF01``: energy at the previous
                   settlement) on a day of the month (option ``day``, ``time`` "HH:MM")
``reread``         missed-data re-read passes: for each meter and each routine task of the day,
                   what has no reading yet (:func:`missing_for`), curve points back-filled from
                   the meter's load-curve memory (N records from a time)
=================  ===========================================================================

Time.  Schedules are in China Standard Time (UTC+8, no daylight saving).  Everything that decides
what to do -- the fire times of a task (:func:`next_fire_times`, :func:`fire_times`), what is due
at a time (:func:`due_tasks`), what a re-read must fetch (:func:`missing_for`) -- is a pure
function of a ``now`` passed in, so it is tested without waiting for midnight.  APScheduler 3
provides the trigger arithmetic (``CronTrigger.from_crontab`` / ``IntervalTrigger``) and, in
:meth:`TaskScheduler.start`, the ``AsyncIOScheduler`` that runs the jobs in real time.

Running.  A task becomes one job per channel its meters are on.  Each job runs with
``max_instances=1`` and ``coalesce=True``: a round still running on its channel is never started a
second time, fire times missed meanwhile are folded into one run, and each run so skipped is
counted (:class:`JobStats`).  Rounds of different tasks on the same channel take turns (a bus
carries one round at a time).  The round itself is the daemon's business: it passes
``run_round(task, meters_by_channel, reads, now) -> RoundResult`` (sync or async), and
:func:`poll_task` is a ready-made body for it built on :func:`~meterd.collector.poll.poll_meter`.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time as _time
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence, Union

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from meterd.clock import CST, Clock, utc_now
from meterd.collector.channel import Channel, FailureKind, TransactionError
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import (
    MeterTarget,
    ReadFailed,
    Reads,
    RoundResult,
    curve_readings,
    poll_meter,
    read_item,
)
from meterd.config.model import MeterConfig
from meterd.errors import ConfigError, ProtocolError, UnknownIdentifierError
from meterd.protocols import modbus
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import DataItem, Kind
from meterd.protocols.dlt645.catalogue1997 import lookup97
from meterd.protocols.drivers import get_driver
from meterd.protocols.drivers.base import FrameDriver
from meterd.protocols.readspec import ReadSpec
from meterd.readings import Reading
from meterd.storage.sqlite import Attempt

log = logging.getLogger(__name__)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
#: Interval triggers count from this instant, so ``every = 900`` fires at :00, :15, :30, :45 CST.
INTERVAL_ANCHOR = datetime(2020, 1, 1, tzinfo=CST)
_FIRE_LIMIT = 100_000  # fire times walked in one call at most (a 1 s interval over a day is 86 400)


class TaskKind(enum.StrEnum):
    REALTIME = "realtime"
    HOURLY = "hourly"
    DAILY_FROZEN = "daily_frozen"
    READING_DAY = "reading_day"
    REREAD = "reread"


ROUTINE_KINDS = frozenset(k for k in TaskKind if k is not TaskKind.REREAD)

#: What a kind reads when the task names nothing.
DEFAULT_ITEMS: Mapping[TaskKind, tuple[int, ...]] = {
    TaskKind.DAILY_FROZEN: (0x05060101,),  # forward active energy, total and rates, 1st last daily freeze
    TaskKind.READING_DAY: (0x0001FF01,),  # forward active energy, total and rates, previous settlement
}
#: When a kind runs when the task gives neither ``every`` nor ``cron``.
DEFAULT_CRON: Mapping[TaskKind, str] = {
    TaskKind.HOURLY: "0 * * * *",
    TaskKind.DAILY_FROZEN: "15 0 * * *",
    TaskKind.REREAD: "0 10,16,22 * * *",
}
#: How late a run may still start (seconds) when the task does not say; interval tasks use half
#: their interval.
DEFAULT_GRACE: Mapping[TaskKind, float] = {
    TaskKind.REALTIME: 300.0,
    TaskKind.HOURLY: 600.0,
    TaskKind.DAILY_FROZEN: 6 * 3600.0,
    TaskKind.READING_DAY: 12 * 3600.0,
    TaskKind.REREAD: 1800.0,
}

_OPTIONS: Mapping[TaskKind, frozenset[str]] = {
    TaskKind.REALTIME: frozenset({"curve_points", "curve_interval"}),
    TaskKind.HOURLY: frozenset({"curve_points", "curve_interval"}),
    TaskKind.DAILY_FROZEN: frozenset({"curve_points", "curve_interval"}),
    TaskKind.READING_DAY: frozenset({"day", "time", "curve_points", "curve_interval"}),
    TaskKind.REREAD: frozenset({"tasks", "lookback_days", "max_points", "settle"}),
}


class TaskSpecError(ConfigError, ValueError):
    """A task that cannot be scheduled; the message names the task and the key (the loader lists
    it among the config's problems)."""

    def __init__(self, message: str) -> None:
        self.problems = [message]
        ValueError.__init__(self, message)


def _int_option(name: str, options: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TaskSpecError(f"task {name!r}: option {key} = {value!r} must be an integer from {lo} to {hi}")
    return value


@dataclass(frozen=True)
class TaskSpec:
    """One scheduled task (hash/compare by value except ``options``; key things by ``name``).

    ``groups`` empty means every meter.  Exactly one of ``every`` (seconds) and ``cron`` (five
    fields, minute hour day month weekday, CST) is set once defaults are applied: ``hourly``,
    ``daily_frozen`` and ``reread`` have a default cron, ``reading_day`` builds one from its
    ``day`` / ``time`` options.  ``jitter`` (seconds) spreads a fleet's start times at run time
    only; the pure fire-time functions ignore it.

    Options by kind: ``curve_points`` (records per curve read, default 4) and ``curve_interval``
    (minutes between curve records, default 15) for routine kinds; ``day`` (1..31, default 1) and
    ``time`` ("HH:MM", default "01:00") for ``reading_day``; ``tasks`` (names of routine tasks to
    check, default all), ``lookback_days`` (also check that many days before today, default 0),
    ``max_points`` (curve records per back-fill request, default 24) and ``settle`` (seconds a
    slot or run must be old before it counts as missing, default 300) for ``reread``.
    """

    name: str
    kind: TaskKind
    groups: tuple[str, ...] = ()
    quantities: tuple[str, ...] = ()
    items: tuple[int, ...] = ()
    items_1997: tuple[int, ...] = ()
    every: float | None = None
    cron: str | None = None
    jitter: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    misfire_grace: float | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not name:
            raise TaskSpecError("a task needs a name")
        try:
            kind = TaskKind(self.kind)
        except ValueError:
            raise TaskSpecError(
                f"task {name!r}: kind {self.kind!r} is not one of {', '.join(k.value for k in TaskKind)}"
            ) from None
        object.__setattr__(self, "kind", kind)
        for attr in ("groups", "quantities", "items", "items_1997"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        options = dict(self.options)
        object.__setattr__(self, "options", options)
        unknown = set(self.options) - _OPTIONS[kind]
        if unknown:
            raise TaskSpecError(f"task {name!r}: unknown option(s) {', '.join(sorted(unknown))} for kind {kind}")
        if kind is TaskKind.REREAD:
            if self.quantities or self.items or self.items_1997:
                raise TaskSpecError(f"task {name!r}: a reread task reads what its routine tasks missed; "
                                    "it names no quantities or items")
            tasks = self.options.get("tasks", ())
            if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
                raise TaskSpecError(f"task {name!r}: option tasks must be a list of task names")
            options["tasks"] = tuple(tasks)
            _int_option(name, self.options, "lookback_days", 0, 0, 60)
            _int_option(name, self.options, "max_points", 24, 1, 96 * 4)
            settle = self.options.get("settle", 300)
            if isinstance(settle, bool) or not isinstance(settle, (int, float)) or settle < 0:
                raise TaskSpecError(f"task {name!r}: option settle = {settle!r} must be seconds >= 0")
        else:
            if not (self.quantities or self.items or self.items_1997):
                if kind not in DEFAULT_ITEMS:
                    raise TaskSpecError(f"task {name!r}: a {kind} task needs quantities, items or items_1997")
                object.__setattr__(self, "items", DEFAULT_ITEMS[kind])
            for di in self.items:
                if not catalogue.is_known(di):
                    raise TaskSpecError(f"task {name!r}: item {di:08X} is not in the DL/T 645-2007 catalogue")
            for di in self.items_1997:
                try:
                    lookup97(di)
                except UnknownIdentifierError:
                    raise TaskSpecError(
                        f"task {name!r}: item {di:04X} is not in the DL/T 645-1997 catalogue") from None
            _int_option(name, self.options, "curve_points", 4, 1, 96 * 4)
            step = _int_option(name, self.options, "curve_interval", 15, 1, 60)
            if 60 % step:
                raise TaskSpecError(f"task {name!r}: option curve_interval = {step} must divide an hour")
        if kind is TaskKind.READING_DAY and self.cron is None and self.every is None:
            day = _int_option(name, self.options, "day", 1, 1, 31)
            hhmm = str(self.options.get("time", "01:00"))
            try:
                at = time.fromisoformat(hhmm)
            except ValueError:
                raise TaskSpecError(f"task {name!r}: option time = {hhmm!r} is not HH:MM") from None
            object.__setattr__(self, "cron", f"{at.minute} {at.hour} {day} * *")
        if self.cron is None and self.every is None and kind in DEFAULT_CRON:
            object.__setattr__(self, "cron", DEFAULT_CRON[kind])
        if (self.cron is None) == (self.every is None):
            raise TaskSpecError(f"task {name!r}: give exactly one of every (seconds) and cron")
        if self.every is not None and not self.every > 0:
            raise TaskSpecError(f"task {name!r}: every = {self.every!r} must be > 0 seconds")
        if self.jitter < 0:
            raise TaskSpecError(f"task {name!r}: jitter = {self.jitter!r} must be >= 0 seconds")
        if self.misfire_grace is not None and self.misfire_grace <= 0:
            raise TaskSpecError(f"task {name!r}: misfire_grace = {self.misfire_grace!r} must be > 0 seconds")
        if self.cron is not None:
            try:
                CronTrigger.from_crontab(self.cron, timezone=CST)
            except ValueError as exc:
                raise TaskSpecError(f"task {name!r}: cron {self.cron!r}: {exc}") from None

    # --- derived -------------------------------------------------------------------------------

    @property
    def grace(self) -> float:
        """Seconds a run may start late (APScheduler's ``misfire_grace_time``)."""
        if self.misfire_grace is not None:
            return self.misfire_grace
        if self.every is not None:
            return self.every / 2
        return DEFAULT_GRACE[self.kind]

    @property
    def curve_points(self) -> int:
        return int(self.options.get("curve_points", 4))

    @property
    def curve_interval(self) -> timedelta:
        return timedelta(minutes=int(self.options.get("curve_interval", 15)))

    @property
    def period(self) -> str:
        return f"every {self.every:g} s" if self.every is not None else f"cron {self.cron!r}"

    def covers(self, meter: MeterConfig) -> bool:
        return not self.groups or meter.group in self.groups


# --- fire times (pure) -------------------------------------------------------------------------


def make_trigger(spec: TaskSpec, *, tz: tzinfo = CST, jitter: bool = False) -> BaseTrigger:
    """The APScheduler trigger of ``spec`` in ``tz``; with ``jitter`` the spec's jitter is applied."""
    j = spec.jitter if jitter and spec.jitter else None
    if spec.cron is not None:
        trigger = CronTrigger.from_crontab(spec.cron, timezone=tz)
        trigger.jitter = j  # from_crontab takes no jitter; the trigger applies it per fire time
        return trigger
    assert spec.every is not None
    return IntervalTrigger(seconds=spec.every, start_date=INTERVAL_ANCHOR.astimezone(tz), timezone=tz, jitter=j)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"time {now.isoformat()} has no time zone")
    return now


def fire_times(
    spec: TaskSpec, start: datetime, end: datetime, *, inclusive: bool = True, tz: tzinfo = CST,
    limit: int = _FIRE_LIMIT,
) -> list[datetime]:
    """Fire times ``t`` of ``spec`` with ``start <= t <= end`` (``start < t`` unless ``inclusive``)."""
    trigger = make_trigger(spec, tz=tz)
    out: list[datetime] = []
    t = trigger.get_next_fire_time(None, _aware(start))
    while t is not None and t <= end and len(out) < limit:
        if inclusive or t > start:
            out.append(t)
        t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
    return out


def next_fire_times(spec: TaskSpec, now: datetime, n: int = 5, *, tz: tzinfo = CST) -> list[datetime]:
    """The next ``n`` fire times of ``spec`` at or after ``now``, in ``tz`` (jitter not applied)."""
    trigger = make_trigger(spec, tz=tz)
    out: list[datetime] = []
    t = trigger.get_next_fire_time(None, _aware(now))
    while t is not None and len(out) < n:
        out.append(t)
        t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
    return out


@dataclass(frozen=True)
class Due:
    """A task to run now: for the latest fire time, with ``coalesced`` earlier ones folded in."""

    task: TaskSpec
    fire_time: datetime
    coalesced: int = 0


@dataclass(frozen=True)
class Missed:
    """A task whose latest fire time is older than its grace: not run, counted."""

    task: TaskSpec
    fire_time: datetime
    count: int


def due_tasks(
    specs: Iterable[TaskSpec],
    last_runs: Mapping[str, datetime],
    now: datetime,
    *,
    tz: tzinfo = CST,
    missed: list[Missed] | None = None,
) -> list[Due]:
    """The tasks due at ``now``, the way the scheduler decides it (coalesce, misfire grace).

    ``last_runs`` maps a task name to the fire time it last ran for.  A task is due when it has a
    fire time after that (at or after ``now - grace`` for a task that never ran) and at or before
    ``now``; it runs once for the latest such fire time, and the earlier ones are counted in
    :attr:`Due.coalesced`.  When even the latest is older than the task's grace, it is not due; it
    is appended to ``missed`` if given.
    """
    now = _aware(now)
    out = []
    for spec in specs:
        grace = timedelta(seconds=spec.grace)
        last = last_runs.get(spec.name)
        if last is None:
            fires = fire_times(spec, now - grace, now, tz=tz)
        else:
            fires = fire_times(spec, last, now, inclusive=False, tz=tz)
        if not fires:
            continue
        latest = fires[-1]
        if now - latest > grace:
            if missed is not None:
                missed.append(Missed(spec, latest, len(fires)))
            continue
        out.append(Due(spec, latest, len(fires) - 1))
    return out


# --- what a routine task reads -----------------------------------------------------------------


def meter_target(m: MeterConfig) -> MeterTarget:
    return MeterTarget(m.address, m.ct, m.pt, str(m.protocol), m.unit, m.regmap)


def task_reads(task: TaskSpec, meter: MeterConfig) -> Reads | None:
    """What a routine ``task`` asks of ``meter`` in its protocol; None when nothing applies.

    Explicit items of the other edition or protocol do not apply (a daily-frozen task with 2007
    items skips a Modbus meter).  A quantity the meter's protocol cannot carry is a ConfigError,
    as for polls.
    """
    if task.kind is TaskKind.REREAD or not task.covers(meter):
        return None
    driver = get_driver(meter.protocol)
    reads, missing = driver.plan(task.quantities, driver.explicit_items(task), meter.regmap)
    if missing or reads is None:
        raise ConfigError([(f"task {task.name}: meter {meter.address} ({driver.describe_meter(meter.regmap)}) has "
                            f"no {driver.missing_noun} for {', '.join(missing)}")])
    return reads if driver.item_labels(reads) else None


# --- what a re-read must fetch (pure, given the store) -----------------------------------------


class ReadingSource(Protocol):
    """What :func:`missing_for` needs of a store (:class:`~meterd.storage.sqlite.SqliteStore` fits)."""

    def readings(self, meter: str, *, since: datetime | None = None, until: datetime | None = None,
                 quantity: str | None = None, limit: int | None = None) -> list[Reading]: ...


@dataclass(frozen=True)
class CurveGap:
    """``count`` missing load-curve records of ``di`` from ``start`` (aware), ``interval`` apart."""

    di: int
    start: datetime
    count: int
    interval: timedelta = catalogue.DEFAULT_CURVE_INTERVAL

    @property
    def slots(self) -> tuple[datetime, ...]:
        return tuple(self.start + i * self.interval for i in range(self.count))

    def __str__(self) -> str:
        local = self.start.astimezone(CST)
        return f"{self.di:08X} {self.count} record(s) from {local:%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class MeterNeed:
    """What one meter still owes: identifiers to read (present values, frozen records with the
    freeze index shifted to the missing freeze), Modbus quantities, and curve gaps to back-fill."""

    meter: str
    spec: ReadSpec | None = None  # DL/T 645 identifiers (edition of the meter)
    quantities: tuple[str, ...] = ()  # Modbus: quantities to read again
    curves: tuple[CurveGap, ...] = ()
    missing: tuple[str, ...] = ()  # what is missing, in words, for logs and reports
    tasks: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not ((self.spec is not None and self.spec.items) or self.quantities or self.curves)

    def describe(self) -> str:
        return f"meter {self.meter}: " + ("; ".join(self.missing) if self.missing else "nothing missing")


def _expected(item: DataItem, keep: frozenset[str] | None) -> tuple[str, ...]:
    """The quantities a read of ``item`` must have produced (times only if the item is only times)."""
    if keep is not None:
        return tuple(sorted(keep))
    numbers = tuple(f.quantity for f in item.fields if f.kind is not Kind.DATETIME)
    return numbers or tuple(f.quantity for f in item.fields)


def _local_midnight(moment: datetime, tz: tzinfo) -> datetime:
    local = moment.astimezone(tz)
    return datetime.combine(local.date(), time(), tz)


def _floor(moment: datetime, step: timedelta, tz: tzinfo) -> datetime:
    """``moment`` floored to a multiple of ``step`` counted from its local midnight."""
    midnight = _local_midnight(moment, tz)
    return midnight + ((moment - midnight) // step) * step


def _freeze_period(di: int) -> timedelta:
    return DAY if (di >> 16) & 0xFF == 0x06 else HOUR


def _gaps(di: int, slots: Iterable[datetime], interval: timedelta, max_points: int) -> list[CurveGap]:
    out: list[CurveGap] = []
    for t in sorted(set(slots)):
        last = out[-1] if out else None
        if last is not None and last.di == di and last.count < max_points and last.start + last.count * interval == t:
            out[-1] = replace(last, count=last.count + 1)
        else:
            out.append(CurveGap(di, t, 1, interval))
    return out


def _day_window(day: date, now: datetime, settle: float, tz: tzinfo) -> tuple[datetime, datetime, datetime]:
    """The CST day's start and end, and the latest moment of it that counts at ``now``."""
    start = datetime.combine(day, time(), tz)
    end = start + DAY
    return start, end, min(now - timedelta(seconds=settle), end - timedelta(microseconds=1))


class _MeterReadings:
    """A store seen through one query per meter (from ``since`` on), for a re-read pass that asks
    about the same meter once per task and day."""

    def __init__(self, store: ReadingSource, since: datetime) -> None:
        self.store, self.since = store, since
        self._cache: dict[str, list[Reading]] = {}

    def readings(self, meter: str, *, since: datetime | None = None, until: datetime | None = None,
                 quantity: str | None = None, limit: int | None = None) -> list[Reading]:
        if meter not in self._cache:
            self._cache[meter] = self.store.readings(meter, since=self.since)
        out = [r for r in self._cache[meter]
               if (since is None or r.timestamp >= since) and (until is None or r.timestamp < until)
               and (quantity is None or r.quantity == quantity)]
        return out if limit is None else out[:limit]


def missing_for(
    store: ReadingSource,
    meter: MeterConfig,
    task: TaskSpec,
    day: date,
    now: datetime,
    *,
    tz: tzinfo = CST,
    settle: float = 300.0,
    max_points: int = 24,
    fires: Sequence[datetime] | None = None,
) -> MeterNeed:
    """What routine ``task`` should have got from ``meter`` on ``day`` (CST) by ``now`` and the
    store does not hold.

    Only fire times of ``task`` on ``day`` at least ``settle`` seconds before ``now`` count (pass
    them as ``fires`` when checking many meters); a task that has not fired yet that day owes
    nothing.  Per identifier:

    * load curve (``0610xxxx``): every ``curve_interval`` slot of the day from 00:00 up to the last
      counted fire time (and ``settle`` before ``now``) needs a reading stamped at the slot; missing
      slots become :class:`CurveGap` runs of at most ``max_points`` records;
    * frozen record with a freeze time (``0506xxNN`` daily, ``0504xxNN`` hourly): each freeze the
      runs of the day should have fetched (the latest freeze at each fire time, minus ``NN - 1``
      periods) needs a reading stamped within half a period of it; a missing one is read again
      with ``NN`` shifted to where that freeze is in the meter's memory at ``now``;
    * anything else (present values, settlement data, 1997 and Modbus values): each quantity needs
      a reading at or after the task's first counted fire time of the day.
    """
    now = _aware(now)
    empty = MeterNeed(meter.address)
    if task.kind is TaskKind.REREAD or not task.covers(meter):
        return empty
    try:
        reads = task_reads(task, meter)
    except ConfigError:
        return empty  # the loader reports it; a re-read does not invent a read plan
    if reads is None:
        return empty
    day_start, day_end, horizon = _day_window(day, now, settle, tz)
    if fires is None:
        fires = fire_times(task, day_start, horizon, tz=tz)
    if not fires:
        return empty
    ref, last_fire = fires[0], fires[-1]

    stored: dict[str, list[datetime]] = {}
    for r in store.readings(meter.address, since=day_start - DAY):
        stored.setdefault(r.quantity, []).append(r.timestamp)

    def has(quantity: str, lo: datetime, hi: datetime | None = None) -> bool:
        return any(lo <= ts and (hi is None or ts < hi) for ts in stored.get(quantity, ()))

    missing: list[str] = []
    if isinstance(reads, modbus.ReadPlan):
        qs = tuple(q for q in task.quantities if not has(q, ref))
        missing += [f"{task.name}: {q}" for q in qs]
        return MeterNeed(meter.address, quantities=qs, missing=tuple(missing), tasks=(task.name,) if qs else ())

    assert isinstance(reads, ReadSpec)
    driver = get_driver(meter.protocol)
    assert isinstance(driver, FrameDriver)
    items: list[int] = []
    keep: dict[int, frozenset[str] | None] = {}
    curves: list[CurveGap] = []
    for di in reads.items:
        item = driver.lookup(di)
        expected = _expected(item, reads.keep.get(di))
        if item.records:
            step = task.curve_interval
            q = item.fields[0].quantity
            have = set(stored.get(q, ()))
            slots = []
            t = day_start
            while t <= last_fire and t <= horizon and t < day_end:
                if t not in have:
                    slots.append(t)
                t += step
            if slots:
                gaps = _gaps(di, slots, step, max_points)
                curves += gaps
                missing += [f"{task.name}: {g}" for g in gaps]
            continue
        if item.timestamp_di is not None:
            period = _freeze_period(di)
            back = (di & 0xFF) - 1
            freezes = sorted({_floor(f, period, tz) - back * period for f in fires})
            newest = _floor(now, period, tz)
            for f in freezes:
                if f > horizon or all(has(q, f - period / 2, f + period / 2) for q in expected):
                    continue
                nn = (newest - f) // period + 1
                if not 1 <= nn <= catalogue.MAX_FROZEN:
                    continue  # not in the meter's memory any more
                shifted = (di & ~0xFF) | nn
                if shifted not in keep:
                    items.append(shifted)
                    keep[shifted] = reads.keep.get(di)
                missing.append(f"{task.name}: {di:08X} freeze of {f.astimezone(tz):%Y-%m-%d %H:%M} "
                               f"(read as {shifted:08X})")
            continue
        absent = [q for q in expected if not has(q, ref)]
        if absent:
            if di not in keep:
                items.append(di)
                keep[di] = reads.keep.get(di)
            missing.append(f"{task.name}: {driver.format_item(di)} ({', '.join(absent)})")
    spec = ReadSpec(tuple(items), keep) if items else None
    need = MeterNeed(meter.address, spec, curves=tuple(curves), missing=tuple(missing))
    return replace(need, tasks=() if need.empty else (task.name,))


def merge_needs(meter: str, needs: Iterable[MeterNeed], *, max_points: int = 24) -> MeterNeed:
    """One meter's needs from several tasks and days as one: identifiers and quantities read once,
    curve gaps of the same identifier joined."""
    items: list[int] = []
    keep: dict[int, frozenset[str] | None] = {}
    quantities: list[str] = []
    slots: dict[tuple[int, timedelta], set[datetime]] = {}
    missing: list[str] = []
    tasks: list[str] = []
    for n in needs:
        if n.spec is not None:
            for di in n.spec.items:
                k = n.spec.keep.get(di)
                if di not in keep:
                    items.append(di)
                    keep[di] = k
                else:
                    old = keep[di]
                    keep[di] = None if old is None or k is None else old | k
        quantities += [q for q in n.quantities if q not in quantities]
        for g in n.curves:
            slots.setdefault((g.di, g.interval), set()).update(g.slots)
        missing += n.missing
        tasks += [t for t in n.tasks if t not in tasks]
    curves = [g for (di, step), s in slots.items() for g in _gaps(di, s, step, max_points)]
    spec = ReadSpec(tuple(items), keep) if items else None
    return MeterNeed(meter, spec, tuple(quantities), tuple(curves), tuple(missing), tuple(tasks))


def reread_plan(
    store: ReadingSource,
    reread: TaskSpec,
    tasks: Sequence[TaskSpec],
    meters: Iterable[MeterConfig],
    now: datetime,
    *,
    tz: tzinfo = CST,
) -> dict[str, MeterNeed]:
    """Meter address -> what the ``reread`` task must fetch at ``now``, meters owing nothing left out.

    Checks the routine tasks the re-read names (option ``tasks``; default every routine task) for
    today and ``lookback_days`` days before, for the meters in the re-read's groups.
    """
    if reread.kind is not TaskKind.REREAD:
        raise ValueError(f"task {reread.name!r} is a {reread.kind} task, not a reread")
    names = reread.options.get("tasks") or ()
    routine = [t for t in tasks if t.kind in ROUTINE_KINDS and (not names or t.name in names)]
    lookback = int(reread.options.get("lookback_days", 0))
    max_points = int(reread.options.get("max_points", 24))
    settle = float(reread.options.get("settle", 300))
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=k) for k in range(lookback, -1, -1)]
    fires = {}
    for d in days:
        start, _, horizon = _day_window(d, now, settle, tz)
        for t in routine:
            fires[(t.name, d)] = fire_times(t, start, horizon, tz=tz)
    source = _MeterReadings(store, datetime.combine(days[0], time(), tz) - DAY)
    out = {}
    for m in meters:
        if not reread.covers(m):
            continue
        parts = [missing_for(source, m, t, d, now, tz=tz, settle=settle, max_points=max_points,
                             fires=fires[(t.name, d)])
                 for t in routine for d in days]
        need = merge_needs(m.address, parts, max_points=max_points)
        if not need.empty:
            out[m.address] = need
    return out


# --- running one round -------------------------------------------------------------------------

TaskReads = Union[Reads, MeterNeed]
RunRound = Callable[[TaskSpec, Mapping[str, Sequence[MeterConfig]], Mapping[str, TaskReads], datetime],
                    Union[RoundResult, Awaitable[RoundResult]]]
_GIVE_UP = (FailureKind.TIMEOUT, FailureKind.LINK)


async def read_need(
    channel: Channel,
    meter: MeterTarget,
    need: MeterNeed,
    now: datetime,
    *,
    meter_tz: tzinfo = CST,
    link: ModbusLink | None = None,
) -> tuple[list[Reading], list[Attempt]]:
    """Read what ``meter`` owes: its identifiers / quantities with :func:`poll_meter`, then each
    curve gap with one "N records from a time" request.  A meter that does not answer at all has
    its remaining gaps recorded as not tried."""
    readings: list[Reading] = []
    attempts: list[Attempt] = []
    if need.spec is not None and need.spec.items:
        got, tried = await poll_meter(channel, meter, need.spec, now, meter_tz=meter_tz, link=link)
        readings += got
        attempts += tried
    elif need.quantities:
        if meter.regmap is None:
            raise TypeError(f"meter {meter.address}: Modbus quantities to re-read but no register map")
        plan = modbus.compile_plan(meter.regmap, need.quantities)
        got, tried = await poll_meter(channel, meter, plan, now, meter_tz=meter_tz, link=link)
        readings += got
        attempts += tried
    dead = next((a.outcome for a in reversed(attempts) if a.outcome in _GIVE_UP), None)
    for gap in need.curves:
        label = f"{gap.di:08X}"
        if dead is not None:
            attempts.append(Attempt(meter.address, channel.name, label, now, dead, None,
                                    "not tried: the meter did not answer an earlier request this round"))
            continue
        before_latency, before_ok = channel.stats.latency_total, channel.stats.successes
        try:
            start = gap.start.astimezone(meter_tz).replace(tzinfo=None)
            payload = await read_item(channel, meter.address, gap.di, count=gap.count, start=start)
            readings += curve_readings(meter, gap.di, payload, meter_tz, gap.interval)
        except TransactionError as exc:
            attempts.append(Attempt(meter.address, channel.name, label, now, exc.kind, None, str(exc)))
            if exc.kind in _GIVE_UP:
                dead = exc.kind
            continue
        except ReadFailed as exc:
            attempts.append(Attempt(meter.address, channel.name, label, now, exc.kind, None,
                                    f"meter {meter.address} {label} back-fill: {exc.detail}"))
            continue
        except ProtocolError as exc:
            attempts.append(Attempt(meter.address, channel.name, label, now, FailureKind.GARBLED, None,
                                    f"meter {meter.address} {label} back-fill: {exc}"))
            continue
        n = channel.stats.successes - before_ok
        latency = (channel.stats.latency_total - before_latency) / n if n else None
        attempts.append(Attempt(meter.address, channel.name, label, now, "ok", latency))
    return readings, attempts


async def poll_task(
    channel: Channel,
    task: TaskSpec,
    meters: Iterable[tuple[MeterTarget, TaskReads]],
    now: datetime,
    *,
    meter_tz: tzinfo = CST,
    link: ModbusLink | None = None,
) -> RoundResult:
    """One round of ``task`` over one channel's meters: a ready-made body for ``run_round``.

    Routine reads go through :func:`poll_meter` with the task's ``curve_points`` and
    ``curve_interval``; a :class:`MeterNeed` through :func:`read_need`.
    """
    result = RoundResult(channel.name, now)
    for target, reads in meters:
        if isinstance(reads, MeterNeed):
            readings, attempts = await read_need(channel, target, reads, now, meter_tz=meter_tz, link=link)
        else:
            readings, attempts = await poll_meter(
                channel, target, reads, now, meter_tz=meter_tz, curve_points=task.curve_points,
                curve_interval=task.curve_interval, link=link)
        result.readings.extend(readings)
        result.attempts.extend(attempts)
    return result


# --- the scheduler -----------------------------------------------------------------------------


@dataclass
class JobStats:
    """Counters of one job (one task on one channel)."""

    task: str
    channel: str
    runs: int = 0
    skipped: int = 0  # a run came due while the previous one was still running: not started
    missed: int = 0  # a run came due later than its grace (event loop blocked, host asleep)
    idle: int = 0  # a run found nothing to read (a re-read with nothing missing)
    errors: int = 0
    running: bool = False
    last_run: datetime | None = None
    last_duration: float | None = None
    last_readings: int = 0
    last_failures: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "task": self.task, "channel": self.channel, "runs": self.runs, "skipped": self.skipped,
            "missed": self.missed, "idle": self.idle, "errors": self.errors, "running": self.running,
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "last_duration": self.last_duration, "last_readings": self.last_readings,
            "last_failures": self.last_failures,
        }


def job_id(task: str, channel: str) -> str:
    return f"{task}@{channel}"


class TaskScheduler:
    """Tasks over a fleet of meters: the pure decisions (what is due, what a run reads, what a
    re-read must fetch, all given ``now``) and the AsyncIOScheduler that runs them in real time.

    ``run_round(task, meters_by_channel, reads, now)`` is the daemon's: ``meters_by_channel`` has
    one channel (name -> its meters in this run), ``reads`` maps each meter address to its
    :data:`~meterd.collector.poll.Reads` (routine tasks) or :class:`MeterNeed` (re-reads).
    ``store`` is needed by re-read tasks only.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        meters: Sequence[MeterConfig],
        run_round: RunRound,
        *,
        store: ReadingSource | None = None,
        clock: Clock = utc_now,
        tz: tzinfo = CST,
    ) -> None:
        names = [t.name for t in tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TaskSpecError(f"task name(s) used twice: {', '.join(dup)}")
        for t in tasks:
            if t.kind is TaskKind.REREAD:
                unknown = [n for n in t.options.get("tasks", ()) if n not in names]
                if unknown:
                    raise TaskSpecError(f"task {t.name!r}: option tasks names unknown task(s) {', '.join(unknown)}")
                if store is None:
                    raise TaskSpecError(f"task {t.name!r}: a reread task needs the store")
        self.tasks = {t.name: t for t in tasks}
        self.meters = tuple(meters)
        self.run_round = run_round
        self.store = store
        self.clock = clock
        self.tz = tz
        self.last_runs: dict[str, datetime] = {}
        self.stats: dict[str, JobStats] = {}
        self._reads: dict[tuple[str, str], Reads] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._running: set[str] = set()
        self.scheduler: AsyncIOScheduler | None = None
        for t in tasks:
            if t.kind is TaskKind.REREAD:
                continue
            for m in self.meters:
                reads = task_reads(t, m)
                if reads is not None:
                    self._reads[(t.name, m.address)] = reads
        for t in tasks:
            for ch in self.channels_of(t):
                self.stats[job_id(t.name, ch)] = JobStats(t.name, ch)

    # --- pure ----------------------------------------------------------------------------------

    def _task(self, task: TaskSpec | str) -> TaskSpec:
        return self.tasks[task] if isinstance(task, str) else task

    def meters_of(self, task: TaskSpec | str, channel: str | None = None) -> tuple[MeterConfig, ...]:
        """The meters a task reads (a re-read: the meters in its groups that its routine tasks read)."""
        t = self._task(task)
        if t.kind is TaskKind.REREAD:
            routine = self._routine_of(t)
            chosen = [m for m in self.meters
                      if t.covers(m) and any((r.name, m.address) in self._reads for r in routine)]
        else:
            chosen = [m for m in self.meters if (t.name, m.address) in self._reads]
        return tuple(m for m in chosen if channel is None or m.channel == channel)

    def _routine_of(self, reread: TaskSpec) -> list[TaskSpec]:
        names = reread.options.get("tasks") or ()
        return [t for t in self.tasks.values() if t.kind in ROUTINE_KINDS and (not names or t.name in names)]

    def channels_of(self, task: TaskSpec | str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.channel for m in self.meters_of(task)))

    def due(self, now: datetime, missed: list[Missed] | None = None) -> list[Due]:
        """What is due at ``now`` given :attr:`last_runs` (see :func:`due_tasks`)."""
        return due_tasks(self.tasks.values(), self.last_runs, now, tz=self.tz, missed=missed)

    def next_fire_times(self, task: TaskSpec | str, now: datetime, n: int = 5) -> list[datetime]:
        return next_fire_times(self._task(task), now, n, tz=self.tz)

    def reads_for(self, task: TaskSpec | str, channel: str, now: datetime) -> dict[str, TaskReads]:
        """Meter address -> what a run of ``task`` on ``channel`` at ``now`` reads."""
        t = self._task(task)
        if t.kind is TaskKind.REREAD:
            assert self.store is not None
            return dict(reread_plan(self.store, t, self._routine_of(t), self.meters_of(t, channel), now, tz=self.tz))
        return {m.address: self._reads[(t.name, m.address)] for m in self.meters_of(t, channel)}

    def missing(self, meter: MeterConfig | str, task: TaskSpec | str, day: date, now: datetime) -> MeterNeed:
        """:func:`missing_for` with this scheduler's store and time zone."""
        assert self.store is not None
        m = next(x for x in self.meters if x.address == meter) if isinstance(meter, str) else meter
        return missing_for(self.store, m, self._task(task), day, now, tz=self.tz)

    # --- running -------------------------------------------------------------------------------

    async def run_task(self, task: TaskSpec | str, channel: str, now: datetime | None = None) -> RoundResult | None:
        """One run of ``task`` on ``channel`` (what each scheduled job does).  None when it was not
        run: the same job is still running (counted as skipped), or there is nothing to read."""
        t = self._task(task)
        jid = job_id(t.name, channel)
        stats = self.stats.setdefault(jid, JobStats(t.name, channel))
        if jid in self._running:
            stats.skipped += 1
            log.warning("task %s on %s: still running, this run is skipped", t.name, channel)
            return None
        self._running.add(jid)
        stats.running = True
        try:
            lock = self._channel_locks.setdefault(channel, asyncio.Lock())
            async with lock:  # rounds of different tasks on one bus take turns
                at = now if now is not None else self.clock()
                if t.kind is TaskKind.REREAD:
                    reads = await asyncio.to_thread(self.reads_for, t, channel, at)
                else:
                    reads = self.reads_for(t, channel, at)
                if not reads:
                    stats.idle += 1
                    self.last_runs[t.name] = at
                    return None
                meters = {channel: tuple(m for m in self.meters if m.channel == channel and m.address in reads)}
                started = _time.monotonic()
                try:
                    outcome = self.run_round(t, meters, reads, at)
                    result = await outcome if inspect.isawaitable(outcome) else outcome
                except Exception:
                    stats.errors += 1
                    log.exception("task %s on %s failed", t.name, channel)
                    return None
                stats.runs += 1
                stats.last_run = at
                stats.last_duration = _time.monotonic() - started
                stats.last_readings = len(result.readings)
                stats.last_failures = len(result.failures)
                self.last_runs[t.name] = at
                return result
        finally:
            self._running.discard(jid)
            stats.running = False

    def start(self, scheduler: AsyncIOScheduler | None = None) -> AsyncIOScheduler:
        """Schedule every task on every channel it reaches and start (call inside the event loop).

        Jobs run with ``max_instances=1``, ``coalesce=True`` and the task's ``misfire_grace_time``;
        a run skipped because the previous one is still running, or missed past its grace, is
        counted in :attr:`stats`.
        """
        sched = scheduler or AsyncIOScheduler(timezone=self.tz)
        for t in self.tasks.values():
            trigger = make_trigger(t, tz=self.tz, jitter=True)
            for ch in self.channels_of(t):
                sched.add_job(self.run_task, trigger, args=(t.name, ch), id=job_id(t.name, ch),
                              name=f"{t.kind} {t.name} on {ch}", max_instances=1, coalesce=True,
                              misfire_grace_time=max(1, int(round(t.grace))), replace_existing=True)
        sched.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED | EVENT_JOB_ERROR
                           | EVENT_JOB_EXECUTED)
        sched.start()
        self.scheduler = sched
        for line in self.describe(self.clock()):
            log.info("schedule: %s", line)
        return sched

    def shutdown(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None

    def _on_event(self, event: JobEvent) -> None:
        stats = self.stats.get(event.job_id)
        if stats is None:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            stats.skipped += 1
            log.warning("job %s: previous run still going, run skipped", event.job_id)
        elif event.code == EVENT_JOB_MISSED:
            stats.missed += 1
            log.warning("job %s: run at %s missed its grace time", event.job_id,
                        getattr(event, "scheduled_run_time", "?"))
        elif event.code == EVENT_JOB_ERROR:
            stats.errors += 1

    def describe(self, now: datetime) -> list[str]:
        """The start-up log: per task, its kind, schedule, meters, channels and next fire times."""
        lines = []
        for t in self.tasks.values():
            nxt = ", ".join(f"{x.astimezone(self.tz):%m-%d %H:%M:%S}" for x in self.next_fire_times(t, now, 3))
            lines.append(f"task {t.name} ({t.kind}, {t.period}, groups {', '.join(t.groups) or 'all'}): "
                         f"{len(self.meters_of(t))} meter(s) on {', '.join(self.channels_of(t)) or 'no channel'}; "
                         f"next {nxt}")
        return lines

    def stats_dict(self) -> dict[str, dict[str, object]]:
        return {jid: s.as_dict() for jid, s in self.stats.items()}
