"""One simulated DL/T 645-2007 meter: its moving state, pure, with time passed in.

Strategy
--------
:class:`MeterModel` never reads a clock.  Every call that depends on time takes ``now`` (the *true*
time, a naive local datetime) and first :meth:`~MeterModel.advance`\\ s the meter to it.  The
meter's own clock is ``true time + offset``; the offset starts at ``clock_offset`` and is changed
by a time sync.  Everything the meter does by the clock -- tariff rate, freezes, load-curve records,
settlement, demand periods, and the hour of the load profile -- follows the *meter* clock, so a
meter with a wrong clock mis-bills exactly like a real one.

``advance`` integrates in steps that end at every meter-clock minute boundary (so no step is longer
than a minute).  Within a minute the load is constant: the hour's value from the
:class:`LoadProfile` times its scale, with a seeded jitter that is a pure function of
``(seed, address, minute)`` -- so the result does not depend on how often or in what chunks the
meter is advanced.  Energy registers are exact integers (milliwatt x microsecond) and read out
floored to 0.01 kWh per tariff rate, as a real register only ticks on whole pulses; a total is
always the sum of its rates; registers roll over past 999999.99 (signed combined ones past
799999.99) as a real meter's do.  Events happen at the boundary they fall on: demand (15-minute
sliding window, 1-minute slip), hourly freeze (every :00), daily freeze (00:00), settlement
(``settlement_day`` 00:00; the current registers shift into prev1..prev12 and maximum demand
resets), load-curve record (every ``curve_interval`` on the day's grid) and the timed freeze set by
the freeze command.

Power flow: load ``L`` (kW) at power factor ``pf`` draws inductive reactive power, except in
``capacitive_hours`` (night: electronics) when it is slightly capacitive.  Optional rooftop PV
(``pv_peak_kw``, a half-sine from 06:00 to 18:00) offsets the load; when it exceeds the load the
meter exports.  Net ``P`` and ``Q`` fill the import/export and quadrant registers:
Q1 (P>=0, Q>=0), Q2 (P<0, Q>=0), Q3 (P<0, Q<0), Q4 (P>=0, Q<0).  Combined registers follow the
default combination words: combined active = import + export, combined reactive 1 = Q1 + Q2,
combined reactive 2 = Q3 + Q4.  An open relay carries no current: no energy, no power.

Relay control follows DL/T 645-2007 (2013 amendment) 1C: password, then operator code (if the
meter has a list of operators), then the command's validity time against the meter clock, then
the protect (保电) state, which refuses a trip.  ``RECLOSE_ALLOWED`` (1B, 合闸允许) only *allows*
closing, as a real meter does: the command state (status word 3 bit 6) clears at once, the relay
(bit 4) stays open until the customer presses the meter's button -- :meth:`~MeterModel.press_button`,
or by itself ``button_after`` after the permit (None: never by itself).  A trip or direct reclose
cancels a waiting permit.  ``PROTECT`` does not move the relay.  With ``stuck_relay`` the meter
acknowledges every command and its command state follows, but the relay does not move (nor on the
button).

Conditions (the physics a master must notice; each set at a true time ``now``, from which it holds):
:meth:`~MeterModel.power_down` / :meth:`~MeterModel.power_up` -- no supply: the meter falls silent,
its registers and load curve stand still, and on power-up its power-down event record (掉电事件,
03110000 count, 031100NN start and end) shows the outage; :meth:`~MeterModel.set_reversed` --
reversed wiring: power measured negative, the export registers grow, status word 1 D4/D5 and word
2 say reverse; :meth:`~MeterModel.set_voltage` -- a sag or swell (a factor on each phase voltage;
the load keeps its power, so current rises in a sag); :meth:`~MeterModel.set_phase_shares` -- the
load's split over the phases (a current imbalance); :meth:`~MeterModel.set_clock_drift` -- the
meter clock gains or loses so many seconds a day (energy still follows true time).  An
:class:`~meterd.simulators.area.Area` makes a meter the supply meter of others.

For DL/T 645-1997 meters (the bus translates their frames) the model also offers the 1997
running status word C020 (``status.word1997`` with ``power.active.reverse`` /
``power.reactive.reverse`` from the sign of total power, and ``alarm.battery_low``, never set),
:meth:`~MeterModel.clear_demand` and :meth:`~MeterModel.change_password`; ``write`` and these
take no operator code (``operator=None``), only the password.

Edge cases: ``now`` earlier than the time already reached is ignored (the model never goes back);
a time sync forward across midnight takes the missed daily freezes (补冻) and settlement with the
registers of the sync moment; load-curve points skipped by a jump stay missing; a time sync back
does not repeat freezes already taken.  Settlements before the simulation started do not exist:
those ``prevN`` quantities are absent (the bus answers "no data").
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final, Protocol

from meterd.errors import ProtocolError
from meterd.protocols.dlt645.catalogue import (
    DEFAULT_CURVE_INTERVAL,
    MAX_FROZEN,
    MAX_SETTLEMENT,
    Value,
    decode,
    status3_word,
)
from meterd.protocols.dlt645.catalogue1997 import (
    ACTIVE_REVERSE_BIT,
    BATTERY_LOW_BIT,
    REACTIVE_REVERSE_BIT,
    STATUS_WORD_97,
)
from meterd.protocols.dlt645.frame import normalize_address
from meterd.protocols.dlt645.messages import MeterErrorBits, RelayCommand
from meterd.simulators.profile import (
    CHINA_TOU,
    RATES,
    RESIDENTIAL_KW,
    LoadProfile,
    TouSchedule,
    mix,
    noise,
)

__all__ = [
    "CHINA_TOU",
    "DEMAND_KINDS",
    "ENERGY_KINDS",
    "RESIDENTIAL_KW",
    "LoadProfile",
    "MeterModel",
    "Refusal",
    "Snapshot",
    "TouSchedule",
    "noise",
]  # fmt: skip

# --- constants ---------------------------------------------------------------------------------

_MIN: Final = timedelta(minutes=1)
_EPOCH: Final = datetime(2000, 1, 1)
# registers count milliwatt x microsecond: exact integer sums whatever the step length
_UNIT_PER_KWH: Final = 1_000_000 * 3_600_000_000  # 1 kWh = 1e6 mW x 3.6e9 us
_UNIT_PER_HUNDREDTH: Final = _UNIT_PER_KWH // 100
DEMAND_MINUTES: Final = 15
# window energy (units) -> demand in 0.0001 kW: E / UNIT_PER_KWH * (60 / 15) * 10_000
_UNIT_PER_DEMAND_STEP: Final = _UNIT_PER_KWH * DEMAND_MINUTES // 60 // 10_000

# base registers (what the metering chip integrates); everything else is combined from them
IMP, EXP, Q1, Q2, Q3, Q4, S_IMP, S_EXP = range(8)
_BASE: Final = 8
ENERGY_KINDS: Final[tuple[tuple[str, tuple[int, ...]], ...]] = (
    ("active.combined", (IMP, EXP)),
    ("active.import", (IMP,)),
    ("active.export", (EXP,)),
    ("reactive.combined1", (Q1, Q2)),
    ("reactive.combined2", (Q3, Q4)),
    ("reactive.q1", (Q1,)),
    ("reactive.q2", (Q2,)),
    ("reactive.q3", (Q3,)),
    ("reactive.q4", (Q4,)),
    ("apparent.import", (S_IMP,)),
    ("apparent.export", (S_EXP,)),
)
DEMAND_KINDS: Final = tuple(k for k in ENERGY_KINDS if k[0] != "active.combined")

FROZEN_KEEP: Final = MAX_FROZEN  # 62 daily and 62 hourly freezes
INSTANT_FREEZES_KEPT: Final = 3
TIMED_FREEZES_KEPT: Final = 60
PHASE_NAMES: Final = ("a", "b", "c")

# the 3-byte power and demand registers hold at most 79.9999 kW / 99.9999 kW
MAX_POWER_KW: Final = 79.0
WORD1_ACTIVE_REVERSE: Final = 1 << 4  # running status word 1 (04000501): 有功功率方向 reverse
WORD1_REACTIVE_REVERSE: Final = 1 << 5  # 无功功率方向 reverse
POWER_DOWN_RECORDS: Final = 10  # 03110001..0311000A: the last ten power-down events
_NO_VOLTS: Final = (0.0, 0.0, 0.0)
# a voltage scale or clock drift past these is not a meter on a supply any more
VOLTAGE_SCALE_RANGE: Final = (0.5, 1.5)
MAX_DRIFT_PER_DAY: Final = 43_200.0  # seconds a day: a clock running half again as fast, or half as fast
# energy registers roll over like a real meter's: XXXXXX.XX, combined (signed) ones at 799999.99
_WRAP: Final = 10**8
_WRAP_SIGNED: Final = 8 * 10**7

# --- helpers ---------------------------------------------------------------------------------


def _minute_index(t: datetime) -> int:
    return (t - _EPOCH) // _MIN


def _us(d: timedelta) -> int:
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _d(units: int, places: int) -> Decimal:
    return Decimal(units).scaleb(-places)


def _q(x: float, places: int) -> Decimal:
    return Decimal(round(x * 10**places)).scaleb(-places)


def _check_code(text: str, what: str) -> str:
    t = text.strip().upper()
    if len(t) != 8 or any(c not in "0123456789ABCDEF" for c in t):
        raise ValueError(f"{what} {text!r} must be 8 hex digits")
    return t


# --- results and snapshots ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a meter refused a command: the ERR bits it answers with and a reason naming it."""

    error: MeterErrorBits
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Registers frozen at ``time`` (meter clock): hundredths of a kWh per base register and rate."""

    time: datetime
    energy: tuple[tuple[int, ...], ...]

    def energy_values(self, prefix: str, suffix: str = "", kinds: Collection[str] | None = None) -> dict[str, Value]:
        """The registers by quantity name; only the ``kinds`` (``active.import`` ...) asked for."""
        out: dict[str, Value] = {}
        for name, parts in ENERGY_KINDS:
            if kinds is not None and name not in kinds:
                continue
            wrap = _WRAP_SIGNED if len(parts) > 1 else _WRAP
            rates = [sum(self.energy[i][r] for i in parts) for r in range(RATES)]
            base = f"{prefix}{name}"
            out[f"{base}.total{suffix}"] = _d(sum(rates) % wrap, 2)
            for r in range(RATES):
                out[f"{base}.rate{r + 1}{suffix}"] = _d(rates[r] % wrap, 2)
        return out


@dataclass(frozen=True, slots=True)
class _Settlement:
    snapshot: Snapshot
    demand: dict[tuple[int, int], tuple[int, datetime]]


# What a load-curve record holds: (curve quantity, instantaneous quantity or energy kind, decimals)
_CURVE_SOURCES: Final = (
    *((f"curve.voltage.{p}", f"voltage.{p}", 1) for p in PHASE_NAMES),
    *((f"curve.current.{p}", f"current.{p}", 3) for p in PHASE_NAMES),
    *((f"curve.power.active.{p}", f"power.active.{p}", 4) for p in ("total", *PHASE_NAMES)),
    *((f"curve.power.reactive.{p}", f"power.reactive.{p}", 4) for p in ("total", *PHASE_NAMES)),
    *((f"curve.pf.{p}", f"pf.{p}", 3) for p in ("total", *PHASE_NAMES)),
    ("curve.energy.active.import.total", "energy.active.import.total", 2),
    ("curve.energy.active.export.total", "energy.active.export.total", 2),
    ("curve.energy.reactive.combined1.total", "energy.reactive.combined1.total", 2),
    ("curve.energy.reactive.combined2.total", "energy.reactive.combined2.total", 2),
    *((f"curve.energy.reactive.q{i}.total", f"energy.reactive.q{i}.total", 2) for i in range(1, 5)),
)

_CURVE_SOURCE: Final = {n: s for n, s, _ in _CURVE_SOURCES}
_CURVE_PLACES: Final = {n: p for n, _, p in _CURVE_SOURCES}


# the DL/T 645-1997 status word (C020) and the flags it decodes into: misc, like the 2007 words
_STATUS_97_QUANTITIES: Final = frozenset(
    {STATUS_WORD_97, "alarm.battery_low", "power.active.reverse", "power.reactive.reverse"}
)


def _energy_kind(quantity: str) -> str:
    """``energy.active.import.rate1`` -> ``active.import`` (the ENERGY_KINDS name)."""
    return quantity[len("energy."):].rsplit(".", 1)[0]


def _section(quantity: str) -> str:
    if quantity in _STATUS_97_QUANTITIES:
        return "misc"
    if quantity.startswith("event."):
        return "events"
    if quantity.startswith("energy."):
        return "energy_prev" if ".prev" in quantity else "energy"
    if quantity == "demand.active.now":
        return "variables"
    if quantity.startswith("demand."):
        return "demand_prev" if ".prev" in quantity else "demand"
    if quantity.startswith("frozen."):
        return "frozen"
    if quantity.startswith("curve."):
        return "curve"
    if quantity.startswith(("voltage.", "current.", "power.", "pf.", "angle.")) or quantity in (
        "frequency",
        "battery.clock",
    ):
        return "variables"
    return "misc"


_ALL_SECTIONS: Final = frozenset(
    {"energy", "energy_prev", "demand", "demand_prev", "frozen", "curve", "variables", "misc", "events"}
)

# instantaneous values that need no power flow: one noise draw each (see _variables)
_CHEAP_VARIABLES: Final = frozenset({*(f"voltage.{p}" for p in PHASE_NAMES), "frequency", "battery.clock"})


@dataclass(frozen=True, slots=True)
class _ValuesPlan:
    """What :meth:`MeterModel.values` has to work out for one set of quantities (kept per set:
    the bus asks for the same few identifiers over and over)."""

    sections: frozenset[str]
    energy: frozenset[str] | None  # the current energy registers asked for; None: all
    cheap: frozenset[str] | None  # the variables asked for, when all are in _CHEAP_VARIABLES


def _values_plan(quantities: Collection[str] | None) -> _ValuesPlan:
    if quantities is None:
        return _ValuesPlan(_ALL_SECTIONS, None, None)
    sections = frozenset(_section(q) for q in quantities)
    energy = frozenset(q for q in quantities if _section(q) == "energy")
    variables = frozenset(q for q in quantities if _section(q) == "variables")
    return _ValuesPlan(sections, energy, variables if variables <= _CHEAP_VARIABLES else None)


# per energy kind: the quantity names of its total and rates 1..RATES
_ENERGY_NAMES: Final = {
    name: (f"energy.{name}.total", *(f"energy.{name}.rate{r}" for r in range(1, RATES + 1)))
    for name, _ in ENERGY_KINDS
}
_VOLTAGE_NAMES: Final = tuple(f"voltage.{p}" for p in PHASE_NAMES)


class SupplySource(Protocol):
    """What an area's supply meter measures (:class:`meterd.simulators.area.Area`)."""

    def supply_flow(self, true: datetime) -> tuple[float, float]: ...


_PLANS: dict[object, _ValuesPlan] = {}
_PLANS_KEPT: Final = 1024

# --- the meter ---------------------------------------------------------------------------------


class MeterModel:
    """A DL/T 645-2007 meter's registers, clock, freezes, curves and relay.  See the module doc."""

    def __init__(
        self,
        address: str | int,
        *,
        start: datetime,
        profile: LoadProfile | None = None,
        tariff: TouSchedule | None = None,
        seed: int = 0,
        password: str = "02123456",
        operators: frozenset[str] | None = None,
        clock_offset: timedelta = timedelta(0),
        curve_interval: timedelta = DEFAULT_CURVE_INTERVAL,
        curve_capacity: int = 96 * 7,
        phases: int = 3,
        settlement_day: int = 1,
        initial_energy_kwh: float | None = None,
        stuck_relay: bool = False,
        button_after: timedelta | None = None,
    ) -> None:
        try:
            self.address = normalize_address(address)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        who = f"meter {self.address}"
        if not self.address.isdigit():
            raise ValueError(f"{who}: a meter's own address has no AA wildcard bytes")
        if start.tzinfo is not None:
            raise ValueError(f"{who}: start {start.isoformat()} must be a naive meter-local time")
        self.profile = profile or LoadProfile()
        self.tariff = tariff or TouSchedule()
        if self.profile.peak_kw > MAX_POWER_KW:
            raise ValueError(
                f"{who}: profile peak {self.profile.peak_kw:.1f} kW exceeds the {MAX_POWER_KW} kW a "
                "direct-connected meter's power registers hold; lower its scale"
            )
        self.seed = seed
        self.password = _check_code(password, f"{who}: password")
        self.operators = None if operators is None else frozenset(_check_code(o, f"{who}: operator") for o in operators)
        minutes = curve_interval // _MIN
        if curve_interval % _MIN or not 1 <= minutes <= 1440 or 1440 % minutes:
            raise ValueError(f"{who}: curve_interval {curve_interval} must be whole minutes dividing a day")
        if curve_capacity < 1:
            raise ValueError(f"{who}: curve_capacity {curve_capacity} must be >= 1")
        if phases not in (1, 3):
            raise ValueError(f"{who}: phases must be 1 or 3, got {phases}")
        if not 1 <= settlement_day <= 28:
            raise ValueError(f"{who}: settlement_day {settlement_day} must be 1..28")
        self.curve_interval = curve_interval
        self._curve_minutes = minutes
        self.curve_capacity = curve_capacity
        self.phases = phases
        self.settlement_day = settlement_day
        self.stuck_relay = stuck_relay
        if button_after is not None and button_after < timedelta(0):
            raise ValueError(f"{who}: button_after {button_after} must not be negative")
        self.button_after = button_after
        self.baud = 2400

        self._key = mix(seed) ^ int(self.address)
        self._true = start  # true time reached
        self._offset = clock_offset
        self.relay_open = False
        self.control_log: list[tuple[datetime, RelayCommand]] = []
        self.command_open = False
        self.pre_trip_alarm = False
        self.protected = False
        self.reclose_permitted = False  # 合闸允许 received, the relay waits for the customer's button
        self._press_at: datetime | None = None  # true time the customer presses it (button_after)

        # supply conditions (see "Conditions" in the module doc)
        self.powered = True
        self.reversed = False
        self._v_scale: tuple[float, ...] = (1.0,) * phases
        self._drift = 0.0  # clock gain: meter seconds per true second, beyond one
        self._area: SupplySource | None = None  # set when this meter is an area's supply meter (area.py)
        self.power_downs = 0  # 掉电总次数
        self._power_down_log: deque[list[datetime | None]] = deque(maxlen=POWER_DOWN_RECORDS)

        self._reg = [[0] * RATES for _ in range(_BASE)]
        self._init_registers(initial_energy_kwh)
        self._tanphi = math.tan(math.acos(self.profile.power_factor))
        weights = [1.0 + 0.12 * noise(self._key, 20 + i, 0) for i in range(phases)]
        self._own_weights = self._weights = tuple(w / sum(weights) for w in weights)
        self._v_bias = tuple(3.0 * noise(self._key, 30 + i, 0) for i in range(phases))
        self._power_cache: tuple[int, float, float] = (-1, 0.0, 0.0)
        self._step_cache: tuple[int, object, int, tuple[tuple[int, int], ...]] = (-1, None, 0, ())
        # (true time of the next meter-minute boundary, the offset it was worked out with, the
        # minute's index): advance() inside one meter minute skips the boundary walk
        self._minute_end: tuple[datetime, timedelta, int] | None = None

        mstart = self.meter_clock(start)
        self._minute_acc = [0] * _BASE
        self._window: deque[list[int]] = deque()
        self._win_sum = [0] * _BASE
        self._max_demand: dict[tuple[int, int], tuple[int, datetime]] = {}
        self._reset_demand(mstart.replace(second=0, microsecond=0))
        self._settlements: deque[_Settlement] = deque(maxlen=MAX_SETTLEMENT)
        self._daily: deque[Snapshot] = deque(maxlen=FROZEN_KEEP)
        self._hourly: deque[Snapshot] = deque(maxlen=FROZEN_KEEP)
        self._instant_freezes: deque[Snapshot] = deque(maxlen=INSTANT_FREEZES_KEPT)
        self._timed_freezes: deque[Snapshot] = deque(maxlen=TIMED_FREEZES_KEPT)
        self.timed_freeze: tuple[int | None, int | None, int | None, int | None] | None = None
        self._curve_names = tuple(n for n, src, _ in _CURVE_SOURCES if self._has_source(src))
        self._curves: dict[datetime, array] = {}
        self._last_curve: datetime | None = None

    def __repr__(self) -> str:
        return f"MeterModel({self.address!r}, clock={self.meter_clock(self._true).isoformat()})"

    # --- setup ---------------------------------------------------------------------------------

    def _init_registers(self, initial_kwh: float | None) -> None:
        if initial_kwh is None:
            initial_kwh = 500.0 + 19_500.0 * (noise(self._key, 1, 0) + 1) / 2
        if not 0 <= initial_kwh < 400_000:
            raise ValueError(f"meter {self.address}: initial_energy_kwh {initial_kwh} out of range")
        shares = (0.08, 0.30, 0.37, 0.25)
        exported = initial_kwh * 0.15 if self.profile.pv_peak_kw else 0.0
        totals = {
            IMP: initial_kwh, EXP: exported, Q1: initial_kwh * 0.35, Q2: exported * 0.05,
            Q3: exported * 0.01, Q4: initial_kwh * 0.04, S_IMP: initial_kwh * 1.06, S_EXP: exported * 1.01,
        }  # fmt: skip
        for kind, kwh in totals.items():
            for r, share in enumerate(shares):
                self._reg[kind][r] = round(kwh * share * 100) * _UNIT_PER_HUNDREDTH

    def _has_source(self, source: str) -> bool:
        phase = source.rsplit(".", 1)[-1]
        return not (phase in ("b", "c") and self.phases == 1)

    # --- time ----------------------------------------------------------------------------------

    @property
    def time(self) -> datetime:
        """The true time the model has been advanced to."""
        return self._true

    @property
    def clock_offset(self) -> timedelta:
        return self._offset

    def meter_clock(self, now: datetime) -> datetime:
        """What the meter's clock shows at true time ``now``."""
        if self._drift and now > self._true:  # not advanced there yet: what it will have gained
            return now + self._offset + timedelta(microseconds=round(_us(now - self._true) * self._drift))
        return max(now, self._true) + self._offset

    def advance(self, now: datetime) -> None:
        """Integrate energy and take every freeze, curve record and settlement up to ``now``."""
        true = self._true
        if now <= true:
            return
        press = self._press_at
        if press is not None and now >= press:  # the customer presses the button on the way
            self._press_at = None
            self.advance(press)
            self._button_pressed()
            true = self._true
            if now <= true:
                return
        before = offset = self._offset
        if self._drift:  # a clock running fast or slow gains on true time as it goes
            offset = self._offset = before + timedelta(microseconds=round(_us(now - true) * self._drift))
        known = self._minute_end
        if known is not None and now < known[0] and known[1] == offset:
            # still in the meter minute of the last advance (the usual case: a meter is read many
            # times a minute): no boundary to walk, the same as _integrate(true + offset, ...)
            step = self._step_cache
            if step[0] == known[2] and step[1] is self.tariff:
                if not self.relay_open and self.powered:
                    dt_us = _us(now - true)
                    rate = step[2]
                    reg, acc = self._reg, self._minute_acc
                    for kind, w in step[3]:
                        e = w * dt_us
                        reg[kind][rate] += e
                        acc[kind] += e
                self._true = now
                return
        end = now + offset
        m = true + before
        # energy follows true time; with a drifting clock a meter minute is not a true minute
        meter_us = _us(end - m)
        true_us = _us(now - true)
        while m < end:
            boundary = m.replace(second=0, microsecond=0) + _MIN
            stop = min(boundary, end)
            dt = _us(stop - m)
            self._integrate(m, dt if meter_us == true_us else dt * true_us // meter_us)
            m = stop
            if stop == boundary:
                self._on_minute(boundary)
        self._true = now
        self._minute_end = (end.replace(second=0, microsecond=0) + _MIN - offset, offset, _minute_index(end))

    def _power(self, m: datetime) -> tuple[float, float]:
        """Net active (kW, + import) and reactive (kvar, + inductive) power of the meter minute, as
        the meter measures it: the flow, turned round by reversed wiring."""
        idx = _minute_index(m)
        cached = self._power_cache
        if cached[0] == idx:
            return cached[1], cached[2]
        area = self._area
        if area is None:
            p, q = self._flow(m, idx)
        else:
            p, q = area.supply_flow(m - self._offset)
        if self.reversed:
            p, q = -p, -q
        self._power_cache = (idx, p, q)
        return p, q

    def _flow(self, m: datetime, idx: int) -> tuple[float, float]:
        """The load less rooftop PV at meter minute ``m`` (index ``idx``): what really flows."""
        prof = self.profile
        hour = m.hour
        load = max(0.0, prof.load_kw(hour, noise(self._key, 2, idx)))
        q = load * self._tanphi
        if hour in prof.capacitive_hours:
            q = -0.4 * q
        p = load
        if prof.pv_peak_kw:
            hod = hour + m.minute / 60.0
            if 6.0 < hod < 18.0:
                p -= prof.pv_peak_kw * math.sin(math.pi * (hod - 6.0) / 12.0) * (0.9 + 0.1 * noise(self._key, 3, idx))
        return p, q

    def flow_at(self, true: datetime) -> tuple[float, float]:
        """What really flows through this meter at true time ``true`` (kW, kvar; + towards the
        customer): nothing with the relay open or the supply lost; reversed wiring changes what the
        meter measures, not the flow.  An area's supply meter sums these over its customers."""
        if self.relay_open or not self.powered:
            return 0.0, 0.0
        m = true + self._offset
        idx = _minute_index(m)
        cached = self._power_cache
        if cached[0] == idx and self._area is None:
            p, q = cached[1], cached[2]
            return (-p, -q) if self.reversed else (p, q)
        if self._area is not None:
            return self._area.supply_flow(true)
        return self._flow(m, idx)

    def _integrate(self, m: datetime, dt_us: int) -> None:
        if self.relay_open or not self.powered or dt_us <= 0:
            return
        # load and tariff rate are constant within a meter minute: work out which registers tick
        # and by how much per microsecond once per minute (a meter is read many times a minute)
        idx = _minute_index(m)
        step = self._step_cache
        if step[0] != idx or step[1] is not self.tariff:
            p, q = self._power(m)
            rate = self.tariff.rate_of_minute(m.hour * 60 + m.minute) - 1
            a = IMP if p >= 0 else EXP
            s = S_IMP if p >= 0 else S_EXP
            quad = (Q1 if p >= 0 else Q2) if q >= 0 else (Q4 if p >= 0 else Q3)
            mw: tuple[tuple[int, int], ...] = ((a, round(abs(p) * 1_000_000)),  # mW: x us gives the register units
                  (quad, round(abs(q) * 1_000_000)),
                  (s, round(math.hypot(p, q) * 1_000_000)))
            step = self._step_cache = (idx, self.tariff, rate, mw)
        rate, mw = step[2], step[3]
        reg, acc = self._reg, self._minute_acc
        for kind, w in mw:
            e = w * dt_us
            reg[kind][rate] += e
            acc[kind] += e

    # --- events at minute boundaries -----------------------------------------------------------

    def _on_minute(self, t: datetime) -> None:
        self._update_demand(t)
        if t.minute == 0:
            if not self._hourly or self._hourly[0].time < t:  # not again after a clock set back
                self._hourly.appendleft(self._snapshot(t))
            if t.hour == 0:
                self._midnight(t)
        if (t.hour * 60 + t.minute) % self._curve_minutes == 0 and self.powered:  # no records without power
            self._record_curve(t)
        tf = self.timed_freeze
        if tf is not None and all(
            want is None or want == got for want, got in zip(tf, (t.minute, t.hour, t.day, t.month))
        ):
            self._timed_freezes.appendleft(self._snapshot(t))

    def _midnight(self, t: datetime) -> None:
        if self._daily and self._daily[0].time >= t:
            return  # already frozen (the clock was set back)
        snap = self._snapshot(t)
        self._daily.appendleft(snap)
        if t.day == self.settlement_day:
            self._settlements.appendleft(_Settlement(snap, dict(self._max_demand)))
            self._reset_demand(t)

    def _update_demand(self, t: datetime) -> None:
        minute = self._minute_acc
        window = self._window
        window.append(minute)
        if len(window) > DEMAND_MINUTES:
            old = window.popleft()
            ws = self._win_sum = [a + b - c for a, b, c in zip(self._win_sum, minute, old)]
        else:
            ws = self._win_sum = [a + b for a, b in zip(self._win_sum, minute)]
        self._minute_acc = [0] * _BASE
        if len(window) < DEMAND_MINUTES:
            return
        rate = self.tariff.rate_of_minute((t.hour * 60 + t.minute - 1) % 1440)  # the minute that ended
        md = self._max_demand
        for k, (_, parts) in enumerate(DEMAND_KINDS):
            e = sum(ws[i] for i in parts) if len(parts) > 1 else ws[parts[0]]
            if not e:
                continue
            d = e // _UNIT_PER_DEMAND_STEP
            if d > md[(k, 0)][0]:
                md[(k, 0)] = (d, t)
            if d > md[(k, rate)][0]:
                md[(k, rate)] = (d, t)

    def _reset_demand(self, t: datetime) -> None:
        self._max_demand = {(k, r): (0, t) for k in range(len(DEMAND_KINDS)) for r in range(RATES + 1)}

    def _hundredths(self) -> tuple[tuple[int, ...], ...]:
        per = _UNIT_PER_HUNDREDTH.__rfloordiv__  # v // _UNIT_PER_HUNDREDTH, without a genexpr per value
        return tuple([tuple(map(per, kind)) for kind in self._reg])

    def _snapshot(self, t: datetime) -> Snapshot:
        return Snapshot(t, self._hundredths())

    def _energy_values(self, wanted: frozenset[str] | None) -> dict[str, Value]:
        """The current energy registers named in ``wanted`` (None: all of them): the values
        ``self._snapshot(m).energy_values("energy.")`` holds for those names, reading only the
        registers they are made of (a poll asks for one or two, not 55)."""
        if wanted is None:
            return Snapshot(self._true, self._hundredths()).energy_values("energy.")
        reg = self._reg
        per = _UNIT_PER_HUNDREDTH
        out: dict[str, Value] = {}
        for name, parts in ENERGY_KINDS:
            names = _ENERGY_NAMES[name]
            if wanted.isdisjoint(names):
                continue
            wrap = _WRAP_SIGNED if len(parts) > 1 else _WRAP
            if len(parts) == 1:
                rates = [v // per for v in reg[parts[0]]]
            else:
                rates = [sum(reg[i][r] // per for i in parts) for r in range(RATES)]
            if names[0] in wanted:
                out[names[0]] = _d(sum(rates) % wrap, 2)
            for r in range(RATES):
                if names[r + 1] in wanted:
                    out[names[r + 1]] = _d(rates[r] % wrap, 2)
        return out

    def _record_curve(self, t: datetime) -> None:
        values = self._variables(t)
        h = self._hundredths()
        for name, parts in ENERGY_KINDS:
            wrap = _WRAP_SIGNED if len(parts) > 1 else _WRAP
            values[f"energy.{name}.total"] = _d(sum(sum(h[i]) for i in parts) % wrap, 2)
        rec = array(
            "q", (int(values[_CURVE_SOURCE[n]].scaleb(_CURVE_PLACES[n])) for n in self._curve_names)  # type: ignore[union-attr]
        )
        self._curves[t] = rec
        if self._last_curve is None or t > self._last_curve:
            self._last_curve = t
        while len(self._curves) > self.curve_capacity:
            del self._curves[min(self._curves)]

    # --- instantaneous values ------------------------------------------------------------------

    def _cheap_variables(self, m: datetime, wanted: Collection[str]) -> dict[str, Value]:
        """The ``wanted`` voltages, frequency and clock battery at meter time ``m``: the same
        numbers :meth:`_variables` gives, without the power flow it works out for the rest."""
        sec = _minute_index(m) * 60 + m.second
        out: dict[str, Value] = {}
        key = self._key
        scale = self._v_scale if self.powered else _NO_VOLTS
        for i in range(self.phases):
            name = _VOLTAGE_NAMES[i]
            if name in wanted:
                out[name] = _q((220.0 + self._v_bias[i] + 1.5 * noise(key, 40 + i, sec)) * scale[i], 1)
        if "frequency" in wanted:
            out["frequency"] = _q(50.0 + 0.03 * noise(key, 50, sec), 2)
        if "battery.clock" in wanted:
            out["battery.clock"] = _q(3.60 + 0.02 * noise(key, 51, sec // 86_400), 2)
        return out

    def _variables(self, m: datetime, wanted: Collection[str] | None = None) -> dict[str, Value]:
        """Instantaneous values at meter time ``m``; with ``wanted``, only those are made Decimals
        (the float work is shared: the neutral current needs every phase)."""
        p, q = (0.0, 0.0) if self.relay_open or not self.powered else self._power(m)
        sec = _minute_index(m) * 60 + m.second
        out: dict[str, tuple[float, int]] = {}  # name -> (value, decimal places)
        names = PHASE_NAMES[: self.phases]
        scale = self._v_scale if self.powered else _NO_VOLTS
        weights = self._weights
        i_phasor = 0j
        for i, ph in enumerate(names):
            v = (220.0 + self._v_bias[i] + 1.5 * noise(self._key, 40 + i, sec)) * scale[i]
            pp, qq = p * weights[i], q * weights[i]
            s = math.hypot(pp, qq)
            amps = s * 1000.0 / v if v else 0.0
            out[f"voltage.{ph}"] = (v, 1)
            out[f"current.{ph}"] = (-amps if pp < 0 else amps, 3)
            out[f"power.active.{ph}"] = (pp, 4)
            out[f"power.reactive.{ph}"] = (qq, 4)
            out[f"power.apparent.{ph}"] = (-s if pp < 0 else s, 4)
            out[f"pf.{ph}"] = (pp / s if s else 1.0, 3)
            angle = math.degrees(math.atan2(qq, pp)) % 360.0 if s else 0.0
            out[f"angle.{ph}"] = (angle, 1)
            shift = math.radians(-120.0 * i) - math.atan2(qq, pp)
            i_phasor += amps * complex(math.cos(shift), math.sin(shift))
        s_total = math.hypot(p, q)
        out["power.active.total"] = (p, 4)
        out["power.reactive.total"] = (q, 4)
        out["power.apparent.total"] = (-s_total if p < 0 else s_total, 4)
        out["pf.total"] = (p / s_total if s_total else 1.0, 3)
        out["current.n"] = (abs(i_phasor), 3)
        out["frequency"] = (50.0 + 0.03 * noise(self._key, 50, sec), 2)
        out["battery.clock"] = (3.60 + 0.02 * noise(self._key, 51, sec // 86_400), 2)
        n = len(self._window)  # minutes in the sliding demand window so far
        net = (self._win_sum[IMP] - self._win_sum[EXP]) / n if n else 0.0
        out["demand.active.now"] = (net * 60 / _UNIT_PER_KWH, 4)
        return {k: _q(x, places) for k, (x, places) in out.items() if wanted is None or k in wanted}

    def status3(self) -> int:
        return status3_word(
            relay_open=self.relay_open,
            command_open=self.command_open,
            pre_trip=self.pre_trip_alarm,
            protected=self.protected,
        )

    def _demand_values(self, table: dict[tuple[int, int], tuple[int, datetime]], suffix: str) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for k, (name, _) in enumerate(DEMAND_KINDS):
            for r in range(RATES + 1):
                d, when = table[(k, r)]
                q = f"demand.{name}.{'total' if r == 0 else f'rate{r}'}{suffix}"
                out[q] = _d(d, 4)
                out[f"{q}.time"] = when.replace(second=0, microsecond=0)
        return out

    def values(self, now: datetime, quantities: Collection[str] | None = None) -> dict[str, Value]:
        """Every quantity this meter supports at ``now``, by catalogue name.

        ``quantities`` limits the work to the sections those names live in (the dict may still
        hold more).  Frozen and curve quantities are those of the latest freeze and record; use
        :meth:`frozen` and :meth:`curve` for older ones.
        """
        self.advance(now)
        m = self.meter_clock(now)
        if isinstance(quantities, tuple):  # what the catalogue hands out: hashable, asked again and again
            plan = _PLANS.get(quantities)
            if plan is None:
                if len(_PLANS) >= _PLANS_KEPT:
                    _PLANS.clear()
                plan = _PLANS[quantities] = _values_plan(quantities)
        else:
            plan = _values_plan(quantities)
        sections = plan.sections
        out: dict[str, Value] = {}
        if "energy" in sections:
            # a read asks for one register: make only the ones asked for
            out.update(self._energy_values(plan.energy))
        if "energy_prev" in sections:
            for s, st in enumerate(self._settlements, start=1):
                out.update(st.snapshot.energy_values("energy.", f".prev{s}"))
        if "demand" in sections:
            out.update(self._demand_values(self._max_demand, ""))
        if "demand_prev" in sections:
            for s, st in enumerate(self._settlements, start=1):
                out.update(self._demand_values(st.demand, f".prev{s}"))
        if "variables" in sections:
            if plan.cheap is not None:
                out.update(self._cheap_variables(m, plan.cheap))
            else:
                out.update(self._variables(m, quantities))
        if "frozen" in sections:
            for which in ("daily", "hourly"):
                latest = self.frozen(which, 1)
                if latest:
                    out.update(latest)
        if "curve" in sections and self._last_curve is not None:
            for name in self._curve_names:
                points = self.curve(name, self._last_curve, 1)
                if points and points[1][0] is not None:
                    out[name] = points[1][0]
        if "misc" in sections:
            clock = m.replace(microsecond=0)
            out["clock"] = clock
            out["meter.date"] = clock.replace(hour=0, minute=0, second=0)
            out["meter.time"] = clock.strftime("%H:%M:%S")
            out["meter.address"] = self.address
            out["meter.number"] = self.address
            p, q = (0.0, 0.0) if self.relay_open or not self.powered else self._power(m)
            active_reverse = _q(p, 4) < 0
            reactive_reverse = _q(q, 4) < 0
            # word 1: D4 / D5 active / reactive power reverse; word 2: the same per phase (D0..D2
            # active, D4..D6 reactive), each phase carrying its share of the total's direction
            out["status.word1"] = (WORD1_ACTIVE_REVERSE if active_reverse else 0) | (
                WORD1_REACTIVE_REVERSE if reactive_reverse else 0)
            phases = (1 << self.phases) - 1
            out["status.word2"] = (phases if active_reverse else 0) | (phases << 4 if reactive_reverse else 0)
            for n in (4, 5, 6, 7):
                out[f"status.word{n}"] = 0
            word3 = self.status3()
            out["status.word3"] = word3
            out["relay.open"] = self.relay_open
            out["relay.command_open"] = self.command_open
            out["alarm.pre_trip"] = self.pre_trip_alarm
            out["relay.protected"] = self.protected
            out.update(self._status97(active_reverse, reactive_reverse))
        if "events" in sections:
            out["event.power_down.count"] = self.power_downs
            latest = self.power_down_record(1)
            if latest:
                out.update(latest)
        return out

    def _status97(self, active_reverse: bool, reactive_reverse: bool) -> dict[str, Value]:
        """The DL/T 645-1997 running status word C020 and its flags.

        D4 / D5: active / reactive power reverse, the signs of ``power.active.total`` /
        ``power.reactive.total`` (a 1997 meter reports power unsigned and the direction here).
        D2, clock battery low: never -- the model's battery stays near 3.6 V.
        """
        battery_low = False
        word = (
            (BATTERY_LOW_BIT if battery_low else 0)
            | (ACTIVE_REVERSE_BIT if active_reverse else 0)
            | (REACTIVE_REVERSE_BIT if reactive_reverse else 0)
        )
        return {
            STATUS_WORD_97: word,
            "alarm.battery_low": battery_low,
            "power.active.reverse": active_reverse,
            "power.reactive.reverse": reactive_reverse,
        }

    # --- frozen data and curves ----------------------------------------------------------------

    def frozen(self, which: str, n: int) -> dict[str, Value] | None:
        """The ``n``-th last ``"daily"`` or ``"hourly"`` freeze as catalogue values, or None."""
        store = {"daily": self._daily, "hourly": self._hourly}.get(which)
        if store is None:
            raise ValueError(f"meter {self.address}: no {which!r} freezes (daily or hourly)")
        if not 1 <= n <= len(store):
            return None
        snap = store[n - 1]
        out = snap.energy_values(f"frozen.{which}.energy.")
        out[f"frozen.{which}.time"] = snap.time
        return out

    def frozen_snapshots(self, which: str) -> tuple[Snapshot, ...]:
        """Freezes newest first: ``daily``, ``hourly``, ``instant`` (freeze now) or ``timed``."""
        store = {
            "daily": self._daily,
            "hourly": self._hourly,
            "instant": self._instant_freezes,
            "timed": self._timed_freezes,
        }[which]
        return tuple(store)

    @property
    def curve_quantities(self) -> tuple[str, ...]:
        return self._curve_names

    def curve(
        self, quantity: str, start: datetime | None, count: int
    ) -> tuple[datetime, list[Value | None]] | None:
        """Up to ``count`` load-curve points of ``quantity`` and the first point's time.

        ``start`` None means the last ``count`` records; otherwise the first point is the first
        grid time at or after ``start``.  Grid times without a record are None (``FF`` on the
        wire); points after the newest record are not returned.  None if nothing matches.
        """
        if quantity not in self._curve_names or self._last_curve is None or count < 1:
            return None
        step = self.curve_interval
        if start is None:
            first = self._last_curve - (count - 1) * step
        else:
            k = self._curve_minutes
            idx = -(-_minute_index(start) // k) * k
            first = _EPOCH + idx * _MIN
        if first > self._last_curve:
            return None
        pos = self._curve_names.index(quantity)
        places = _CURVE_PLACES[quantity]
        points: list[Value | None] = []
        t = first
        while len(points) < count and t <= self._last_curve:
            rec = self._curves.get(t)
            points.append(None if rec is None else _d(rec[pos], places))
            t += step
        return first, points

    # --- commands ------------------------------------------------------------------------------

    def _authorize(self, password: str, operator: str | None, what: str) -> Refusal | None:
        """``operator`` None: the command has no operator code (DL/T 645-1997), only the password counts."""
        if password.upper() != self.password:
            return Refusal(MeterErrorBits.UNAUTHORIZED, f"meter {self.address}: {what} with wrong password {password}")
        if operator is not None and self.operators is not None and operator.upper() not in self.operators:
            return Refusal(
                MeterErrorBits.UNAUTHORIZED, f"meter {self.address}: {what} by unknown operator code {operator}"
            )
        return None

    def control(
        self, command: RelayCommand, *, password: str, operator: str, valid_until: datetime, now: datetime
    ) -> Refusal | None:
        """A 1C relay-control command.  None when accepted, else the :class:`Refusal`."""
        self.advance(now)
        self.control_log.append((now, command))  # what reached the meter, for tests: never sent twice
        what = f"relay control {command.name}"
        refused = self._authorize(password, operator, what)
        if refused:
            return refused
        clock = self.meter_clock(now)
        if valid_until < clock.replace(microsecond=0):
            return Refusal(
                MeterErrorBits.OTHER,
                f"meter {self.address}: {what} expired at {valid_until.isoformat()} (meter clock {clock.isoformat()})",
            )
        if command is RelayCommand.TRIP:
            if self.protected:
                return Refusal(MeterErrorBits.OTHER, f"meter {self.address}: trip refused, meter is protected (保电)")
            self.command_open = True
            self._permit(False, now)
            if not self.stuck_relay:
                self.relay_open = True
        elif command is RelayCommand.RECLOSE:
            self.command_open = False
            self._permit(False, now)
            if not self.stuck_relay:
                self.relay_open = False
        elif command is RelayCommand.RECLOSE_ALLOWED:
            # 合闸允许: the command state closes, the relay waits for the customer's button
            self.command_open = False
            self._permit(self.relay_open, now)
        elif command is RelayCommand.ALARM:
            self.pre_trip_alarm = True
        elif command is RelayCommand.ALARM_RELEASE:
            self.pre_trip_alarm = False
        elif command is RelayCommand.PROTECT:
            self.protected = True
        elif command is RelayCommand.PROTECT_RELEASE:
            self.protected = False
        return None

    def _permit(self, waiting: bool, now: datetime) -> None:
        self.reclose_permitted = waiting
        self._press_at = now + self.button_after if waiting and self.button_after is not None else None

    def press_button(self, now: datetime) -> bool:
        """The customer presses the meter's button at true time ``now``: after a reclose permit
        (合闸允许) the relay closes.  False when nothing happens -- no permit waiting, no supply, or a
        stuck relay (the permit is then used up all the same)."""
        self.advance(now)
        if not self.reclose_permitted or not self.powered:
            return False
        self._press_at = None
        return self._button_pressed()

    def _button_pressed(self) -> bool:
        self.reclose_permitted = False
        if self.stuck_relay:
            return False
        self.relay_open = False
        self._changed()
        return True

    # --- conditions: what the supply and the wiring do to the meter --------------------------------

    def _changed(self) -> None:
        """A condition changed at the time reached: work the minute's power out again."""
        self._power_cache = (-1, 0.0, 0.0)
        self._step_cache = (-1, None, 0, ())

    def power_down(self, now: datetime) -> None:
        """The supply is lost at true time ``now``: the meter falls silent (the bus does not
        answer), its registers stand still and it takes no load-curve records; its clock runs on
        the battery and its freezes are taken at power-up with the registers they would have had.
        A power-down event (掉电事件) starts."""
        self.advance(now)
        if not self.powered:
            return
        self.powered = False
        self.power_downs += 1
        self._power_down_log.appendleft([self.meter_clock(now).replace(microsecond=0), None])
        self._changed()

    def power_up(self, now: datetime) -> None:
        """The supply is back at true time ``now``: the power-down event ends (its record now
        holds start and end, meter clock)."""
        self.advance(now)
        if self.powered:
            return
        self.powered = True
        self._power_down_log[0][1] = self.meter_clock(now).replace(microsecond=0)
        self._changed()

    def power_down_record(self, n: int) -> dict[str, Value] | None:
        """The ``n``-th last power-down event (1 = the latest) as ``event.power_down.start`` and,
        once power is back, ``event.power_down.end``; None if there is no such event."""
        if not 1 <= n <= len(self._power_down_log):
            return None
        start, end = self._power_down_log[n - 1]
        assert start is not None
        out: dict[str, Value] = {"event.power_down.start": start}
        if end is not None:
            out["event.power_down.end"] = end
        return out

    def set_reversed(self, reversed_: bool, now: datetime) -> None:
        """Reversed wiring (a CT or the meter connected backwards) from true time ``now``: the meter
        measures the flow turned round -- active and reactive power negative, the export and Q3
        registers grow, status words 1 and 2 say reverse.  The flow itself does not change."""
        self.advance(now)
        self.reversed = bool(reversed_)
        self._changed()

    def set_voltage(self, scale: float | tuple[float, ...], now: datetime) -> None:
        """The supply voltage times ``scale`` from true time ``now`` (one factor, or one per phase):
        below 1 a sag, above 1 a swell, 1 normal.  The load takes the same power, so its current
        rises as the voltage falls."""
        scales = (float(scale),) * self.phases if isinstance(scale, (int, float)) else tuple(map(float, scale))
        lo, hi = VOLTAGE_SCALE_RANGE
        if len(scales) != self.phases or not all(lo <= x <= hi for x in scales):
            raise ValueError(f"meter {self.address}: voltage scale {scale!r} must be {self.phases} factor(s) "
                             f"within {lo}..{hi}")
        self.advance(now)
        self._v_scale = scales
        self._changed()

    def set_phase_shares(self, shares: tuple[float, ...] | None, now: datetime) -> None:
        """How the load splits over the phases from true time ``now`` (shares, normalised; None: the
        meter's own, nearly even split): an uneven split is a current imbalance."""
        if shares is None:
            weights = self._own_weights
        else:
            shares = tuple(float(x) for x in shares)
            if self.phases != 3 or len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
                raise ValueError(f"meter {self.address}: phase shares {shares!r} must be three shares >= 0 "
                                 "of a three-phase meter's load")
            weights = tuple(x / sum(shares) for x in shares)
        self.advance(now)
        self._weights = weights
        self._changed()

    @property
    def clock_drift(self) -> float:
        """Seconds a day the meter clock gains (negative: loses)."""
        return self._drift * 86_400.0

    def set_clock_drift(self, seconds_per_day: float, now: datetime) -> None:
        """From true time ``now`` the meter clock gains ``seconds_per_day`` (negative: loses) on true
        time; a time sync sets it right and it drifts on from there."""
        if not abs(seconds_per_day) <= MAX_DRIFT_PER_DAY:
            raise ValueError(f"meter {self.address}: clock drift {seconds_per_day} s/day must be within "
                             f"+-{MAX_DRIFT_PER_DAY:g}")
        self.advance(now)
        self._drift = seconds_per_day / 86_400.0
        self._minute_end = None

    def write(self, di: int, data: bytes, *, password: str, operator: str | None, now: datetime) -> Refusal | None:
        """A 14 write: the clock (0400010C), date (04000101) or time (04000102).

        ``data`` in the 2007 layout of ``di``.  ``operator`` None: a write without an operator code
        (a DL/T 645-1997 04 write, translated by the bus), checked by password alone.
        """
        self.advance(now)
        refused = self._authorize(password, operator, f"write of {di:08X}")
        if refused:
            return refused
        if di not in (0x0400010C, 0x04000101, 0x04000102):
            return Refusal(MeterErrorBits.NO_DATA, f"meter {self.address}: {di:08X} is not writable here")
        try:
            value = decode(di, data)[0].value
        except ProtocolError as exc:
            return Refusal(MeterErrorBits.OTHER, f"meter {self.address}: bad write data for {di:08X}: {exc}")
        clock = self.meter_clock(now)
        if di == 0x0400010C:
            new = value
        elif di == 0x04000101:
            new = datetime.combine(value.date(), clock.time())  # type: ignore[union-attr]
        else:
            hh, mm, ss = (int(x) for x in str(value).split(":"))
            try:
                new = clock.replace(hour=hh, minute=mm, second=ss)
            except ValueError:
                return Refusal(MeterErrorBits.OTHER, f"meter {self.address}: {value} is not a time of day")
        self.set_clock(new, now=now)  # type: ignore[arg-type]
        return None

    def clear_demand(self, *, password: str, now: datetime) -> Refusal | None:
        """Clear the current maximum demand (DL/T 645-1997 10): every register 0, its time the meter clock.

        Settled (``prevN``) demand stays.  Password only, as the 1997 command has no operator code.
        """
        self.advance(now)
        refused = self._authorize(password, None, "clear demand")
        if refused:
            return refused
        self._reset_demand(self.meter_clock(now).replace(second=0, microsecond=0))
        return None

    def change_password(self, old: str, new: str, *, now: datetime) -> Refusal | None:
        """Replace the password (DL/T 645-1997 0F) when ``old`` ("PAP2P1P0") is the current one.

        The model keeps one password, level included: ``new`` replaces it whole.
        """
        self.advance(now)
        refused = self._authorize(old, None, "change password")
        if refused:
            return refused
        try:
            self.password = _check_code(new, f"meter {self.address}: new password")
        except ValueError as exc:
            return Refusal(MeterErrorBits.OTHER, str(exc))
        return None

    def set_clock(self, meter_time: datetime, *, now: datetime) -> None:
        """Time sync: from true time ``now`` on, the meter clock shows ``meter_time``.

        A jump forward takes the daily freezes and settlements of the midnights it skips.
        """
        self.advance(now)
        old = self.meter_clock(now)
        self._offset = meter_time - self._true
        self._minute_acc = [0] * _BASE
        self._window.clear()
        self._win_sum = [0] * _BASE
        if meter_time > old:
            day = old.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
            skipped = [d for d in _days(day, meter_time)]
            for d in skipped[-FROZEN_KEEP:]:
                self._midnight(d)

    def backfill_daily(self, days: int, step: timedelta = timedelta(minutes=15)) -> None:
        """Give a meter just made a history: daily freezes at the ``days`` meter midnights before its
        start, as if it had run since -- each the start registers less the energy its flow (as
        :meth:`_power` gives it: conditions, area) would have carried from that midnight to the
        start, worked out in ``step`` pieces (coarser than the live minute walk; an area's supply
        meter and its customers use the same pieces, so their balance holds).  A register too small
        for its history (the export registers of a PV meter, say) is raised by what is missing: the
        meter simply had more on it.  Only before the meter first advances."""
        if self._daily or self._settlements or self._minute_end is not None:
            raise ValueError(f"meter {self.address}: history can only be made before the meter runs")
        if not 0 <= days <= FROZEN_KEEP:
            raise ValueError(f"meter {self.address}: {days} days of history: 0..{FROZEN_KEEP}")
        if step <= timedelta(0) or _MIN % step and step % _MIN:
            raise ValueError(f"meter {self.address}: step {step} must divide a minute or be whole minutes")
        start = self.meter_clock(self._true)
        midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
        used = [[0] * RATES for _ in range(_BASE)]  # energy from the walk's position to the start
        history: list[tuple[datetime, list[list[int]]]] = []
        t = start
        dead = self.relay_open or not self.powered  # a history like the present: nothing flowed
        for n in range(days):
            day = midnight - timedelta(days=n)
            while t > day and not dead:
                t0 = max(day, t - step)
                mid = t0 + (t - t0) / 2
                p, q = self._power(mid)
                rate = self.tariff.rate_of_minute(mid.hour * 60 + mid.minute) - 1
                dt = _us(t - t0)
                a, s_ = (IMP, S_IMP) if p >= 0 else (EXP, S_EXP)
                quad = (Q1 if p >= 0 else Q2) if q >= 0 else (Q4 if p >= 0 else Q3)
                for kind, kw in ((a, abs(p)), (quad, abs(q)), (s_, math.hypot(p, q))):
                    used[kind][rate] += round(kw * 1_000_000) * dt
                t = t0
            history.append((day, [row[:] for row in used]))
        self._power_cache = (-1, 0.0, 0.0)
        reg = self._reg
        for k in range(_BASE):  # the oldest day used the most: raise what it would take below zero
            for r in range(RATES):
                short = used[k][r] - reg[k][r]
                if short > 0:
                    reg[k][r] += -(-short // _UNIT_PER_HUNDREDTH) * _UNIT_PER_HUNDREDTH
        for day, spent in reversed(history):  # oldest first: the deque holds the newest on the left
            self._daily.appendleft(Snapshot(day, tuple(
                tuple((reg[k][r] - spent[k][r]) // _UNIT_PER_HUNDREDTH for r in range(RATES)) for k in range(_BASE))))

    def freeze(
        self,
        *,
        now: datetime,
        minute: int | None = None,
        hour: int | None = None,
        day: int | None = None,
        month: int | None = None,
    ) -> None:
        """A 16 freeze: all wildcards freezes now; otherwise sets the timed-freeze time."""
        self.advance(now)
        if minute is None and hour is None and day is None and month is None:
            self._instant_freezes.appendleft(self._snapshot(self.meter_clock(now).replace(microsecond=0)))
        else:
            self.timed_freeze = (minute, hour, day, month)


def _days(first: datetime, last: datetime) -> Iterable[datetime]:
    d = first
    while d <= last:
        yield d
        d += timedelta(days=1)
