"""Plausibility at the door: readings a meter cannot have produced are flagged, never charged.

A CRC-valid reply can still carry nonsense: a Modbus float32 of ``7F7F FFFF`` (3.4E38 kWh), a
terminal's pushed ``1e30``, a register that jumps by more energy than the meter's circuit can
carry in the time since its last reading.  Such a value is stored (the technician wants to see
what came in) with quality ``implausible``, reported as a metering anomaly naming the meter and
the value, and kept away from everything that counts money or decides control (they take
``good`` readings only).

The rules, checked in this order for every reading with a numeric value:

1. *Not a number*: NaN and infinities (``Decimal`` can hold both).  And *not a meter's number*:
   a value written out in more than :data:`MAX_TEXT` characters (a pushed ``0.1111…`` of 10,000
   digits), or not zero yet below 10^:data:`MIN_EXPONENT` (``1E-999999``): no register, float
   register times scale and CT × PT included, is written that long or that small.
2. *Beyond the register's span*: an energy register counts from 0 up to its span and wraps
   there: DL/T 645 registers are XXXXXX.XX kWh on the meter (10^6), a Modbus integer register
   ``2^bits × scale``, a Modbus float register at most :data:`FLOAT_ENERGY_SPAN`; primary-side
   readings multiply the span by CT × PT.  A negative energy register is beyond it too.  Other
   quantities (volts, amps, kW, power factor) are held to :data:`MAGNITUDE_CEILING`: no meter
   reports 10^12 of anything, and a value that large would poison every sum it enters.  Power
   in kW, kvar or kVA is held to :data:`POWER_ALLOWANCE` × ``max_kw`` (below): two samples of
   ``5E+11`` kW would otherwise trip a customer under a power limit (定值控制).
3. *An advance the circuit cannot carry*: energy registers (active and reactive, each rate,
   live and daily frozen kept apart) may rise between two readings by at most
   ``max_kw × hours + 2 register steps`` (the steps absorb the register's 0.01 kWh resolution on
   a short interval).  ``max_kw`` is :meth:`Rating.max_kw`: rated (maximum) current × phase
   voltage × phases × an overload allowance, × CT × PT.  The previous reading of the register,
   whatever its verdict, is the baseline (a spike is flagged and the reading after it, back where
   it was, is not; a register that truly jumped is flagged once here and then held by charging,
   which compares with the last *charged* value and never charges the jump: an operator settles
   it with ``meterd replace-meter``).  A reading older than the baseline is not judged against it.

The baseline lives in memory: after a restart the first reading of each register is judged by
rules 1 and 2 only, and charging's own check (the same rule against its persisted cursor) still
stands between it and the ledger.

:class:`Gate` is pure: readings in, (readings with verdicts, findings) out; time comes from the
readings' own timestamps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Final

from meterd.clock import CST, local_text
from meterd.readings import Quality, Reading

# A DL/T 645 energy register is XXXXXX.XX kWh on the meter (secondary side): it wraps at 10^6.
DLT645_ENERGY_SPAN: Final = Decimal(1_000_000)
# A float register has no span of its own; no meter's display counts 10^10 kWh.
FLOAT_ENERGY_SPAN: Final = Decimal(10) ** 10
# Any other quantity: beyond this it is not a measurement.
MAGNITUDE_CEILING: Final = Decimal(10) ** 12
# Rule 1: a meter's number written out is short (a float64's 17 digits times a scale and CT × PT:
# under 50 characters) ...
MAX_TEXT: Final = 100
# ... and, if not zero, no smaller than a float64 can be (its least subnormal is 4.9E-324)
MIN_EXPONENT: Final = -400
# Power (kW, kvar, kVA) beyond this many times what the meter can carry (max_kw) is not a reading
POWER_ALLOWANCE: Final = Decimal(10)
_POWER_UNITS: Final = frozenset(("kW", "kvar", "kVA"))
# One count of a 0.01 kWh register; the advance rule allows two (secondary side, × CT × PT).
REGISTER_STEP: Final = Decimal("0.01")
_ENERGY_PREFIXES: Final = ("energy.", "frozen.daily.energy.", "frozen.monthly.energy.")
_HOUR_SECONDS: Final = Decimal(3600)
_TIGHTER: Final = 1 - 1e-9  # a float screen errs towards the exact judgement
_KILO: Final = Decimal(1000)


def is_energy(quantity: str) -> bool:
    """A cumulative energy register (kWh or kvarh), live or frozen."""
    return quantity.startswith(_ENERGY_PREFIXES)


@dataclass(frozen=True, slots=True)
class Rating:
    """What a meter's circuit can carry, on the meter's (secondary) side.

    The defaults are the loosest common direct-connected meter, so that they flag only the
    impossible: three phases of 220 V at 100 A (a 10(100) A meter), 20 % overload: 79.2 kW.
    Give a meter or a model its own rating to tighten it (a 5(60) A single-phase meter:
    ``rated_current = 60, phases = 1``; a CT-operated 1.5(6) A meter: ``rated_current = 6``).
    """

    rated_current: Decimal = Decimal(100)  # A per phase: the meter's maximum current (Imax)
    rated_voltage: Decimal = Decimal(220)  # V, phase to neutral (57.7 for a 3×100 V PT meter)
    phases: int = 3
    overload: Decimal = Decimal("1.2")  # how far past its rating a meter may be driven

    def max_kw(self, multiplier: Decimal = Decimal(1)) -> Decimal:
        """The most power (kW, primary side for ``multiplier`` = CT × PT) the meter can carry."""
        return self.rated_current * self.rated_voltage * self.phases * self.overload * multiplier / _KILO


DEFAULT_RATING: Final = Rating()


def max_advance(max_kw: Decimal, step: Decimal, t0: datetime, t1: datetime) -> Decimal:
    """The most a register may rise over (t0, t1]: ``max_kw × hours + 2 steps``."""
    seconds = Decimal((t1 - t0).total_seconds())
    return max_kw * seconds / _HOUR_SECONDS + 2 * step


@dataclass(frozen=True, slots=True)
class MeterBounds:
    """One meter's limits, primary side (the side readings are stored on)."""

    max_kw: Decimal
    step: Decimal  # one register count, primary kWh
    spans: Mapping[str, Decimal]  # energy quantity -> its register's span; others: ``span``
    span: Decimal  # energy registers not in ``spans``

    @classmethod
    def of(cls, rating: Rating, multiplier: Decimal = Decimal(1), spans: Mapping[str, Decimal] | None = None,
           span: Decimal = DLT645_ENERGY_SPAN) -> MeterBounds:
        """Bounds from a rating and CT × PT; ``spans`` and ``span`` are already primary."""
        return cls(rating.max_kw(multiplier), REGISTER_STEP * multiplier, dict(spans or {}), span * multiplier)

    def span_of(self, quantity: str) -> Decimal:
        base = quantity
        for prefix in ("frozen.daily.", "frozen.monthly."):
            if base.startswith(prefix):
                base = base[len(prefix):]
                break
        return self.spans.get(base, self.span)


DEFAULT_BOUNDS: Final = MeterBounds.of(DEFAULT_RATING)


@dataclass(frozen=True, slots=True)
class Implausible:
    """Why one reading was flagged."""

    meter: str
    quantity: str
    at: datetime
    value: object
    reason: str

    def describe(self, zone: tzinfo = CST) -> str:
        """For the operator: the instant in the site's ``zone``, with its offset."""
        return f"meter {self.meter} {self.quantity} = {_show(self.value)} at {local_text(self.at, zone)}: {self.reason}"


def _show(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Gate:
    """Judges readings as they arrive; keeps each energy register's previous reading.

    ``bounds`` maps meter -> :class:`MeterBounds`; a meter not in it gets ``default`` (the
    default rating, CT × PT of 1).  Memory: one entry per (meter, energy quantity) seen.
    """

    __slots__ = ("_last", "_power", "_rules", "bounds", "default", "zone")

    def __init__(self, bounds: Mapping[str, MeterBounds], default: MeterBounds = DEFAULT_BOUNDS, *,
                 zone: tzinfo = CST) -> None:
        self.bounds = dict(bounds)
        self.default = default
        self.zone = zone  # the site's: the times in its reasons
        self._last: dict[tuple[str, str], tuple[datetime, Decimal]] = {}
        # (meter, quantity) -> (span, kWh a second, slack kWh, bounds): the advance rule as floats,
        # a hair tighter than the exact one, screens the common case; the rest is judged exactly
        self._rules: dict[tuple[str, str], tuple[Decimal, float, float, MeterBounds]] = {}
        # id(bounds) -> the most power a meter may report (rule 2); the bounds live in self.bounds
        self._power: dict[int, tuple[MeterBounds, Decimal]] = {}

    def _rule(self, key: tuple[str, str]) -> tuple[Decimal, float, float, MeterBounds]:
        bounds = self.bounds.get(key[0], self.default)
        rule = self._rules[key] = (bounds.span_of(key[1]), float(bounds.max_kw) / 3600 * _TIGHTER,
                                   float(2 * bounds.step) * _TIGHTER, bounds)
        return rule

    def screen(self, readings: Iterable[Reading]) -> tuple[list[Reading], list[Implausible]]:
        """The readings, each implausible one replaced by a copy with quality ``implausible``
        (same order, nothing dropped), and why each was flagged."""
        out: list[Reading] = []
        found: list[Implausible] = []
        for r in readings:
            reason = self.judge(r)
            if reason is None:
                out.append(r)
            else:
                found.append(Implausible(r.meter, r.quantity, r.timestamp, r.value, reason))
                out.append(replace(r, quality=Quality.IMPLAUSIBLE))
        return out, found

    def judge(self, r: Reading) -> str | None:
        """Why ``r`` is implausible, or None.  Remembers energy readings as the next baseline."""
        value = r.value
        if type(value) is not Decimal:
            return None  # times, status words, text: not measurements of magnitude
        if not value.is_finite():
            return "not a number"
        if value.adjusted() < MIN_EXPONENT and value:
            return f"not a meter's number (not zero, yet below 1E{MIN_EXPONENT})"
        if len(text := str(value)) > MAX_TEXT:
            return f"not a meter's number ({len(text)} characters written out)"
        quantity = r.quantity
        if not is_energy(quantity):
            if abs(value) >= MAGNITUDE_CEILING:
                return f"beyond any measurement (|value| >= {MAGNITUDE_CEILING:E})"
            if quantity.startswith("power.") and r.unit in _POWER_UNITS:
                bounds = self.bounds.get(r.meter, self.default)
                cached = self._power.get(id(bounds))  # meters alike share their bounds (and this)
                if cached is None or cached[0] is not bounds:
                    cached = self._power[id(bounds)] = (bounds, POWER_ALLOWANCE * bounds.max_kw)
                if abs(value) > cached[1]:
                    return f"more power than the meter can carry (|value| > {POWER_ALLOWANCE} × {bounds.max_kw} kW)"
            return None
        key = (r.meter, quantity)
        span, per_second, slack, bounds = self._rules.get(key) or self._rule(key)
        if value < 0 or value >= span:
            return f"beyond the register's span 0..{span}"
        last = self._last.get(key)
        at = r.timestamp
        if last is not None and at <= last[0]:
            return None  # older than the baseline: nothing to compare with
        self._last[key] = (at, value)
        if last is None or value <= last[1]:
            return None  # a fall is charging's to judge (rollover or a register going back)
        if float(value - last[1]) <= per_second * (at - last[0]).total_seconds() + slack:
            return None
        allowed = max_advance(bounds.max_kw, bounds.step, last[0], at)
        if value - last[1] > allowed:
            hours = (at - last[0]).total_seconds() / 3600
            return (f"advanced {value - last[1]} since {last[1]} at {local_text(last[0], self.zone)} ({hours:.4g} h): "
                    f"more than the {bounds.max_kw} kW the meter can carry allows ({allowed.normalize()})")
        return None
