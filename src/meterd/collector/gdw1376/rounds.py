"""Poll rounds through a Q/GDW 1376.1 terminal: terminal-kept data (AFN 0C/0D) where it has it, DL/T
645 relayed (AFN 10) for the rest (the package docstring's table)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final

from meterd.clock import CST
from meterd.collector.channel import (
    FailureKind,
    TransactionError,
)
from meterd.collector.gdw1376.channel import GdwChannel
from meterd.collector.poll import MeterTarget, RoundResult, _Attempts, poll_meter
from meterd.errors import ProtocolError
from meterd.protocols.dlt645.catalogue import DEFAULT_CURVE_INTERVAL, Scaling
from meterd.protocols.dlt645.catalogue import lookup as dlt645_lookup
from meterd.protocols.gdw1376.catalogue import (
    EnergyReading,
    ForwardEnergy,
    FrozenEnergy,
    PresentPower,
)
from meterd.protocols.gdw1376.frame import (
    Afn,
)
from meterd.protocols.gdw1376.messages import (
    DataUnit,
    unit,
)
from meterd.protocols.readspec import DLT645_1997, ReadSpec
from meterd.readings import Quality, Reading

log = logging.getLogger(__name__)

FROZEN_STAMP: Final = time(0, 0)

# --- polling ---------------------------------------------------------------------------------------

_ENERGY_BLOCK_2007 = 0x0001FF00
# DL/T 645-2007 identifiers the terminal keeps: di -> (afn, fn)
_F129_DIS = frozenset({_ENERGY_BLOCK_2007, *(0x00010000 | (r << 8) for r in range(5))})
_F33_DIS = frozenset({0x0003FF00, 0x0005FF00, 0x0008FF00, *(k << 16 | r << 8 for k in (3, 5, 8) for r in range(5))})
_F25_DIS = frozenset({0x0201FF00, 0x0202FF00, 0x0203FF00, 0x0204FF00, 0x0205FF00, 0x0206FF00,
                      *(0x02000000 | d << 16 | p << 8 for d in (1, 2) for p in (1, 2, 3)),
                      *(0x02000000 | d << 16 | p << 8 for d in (3, 4, 5, 6) for p in (0, 1, 2, 3))})
_F161_DIS = frozenset({0x05060101, 0x05060100})
_FN_OF: Final = {**{d: 129 for d in _F129_DIS}, **{d: 33 for d in _F33_DIS}, **{d: 25 for d in _F25_DIS}}
RATES_PER_FN: Final = 4


def _rated(prefix: str, values: tuple[Decimal | None, ...]) -> list[tuple[str, Decimal | None]]:
    return [(f"{prefix}.{'total' if i == 0 else f'rate{i}'}", v) for i, v in enumerate(values)]


def _phased(prefix: str, values: tuple[Decimal | None, ...], total: bool) -> list[tuple[str, Decimal | None]]:
    names = (("total",) if total else ()) + ("a", "b", "c")
    return [(f"{prefix}.{n}", v) for n, v in zip(names, values, strict=False)]


_UNIT_SCALING: Final = {"kWh": Scaling.CTPT, "kvarh": Scaling.CTPT, "kW": Scaling.CTPT, "kvar": Scaling.CTPT,
                        "kVA": Scaling.CTPT, "A": Scaling.CT, "V": Scaling.PT, "": Scaling.NONE}


def terminal_values(fn: int, value: Any) -> tuple[datetime | None, list[tuple[str, Decimal | None, str]]]:
    """A terminal-kept value as (when the terminal read the meter, [(quantity, value, unit)])."""
    if isinstance(value, EnergyReading):
        return value.read_at, [(q, v, "kWh") for q, v in _rated("energy.active.import", value.values)]
    if isinstance(value, ForwardEnergy):
        out = [(q, v, "kWh") for q, v in _rated("energy.active.import", value.active)]
        out += [(q, v, "kvarh") for q, v in _rated("energy.reactive.combined1", value.reactive)]
        out += [(q, v, "kvarh") for q, v in _rated("energy.reactive.q1", value.quadrant1)]
        out += [(q, v, "kvarh") for q, v in _rated("energy.reactive.q4", value.quadrant4)]
        return value.read_at, out
    if isinstance(value, PresentPower):
        out = [(q, v, "kW") for q, v in _phased("power.active", value.active, True)]
        out += [(q, v, "kvar") for q, v in _phased("power.reactive", value.reactive, True)]
        out += [(q, v, "kVA") for q, v in _phased("power.apparent", value.apparent, True)]
        # 1376.1 A.5 is a percentage; meterd's pf is a fraction (DL/T 645's X.XXX)
        out += [(q, v / 100 if v is not None else None, "") for q, v in _phased("pf", value.power_factor, True)]
        out += [(q, v, "V") for q, v in _phased("voltage", value.voltage, False)]
        out += [(q, v, "A") for q, v in _phased("current", value.current, False)]
        return value.read_at, out
    return None, []


def _local(naive: datetime | None, zone: tzinfo) -> datetime | None:
    return naive.replace(tzinfo=zone).astimezone(UTC) if naive is not None else None


def _wanted(spec: ReadSpec, dis: Sequence[int], quantity: str) -> bool:
    """Whether a quantity the terminal sent is one the poll asked for: carried by one of the
    identifiers it maps from, and kept by the poll."""
    for di in dis:
        if quantity in _carried(di) and spec.wanted(di, quantity):
            return True
    return False


_CARRIED: dict[int, frozenset[str]] = {}


def _carried(di: int) -> frozenset[str]:
    found = _CARRIED.get(di)
    if found is None:
        found = _CARRIED[di] = frozenset(dlt645_lookup(di).quantities)
    return found


@dataclass(slots=True)
class _MeterPlan:
    target: MeterTarget
    pn: int
    spec: ReadSpec
    fns: dict[int, list[int]] = field(default_factory=dict)  # fn -> the dis it answers
    frozen: list[int] = field(default_factory=list)  # F161 dis
    relayed: list[int] = field(default_factory=list)


def _plan_meter(target: MeterTarget, pn: int, reads: Any) -> _MeterPlan:
    spec = reads if isinstance(reads, ReadSpec) else ReadSpec(tuple(reads))
    plan = _MeterPlan(target, pn, spec)
    for di in spec.items:
        fn = _FN_OF.get(di) if target.protocol != DLT645_1997 else None
        if fn is not None:
            plan.fns.setdefault(fn, []).append(di)
        elif di in _F161_DIS and target.protocol != DLT645_1997:
            plan.frozen.append(di)
        else:
            plan.relayed.append(di)
    return plan


def _units(afn: int, pns: Sequence[int], fns: Sequence[int], value: Any = None) -> list[DataUnit]:
    """Data units naming ``pns`` x ``fns``: one per (DA group of 8 points, DT group of 8 items)."""
    by_da: dict[int, list[int]] = {}
    for pn in sorted(set(pns)):
        by_da.setdefault((pn - 1) // 8, []).append(pn)
    by_dt: dict[int, list[int]] = {}
    for fn in sorted(set(fns)):
        by_dt.setdefault((fn - 1) // 8, []).append(fn)
    out = []
    for points in by_da.values():
        for items in by_dt.values():
            out.append(DataUnit(tuple(points), tuple(items), (value,) * (len(points) * len(items))))
    return out


MAX_UNITS_PER_REQUEST: Final = 4  # 4 x 8 meters x F129 (~31 bytes each) ~ 1 KB: one GPRS frame


async def gdw_round(channel: GdwChannel, meters: Sequence[tuple[MeterTarget, Any]], now: datetime, *,
                    zone: tzinfo = CST, curve_points: int = 4,
                    curve_interval: timedelta = DEFAULT_CURVE_INTERVAL) -> RoundResult:
    """One poll round through a terminal (see the module docstring's table); load-curve items are
    relayed with ``curve_points`` / ``curve_interval`` (a task's)."""
    result = RoundResult(channel.name, now)
    plans = [_plan_meter(t, channel.pns[t.address], reads) for t, reads in meters if t.address in channel.pns]
    logs = {p.target.address: _Attempts(channel, p.target, now) for p in plans}
    by_pn = {p.pn: p for p in plans}
    # AFN 0C: meters asked the same items share data units
    groups: dict[tuple[int, ...], list[int]] = {}
    for p in plans:
        if p.fns:
            groups.setdefault(tuple(sorted(p.fns)), []).append(p.pn)
    for fns, pns in groups.items():
        units = _units(Afn.CLASS1_DATA, pns, fns)
        for i in range(0, len(units), MAX_UNITS_PER_REQUEST):
            chunk = units[i:i + MAX_UNITS_PER_REQUEST]
            await _class_request(channel, Afn.CLASS1_DATA, chunk, by_pn, logs, result, now, zone)
    # AFN 0D F161 for the terminal's date
    frozen = [p for p in plans if p.frozen]
    if frozen:
        day = await _terminal_date(channel, now, zone, logs, frozen)
        if day is not None:
            # Td_d names the day that ended: its registers were frozen at 00:00 of the terminal's date
            units = _units(Afn.CLASS2_DATA, [p.pn for p in frozen], [161], day - timedelta(days=1))
            for i in range(0, len(units), MAX_UNITS_PER_REQUEST):
                await _class_request(channel, Afn.CLASS2_DATA, units[i:i + MAX_UNITS_PER_REQUEST], by_pn, logs,
                                     result, now, zone)
    # the rest relayed to the meters (AFN 10 F1)
    for p in plans:
        if p.relayed:
            keep = {di: p.spec.keep.get(di) for di in p.relayed if di in p.spec.keep}
            readings, attempts = await poll_meter(channel, p.target, ReadSpec(tuple(p.relayed), keep), now,
                                                  meter_tz=zone, curve_points=curve_points,
                                                  curve_interval=curve_interval)
            result.readings.extend(readings)
            logs[p.target.address].list.extend(attempts)
    for log_ in logs.values():
        result.attempts.extend(log_.list)
    return result


def _label(afn: int, fn: int) -> str:
    return f"{afn:02X} F{fn}"


async def _terminal_date(channel: GdwChannel, now: datetime, zone: tzinfo, logs: dict[str, _Attempts],
                         frozen: list[_MeterPlan]) -> date | None:
    """The terminal's date, from its clock (AFN 0C F2); failures recorded against the F161 reads."""
    try:
        reply = await channel.request(Afn.CLASS1_DATA, [unit(0, 2)], meter=f"terminal {channel.address.key}")
        clock = reply.value(2, 0)
    except (TransactionError, ProtocolError, KeyError) as exc:
        kind = exc.kind if isinstance(exc, TransactionError) else FailureKind.GARBLED
        for p in frozen:
            logs[p.target.address].add(_label(Afn.CLASS2_DATA, 161), kind,
                                       detail=f"terminal clock (AFN 0C F2) not read: {exc}")
        return None
    if not isinstance(clock, datetime):
        return now.astimezone(zone).date()
    return clock.date()


async def _class_request(channel: GdwChannel, afn: int, units: list[DataUnit], by_pn: dict[int, _MeterPlan],
                         logs: dict[str, _Attempts], result: RoundResult, now: datetime, zone: tzinfo) -> None:
    asked = [(pn, fn) for u in units for pn in u.pns for fn in u.fns]
    before = channel.stats.latency_total, channel.stats.successes
    try:
        reply = await channel.request(afn, units, meter=by_pn[asked[0][0]].target.address)
    except TransactionError as exc:
        pns = sorted({pn for pn, _ in asked})
        if exc.kind is FailureKind.GARBLED and len(pns) > 1:
            # one meter's unreadable value (a register in hex digits) must not cost the others
            # theirs: each is asked alone, and only the bad one fails
            channel._log.log(log, logging.WARNING, f"split AFN {afn:02X}H",
                             "channel %s: AFN %02XH reply for %d meters (p%d..p%d) failed (%s); asking each alone",
                             channel.name, afn, len(pns), pns[0], pns[-1], exc)
            for pn in pns:
                alone = [DataUnit((pn,), u.fns, tuple(v for p, _, v in u.pairs() if p == pn)) for u in units
                         if pn in u.pns]
                await _class_request(channel, afn, alone, by_pn, logs, result, now, zone)
            return
        for pn, fn in asked:
            logs[by_pn[pn].target.address].add(_label(afn, fn), exc.kind, detail=str(exc))
        return
    except ProtocolError as exc:
        for pn, fn in asked:
            logs[by_pn[pn].target.address].add(_label(afn, fn), FailureKind.ABNORMAL, detail=str(exc))
        return
    n = channel.stats.successes - before[1]
    latency = (channel.stats.latency_total - before[0]) / n if n else None
    got = {(pn, fn): v for pn, fn, v in reply.items()} if reply.afn == afn else {}
    for pn, fn in asked:
        plan = by_pn[pn]
        meter = plan.target
        value = got.get((pn, fn))
        label = _label(afn, fn)
        if value is None:
            logs[meter.address].add(label, "no_record" if afn == Afn.CLASS2_DATA else FailureKind.ABNORMAL,
                                    detail=f"terminal {channel.address.key} has no AFN {afn:02X}H F{fn} of p{pn}")
            continue
        if isinstance(value, FrozenEnergy):
            period = value.period  # the day that ended: frozen at 00:00 of the next
            stamp = (datetime.combine(period + timedelta(days=1), FROZEN_STAMP, zone).astimezone(UTC)
                     if period is not None else now)
            pairs = [(f"frozen.daily.{q}", v, "kWh") for q, v in _rated("energy.active.import", value.values)]
            dis = plan.frozen
        else:
            read_at, triples = terminal_values(fn, value)
            pairs = triples
            at = _local(read_at, zone)
            stamp = at if at is not None and at <= now else now
            dis = plan.fns.get(fn, [])
        for q, v, unit_ in pairs:
            if v is None or not _wanted(plan.spec, dis, q):
                continue
            value_ = meter.scale(v, _UNIT_SCALING.get(unit_, Scaling.NONE))
            result.readings.append(Reading(meter.address, q, stamp, value_, unit_, Quality.GOOD))
        logs[meter.address].add(label, "ok", latency)
