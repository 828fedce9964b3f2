"""Charging (计费): register readings in, ledger entries out.

:func:`charge_account` turns an account's new register readings into CHARGE entries, given the
cursors (the last reading already charged up to, per meter and register) and the account's
tiered usage so far.  It returns the entries, the cursors and usage that changed, and flags for
what an operator should look at.  The caller stores all of it in one transaction; the ledger
refuses a second entry with the same key.  The rules, which are the contract:

1. Readings of all the account's meters are processed in time order (ties: meter, register,
   value).  For each (meter, register) the charge is the delta between consecutive good readings.
   The first reading of a register with no cursor sets the cursor and charges nothing.
2. A reading at the cursor's instant with the same value is a duplicate delivery: ignored silently.
   With another value: DUPLICATE_CONFLICT flag, ignored.  A reading older than the cursor: LATE
   flag, ignored (a later delta already covered it).  Nothing is ever charged twice, so charging a
   batch again with the returned cursors and usage yields no entries.
3. A value below the cursor's is a register rollover when it fell by more than half the span
   (span = REGISTER_SPAN × the meter's CT×PT multiplier, readings being primary kWh): the delta
   is ``value + span - cursor``, charged, with a ROLLOVER flag.  Otherwise NEGATIVE_DELTA flag:
   nothing charged or credited, and the cursor stays where it was.
3a. Nothing impossible is charged (:mod:`meterd.plausibility`, the same rules as the collector's
   door, here against the persisted cursor): a value that is not finite or lies outside
   0..span is flagged IMPLAUSIBLE and ignored (it never becomes a cursor); a delta (a rollover's
   included) larger than ``max_kw × hours + 2 register steps`` since the cursor is flagged
   IMPLAUSIBLE, not charged, and the cursor stays, so the charge resumes from there when the
   register is plausible again.  ``max_kw`` is the meter's :class:`~meterd.plausibility.Rating`
   (``ratings``, default :data:`~meterd.plausibility.DEFAULT_RATING`) × its CT×PT multiplier.  A
   register that truly jumped stays held until an operator records a meter replacement.  A delta
   whose charge could exceed :data:`~meterd.control.amounts.ENTRY_LIMIT` (kWh × the dearest price
   of its pieces) is held the same way: the store would refuse the entry, and with it the pass of
   every account.  A cursor outside 0..span (left by an earlier release) is not charged from: the
   next reading becomes the cursor, flagged IMPLAUSIBLE, nothing charged.
4. A gap is one big delta, charged when the next reading arrives.  Energy in a delta is assumed
   uniform in time: a delta is split pro rata by time at every tariff version start, every tier
   period start (CST Jan 1 or first of the month, TIERED) and every change of the day schedule's
   rate (TOU from SCHEDULE).  The split is quantized to KWH_PLACES cumulatively, so the pieces
   are never negative and add up exactly to the delta (the last piece takes the remainder).
5. A piece is charged only when the version in force over it charges that register
   (``charged_rates``): cursors are kept for every register supplied, charged or not.  A piece
   before the first version is not charged and the cursor still advances; a NO_TARIFF flag says
   so, once per delta, for the registers the first version charges (the others would not have
   been charged anyway).
6. FLAT: piece × price.  TOU from REGISTERS: each rate register at its own price.  TOU from
   SCHEDULE: the TOTAL register's pieces at the price of the schedule's rate, the entry's ``rate``
   being that TOU rate.  TIERED: pieces add to the account's usage of their period (year or month,
   per the version), in processing order across all its meters; a piece that crosses a tier's
   ``upto`` is split there, each part at its tier's price, the split instant interpolated.  Only
   kWh charged under a TIERED version count towards usage.
7. An entry: kind CHARGE, ``amount = -money(kwh × price)`` (never positive), ``at`` = the piece's
   end, key ``charge:{meter}:{register}:{delta start}/{delta end}:{n}`` (UTC ISO instants, n the
   entry's index within the delta).  Zero-kWh pieces make no entry.
8. A meter replacement in the batch is applied at its instant, after the old meter's readings of
   that instant and before the new meter's: the old meter's final values are charged like
   readings, then the new meter's cursors are set to its initial values (one REPLACEMENT flag,
   on the old meter's TOTAL).  Readings of the old meter after the replacement are LATE.
   Applying a replacement again is harmless: the new meter's cursors at or after its instant are
   left alone.  Pass a replacement in every batch that may still carry the old meter's readings:
   a cursor cannot say its meter was retired.

:func:`fixed_charges` adds the tariff's fixed monthly charge, one FIXED entry per CST month.
Everything is pure; instants must be timezone-aware and come back UTC.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol

from meterd.control.amounts import ENTRY_LIMIT
from meterd.control.model import (
    FEN,
    KWH_PLACES,
    REGISTER_SPAN,
    EntryKind,
    LedgerEntry,
    Rate,
    money,
)
from meterd.control.tariff import Tariff, TariffKind, TariffVersion, TierPeriod, TouSource, as_utc
from meterd.plausibility import DEFAULT_RATING, REGISTER_STEP, Rating, max_advance

_NO_MULTIPLIERS: Final[Mapping[str, Decimal]] = MappingProxyType({})
_NO_RATINGS: Final[Mapping[str, Rating]] = MappingProxyType({})

class ReadingLike(Protocol):
    """What charging reads of a register reading: :class:`RegisterReading`, or any record with
    the same fields (the engine keeps a round's readings as lighter named tuples)."""

    @property
    def meter(self) -> str: ...
    @property
    def rate(self) -> Rate: ...
    @property
    def at(self) -> datetime: ...
    @property
    def value(self) -> Decimal: ...


EntryFields = tuple[Any, ...]  # LedgerEntry's fields in order: ``LedgerEntry(*fields)`` is the entry
Plan = tuple[Any, ...]  # how a delta splits and is priced: see _plan
Memo = dict[Any, Plan]  # (id(tariff), register, t0, t1) -> Plan, shared by a pass's calls
_ONE: Final = Decimal(1)
_US: Final = timedelta(microseconds=1)
_ZERO: Final = Decimal(0)
_ZERO_MONEY: Final = Decimal(0).quantize(FEN)

# Readings of one collection round share their instant, so an entry key's two ISO stamps repeat
# across thousands of accounts: memoized.  Only UTC datetimes reach it (equal instants in other
# zones would otherwise share a cache slot).
_iso = functools.lru_cache(maxsize=4096)(datetime.isoformat)

# A piece of a delta: (start, end, version in force or None, the rate it is priced at or None when
# that version does not charge the register, the tier period key for a tiered version or None)
_Piece = tuple[datetime, datetime, "TariffVersion | None", "Rate | None", "str | None"]

# phases of events at the same instant: old meter's readings, replacement, new meter's readings
_READING, _REPLACEMENT, _NEW_METER_READING = 0, 1, 2
_ONE_EVENT: Final = itemgetter(2, 3, 0, 4)  # a reading event -> _Run.reading's arguments


class FlagKind(enum.StrEnum):
    NEGATIVE_DELTA = "negative_delta"
    LATE = "late"
    DUPLICATE_CONFLICT = "duplicate_conflict"
    ROLLOVER = "rollover"
    NO_TARIFF = "no_tariff"
    REPLACEMENT = "replacement"
    IMPLAUSIBLE = "implausible"


class Cursor(NamedTuple):
    """The last good reading already charged up to, per (meter, register rate).

    A named tuple rather than a frozen dataclass: a district's pass reads and advances hundreds
    of thousands of them, a tuple costs half as much to build, and it is already the row the
    state database stores, ``(meter, rate, at, value)``."""

    meter: str
    rate: Rate
    at: datetime
    value: Decimal


@dataclass(frozen=True, slots=True)
class Usage:
    """Cumulative kWh charged to an account within one tier period ("2026" or "2026-11", CST)."""

    account: str
    period: str
    kwh: Decimal


@dataclass(frozen=True, slots=True)
class ChargeFlag:
    meter: str
    rate: Rate
    at: datetime
    kind: FlagKind
    detail: str


@dataclass(frozen=True, slots=True)
class MeterReplacement:
    key: str  # natural unique id of the replacement event
    account: str
    old_meter: str
    new_meter: str
    at: datetime
    old_final: Mapping[Rate, Decimal]  # the old meter's final register values (primary kWh)
    new_initial: Mapping[Rate, Decimal]  # the new meter's initial register values


@dataclass(slots=True)
class ChargeResult:
    entries: list[LedgerEntry] = field(default_factory=list)  # CHARGE (amount <= 0)
    cursors: dict[tuple[str, Rate], Cursor] = field(default_factory=dict)  # only those that changed
    usage: dict[str, Usage] = field(default_factory=dict)  # only the periods that changed
    flags: list[ChargeFlag] = field(default_factory=list)


def charge_account(account: str, tariff: Tariff, readings: Iterable[ReadingLike],
                   cursors: Mapping[tuple[str, Rate], Cursor], usage: Mapping[str, Usage], *,
                   multipliers: Mapping[str, Decimal] = _NO_MULTIPLIERS,
                   replacements: Sequence[MeterReplacement] = (),
                   memo: Memo | None = None, as_fields: bool = False,
                   ratings: Mapping[str, Rating] = _NO_RATINGS) -> ChargeResult:
    """Charge ``readings`` (any of the account's meters, any order) from ``cursors`` and ``usage``.

    ``cursors`` and ``usage`` are only read, so one mapping of every account may be passed.
    ``replacements`` of other accounts are ignored.  Raises ValueError for a tariff with problems.

    For a district: ``memo``, one empty dict shared by the calls of a pass, keeps how a delta
    splits and is priced (it depends only on the tariff, the register and the delta's two
    instants, which the accounts of a round share); ``as_fields`` returns the entries as tuples
    of :class:`LedgerEntry`'s fields in order (``LedgerEntry(*fields)`` is the entry), sparing
    the frozen dataclass.  Neither changes what is charged.
    """
    if problems := tariff.problems():
        raise ValueError(f"tariff {tariff.name!r} has problems: {'; '.join(problems)}")
    run = _Run(account, tariff, cursors, usage, multipliers, memo, ratings)
    events: list[tuple[Any, ...]] = []
    if replacements:
        by_key = {r.key: r for r in replacements if r.account == account}
        installed = {(r.new_meter, as_utc(r.at)) for r in by_key.values()}
        events += [(as_utc(r.at), _REPLACEMENT, r.old_meter, k, r) for k, r in sorted(by_key.items())]
        for r in readings:
            at = as_utc(r.at)
            phase = _NEW_METER_READING if (r.meter, at) in installed else _READING
            events.append((at, phase, r.meter, r.rate, r.value))
    else:
        events += [(r.at if r.at.tzinfo is UTC else as_utc(r.at), _READING, r.meter, r.rate, r.value)
                   for r in readings]
        if len(events) == 1:  # a meter read once: the common case of a district's round
            run.reading(*_ONE_EVENT(events[0]))
            return run.result(as_fields)
    if replacements:
        events.sort(key=lambda e: e[:4] if e[1] == _REPLACEMENT else e)
    elif len(events) > 1:
        events.sort()
    for at, phase, meter, rate, value in events:
        if phase == _REPLACEMENT:
            run.replace(value)
        else:
            run.reading(meter, rate, at, value)
    return run.result(as_fields)


_READING_ORDER: Final = attrgetter("at", "meter", "rate", "value")  # events' order, for readings alone


class DistrictCharger:
    """:func:`charge_account` for the accounts of one pass, one after the other, their results
    gathered in flat lists (:meth:`take`) instead of one :class:`ChargeResult` each.

    An account whose readings are all of the plain kind -- no replacement, each register read
    once, after its cursor, not lower, every delta one piece (no version start, tier period start
    or schedule change inside it) priced directly or within one tier, its plan already in the
    memo -- is charged right here; any other goes through :func:`charge_account`.  Both charge
    the same (the unit tests run the golden cases through both); this one only skips the
    per-call set-up a district pays 100,000 times.
    """

    __slots__ = ("_checked", "_limits", "cursors", "entries", "flags", "memo", "ratings", "usage")

    def __init__(self, ratings: Mapping[str, Rating] = _NO_RATINGS) -> None:
        self.ratings = ratings  # meter -> what its circuit can carry (default: DEFAULT_RATING)
        # (id(rating), CT×PT, t0, t1) -> the most a register may advance over (t0, t1]: a district's
        # meters share a few ratings and multipliers and a round's instants
        self._limits: dict[tuple[int, Decimal, datetime, datetime], Decimal] = {}
        self.memo: Memo = {}  # shared with charge_account: how a delta splits and is priced
        self.entries: list[EntryFields] = []  # LedgerEntry fields (``as_fields``)
        self.cursors: list[Cursor] = []  # cursors that changed
        self.usage: list[tuple[str, str, Decimal]] = []  # (account, period, kWh) that changed
        self.flags: list[ChargeFlag] = []
        self._checked: dict[int, Tariff] = {}  # tariffs whose problems() were looked at

    def take(self) -> tuple[list[EntryFields], list[Cursor], list[tuple[str, str, Decimal]], list[ChargeFlag]]:
        """What was charged since the last call (entries, cursors, usage, flags), and forget it."""
        out = self.entries, self.cursors, self.usage, self.flags
        self.entries, self.cursors, self.usage, self.flags = [], [], [], []
        return out

    def charge(self, account: str, tariff: Tariff, readings: Sequence[ReadingLike],
               cursors: Mapping[tuple[str, Rate], Cursor], usage: Mapping[str, Usage],
               multipliers: Mapping[str, Decimal] = _NO_MULTIPLIERS,
               replacements: Sequence[MeterReplacement] = ()) -> None:
        """:func:`charge_account` with the same arguments, its result added to the lists."""
        if self._checked.get(id(tariff)) is not tariff:
            if problems := tariff.problems():
                raise ValueError(f"tariff {tariff.name!r} has problems: {'; '.join(problems)}")
            self._checked[id(tariff)] = tariff
        if not replacements and readings and self._plain(account, tariff, readings, cursors, usage, multipliers):
            return
        result = charge_account(account, tariff, readings, cursors, usage, multipliers=multipliers,
                                replacements=replacements, memo=self.memo, as_fields=True, ratings=self.ratings)
        self.entries += result.entries  # type: ignore[arg-type]  # fields tuples: as_fields=True
        self.cursors += result.cursors.values()
        if result.usage:
            self.usage += [(account, u.period, u.kwh) for u in result.usage.values()]
        self.flags += result.flags

    def _limit(self, key: tuple[int, Decimal, datetime, datetime], rating: Rating) -> Decimal:
        """:func:`~meterd.plausibility.max_advance` for ``key`` (rule 3a), kept for the pass."""
        _, multiplier, t0, t1 = key
        limit = self._limits[key] = max_advance(rating.max_kw(multiplier), REGISTER_STEP * multiplier, t0, t1)
        return limit

    def _plain(self, account: str, tariff: Tariff, readings: Sequence[ReadingLike],
               cursors: Mapping[tuple[str, Rate], Cursor], usage: Mapping[str, Usage],
               multipliers: Mapping[str, Decimal]) -> bool:
        """Charge the plain kind (see the class) and return True; else change nothing, False."""
        if len(readings) > 1:
            readings = sorted(readings, key=_READING_ORDER)
            if len({(r.meter, r.rate) for r in readings}) < len(readings):
                return False  # a register read twice: its second delta starts at its first
        memo, tid, charge, limits, ratings = self.memo, id(tariff), EntryKind.CHARGE, self._limits, self.ratings
        entries: list[EntryFields] = []
        moved: list[Cursor] = []
        used: dict[str, Decimal] = {}  # tier period -> kWh so far, as it changes
        for r in readings:
            meter, rate, at, value = r.meter, r.rate, r.at, r.value
            cur = cursors.get((meter, rate))
            if cur is None or at.tzinfo is not UTC:
                return False
            t0 = cur.at
            if t0.tzinfo is not UTC or at <= t0:
                return False
            multiplier = multipliers.get(meter, _ONE)
            if not value.is_finite() or value < 0 or value >= (REGISTER_SPAN if multiplier is _ONE
                                                               else REGISTER_SPAN * multiplier):
                return False  # not a register value: charge_account flags it
            kwh = value - cur.value
            if kwh:
                if kwh < 0:
                    return False
                rating = ratings.get(meter, DEFAULT_RATING)
                key = (id(rating), multiplier, t0, at)
                if kwh > (limits.get(key) or self._limit(key, rating)):
                    return False  # more than the meter can carry: charge_account flags it
                plan = memo.get((tid, rate, t0, at))
                if plan is None or plan[0] is not tariff:
                    return False  # not planned yet: charge_account plans it
                if plan[5] is not None:  # one piece priced directly: as _Run.charge
                    priced_rate, price, suffix = plan[5]
                    cost = kwh * price
                    if cost > ENTRY_LIMIT:
                        return False  # beyond any ledger entry: charge_account flags it
                    amount = cost.quantize(FEN, ROUND_HALF_UP)
                    entries.append((f"charge:{meter}:{plan[3]}0", account, charge,
                                    -amount if amount else _ZERO_MONEY, at, f"{kwh:.4f} kWh{suffix}", meter,
                                    priced_rate, kwh, price, t0, at))
                else:  # one tiered piece within one tier: as _Run.charge_tiered
                    if len(plan[1]) != 1:
                        return False
                    _, _, v, priced_rate, period = plan[1][0]
                    if v is None or priced_rate is None or period is None:
                        return False
                    so_far = used.get(period)
                    if so_far is None:
                        known = usage.get(period)
                        so_far = known.kwh if known is not None else _ZERO
                    i = v.tier_index(so_far)
                    tier = v.tiers[i]
                    if tier.upto is not None and so_far + kwh > tier.upto:
                        return False  # crosses into the next tier: split where
                    price = tier.price
                    cost = kwh * price
                    if cost > ENTRY_LIMIT:
                        return False  # beyond any ledger entry: charge_account flags it
                    amount = cost.quantize(FEN, ROUND_HALF_UP)
                    entries.append((f"charge:{meter}:{plan[3]}0", account, charge,
                                    -amount if amount else _ZERO_MONEY, at,
                                    f"{kwh:.4f} kWh × {price} tier {i + 1} ({period})", meter, Rate.TOTAL, kwh,
                                    price, t0, at))
                    used[period] = so_far + kwh
            moved.append(Cursor(meter, rate, at, value))
        self.entries += entries
        self.cursors += moved
        if used:
            self.usage += [(account, period, kwh) for period, kwh in used.items()]
        return True


def fixed_charges(account: str, tariff: Tariff, start: datetime, end: datetime) -> list[LedgerEntry]:
    """One FIXED entry per CST calendar month whose first instant lies in (start, end], for the
    version in force at that instant (none before the first version, none for a zero charge)."""
    if problems := tariff.problems():
        raise ValueError(f"tariff {tariff.name!r} has problems: {'; '.join(problems)}")
    end = as_utc(end)
    out: list[LedgerEntry] = []
    month = TierPeriod.MONTH.next_start(start)
    while month <= end:
        following = TierPeriod.MONTH.next_start(month)
        version = tariff.version_at(month)
        if version is not None and version.fixed_monthly:
            label = TierPeriod.MONTH.key(month)
            out.append(LedgerEntry(
                key=f"fixed:{account}:{label}", account=account, kind=EntryKind.FIXED,
                amount=_charge_amount(version.fixed_monthly), at=month,
                detail=f"fixed monthly charge {label} ({tariff.name})",
                period_start=month, period_end=following,
            ))
        month = following
    return out


def _charge_amount(value: Decimal) -> Decimal:
    """A charge is never positive, and never the odd-looking -0.00."""
    m = money(value)
    return -m if m else _ZERO_MONEY


class _Run:
    """The state of one charge_account call: cursors and usage changed so far over the inputs."""

    __slots__ = (
        "account",
        "cursors",
        "entries",
        "flags",
        "memo",
        "multipliers",
        "new_cursors",
        "new_usage",
        "ratings",
        "retired",
        "tariff",
        "usage",
    )

    def __init__(self, account: str, tariff: Tariff, cursors: Mapping[tuple[str, Rate], Cursor],
                 usage: Mapping[str, Usage], multipliers: Mapping[str, Decimal], memo: Memo | None,
                 ratings: Mapping[str, Rating] = _NO_RATINGS) -> None:
        self.account = account
        self.ratings = ratings
        self.memo = memo
        self.tariff = tariff
        self.cursors = cursors
        self.usage = usage
        self.multipliers = multipliers
        self.retired: dict[str, datetime] = {}  # old meter -> replaced at
        self.new_cursors: dict[tuple[str, Rate], Cursor] = {}
        self.new_usage: dict[str, Decimal] = {}
        self.entries: list[EntryFields] = []  # LedgerEntry fields
        self.flags: list[ChargeFlag] = []

    def result(self, as_fields: bool) -> ChargeResult:
        account = self.account
        usage = {p: Usage(account, p, kwh) for p, kwh in self.new_usage.items()} if self.new_usage else {}
        entries = self.entries if as_fields else [LedgerEntry(*e) for e in self.entries]
        return ChargeResult(entries, self.new_cursors, usage, self.flags)  # type: ignore[arg-type]  # as_fields

    def flag(self, meter: str, rate: Rate, at: datetime, kind: FlagKind, detail: str) -> None:
        self.flags.append(ChargeFlag(meter, rate, at, kind, detail))

    def cursor(self, key: tuple[str, Rate]) -> Cursor | None:
        return self.new_cursors.get(key) or self.cursors.get(key)

    # --- readings -------------------------------------------------------------------------------

    def reading(self, meter: str, rate: Rate, at: datetime, value: Decimal) -> None:
        key = (meter, rate)
        if self.retired and meter in self.retired and at > self.retired[meter]:
            self.flag(meter, rate, at, FlagKind.LATE, f"reading {value} of {meter}, replaced at "
                      f"{self.retired[meter].isoformat()}")
            return
        multiplier = self.multipliers.get(meter, _ONE)
        span = REGISTER_SPAN * multiplier
        if not value.is_finite() or value < 0 or value >= span:
            self.flag(meter, rate, at, FlagKind.IMPLAUSIBLE,
                      f"reading {str(value)[:40]} is not a register value (0..{span}): not charged")
            return
        cur = self.new_cursors.get(key) or self.cursors.get(key)
        if cur is None:
            self.new_cursors[key] = Cursor(meter, rate, at, value)
            return
        cur_at = cur.at if cur.at.tzinfo is UTC else as_utc(cur.at)
        if not 0 <= cur.value < span and at > cur_at:
            # left beyond the span by an earlier release (or a multiplier since corrected): no delta
            # from it means anything, so this reading starts the register afresh
            self.flag(meter, rate, at, FlagKind.IMPLAUSIBLE,
                      f"{rate} register: the last charged value {str(cur.value)[:40]} at {cur_at.isoformat()} is "
                      f"not a register value (0..{span}): charging starts again from {value}, the use "
                      f"in between not charged")
            self.new_cursors[key] = Cursor(meter, rate, at, value)
            return
        if at <= cur_at:
            if at < cur_at:
                self.flag(meter, rate, at, FlagKind.LATE,
                          f"reading {value} is older than the cursor {cur.value} at {cur.at.isoformat()}")
            elif value != cur.value:
                self.flag(meter, rate, at, FlagKind.DUPLICATE_CONFLICT,
                          f"reading {value} conflicts with {cur.value} already taken at this instant")
            return
        delta = value - cur.value
        rolled = delta < 0
        if rolled:
            if -delta * 2 <= span:
                self.flag(meter, rate, at, FlagKind.NEGATIVE_DELTA,
                          f"register went back from {cur.value} to {value}: not charged, cursor kept")
                return
            delta += span
        if delta:
            max_kw = self.ratings.get(meter, DEFAULT_RATING).max_kw(multiplier)
            allowed = max_advance(max_kw, REGISTER_STEP * multiplier, cur_at, at)
            if delta > allowed:
                how = f"rolled over at {span} and advanced" if rolled else "advanced"
                self.flag(meter, rate, at, FlagKind.IMPLAUSIBLE,
                          f"register {how} {delta} kWh from {cur.value} at {cur_at.isoformat()} to {value}: more "
                          f"than the meter can carry ({max_kw} kW allows {allowed.normalize()}): not charged, "
                          f"cursor kept")
                return
            plan = self.plan(rate, cur_at, at)
            if delta * plan[6] > ENTRY_LIMIT:
                how = f"rolled over at {span} and advanced" if rolled else "advanced"
                self.flag(meter, rate, at, FlagKind.IMPLAUSIBLE,
                          f"{rate} register {how} {delta} kWh from {cur.value} at {cur_at.isoformat()} to {value}: "
                          f"at up to {plan[6]} yuan/kWh that is {delta * plan[6]:.4E} yuan, more than "
                          f"any ledger entry ({ENTRY_LIMIT} yuan): not charged, cursor kept")
                return
            if rolled:
                self.flag(meter, rate, at, FlagKind.ROLLOVER,
                          f"register rolled over at {span}: {cur.value} -> {value}, {delta} kWh")
            self.charge(meter, rate, cur_at, at, delta, plan)
        self.new_cursors[key] = Cursor(meter, rate, at, value)

    def replace(self, r: MeterReplacement) -> None:
        at = as_utc(r.at)
        for rate, value in sorted(r.old_final.items()):
            self.reading(r.old_meter, rate, at, value)
        self.retired[r.old_meter] = at
        applied = False
        for rate, value in sorted(r.new_initial.items()):
            key = (r.new_meter, rate)
            cur = self.cursor(key)
            if cur is None or cur.at < at:  # at or after: this replacement was applied before
                self.new_cursors[key] = Cursor(r.new_meter, rate, at, value)
                applied = True
        if applied:
            initial = ", ".join(f"{rate} {value}" for rate, value in sorted(r.new_initial.items()))
            self.flag(r.old_meter, Rate.TOTAL, at, FlagKind.REPLACEMENT,
                      f"{r.old_meter} replaced by {r.new_meter} ({r.key}); new meter starts at {initial}")

    # --- one delta ------------------------------------------------------------------------------

    def plan(self, register: Rate, t0: datetime, t1: datetime) -> Plan:
        """How a delta of ``register`` over (t0, t1] splits and is priced (see :func:`_plan`)."""
        tariff = self.tariff
        memo = self.memo
        if memo is None:
            return _plan(tariff, register, t0, t1)
        mkey = (id(tariff), register, t0, t1)
        cached = memo.get(mkey)
        if cached is None or cached[0] is not tariff:
            cached = memo[mkey] = _plan(tariff, register, t0, t1)
        return cached

    def charge(self, meter: str, register: Rate, t0: datetime, t1: datetime, kwh: Decimal,
               plan: Plan | None = None) -> None:
        """Charge ``kwh`` used on ``meter``'s ``register`` over (t0, t1] (``plan``: :meth:`plan`'s)."""
        tariff = self.tariff
        if plan is None:
            plan = self.plan(register, t0, t1)
        _, pieces, prices, key_mid, no_tariff, simple, _ = plan
        if simple is not None:  # one piece priced directly (FLAT, TOU): the common case, inlined
            rate, price, suffix = simple
            amount = (kwh * price).quantize(FEN, ROUND_HALF_UP)  # money(), inlined
            self.entries.append((f"charge:{meter}:{key_mid}0", self.account, EntryKind.CHARGE,
                                 -amount if amount else _ZERO_MONEY, t1, f"{kwh:.4f} kWh{suffix}", meter, rate, kwh,
                                 price, t0, t1))
            return

        energies: list[Decimal]
        if len(pieces) == 1:
            energies = [kwh]
        else:  # cumulative rounding: never a negative piece, and they add up to kwh exactly
            total = (t1 - t0) // _US
            energies = []
            done = _ZERO
            for piece in pieces[:-1]:
                upto = (kwh * ((piece[1] - t0) // _US) / total).quantize(KWH_PLACES, ROUND_HALF_UP)
                energies.append(upto - done)
                done = upto
            energies.append(kwh - done)

        key_prefix = f"charge:{meter}:{key_mid}"
        n = 0
        uncovered = _ZERO
        entries = self.entries
        for (a, b, v, rate, period), e, priced in zip(pieces, energies, prices):
            if v is None:
                uncovered += e
                continue
            if rate is None or not e:
                continue
            if period is not None:
                n = self.charge_tiered(key_prefix, n, meter, a, b, v, e, period)
                continue
            price, suffix = priced
            amount = (e * price).quantize(FEN, ROUND_HALF_UP)  # money(), inlined: this is the hot path
            entries.append((f"{key_prefix}{n}", self.account, EntryKind.CHARGE, -amount if amount else _ZERO_MONEY,
                            b, f"{e:.4f} kWh{suffix}", meter, rate, e, price, a, b))
            n += 1
        if no_tariff:
            self.flag(meter, register, t1, FlagKind.NO_TARIFF,
                      f"{uncovered} kWh over {t0.isoformat()}/{t1.isoformat()} before tariff "
                      f"{tariff.name!r} takes effect: not charged")

    def charge_tiered(self, key_prefix: str, n: int, meter: str, a: datetime, b: datetime,
                      v: TariffVersion, kwh: Decimal, period: str) -> int:
        used = self.new_usage.get(period)
        if used is None:
            known = self.usage.get(period)
            used = known.kwh if known is not None else _ZERO
        tiers = v.tiers
        rest = kwh
        start = a
        while rest:
            i = v.tier_index(used)
            upto = tiers[i].upto
            part = rest if upto is None or used + rest <= upto else upto - used
            rest -= part
            if rest:  # the tier is crossed inside the piece: where, assuming uniform use
                done = kwh - rest
                end = a + _US * int((((b - a) // _US) * done / kwh).to_integral_value(ROUND_HALF_UP))
            else:
                end = b
            price = tiers[i].price
            self.entry(f"{key_prefix}{n}", meter, Rate.TOTAL, start, end, part, price,
                       f"{part:.4f} kWh × {price} tier {i + 1} ({period})")
            n += 1
            used += part
            start = end
        self.new_usage[period] = used
        return n

    def entry(self, key: str, meter: str, rate: Rate, a: datetime, b: datetime, kwh: Decimal,
              price: Decimal, detail: str) -> None:
        amount = (kwh * price).quantize(FEN, ROUND_HALF_UP)  # money(), inlined: this is the hot path
        self.entries.append((key, self.account, EntryKind.CHARGE, -amount if amount else _ZERO_MONEY,
                             b, detail, meter, rate, kwh, price, a, b))


def _plan(tariff: Tariff, register: Rate, t0: datetime, t1: datetime) -> Plan:
    """What charging a delta of ``register`` over (t0, t1] needs besides its kWh and meter: the
    pieces, each piece's (price, detail suffix) when it is priced directly (None for an uncharged
    or tiered piece), the key's middle part, whether a NO_TARIFF flag is due, (rate, price,
    detail suffix) when the delta is one piece priced directly (else None), and the highest price
    (yuan/kWh) any of its pieces may charge (a tiered piece: its version's dearest tier)."""
    version = tariff.version_at(t0)
    starts = tariff.effective_instants(t0, t1)
    pieces: list[_Piece] = []
    if starts:
        bounds = [t0, *starts, t1]
        for i in range(len(bounds) - 1):
            a = bounds[i]
            _split(pieces, a, bounds[i + 1], version if i == 0 else tariff.version_at(a), register)
    else:
        _split(pieces, t0, t1, version, register)
    prices: list[tuple[Decimal, str] | None] = []
    for _, _, v, rate, period in pieces:
        if v is None or rate is None or period is not None:
            prices.append(None)
        else:
            price = v.price if v.kind is TariffKind.FLAT else v.rate_prices[rate]
            assert price is not None, "a FLAT version has a price (Tariff.problems)"
            prices.append((price, f" × {price} {rate}"))
    no_tariff = pieces[0][2] is None and register in tariff.versions[0].charged_rates
    simple = (pieces[0][3], *prices[0]) if len(pieces) == 1 and prices[0] is not None else None
    top = max([_ZERO, *(p[0] for p in prices if p is not None),
               *(t.price for _, _, v, rate, period in pieces if period is not None and v is not None
                 and rate is not None for t in v.tiers)])
    return tariff, pieces, prices, f"{register}:{_iso(t0)}/{_iso(t1)}:", no_tariff, simple, top


def _split(pieces: list[_Piece], a: datetime, b: datetime, v: TariffVersion | None, register: Rate) -> None:
    """Append the pieces of (a, b], all under version ``v``, to ``pieces``."""
    if v is None or register not in v.charged_rates:
        pieces.append((a, b, v, None, None))
    elif v.kind is TariffKind.TIERED:
        period = v.tier_period
        key, nxt = period.locate(a)
        while nxt < b:
            pieces.append((a, nxt, v, register, key))
            a = nxt
            key, nxt = period.locate(a)
        pieces.append((a, b, v, register, key))
    elif v.tou_source is TouSource.SCHEDULE and v.kind is TariffKind.TOU:
        rate = v.schedule_rate(a)
        for t, next_rate in v.schedule_changes(a, b):
            pieces.append((a, t, v, rate, None))
            a, rate = t, next_rate
        pieces.append((a, b, v, rate, None))
    else:
        pieces.append((a, b, v, register, None))
