"""Scheduled collection tasks as configured: :class:`TaskSpec` names what to read from which meter
groups, when and how, checked whole when it is made (a bad task is a :class:`TaskSpecError`, a
:class:`~meterd.errors.ConfigError` the loader lists with the rest).

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
                   what has no reading yet (:func:`~meterd.collector.tasks.missing_for`), curve points back-filled from
                   the meter's load-curve memory (N records from a time)
=================  ===========================================================================

Schedules are in China Standard Time.  What a task reads and when it is due is planned in
:mod:`meterd.collector.tasks`; :mod:`meterd.collector.scheduler` runs it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from meterd.clock import CST
from meterd.config.model import MeterConfig
from meterd.errors import ConfigError, UnknownIdentifierError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue1997 import lookup97


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


def task_kind(name: str, kind: str) -> TaskKind:
    """``kind`` (a kind's text, or a kind) as a :class:`TaskKind`; a :class:`TaskSpecError` naming
    task ``name`` for any other text."""
    try:
        return TaskKind(kind)
    except ValueError:
        raise TaskSpecError(
            f"task {name!r}: kind {kind!r} is not one of {', '.join(k.value for k in TaskKind)}"
        ) from None


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
        kind = task_kind(name, self.kind)
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
