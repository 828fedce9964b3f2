"""Running scheduled collection: one APScheduler job per task and channel, and the round bodies
(:func:`poll_task`, :func:`read_need`).  What to read and when is planned in
:mod:`meterd.collector.tasks` (pure); the tasks are :class:`~meterd.config.tasks.TaskSpec`.

Running.  A task becomes one job per channel its meters are on.  Each job runs with
``max_instances=1`` and ``coalesce=True``: a round still running on its channel is never started a
second time, fire times missed meanwhile are folded into one run, and each run so skipped is
counted (:class:`JobStats`).  Rounds of different tasks on the same channel take turns (a bus
carries one round at a time).  The round itself is the daemon's business: it passes
``run_round(task, meters_by_channel, reads, now) -> RoundResult`` (sync or async), and
:func:`poll_task` is a ready-made body for it built on :func:`~meterd.collector.poll.poll_meter`.

Among collector nodes every node schedules every job, and a run goes ahead only on the node that
holds the channel's lease (``owns``); elsewhere it is counted (``elsewhere``) and skipped before
anything is read or queried, so a task follows its channel from node to node.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time as _time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from meterd.clock import CST, Clock, local_text, utc_now
from meterd.collector.channel import Channel, FailureKind, TransactionError
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import (
    NO_RECORD,
    MeterTarget,
    ReadFailed,
    Reads,
    RoundResult,
    curve_readings,
    poll_meter,
    read_item,
)
from meterd.collector.tasks import (
    Due,
    MeterNeed,
    Missed,
    ReadingSource,
    due_tasks,
    make_trigger,
    missing_for,
    next_fire_times,
    reread_plan,
    task_reads,
)
from meterd.config.model import MeterConfig
from meterd.config.tasks import (
    ROUTINE_KINDS,
    TaskKind,
    TaskSpec,
    TaskSpecError,
)
from meterd.errors import ProtocolError
from meterd.protocols import modbus
from meterd.readings import Reading
from meterd.storage.sqlite import Attempt

log = logging.getLogger(__name__)

# --- running one round -------------------------------------------------------------------------

TaskReads = Reads | MeterNeed
RunRound = Callable[[TaskSpec, Mapping[str, Sequence[MeterConfig]], Mapping[str, TaskReads], datetime],
                    RoundResult | Awaitable[RoundResult]]
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
        except ReadFailed as exc:  # "no data" for a curve slot range: no_record (the records are not there)
            attempts.append(Attempt(meter.address, channel.name, label, now, NO_RECORD if exc.no_data else exc.kind,
                                    None, f"meter {meter.address} {label} back-fill: {exc.detail}"))
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
    elsewhere: int = 0  # a run came due while another collector node holds the channel: not run here
    errors: int = 0
    running: bool = False
    last_run: datetime | None = None
    last_duration: float | None = None
    last_readings: int = 0
    last_failures: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "task": self.task, "channel": self.channel, "runs": self.runs, "skipped": self.skipped,
            "missed": self.missed, "idle": self.idle, "elsewhere": self.elsewhere, "errors": self.errors,
            "running": self.running,
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
    ``store`` is needed by re-read tasks only.  ``owns(channel)``: whether this node polls the
    channel now (collector nodes; None: every channel is ours).
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
        owns: Callable[[str], bool] | None = None,
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
        self.owns = owns
        self.last_runs: dict[str, datetime] = {}
        self.stats: dict[str, JobStats] = {}
        self._reads: dict[tuple[str, str], Reads] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._running: set[str] = set()
        self.scheduler: AsyncIOScheduler | None = None
        # task -> channel -> its meters the task reads, in config order: worked out once here (a
        # re-read's on first use), since a job asks for its channel's meters at every run and a
        # district has thousands of channels and 100,000 meters
        self._by_channel: dict[str, dict[str, tuple[MeterConfig, ...]]] = {}
        for t in tasks:
            if t.kind is TaskKind.REREAD:
                continue
            # what a task asks depends on the meter's protocol and map only: resolved once per
            # kind of meter and shared (a problem still names the first meter of its kind)
            kinds: dict[tuple[str, int], tuple[Reads | None, MeterConfig]] = {}
            on: dict[str, list[MeterConfig]] = {}
            for m in self.meters:
                if not t.covers(m):
                    continue
                kind = (str(m.protocol), id(m.regmap))
                known = kinds.get(kind)
                if known is None:
                    known = kinds[kind] = (task_reads(t, m), m)  # the meter keeps the map's id its own
                reads = known[0]
                if reads is not None:
                    self._reads[(t.name, m.address)] = reads
                    on.setdefault(m.channel, []).append(m)
            self._by_channel[t.name] = {ch: tuple(ms) for ch, ms in on.items()}
        for t in tasks:
            for ch in self.channels_of(t):
                self.stats[job_id(t.name, ch)] = JobStats(t.name, ch)

    # --- pure ----------------------------------------------------------------------------------

    def _task(self, task: TaskSpec | str) -> TaskSpec:
        return self.tasks[task] if isinstance(task, str) else task

    def meters_of(self, task: TaskSpec | str, channel: str | None = None) -> tuple[MeterConfig, ...]:
        """The meters a task reads (a re-read: the meters in its groups that its routine tasks read)."""
        t = self._task(task)
        by_channel = self._by_channel.get(t.name)
        if by_channel is None:  # a re-read, the first time it is asked
            routine = self._routine_of(t)
            on: dict[str, list[MeterConfig]] = {}
            for m in self.meters:
                if t.covers(m) and any((r.name, m.address) in self._reads for r in routine):
                    on.setdefault(m.channel, []).append(m)
            by_channel = self._by_channel[t.name] = {ch: tuple(ms) for ch, ms in on.items()}
        if channel is not None:
            return by_channel.get(channel, ())
        if len(by_channel) == 1:
            return next(iter(by_channel.values()))
        order = {id(m): i for i, m in enumerate(self.meters)}  # config order across channels, as before
        return tuple(sorted((m for ms in by_channel.values() for m in ms), key=lambda m: order[id(m)]))

    def _routine_of(self, reread: TaskSpec) -> list[TaskSpec]:
        names = reread.options.get("tasks") or ()
        return [t for t in self.tasks.values() if t.kind in ROUTINE_KINDS and (not names or t.name in names)]

    def channels_of(self, task: TaskSpec | str) -> tuple[str, ...]:
        """The channels of the task's meters, in the order of their first meter in the config."""
        self.meters_of(task, "")  # a re-read's meters worked out
        return tuple(self._by_channel[self._task(task).name])  # made in config order: first meter first

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
        if self.owns is not None and not self.owns(channel):
            stats.elsewhere += 1
            return None
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
                meters = {channel: tuple(m for m in self.meters_of(t, channel) if m.address in reads)}
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
                              misfire_grace_time=max(1, round(t.grace)), replace_existing=True)
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
            nxt = ", ".join(local_text(x, self.tz) for x in self.next_fire_times(t, now, 3))  # with the offset
            lines.append(f"task {t.name} ({t.kind}, {t.period}, groups {', '.join(t.groups) or 'all'}): "
                         f"{len(self.meters_of(t))} meter(s) on {', '.join(self.channels_of(t)) or 'no channel'}; "
                         f"next {nxt}")
        return lines

    def stats_dict(self) -> dict[str, dict[str, object]]:
        return {jid: s.as_dict() for jid, s in self.stats.items()}
