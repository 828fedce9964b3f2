"""The prepaid policy (费控策略): from an account's balance to relay commands and notices.

Pure: :func:`decide` looks at one :class:`AccountView` (balance, average daily cost, the state the
account is in, its thresholds) and a ``now`` passed in, and returns a :class:`Decision` -- the new
state, the :class:`~meterd.control.model.CommandRequest` per meter and the :class:`Notice` s.  The
caller stores the state, queues the commands (in dry-run the command store records them without
sending) and publishes the notices.

Levels.  Four thresholds, each an amount in yuan (``"50"``, ``"-10"``) or days of average use
(``"3d"`` = 3 × average daily cost), resolve to four levels (:meth:`Thresholds.levels`):
reminder ≥ alarm ≥ trip, and reclose > trip.  ``trip`` is the overdraft limit: the supply is cut
when the balance is at or below it.  ``reclose`` is where the supply comes back, strictly above
``trip``: that gap is the hysteresis that keeps a balance hovering around the trip level from
flipping the relay (trip, reclose, trip, ...).  The balance band is the state the balance alone
asks for: ``> reminder`` NORMAL, ``> alarm`` REMINDED, ``> trip`` ALARMED, else TRIPPED.

State machine (commands are sent to every meter of the account, in the order listed):

==========  ====================================  ==========  ==========================  ==========
state       balance                               new state   commands                    notices
==========  ====================================  ==========  ==========================  ==========
NORMAL      band REMINDED                         REMINDED    --                          reminder
NORMAL,     band ALARMED                          ALARMED     ALARM                       alarm
REMINDED
NORMAL,     band TRIPPED, trip allowed            TRIPPED     ALARM, TRIP                 trip
REMINDED
ALARMED     band TRIPPED, trip allowed            TRIPPED     TRIP                        trip
NORMAL,     band TRIPPED, trip *held*             ALARMED     ALARM                       alarm,
REMINDED                                                                                  held [1]
ALARMED     band TRIPPED, trip *held*             ALARMED     --                          held [1]
REMINDED    band NORMAL                           NORMAL      --                          --
ALARMED     band NORMAL or REMINDED               the band    ALARM_RELEASE               --
TRIPPED     ≤ reclose level                       TRIPPED     --                          --
TRIPPED     > reclose level, band ALARMED         ALARMED     reclose_kind                reclose
TRIPPED     > reclose level, band NORMAL or       the band    reclose_kind, ALARM_RELEASE reclose
            REMINDED
PENDING     any                                   PENDING     --                          --
any         band = state                          state       --                          --
==========  ====================================  ==========  ==========================  ==========

[1] only when the hold reason differs from :attr:`AccountView.held` (one notice per reason, not one
per pass).

PENDING is an account created without an opening balance (switching prepaid on for a district
must cut nobody off): it is charged as usual, so its balance stays honest, but the policy does
nothing for it -- no reminder, alarm or trip -- until an operator or the billing system activates
it (its state becomes NORMAL and the next pass decides it from its balance).

Notice period.  An automatic trip needs a warning first: :attr:`SafetyRules.trip_notice` must have
passed since the alarm episode began (:attr:`AccountView.alarmed_at`, kept by the caller from
:attr:`Decision.alarmed_at`).  The episode begins when the account enters ALARMED -- from NORMAL
or REMINDED with the ALARM command and the alarm notice, or from TRIPPED by a reclose whose balance
is still at or below the alarm level -- and ends when the balance leaves the alarm band (ALARM_RELEASE);
the next alarm begins a new one.  An account that falls from NORMAL straight into the TRIPPED band
is alarmed in that pass and waits the notice like any other.  An ALARMED account with no episode
start (stored before episodes were kept, or put there by an operator's reclose) begins one at
``now``: the notice is never skipped, only ever started late.

A trip is *held* (:func:`automatic_trip_hold`) -- the account stays ALARMED and
:attr:`Decision.held` says why -- when the account is protected (保电: never tripped
automatically), when the notice period has not passed (:func:`notice_hold`), when
:func:`trip_blocked` says no automatic trips now (quiet hours, weekend, holiday, unless the
weekend day is a make-up working day 调休), or when the area has had its
``max_trips_per_area_hour``.  The first reason that applies is the one given, in that order.  A held trip is decided again on every pass: when the block ends the
trip goes out.  Operators' commands are not decided here; :func:`check_manual` only vets them.

Area cap.  The count is of TRIP commands (one per meter) in the area in the last hour, as the
command store counts them.  An account trips whole (all its meters) when the count is below the
cap, so the cap can be passed by at most one account's meters.  :func:`decide_all` adds the trips
it decides to the count as it goes, so one pass over many accounts keeps the cap too; it decides
in the order it is given the accounts.

Calendar questions (quiet hours, weekend, holiday) are answered in CST; ``now`` must be
timezone-aware.  Quiet hours and power windows are ``[start, end)``; ``end <= start`` wraps past
midnight; ``start == end`` is an empty window.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Final

from meterd.clock import local_time
from meterd.control.model import FEN, CommandKind, CommandRequest, money

NOTICE_KINDS: Final = frozenset({"reminder", "alarm", "trip", "reclose", "held", "anomaly", "power-limit"})
PROTECTED_REASON: Final = "protected account (保电): never tripped automatically"
# A day: an alarm raised at any hour gives the customer a whole day, with its banking hours and one
# evening at home, to see the notice or hear the meter and top up before an automatic trip.
DEFAULT_TRIP_NOTICE: Final = timedelta(hours=24)


class ControlState(enum.StrEnum):
    PENDING = "pending"  # created without an opening balance: charged, never reminded, alarmed or tripped
    NORMAL = "normal"
    REMINDED = "reminded"
    ALARMED = "alarmed"
    TRIPPED = "tripped"


_DEPTH: Final = {ControlState.NORMAL: 0, ControlState.REMINDED: 1, ControlState.ALARMED: 2, ControlState.TRIPPED: 3}


@dataclass(frozen=True, slots=True)
class Threshold:
    """A level: ``amount`` yuan, or ``days`` of average use (days × average daily cost).
    Exactly one of the two is set."""

    amount: Decimal | None = None
    days: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.amount is None) == (self.days is None):
            raise ValueError(f"a threshold is an amount or a number of days, exactly one: {self!r}")
        value = self.amount if self.amount is not None else self.days
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"a threshold must be a finite Decimal: {value!r}")

    def resolve(self, avg_daily_cost: Decimal) -> Decimal:
        """The level in yuan, to the fen."""
        if self.amount is not None:
            return money(self.amount)
        assert self.days is not None
        return money(self.days * avg_daily_cost)

    @classmethod
    def parse(cls, text: str | float | Decimal) -> Threshold:
        """``"50"`` / ``50`` / ``-10`` → an amount in yuan; ``"3d"`` → 3 days of average use."""
        if isinstance(text, bool) or not isinstance(text, (str, int, float, Decimal)):
            raise ValueError(  # noqa: TRY004 -- callers treat every bad threshold alike (ValueError)
                f"threshold {text!r}: expected a number of yuan or a number of days such as '3d'")
        raw = str(text).strip()
        days = raw[-1:] in ("d", "D")
        number = raw[:-1].strip() if days else raw
        value: Decimal | None
        try:
            value = Decimal(number)
        except InvalidOperation:
            value = None
        if value is None or not value.is_finite() or not number:
            raise ValueError(f"threshold {text!r}: expected an amount in yuan such as '50' or '-10', "
                             "or days of average use such as '3d'")
        return cls(days=value) if days else cls(amount=value)

    def __str__(self) -> str:
        return f"{self.days}d" if self.days is not None else str(self.amount)


@dataclass(frozen=True, slots=True)
class Thresholds:
    reminder: Threshold
    alarm: Threshold
    trip: Threshold  # the overdraft limit: trip when balance <= this level (e.g. 0 or -10)
    reclose: Threshold  # the supply comes back when the balance is above this level

    def problems(self) -> list[str]:
        """What is wrong with the order of the levels, where it can be told without the average
        daily cost (both amounts, or both days): reminder ≥ alarm > trip, reclose > trip."""
        found: list[str] = []
        for high, low, strict, why in (
            ("reminder", "alarm", False, ""),
            ("alarm", "trip", True, ""),
            ("reclose", "trip", True, ": the gap stops the relay flapping around the trip level"),
        ):
            a, b = _comparable(getattr(self, high), getattr(self, low))
            if a is None or b is None:
                continue
            if a < b or (strict and a == b):
                relation = ">" if strict else "≥"
                found.append(f"{high} ({getattr(self, high)}) must be {relation} {low} ({getattr(self, low)}){why}")
        return found

    def levels(self, avg_daily_cost: Decimal) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """The levels in yuan (reminder, alarm, trip, reclose), made consistent whatever the mix of
        amounts and days gives: alarm is raised to trip, reminder to alarm, and reclose to one fen
        above trip (the hysteresis always holds, and a balance at or below trip is always in the
        TRIPPED band)."""
        trip = self.trip.resolve(avg_daily_cost)
        alarm = max(self.alarm.resolve(avg_daily_cost), trip)
        reminder = max(self.reminder.resolve(avg_daily_cost), alarm)
        reclose = max(self.reclose.resolve(avg_daily_cost), trip + FEN)
        return reminder, alarm, trip, reclose


def _comparable(a: Threshold, b: Threshold) -> tuple[Decimal | None, Decimal | None]:
    if a.amount is not None and b.amount is not None:
        return a.amount, b.amount
    if a.days is not None and b.days is not None:
        return a.days, b.days
    return None, None


@dataclass(frozen=True, slots=True)
class SafetyRules:
    quiet_hours: tuple[tuple[time, time], ...] = ()  # CST [start, end), may wrap midnight: no automatic trips
    no_trip_weekends: bool = False
    holidays: frozenset[date] = frozenset()  # CST dates without automatic trips
    workdays: frozenset[date] = frozenset()  # weekend days that are working days (调休): trips allowed
    max_trips_per_area_hour: int | None = None
    dry_run: bool = False  # the decisions are the same; the command store records without sending
    reclose_kind: CommandKind = CommandKind.RECLOSE_ALLOWED  # or RECLOSE (direct)
    trip_notice: timedelta = DEFAULT_TRIP_NOTICE  # from the first alarm to the earliest automatic trip


@dataclass(frozen=True, slots=True)
class AccountView:
    account: str
    area: str
    protected: bool
    balance: Decimal
    avg_daily_cost: Decimal
    state: ControlState
    meters: tuple[str, ...]
    thresholds: Thresholds
    held: str | None = None  # the reason the last automatic trip was held, if any
    alarmed_at: datetime | None = None  # when the current alarm episode began (the notice period's start)


@dataclass(frozen=True, slots=True)
class Notice:
    account: str
    kind: str  # one of NOTICE_KINDS
    message: str
    at: datetime
    meter: str | None = None
    balance: Decimal | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOTICE_KINDS:
            raise ValueError(f"notice kind {self.kind!r} is not one of {sorted(NOTICE_KINDS)}")


@dataclass(frozen=True, slots=True)
class Decision:
    account: str
    old_state: ControlState
    new_state: ControlState
    commands: tuple[CommandRequest, ...]
    notices: tuple[Notice, ...]
    held: str | None
    alarmed_at: datetime | None = None  # the alarm episode's start, to store (None: not in one)


def in_window(t: time, start: time, end: time) -> bool:
    """Whether the time of day ``t`` is in ``[start, end)``; ``end < start`` wraps past midnight."""
    if start <= end:
        return start <= t < end
    return t >= start or t < end


def trip_blocked(rules: SafetyRules, now: datetime) -> str | None:
    """Why automatic trips are not allowed at ``now`` (quiet hours, holiday, weekend), or None.
    The reasons are stable over the block, so a held notice is sent once per block."""
    local = local_time(now)
    for start, end in rules.quiet_hours:
        if in_window(local.time(), start, end):
            return f"quiet hours {start:%H:%M}-{end:%H:%M} CST"
    day = local.date()
    if day in rules.holidays:
        return f"holiday {day.isoformat()}"
    if rules.no_trip_weekends and day.weekday() >= 5 and day not in rules.workdays:
        return "weekend"
    return None


def earliest_trip(rules: SafetyRules, alarmed_at: datetime) -> str:
    """When the notice period of an episode begun at ``alarmed_at`` ends, in CST to the minute,
    rounded up so the time shown is never earlier than the real one."""
    shown = local_time(alarmed_at + rules.trip_notice)
    if shown.second or shown.microsecond:
        shown = shown.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return f"{shown:%Y-%m-%d %H:%M} CST"


def notice_hold(rules: SafetyRules, now: datetime, alarmed_at: datetime) -> str | None:
    """Why the notice period still holds an automatic trip at ``now``, or None when it has passed."""
    if now >= alarmed_at + rules.trip_notice:
        return None
    return (f"notice period: alarmed {local_time(alarmed_at):%Y-%m-%d %H:%M} CST, "
            f"trip not before {earliest_trip(rules, alarmed_at)}")


def automatic_trip_hold(rules: SafetyRules, now: datetime, *, protected: bool, area: str,
                        area_trips_last_hour: int, alarmed_at: datetime | None = None) -> str | None:
    """Why an automatic trip must be held now, or None: protected, notice period (when
    ``alarmed_at`` is given), blocked time, area cap -- the first that applies."""
    if protected:
        return PROTECTED_REASON
    if alarmed_at is not None:
        waiting = notice_hold(rules, now, alarmed_at)
        if waiting is not None:
            return waiting
    blocked = trip_blocked(rules, now)
    if blocked is not None:
        return blocked
    cap = rules.max_trips_per_area_hour
    if cap is not None and area_trips_last_hour >= cap:
        return f"area trip cap reached: at most {cap} trips per hour in area {area}"
    return None


def yuan(value: Decimal) -> str:
    return f"{money(value):.2f}"


def _band(balance: Decimal, reminder: Decimal, alarm: Decimal, trip: Decimal) -> ControlState:
    if balance > reminder:
        return ControlState.NORMAL
    if balance > alarm:
        return ControlState.REMINDED
    if balance > trip:
        return ControlState.ALARMED
    return ControlState.TRIPPED


def decide(view: AccountView, rules: SafetyRules, now: datetime, *, area_trips_last_hour: int = 0) -> Decision:
    """One account's next step (the table in the module docstring)."""
    old = view.state
    if old is ControlState.PENDING:  # nothing changes until the account is activated
        return Decision(view.account, old, old, (), (), view.held, view.alarmed_at)
    reminder, alarm, trip, reclose = view.thresholds.levels(view.avg_daily_cost)
    balance = view.balance
    band = _band(balance, reminder, alarm, trip)
    commands: list[CommandRequest] = []
    notices: list[Notice] = []
    held: str | None = None
    # The alarm episode in force: an ALARMED account without one begins it now (never skipped).
    episode = (view.alarmed_at or now) if old is ControlState.ALARMED else (
        view.alarmed_at if old is ControlState.TRIPPED else None)

    def command(kind: CommandKind, reason: str) -> None:
        commands.extend(CommandRequest(meter, kind, reason, "policy", account=view.account) for meter in view.meters)

    def notice(kind: str, message: str) -> None:
        notices.append(Notice(view.account, kind, message, now, balance=balance))

    b = yuan(balance)
    below_alarm = f"balance {b} ≤ alarm level {yuan(alarm)}"
    below_trip = f"balance {b} ≤ trip level {yuan(trip)}"
    above_alarm = f"balance {b} > alarm level {yuan(alarm)}"

    if old is ControlState.TRIPPED:
        if balance > reclose:
            new = band
            why = f"balance {b} > reclose level {yuan(reclose)}"
            command(rules.reclose_kind, why)
            if new in (ControlState.NORMAL, ControlState.REMINDED):
                command(CommandKind.ALARM_RELEASE, above_alarm)
                episode = None
            else:  # still in the alarm band: a new episode, so a new notice before the next trip
                episode = now
            restored = ("supply restored" if rules.reclose_kind is CommandKind.RECLOSE
                        else "supply may be restored: press the button on the meter (合闸允许)")
            still = f"; {below_alarm}: low balance alarm, please top up" if new is ControlState.ALARMED else ""
            notice("reclose", f"{why}: {restored}{still}")
        else:
            new = old
    elif band is ControlState.TRIPPED:
        if old is not ControlState.ALARMED:
            command(CommandKind.ALARM, below_trip)
            episode = now
        assert episode is not None
        held = automatic_trip_hold(rules, now, protected=view.protected, area=view.area,
                                   area_trips_last_hour=area_trips_last_hour, alarmed_at=episode)
        if old is not ControlState.ALARMED and held is not None:
            waiting = not view.protected and notice_hold(rules, now, episode) is not None
            when = f"; supply cut not before {earliest_trip(rules, episode)}" if waiting else ""
            notice("alarm", f"{below_trip}: low balance alarm, please top up{when}")
        if held is None:
            new = ControlState.TRIPPED
            command(CommandKind.TRIP, below_trip)
            notice("trip", f"{below_trip}: supply cut, top up to above {yuan(reclose)} to restore")
        else:
            new = ControlState.ALARMED
            if held != view.held:
                notice("held", f"trip held: {held} ({below_trip})")
    elif _DEPTH[band] > _DEPTH[old]:
        new = band
        if band is ControlState.REMINDED:
            notice("reminder", f"balance {b} ≤ reminder level {yuan(reminder)}: please top up")
        else:
            command(CommandKind.ALARM, below_alarm)
            notice("alarm", f"{below_alarm}: low balance alarm, please top up")
            episode = now
    elif _DEPTH[band] < _DEPTH[old]:
        new = band
        episode = None  # out of the alarm band: the episode ends
        if old is ControlState.ALARMED:
            command(CommandKind.ALARM_RELEASE, above_alarm)
    else:
        new = old
    return Decision(view.account, old, new, tuple(commands), tuple(notices), held, episode)


def quiet_level(thresholds: Thresholds) -> Decimal | None:
    """The balance above which :func:`decide` changes nothing for a NORMAL account with no held
    trip, whatever its average use, area, protection or meters; None when that level depends on
    the average use (a reminder, alarm or trip level in days).

    Why: with amounts the levels are fixed, such a balance is in the NORMAL band, and NORMAL in the
    NORMAL band is the "band = state" row of the table: same state, no command, no notice, no hold.
    A caller may skip those accounts (the quiet majority of a district) without building views."""
    if any(t.days is not None for t in (thresholds.reminder, thresholds.alarm, thresholds.trip)):
        return None
    return thresholds.levels(Decimal(0))[0]


def _changes(view: AccountView, decision: Decision) -> bool:
    return bool(decision.new_state != view.state or decision.commands or decision.notices
                or decision.held != view.held or decision.alarmed_at != view.alarmed_at)


def decide_all(views: Iterable[AccountView], rules: SafetyRules, now: datetime,
               area_trips: Mapping[str, int], *,
               failed: dict[str, Exception] | None = None) -> list[Decision]:
    """:func:`decide` for each account in order, counting the trips of this pass per area so the
    area cap holds within the pass.  Only decisions that change something are returned.

    With ``failed``, an account whose decision raises is put there (account -> exception) and
    skipped, and every other account is decided as usual; without it the exception propagates."""
    trips = dict(area_trips)
    out: list[Decision] = []
    for view in views:
        try:
            decision = decide(view, rules, now, area_trips_last_hour=trips.get(view.area, 0))
        except Exception as exc:  # one account's fault, handed to the caller
            if failed is None:
                raise
            failed[view.account] = exc
            continue
        tripped = sum(1 for c in decision.commands if c.kind is CommandKind.TRIP)
        if tripped:
            trips[view.area] = trips.get(view.area, 0) + tripped
        if _changes(view, decision):
            out.append(decision)
    return out


def check_manual(kind: CommandKind, *, operator: str | None, reason: str | None, protected: bool,
                 account: str | None = None) -> str | None:
    """Why an operator's manual command is refused, or None: who and why are required, and a
    protected account is not tripped by hand either (release the protection first: ``meterd
    protect ACCOUNT --release``).  ``protected`` is the effective 保电 (an operator's override in
    force, else the archive's flag)."""
    if operator is None or not operator.strip():
        return "operator required: a manual command must name who asked for it"
    if reason is None or not reason.strip():
        return "reason required: a manual command must say why"
    if kind is CommandKind.TRIP and protected:
        named = f" {account}" if account else ""
        return (f"protected account{named} (保电): manual trip refused; release the protection first "
                f"(meterd protect {account or 'ACCOUNT'} --release --reason … --operator …)")
    return None
