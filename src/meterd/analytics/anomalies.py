"""Abnormal usage (异常用电分析): pure detectors over one meter's readings, and an event store.

The source text (SOURCES.md, 3.4.1 计量设备故障) sorts metering faults into three kinds and names
how each shows up in what the master collects: a voltage-circuit fault (电压回路故障) as voltage
out of limits (电压越限), a current-circuit fault (电流回路故障) as three-phase load imbalance
(三相负荷不平衡), a failed meter (电能表故障) as no data (无数据).  Next to those: energy running
backwards on a consumer's meter (wiring error or tampering), a meter clock that has drifted, and
energy recorded while the relay is open (a stuck relay or a bypass).

Strategy: :func:`detect` looks at a window of one meter's readings (any quantities, any order)
and reports the conditions that hold *at the end of the window* -- a run of samples reaching up to
the newest one, long enough to count.  An excursion that already recovered inside the window is
not a finding; so a store fed the findings of each check, and told what was checked, opens an
event when a condition appears and closes it when a check no longer finds it
(:class:`AnomalyStore`).  Two exceptions are by nature cumulative: export energy that moved
within the window (reverse energy) and no data since ``last_seen``.

Quantities read (primary side, as stored): ``voltage.a|b|c`` (V), ``current.a|b|c`` (A),
``energy.active.export.total`` and ``energy.active.import.total`` (kWh), ``power.active.total``
(kW, negative = reverse), ``clock`` (the meter's datetime, read at the reading's timestamp) and
``relay.open`` (bool).  Voltage limits are per meter: a meter behind a PT reads primary volts, so
give it :class:`Limits` with its own nominal.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Final

from meterd.clock import CST, local_text
from meterd.readings import Quality, Reading
from meterd.storage.anomalies import EVIDENCE_PER_EVENT, AnomalyStore, Event, Finding, Kind, Severity

__all__ = ["EVIDENCE_PER_EVENT", "AnomalyStore", "Event", "Finding", "Kind", "Limits", "Severity", "detect"]

PHASES: Final = ("a", "b", "c")
EVIDENCE_PER_FINDING: Final = 10  # the first and the last five samples of a long run
SAME_READ: Final = timedelta(seconds=60)  # phase values this close together belong to one reading
_HUNDRED: Final = Decimal(100)
_NOT_MEASURED: Final = (Quality.ESTIMATED, Quality.IMPLAUSIBLE)
_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Limits:
    # GB/T 12325-2008 (电能质量 供电电压偏差): a 220 V single-phase supply may deviate +7 % / -10 %
    # of nominal; three-phase 20 kV and below +-7 %.  Give HV meters their own nominal and band.
    voltage_nominal: Decimal = Decimal(220)
    voltage_low_pct: Decimal = Decimal(-10)
    voltage_high_pct: Decimal = Decimal(7)
    # Ours: a sag shorter than this is power quality, not a voltage-circuit fault.
    voltage_min_duration: timedelta = timedelta(minutes=15)
    # Imbalance = (Imax - Imin) / Imax.  30 % is an alarm level for metering faults (a dead CT
    # phase reads 100 %), not a standards figure; below 1 A on every phase it is not judged (a
    # light load is naturally lopsided).  Set both per site.
    imbalance_pct: Decimal = Decimal(30)
    imbalance_min_current: Decimal = Decimal("1.0")
    imbalance_min_duration: timedelta = timedelta(minutes=15)  # ours, as for voltage
    # One missed daily-freeze round: SOURCES.md 3.4.1, a failed meter shows as 无数据.
    no_data_after: timedelta = timedelta(hours=24)
    # The usual acquisition-system alarm level for meter clock error (时钟超差); larger errors
    # are past what a routine broadcast time sync corrects and need a time set on the meter.
    clock_drift: timedelta = timedelta(minutes=5)
    # Ours: ten counts of a 0.01 kWh register, so one count of noise or rounding is not an alarm.
    reverse_min_kwh: Decimal = Decimal("0.1")
    reverse_min_duration: timedelta = timedelta(minutes=15)  # negative power held this long
    # Ours: five counts of 0.01 kWh; a trip confirmed mid-interval may still show one or two.
    relay_open_min_kwh: Decimal = Decimal("0.05")


# --- the detectors -----------------------------------------------------------------------------


def _evidence(readings: Sequence[Reading], cap: int = EVIDENCE_PER_FINDING) -> tuple[dict[str, str], ...]:
    if len(readings) > cap:
        readings = [*readings[: cap // 2], *readings[-(cap - cap // 2):]]
    return tuple(
        {"meter": r.meter, "quantity": r.quantity, "timestamp": r.timestamp.isoformat(), "value": _text(r.value)}
        for r in readings
    )


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _trailing(samples: Sequence[Reading], holds: Callable[[Reading], bool]) -> list[Reading]:
    """The longest run of samples for which ``holds`` is true that ends with the newest one."""
    i = len(samples)
    while i > 0 and holds(samples[i - 1]):
        i -= 1
    return list(samples[i:])


def _lasts(run: Sequence[Reading], at_least: timedelta) -> bool:
    return len(run) >= 2 and run[-1].timestamp - run[0].timestamp >= at_least


def _dec(r: Reading) -> Decimal:
    """The value of a numeric reading (:func:`detect` lets only Decimal values into those series)."""
    assert isinstance(r.value, Decimal)
    return r.value


def _voltage(meter: str, series: dict[str, list[Reading]], limits: Limits, zone: tzinfo = CST) -> Finding | None:
    low = limits.voltage_nominal * (_HUNDRED + limits.voltage_low_pct) / _HUNDRED
    high = limits.voltage_nominal * (_HUNDRED + limits.voltage_high_pct) / _HUNDRED
    lost = limits.voltage_nominal / 2
    runs = {}
    for phase in PHASES:
        samples = series.get(f"voltage.{phase}", [])
        run = _trailing(samples, lambda r: not low <= _dec(r) <= high)
        if _lasts(run, limits.voltage_min_duration):
            runs[phase] = run
    if not runs:
        return None
    parts = []
    critical = False
    for phase, run in runs.items():
        values = [_dec(r) for r in run]
        lo, hi = min(values), max(values)
        critical |= hi < lost
        parts.append(f"phase {phase} {lo}..{hi} V since {local_text(run[0].timestamp, zone)}")
    return Finding(
        meter, Kind.VOLTAGE, Severity.CRITICAL if critical else Severity.WARNING,
        min(run[0].timestamp for run in runs.values()),
        f"voltage outside {low:.1f}..{high:.1f} V: " + "; ".join(parts),
        sum((_evidence(run, EVIDENCE_PER_FINDING // len(runs) or 1) for run in runs.values()), ()),
    )


def _near(samples: Sequence[Reading], stamps: Sequence[datetime], at: datetime) -> Reading | None:
    """The sample closest to ``at`` within :data:`SAME_READ` (``stamps`` = its sorted timestamps)."""
    i = bisect_left(stamps, at)
    best = min((samples[j] for j in (i - 1, i) if 0 <= j < len(samples)),
               key=lambda r: abs(r.timestamp - at), default=None)
    return best if best is not None and abs(best.timestamp - at) <= SAME_READ else None


def _imbalance(meter: str, series: dict[str, list[Reading]], limits: Limits, zone: tzinfo = CST) -> Finding | None:
    # Instants are phase a's samples; b and c are matched to them within SAME_READ, so phases read
    # one by one (DL/T 645-1997, single registers) line up as well as a block read does.
    b, c = series.get("current.b", []), series.get("current.c", [])
    b_at, c_at = [r.timestamp for r in b], [r.timestamp for r in c]
    rows: dict[datetime, tuple[Reading, Reading, Reading]] = {}
    for ra in series.get("current.a", []):
        rb, rc = _near(b, b_at, ra.timestamp), _near(c, c_at, ra.timestamp)
        if rb is not None and rc is not None:  # single-phase meters and gaps: not judged
            rows[ra.timestamp] = (ra, rb, rc)
    if not rows:
        return None

    def ratio(row: tuple[Reading, Reading, Reading]) -> Decimal | None:
        amps = [abs(_dec(r)) for r in row]
        top = max(amps)
        if top < limits.imbalance_min_current:
            return None
        return (top - min(amps)) / top * _HUNDRED

    def imbalanced(r: Reading) -> bool:
        share = ratio(rows[r.timestamp])
        return share is not None and share > limits.imbalance_pct

    run = _trailing([row[0] for row in rows.values()], imbalanced)
    if not _lasts(run, limits.imbalance_min_duration):
        return None
    first, last = rows[run[0].timestamp], rows[run[-1].timestamp]
    dead = any(_dec(r) == 0 for r in last)
    share = ratio(last)
    assert share is not None
    amps = ", ".join(f"{p} {r.value} A" for p, r in zip(PHASES, last))
    return Finding(
        meter, Kind.IMBALANCE, Severity.CRITICAL if dead else Severity.WARNING, run[0].timestamp,
        f"three-phase current imbalance {share.quantize(Decimal('0.1'))} % (limit {limits.imbalance_pct} %) "
        f"since {local_text(run[0].timestamp, zone)}; latest {amps}" + ("; a phase carries no current" if dead else ""),
        _evidence([*first, *last]),
    )


def _no_data(meter: str, readings: Sequence[Reading], now: datetime, limits: Limits,
             last_seen: datetime | None, zone: tzinfo = CST) -> Finding | None:
    newest = max(readings, key=lambda r: r.timestamp, default=None)  # estimated ones are gone already
    times = [t for t in (last_seen, newest.timestamp if newest else None) if t is not None]
    if not times:
        return Finding(meter, Kind.NO_DATA, Severity.WARNING, now, "no reading on record", ())
    last = max(times)
    silent = now - last
    if silent <= limits.no_data_after:
        return None
    severity = Severity.CRITICAL if silent > 3 * limits.no_data_after else Severity.WARNING
    hours = Decimal(int(silent.total_seconds()) // 60) / 60
    return Finding(meter, Kind.NO_DATA, severity, last,
                   f"no data for {hours.quantize(Decimal('0.1'))} h (since {local_text(last, zone)})",
                   _evidence([newest]) if newest is not None else ())


def _reverse(meter: str, series: dict[str, list[Reading]], limits: Limits, zone: tzinfo = CST) -> Finding | None:
    evidence: list[Reading] = []
    parts = []
    starts = []
    export = series.get("energy.active.export.total", [])
    if len(export) >= 2:
        moved = _dec(export[-1]) - _dec(export[0])
        if moved >= limits.reverse_min_kwh:
            still = [r for r in export if r.value == export[0].value]
            starts.append(still[-1].timestamp)
            evidence += [export[0], export[-1]]
            parts.append(f"export register moved {moved} kWh")
    run = _trailing(series.get("power.active.total", []), lambda r: _dec(r) < 0)
    if _lasts(run, limits.reverse_min_duration):
        starts.append(run[0].timestamp)
        evidence += run
        parts.append(f"active power negative since {local_text(run[0].timestamp, zone)} "
                     f"(latest {run[-1].value} kW)")
    if not parts:
        return None
    return Finding(meter, Kind.REVERSE, Severity.WARNING, min(starts),
                   "reverse energy on a consumer's meter: " + "; ".join(parts), _evidence(evidence))


def _clock(meter: str, series: dict[str, list[Reading]], limits: Limits) -> Finding | None:
    samples = [r for r in series.get("clock", []) if isinstance(r.value, datetime)]
    if not samples:
        return None
    last = samples[-1]
    assert isinstance(last.value, datetime)
    meter_time = last.value if last.value.tzinfo is not None else last.value.replace(tzinfo=CST)
    drift = meter_time - last.timestamp
    if abs(drift) <= limits.clock_drift:
        return None
    severity = Severity.CRITICAL if abs(drift) > timedelta(hours=1) else Severity.WARNING
    sign = "ahead" if drift > timedelta(0) else "behind"
    return Finding(meter, Kind.CLOCK, severity, last.timestamp,
                   f"meter clock {abs(drift)} {sign} (limit {limits.clock_drift})", _evidence([last]))


def _relay_open_energy(meter: str, series: dict[str, list[Reading]], limits: Limits, zone: tzinfo = CST) -> Finding | None:
    # The relay holds its state until a read says otherwise (meterd reads it back after every
    # command), so energy counts from the first "open" of the trailing run to the newest sample.
    run = _trailing([r for r in series.get("relay.open", []) if isinstance(r.value, bool)],
                    lambda r: r.value is True)
    if not run:
        return None
    since = run[0].timestamp
    energy = [r for r in series.get("energy.active.import.total", []) if r.timestamp >= since]
    if len(energy) < 2:
        return None
    moved = _dec(energy[-1]) - _dec(energy[0])
    if moved < limits.relay_open_min_kwh:
        return None
    return Finding(meter, Kind.RELAY_OPEN_ENERGY, Severity.CRITICAL, since,
                   f"{moved} kWh recorded while the relay is open (open since {local_text(since, zone)})",
                   _evidence([run[0], energy[0], energy[-1]]))


_NUMERIC_PREFIXES: Final = ("voltage.", "current.", "energy.", "power.")


def detect(
    meter: str,
    readings: Sequence[Reading],
    now: datetime,
    limits: Limits = Limits(),
    *,
    last_seen: datetime | None = None,
    generator: bool = False,
    zone: tzinfo = CST,
) -> list[Finding]:
    """The conditions that hold for ``meter`` at the end of ``readings``, one finding per kind.

    Readings of other meters are ignored; estimated readings are not evidence.  ``last_seen`` is
    the meter's last good reading known elsewhere (the window may be empty); a meter with no
    reading at all is reported as no data -- pass its commissioning time as ``last_seen`` to give a
    new meter its grace period.  ``generator`` marks a meter that may export (PV, storage): reverse
    energy is then normal and not reported.  Times in the findings' texts are in ``zone`` (the
    site's) with the offset.
    """
    mine = [r for r in readings if r.meter == meter]
    measured = sorted((r for r in mine if r.quality not in _NOT_MEASURED), key=lambda r: r.timestamp)
    series: dict[str, list[Reading]] = defaultdict(list)
    for r in measured:
        if r.quantity.startswith(_NUMERIC_PREFIXES):
            if isinstance(r.value, bool) or not isinstance(r.value, (Decimal, int)):
                continue  # a text or status value where a number belongs: not evidence
            if isinstance(r.value, int):
                r = replace(r, value=Decimal(r.value))
        series[r.quantity].append(r)
    found = [
        _voltage(meter, series, limits, zone),
        _imbalance(meter, series, limits, zone),
        _no_data(meter, measured, now, limits, last_seen, zone),
        None if generator else _reverse(meter, series, limits, zone),
        _clock(meter, series, limits),
        _relay_open_energy(meter, series, limits, zone),
    ]
    return [f for f in found if f is not None]
