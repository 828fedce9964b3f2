"""Power limits for large customers (定值控制): alarm or trip when the load stays above a limit.

Pure: :func:`evaluate_power` looks at one meter's recent active-power samples and a ``now`` passed
in and returns a :class:`PowerDecision`.

The limit in force at a moment is the limit of the first :class:`PowerWindow` that holds the
moment's CST time of day (period control 时段控; a window ``[start, end)`` with ``end < start`` wraps
past midnight), else the meter's own ``limit_kw`` (功率定值; None = no limit outside the windows).

``exceeded_since`` is the start of the latest unbroken run of samples above the limit in force at
each sample's own time: a sample at or below its limit, or at a time without a limit, breaks the
run.  The load has been over for ``latest sample - exceeded_since``; the run counts from the first
sample seen over, not from a guess between samples.  When that is at least ``hold`` and the caller
has not acted on this run yet (``active`` False) the meter gets the limit's ``action`` and a
"power-limit" notice.  Samples later than ``now`` (a meter clock ahead) are ignored.

An ALARM is never held.  A TRIP is held like the prepaid policy's (protected meters never, quiet
hours / weekend / holiday, area cap: :func:`~meterd.control.policy.automatic_trip_hold`): no command,
``held`` says why, and a "held" notice when the reason differs from the ``held`` passed in (the
reason the caller got last time, as :attr:`~meterd.control.policy.AccountView.held`).  Clearing the
action when the load falls (ALARM_RELEASE, reclose) is left to the caller and the operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

from meterd.clock import local_time
from meterd.control.model import CommandKind, CommandRequest
from meterd.control.policy import Notice, SafetyRules, automatic_trip_hold, in_window

POWER_ACTIONS = (CommandKind.ALARM, CommandKind.TRIP)
_DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class PowerWindow:
    start: time  # CST time of day, [start, end); end < start wraps past midnight
    end: time
    limit_kw: Decimal


@dataclass(frozen=True, slots=True)
class PowerLimit:
    meter: str
    account: str | None
    area: str
    limit_kw: Decimal | None  # 功率定值 outside any window; None: no limit there
    hold: timedelta  # the load must stay above the limit this long
    action: CommandKind  # ALARM or TRIP
    windows: tuple[PowerWindow, ...] = ()
    protected: bool = False

    def limit_at(self, at: datetime) -> Decimal | None:
        t = local_time(at).time()
        for window in self.windows:
            if in_window(t, window.start, window.end):
                return window.limit_kw
        return self.limit_kw

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.action not in POWER_ACTIONS:
            found.append(f"meter {self.meter}: power limit action must be alarm or trip, not {self.action}")
        if self.hold < timedelta(0):
            found.append(f"meter {self.meter}: hold must not be negative ({self.hold})")
        if self.limit_kw is not None and self.limit_kw <= 0:
            found.append(f"meter {self.meter}: limit_kw must be > 0 ({self.limit_kw})")
        if self.limit_kw is None and not self.windows:
            found.append(f"meter {self.meter}: no limit_kw and no windows: the limit never applies")
        for i, window in enumerate(self.windows):
            where = f"meter {self.meter}: window {i} ({window.start:%H:%M}-{window.end:%H:%M})"
            if window.start == window.end:
                found.append(f"{where} is empty (start == end)")
            if window.limit_kw <= 0:
                found.append(f"{where}: limit_kw must be > 0 ({window.limit_kw})")
        for i, a in enumerate(self.windows):
            for j in range(i + 1, len(self.windows)):
                if _overlap(a, self.windows[j]):
                    found.append(f"meter {self.meter}: windows {i} and {j} overlap (the first one wins)")
        return found


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _spans(window: PowerWindow) -> list[tuple[int, int]]:
    start, end = _seconds(window.start), _seconds(window.end)
    if start <= end:
        return [(start, end)]
    return [(start, _DAY), (0, end)]


def _overlap(a: PowerWindow, b: PowerWindow) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in _spans(a) for s2, e2 in _spans(b))


@dataclass(frozen=True, slots=True)
class PowerSample:
    at: datetime
    kw: Decimal


@dataclass(frozen=True, slots=True)
class PowerDecision:
    meter: str
    exceeded_since: datetime | None
    command: CommandRequest | None
    notice: Notice | None
    held: str | None


def _duration(d: timedelta) -> str:
    total = int(d.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s" if seconds else f"{minutes}m"
    return f"{seconds}s"


def evaluate_power(limit: PowerLimit, samples: Sequence[PowerSample], now: datetime, rules: SafetyRules, *,
                   active: bool = False, area_trips_last_hour: int = 0, held: str | None = None) -> PowerDecision:
    """Whether the meter's load has been over its limit for ``hold``, and what to do about it."""
    seen = sorted((s for s in samples if s.at <= now), key=lambda s: s.at)
    since: datetime | None = None
    for sample in reversed(seen):
        limit_kw = limit.limit_at(sample.at)
        if limit_kw is None or sample.kw <= limit_kw:
            break
        since = sample.at
    nothing = PowerDecision(limit.meter, since, None, None, None)
    if since is None:
        return nothing
    latest = seen[-1]
    over = latest.at - since
    if over < limit.hold or active:
        return nothing
    limit_kw = limit.limit_at(latest.at)
    reason = (f"load {latest.kw} kW > limit {limit_kw} kW for {_duration(over)} "
              f"(hold {_duration(limit.hold)})")
    account = limit.account or ""
    if limit.action is CommandKind.TRIP:
        why = automatic_trip_hold(rules, now, protected=limit.protected, area=limit.area,
                                  area_trips_last_hour=area_trips_last_hour)
        if why is not None:
            notice = None
            if why != held:
                notice = Notice(account, "held", f"power-limit trip held: {why} ({reason})", now, meter=limit.meter)
            return PowerDecision(limit.meter, since, None, notice, why)
    command = CommandRequest(limit.meter, limit.action, reason, "power-limit", account=limit.account)
    notice = Notice(account, "power-limit", f"{reason}: {limit.action}", now, meter=limit.meter)
    return PowerDecision(limit.meter, since, command, notice, None)
