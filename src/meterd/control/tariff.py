"""Tariffs (电价): what a kWh costs, and from when.

A :class:`Tariff` is a named list of :class:`TariffVersion`; a version is in force from 00:00 CST
of its ``effective`` date until the next version starts, and nothing is in force before the first
one.  A version is one of three kinds, and any kind may add a fixed charge per calendar month:

- ``FLAT``: one price per kWh of the TOTAL register.
- ``TOU`` (分时): a price per rate, sharp / peak / flat / valley.  The energy per rate comes either
  from the meter's own rate registers (``REGISTERS``: DL/T 645 rates 1..4, switched by the meter's
  clock and schedule) or from the TOTAL register split pro rata by time over the tariff's own
  ``day_schedule`` (``SCHEDULE``: for meters that keep no schedule, or one that cannot be trusted).
- ``TIERED`` (阶梯): the price steps up with the account's cumulative kWh within the tier period,
  a CST calendar year or month.  ``Tier.upto`` is where a tier ends: with tiers (2160, p1),
  (4200, p2), (None, p3) the first 2160 kWh of the year cost p1, the next 2040 p2, the rest p3.

A day schedule is a list of :class:`TouPeriod` in CST local time, each in force from its start
until the next period's start; the last one wraps past midnight into the first.  Schedule starts
where the rate does not actually change (a valley period written as 23:00 and 00:00) are not
boundaries at all.

Validation is :meth:`Tariff.problems`: every inconsistency as a message, never an exception, so
the config loader reports them all at once.  Charging refuses a tariff that has problems.
Instants passed in must be timezone-aware; instants returned are UTC.  Everything here is pure.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Final

from meterd.clock import CST
from meterd.control.model import TOU_RATES, Rate

_CST_SHIFT: Final = CST.utcoffset(None)  # CST has no daylight saving: local = UTC + 8 h, always
_DAY: Final = timedelta(days=1)


def as_utc(at: datetime) -> datetime:
    """``at`` as a UTC datetime; a naive datetime is refused (it would silently mean local time)."""
    tz = at.tzinfo
    if tz is UTC:
        return at
    if tz is None or tz.utcoffset(at) is None:
        raise ValueError(f"naive datetime {at.isoformat()}: meterd times must be timezone-aware")
    return at.astimezone(UTC)


def _cst_clock(at: datetime) -> datetime:
    """A UTC-tagged datetime whose fields read CST wall-clock time (cheap calendar arithmetic)."""
    return as_utc(at) + _CST_SHIFT


def _cst_midnight(day: date) -> datetime:
    """The UTC instant of 00:00 CST on ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) - _CST_SHIFT


def _since_midnight(t: time) -> timedelta:
    """A schedule start as an offset from local midnight (a zone on the time is a problem, ignored)."""
    return timedelta(hours=t.hour, minutes=t.minute, seconds=t.second, microseconds=t.microsecond)


def _coerce(cls: type[enum.StrEnum], value: object) -> object:
    """A config string as its enum member ("tou" -> TariffKind.TOU); anything else as it is, for
    problems() to report."""
    if isinstance(value, str) and not isinstance(value, cls):
        try:
            return cls(value)
        except ValueError:
            pass
    return value


class TariffKind(enum.StrEnum):
    FLAT = "flat"
    TOU = "tou"
    TIERED = "tiered"


class TouSource(enum.StrEnum):
    REGISTERS = "registers"  # the meter's own rate 1..4 registers
    SCHEDULE = "schedule"  # the TOTAL register split by the tariff's day schedule


class TierPeriod(enum.StrEnum):
    """The period over which tiered kWh accumulate, in CST calendar terms."""

    YEAR = "year"
    MONTH = "month"

    def key(self, at: datetime) -> str:
        """The period containing ``at``: "2026" or "2026-11"."""
        return self.locate(at)[0]

    def next_start(self, at: datetime) -> datetime:
        """The UTC instant the period after the one containing ``at`` begins (always > ``at``)."""
        return self.locate(at)[1]

    def locate(self, at: datetime) -> tuple[str, datetime]:
        """(key, next_start) of the period containing ``at``, in one go."""
        c = _cst_clock(at)
        if self is TierPeriod.YEAR:
            return f"{c.year:04d}", datetime(c.year + 1, 1, 1, tzinfo=UTC) - _CST_SHIFT
        year, month = (c.year + 1, 1) if c.month == 12 else (c.year, c.month + 1)
        return f"{c.year:04d}-{c.month:02d}", datetime(year, month, 1, tzinfo=UTC) - _CST_SHIFT


@dataclass(frozen=True, slots=True)
class TouPeriod:
    """One period of the day schedule, CST local time: ``rate`` from ``start`` to the next start."""

    start: time
    rate: Rate

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", _coerce(Rate, self.rate))


@dataclass(frozen=True, slots=True)
class Tier:
    upto: Decimal | None  # cumulative kWh in the period at which this tier ends; None: unbounded
    price: Decimal  # yuan/kWh


def _price_problem(what: str, price: object) -> str | None:
    if not isinstance(price, Decimal):
        return f"{what} must be a Decimal, not {type(price).__name__} {price!r}"
    if not price.is_finite():
        return f"{what} is {price}"
    if price < 0:
        return f"{what} is negative ({price})"
    return None


@dataclass(frozen=True, slots=True)
class TariffVersion:
    effective: date  # CST local date, in force from 00:00 CST that day
    kind: TariffKind
    price: Decimal | None = None  # FLAT
    rate_prices: Mapping[Rate, Decimal] = field(default_factory=dict)  # TOU: sharp/peak/flat/valley
    tou_source: TouSource = TouSource.REGISTERS
    day_schedule: tuple[TouPeriod, ...] = ()  # TOU + SCHEDULE
    tiers: tuple[Tier, ...] = ()  # TIERED: ascending upto, the last None
    tier_period: TierPeriod = TierPeriod.YEAR
    fixed_monthly: Decimal = Decimal(0)  # per CST calendar month, any kind
    # The day schedule compiled once: offsets from local midnight where the rate changes, the rate
    # from there on, and the rate of a schedule that never changes.  Built even for an invalid
    # schedule (problems() reports it); only read for a valid one.
    _change_at: tuple[timedelta, ...] = field(init=False, repr=False, compare=False, default=())
    _change_rate: tuple[Rate, ...] = field(init=False, repr=False, compare=False, default=())
    _steady_rate: Rate | None = field(init=False, repr=False, compare=False, default=None)
    _charged: tuple[Rate, ...] = field(init=False, repr=False, compare=False, default=(Rate.TOTAL,))

    def __post_init__(self) -> None:
        for name, cls in (("kind", TariffKind), ("tou_source", TouSource), ("tier_period", TierPeriod)):
            object.__setattr__(self, name, _coerce(cls, getattr(self, name)))
        if self.kind is TariffKind.TOU and self.tou_source is TouSource.REGISTERS:
            object.__setattr__(self, "_charged", TOU_RATES)
        periods = sorted(
            (_since_midnight(p.start), p.rate)
            for p in self.day_schedule
            if isinstance(p, TouPeriod) and isinstance(p.start, time)
        )
        if not periods:
            return
        at: list[timedelta] = []
        rates: list[Rate] = []
        previous = periods[-1][1]  # the last period runs on past midnight
        for offset, rate in periods:
            if rate != previous:
                at.append(offset)
                rates.append(rate)
            previous = rate
        object.__setattr__(self, "_change_at", tuple(at))
        object.__setattr__(self, "_change_rate", tuple(rates))
        object.__setattr__(self, "_steady_rate", None if at else periods[0][1])

    @property
    def charged_rates(self) -> tuple[Rate, ...]:
        """The registers this version charges."""
        return self._charged

    def problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.kind, TariffKind):
            return [f"unknown tariff kind {self.kind!r}"]
        if self.kind is TariffKind.FLAT:
            if self.price is None:
                out.append("a flat tariff needs a price")
            elif msg := _price_problem("price", self.price):
                out.append(msg)
        elif self.price is not None:
            out.append(f"price {self.price} is set but a {self.kind} tariff does not use it")

        if self.kind is TariffKind.TOU:
            out += self._tou_problems()
        else:
            if self.rate_prices:
                out.append(f"rate_prices are set but a {self.kind} tariff does not use them")
            if self.day_schedule:
                out.append(f"a day schedule is set but a {self.kind} tariff does not use it")

        if self.kind is TariffKind.TIERED:
            out += self._tier_problems()
        elif self.tiers:
            out.append(f"tiers are set but a {self.kind} tariff does not use them")

        if msg := _price_problem("fixed_monthly", self.fixed_monthly):
            out.append(msg)
        return out

    def _tou_problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.tou_source, TouSource):
            out.append(f"unknown tou_source {self.tou_source!r}")
        missing = [r.value for r in TOU_RATES if r not in self.rate_prices]
        if missing:
            out.append(f"time-of-use prices missing for {', '.join(missing)}")
        for rate, price in self.rate_prices.items():
            if rate not in TOU_RATES:
                out.append(f"rate_prices has {rate!s}, which is not a time-of-use rate (sharp/peak/flat/valley)")
            elif msg := _price_problem(f"{rate} price", price):
                out.append(msg)
        schedule = self.day_schedule
        if self.tou_source is not TouSource.SCHEDULE:
            if schedule:
                out.append("a day schedule is set but tou_source is registers: the meter's registers are charged")
            return out
        if not schedule:
            out.append("tou_source is schedule but the day schedule is empty")
            return out
        starts: list[timedelta] = []
        for i, p in enumerate(schedule):
            if not isinstance(p, TouPeriod) or not isinstance(p.start, time):
                out.append(f"day schedule entry {i + 1} is not a TouPeriod with a time start: {p!r}")
                continue
            if p.start.tzinfo is not None:
                out.append(f"day schedule start {p.start} carries a time zone: starts are CST local times")
            if p.rate not in TOU_RATES:
                out.append(f"day schedule period at {p.start} has rate {p.rate!s}, not a time-of-use rate")
            starts.append(_since_midnight(p.start))
        duplicates = sorted({s for s in starts if starts.count(s) > 1})
        if duplicates:
            shown = ", ".join(str((datetime.min + d).time()) for d in duplicates)
            out.append(f"day schedule has duplicate starts: {shown}")
        elif starts != sorted(starts):
            out.append("day schedule starts are not in ascending order")
        return out

    def _tier_problems(self) -> list[str]:
        tiers = self.tiers
        if not tiers:
            return ["a tiered tariff needs at least one tier"]
        if not isinstance(self.tier_period, TierPeriod):
            return [f"unknown tier_period {self.tier_period!r}"]
        out: list[str] = []
        previous = Decimal(0)
        for i, tier in enumerate(tiers, 1):
            if msg := _price_problem(f"tier {i} price", tier.price):
                out.append(msg)
            last = i == len(tiers)
            if tier.upto is None:
                if not last:
                    out.append(f"tier {i} is unbounded (upto None) but is not the last tier")
                continue
            if last:
                out.append(f"the last tier ends at {tier.upto} kWh: it must be unbounded (upto None)")
            if not isinstance(tier.upto, Decimal) or not tier.upto.is_finite():
                out.append(f"tier {i} upto must be a finite Decimal, not {tier.upto!r}")
                continue
            if tier.upto <= previous:
                out.append(f"tier {i} ends at {tier.upto} kWh, not above the previous bound {previous}: "
                           "tiers must be strictly ascending")
            previous = max(previous, tier.upto)
        return out

    def schedule_rate(self, at: datetime) -> Rate | None:
        """The day schedule's rate at ``at``; None without a schedule."""
        if self._steady_rate is not None or not self._change_at:
            return self._steady_rate
        c = _cst_clock(at)
        offset = c - c.replace(hour=0, minute=0, second=0, microsecond=0)
        i = bisect_right(self._change_at, offset) - 1
        return self._change_rate[i]  # i == -1: before the first change, the last period wraps

    def schedule_changes(self, start: datetime, end: datetime) -> list[tuple[datetime, Rate]]:
        """The UTC instants strictly inside (start, end) where the schedule's rate changes, each
        with the rate from there on, in time order."""
        change_at = self._change_at
        if not change_at:
            return []
        local_start, local_end = _cst_clock(start), _cst_clock(end)
        day = local_start.replace(hour=0, minute=0, second=0, microsecond=0)
        out: list[tuple[datetime, Rate]] = []
        while day < local_end:
            for offset, rate in zip(change_at, self._change_rate):
                t = day + offset
                if t >= local_end:
                    break
                if t > local_start:
                    out.append((t - _CST_SHIFT, rate))
            day += _DAY
        return out

    def tier_index(self, cumulative_kwh: Decimal) -> int:
        """The tier the next kWh falls in after ``cumulative_kwh`` (a kWh exactly at ``upto`` is the
        next tier's)."""
        for i, tier in enumerate(self.tiers):
            if tier.upto is None or cumulative_kwh < tier.upto:
                return i
        return len(self.tiers) - 1  # only for an invalid tariff whose last tier is bounded


@dataclass(frozen=True, slots=True)
class Tariff:
    name: str
    versions: tuple[TariffVersion, ...]  # sorted ascending by effective on construction
    _starts: tuple[datetime, ...] = field(init=False, repr=False, compare=False, default=())
    _problems: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        versions = tuple(sorted(self.versions, key=attrgetter("effective")))
        object.__setattr__(self, "versions", versions)
        object.__setattr__(self, "_starts", tuple(_cst_midnight(v.effective) for v in versions))
        out: list[str] = []
        if not versions:
            out.append(f"tariff {self.name!r} has no versions")
        seen: set[date] = set()
        for v in versions:
            if v.effective in seen:
                out.append(f"{v.effective.isoformat()}: two versions take effect on the same date")
            seen.add(v.effective)
            out += [f"{v.effective.isoformat()}: {p}" for p in v.problems()]
        object.__setattr__(self, "_problems", tuple(out))

    def problems(self) -> list[str]:
        return list(self._problems)

    def version_at(self, at: datetime) -> TariffVersion | None:
        """The version in force at ``at``; None before the first version."""
        i = bisect_right(self._starts, at) - 1
        return self.versions[i] if i >= 0 else None

    def effective_instants(self, start: datetime, end: datetime) -> list[datetime]:
        """UTC instants at which a version takes effect, strictly inside (start, end)."""
        starts = self._starts
        return list(starts[bisect_right(starts, start):bisect_left(starts, end)])

    def current_price(self, at: datetime, *, cumulative_kwh: Decimal = Decimal(0),
                      rate: Rate | None = None) -> Decimal | None:
        """The marginal price at ``at`` (for "remaining energy = balance ÷ current price").

        FLAT: the price.  TOU: the price of ``rate`` when it is a time-of-use rate, else of the
        schedule's rate at ``at`` (SCHEDULE) or of the FLAT rate (REGISTERS: the meter's own
        schedule is unknown here).  TIERED: the price of the tier ``cumulative_kwh`` (the account's
        kWh so far this period) lies in.  None before the first version.
        """
        v = self.version_at(at)
        if v is None:
            return None
        if v.kind is TariffKind.FLAT:
            return v.price
        if v.kind is TariffKind.TIERED:
            return v.tiers[v.tier_index(cumulative_kwh)].price
        if rate not in TOU_RATES:
            rate = (v.schedule_rate(at) if v.tou_source is TouSource.SCHEDULE else None) or Rate.FLAT
        return v.rate_prices.get(rate)
