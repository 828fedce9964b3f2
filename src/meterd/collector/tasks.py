"""What a scheduled task reads and when (pure): fire times, what is due, what a meter is asked
for, and what a missed-data re-read must fetch.

Time.  Schedules are in China Standard Time (UTC+8, no daylight saving).  Everything that decides
what to do -- the fire times of a task (:func:`next_fire_times`, :func:`fire_times`), what is due
at a time (:func:`due_tasks`), what a re-read must fetch (:func:`missing_for`) -- is a pure
function of a ``now`` passed in, so it is tested without waiting for midnight.  APScheduler 3
provides the trigger arithmetic (``CronTrigger.from_crontab`` / ``IntervalTrigger``) and, in
:meth:`~meterd.collector.scheduler.TaskScheduler.start`, the ``AsyncIOScheduler`` that runs the jobs in real time.

The tasks themselves are :class:`~meterd.config.tasks.TaskSpec`; :mod:`meterd.collector.scheduler`
runs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Protocol

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from meterd.clock import CST
from meterd.collector.poll import (
    MeterTarget,
    Reads,
)
from meterd.config.model import MeterConfig
from meterd.config.tasks import (
    ROUTINE_KINDS,
    TaskKind,
    TaskSpec,
)
from meterd.errors import ConfigError
from meterd.protocols import modbus
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import DataItem, Kind
from meterd.protocols.drivers import get_driver
from meterd.protocols.drivers.base import FrameDriver
from meterd.protocols.readspec import ReadSpec
from meterd.readings import Reading

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
#: Interval triggers count from this instant, so ``every = 900`` fires at :00, :15, :30, :45 CST.
INTERVAL_ANCHOR = datetime(2020, 1, 1, tzinfo=CST)
_FIRE_LIMIT = 100_000  # fire times walked in one call at most (a 1 s interval over a day is 86 400)


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
