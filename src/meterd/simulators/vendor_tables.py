"""The vendors' whole register tables, for the simulated Modbus meters.

A register map (:mod:`meterd.protocols.modbus`, ``maps/*.toml``) names the registers meterd polls.
A real meter answers far more: an SDM630 publishes phase angles, THD, demands, line voltages and
per-phase energies that no meterd map uses, and another master (or a technician's Modbus tool)
reads them.  So that the simulator can stand in for the meter in someone else's test rig, each
shipped vendor map has a :class:`VendorTable` here: every register of the vendor's documented
table, computed from the same :class:`~meterd.simulators.model.MeterModel` as the mapped ones.

Physics and signs
-----------------
:class:`MeterState` takes one moment of the model (``MeterModel.values``) as floats, in the
model's DL/T 645-2007 convention: active and reactive power signed (+ import, + inductive),
current and apparent power carrying the sign of the phase's active power, PF = P / |S|.  A table
then publishes them the vendor's way:

* Eastron: current and VA are magnitudes; the direction of flow is in the sign of W and of the
  power factor ("The power factor has its sign adjusted to indicate the direction of the current.
  Positive refers to forward current, negative refers to reverse current.", SDM630 Modbus protocol,
  note 1).  VAr keeps the model's sign.
* Schneider iEM3x55: current and kVA are magnitudes, kW and kvar signed; the total power factor
  register uses Schneider's four-quadrant encoding (-2..+2, :func:`schneider_pf_register`), and
  registers 3192/3194 give it again in the IEC (sign of P) and IEEE (lead/lag) conventions.
* CHINT DTSU666: no vendor statement on signs was found; the table keeps the model's DL/T 645
  convention (the meter's other protocol), and so does its map.

Quantities the model has no register for are derived as the meter would: averages, sums, line
voltages from phase voltages 120 degrees apart, phase angles atan2(Q, P) in -180..180 degrees,
apparent demand from the active demand and the power factor, demand currents from the apparent
demand, totals (import + export) and net (import - export) energies.  Per-phase energies split the
totals by the meter's phase shares (constant for a model; see :class:`ShareMemo`), so they add up to
the totals and never run backwards.  Voltage and current THD are not in the model: they are a
seeded, slowly varying 1.2-2.8 % (voltage) and a current THD that falls as the current rises
(about 20 % at light load, 9 % at 10 A, 0 with no current).  Configuration registers hold the
factory defaults of the vendor (or what the simulator really does: a 15-minute demand period,
9600 baud 8N1, the unit id as the node address); they are read-only here.

Sources (numbers in names are the vendors' 1-based register numbers; addresses are 0-based):

* Eastron SDM630: Eastron "SDM630 Modbus Protocol" V1.8 / SDM630-Modbus V2 user manual 1.2-1.3
  (input registers 30001..30381, holding 40001..), as carried in nmakel/sdm_modbus
  ``documents/sdm630_modbus_protocol_v1.8.pdf`` and tabulated in its ``src/sdm_modbus/sdm.py``
  (class SDM630); volkszaehler/mbmd ``meters/rs485/sdm.go``; the SDM630MCT-ML user manual V1.2
  notes on PF sign, demand (import - export) and total energy (import + export).
* CHINT DTSU666: user manual ZTY0.464.1448 5.3 Table 11 (parameter area 0x0000..0x002E, electrical
  quantities 0x2000..0x2050, energy 0x101E/0x1028); aggsoft's "Chint Instrument (DSU666, DTSU666)"
  register list (DmPt 0x2050, the quadrant energies, clock registers 47..52);
  MichielfromNL/DTSU666Emulator ``lib/DTSU666/src/DTSU666.cpp`` (parameter defaults).  The quadrant
  reactive energies follow the manual's 0x101E / 0x1028 block at the aggsoft list's spacing
  (every 10 registers: 0x1032, 0x103C, 0x1046, 0x1050).
* Schneider iEM3155/3255/3355: user manual DOCA0005EN (-04, -13, -15), "Modbus register list"
  and "Power factor register format" (PF register ranges per quadrant); Gaudi111/iem3155_esphome
  ``iEM3155_ESP8266_nodemcu.yaml`` (every address below, including the DATETIME layout).  Left out:
  the INT64 Wh energies 3204.. and the tariff energies (present only when the tariff function is
  configured), the command interface 5250.. (the simulator has no command interface).

A register outside a table still answers ILLEGAL DATA ADDRESS, as the meter does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from meterd.protocols.modbus import Function
from meterd.simulators.model import DEMAND_MINUTES, MeterModel
from meterd.simulators.profile import mix, noise

__all__ = [
    "MAX_DEMAND_QUANTITIES",
    "MODEL_QUANTITIES",
    "VENDOR_TABLES",
    "LazyImage",
    "MeterState",
    "ShareMemo",
    "VendorRegister",
    "VendorTable",
    "schneider_datetime",
    "schneider_pf_register",
]

PHASES: Final = ("a", "b", "c")
_EPOCH: Final = datetime(2000, 1, 1)

# what MeterState reads from the model at once (tuples: the model caches its plan for them) ...
MODEL_QUANTITIES: Final = (
    *(f"voltage.{p}" for p in PHASES),
    *(f"current.{p}" for p in PHASES),
    "current.n",
    *(f"power.{k}.{p}" for k in ("active", "reactive", "apparent") for p in (*PHASES, "total")),
    *(f"pf.{p}" for p in (*PHASES, "total")),
    "frequency",
    "demand.active.now",
    "energy.active.import.total",
    "energy.active.export.total",
    *(f"energy.reactive.q{n}.total" for n in range(1, 5)),
    "energy.apparent.import.total",
    "energy.apparent.export.total",
)
# ... and only when a register needs them: the model's maximum-demand table is costly to read
MAX_DEMAND_QUANTITIES: Final = (
    "demand.active.import.total",
    "demand.active.export.total",
    "demand.apparent.import.total",
    "demand.apparent.export.total",
)


# --- one moment of a meter -----------------------------------------------------------------------


class ShareMemo:
    """Each meter's phase shares, fixed the first time the meter is seen carrying load.

    The model splits its load over the phases by constant weights, so the shares of |S| are the
    same at any loaded moment -- up to the rounding of the published powers, which would make
    per-phase energies (total x share) wobble.  Taken once and kept, they cannot.  A meter never
    seen loaded splits evenly over its phases (and does not keep that).
    """

    def __init__(self) -> None:
        self._shares: dict[str, tuple[float, float, float]] = {}

    def shares(self, address: str, phases: int, s: tuple[float, float, float]) -> tuple[float, float, float]:
        known = self._shares.get(address)
        if known is not None:
            return known
        total = sum(abs(x) for x in s[:phases])
        if total <= 0:
            even = 1.0 / phases
            return (even, even if phases == 3 else 0.0, even if phases == 3 else 0.0)
        shares = tuple(abs(x) / total if i < phases else 0.0 for i, x in enumerate(s))
        self._shares[address] = shares  # type: ignore[assignment]
        return shares  # type: ignore[return-value]


def _f(values: Mapping[str, object], name: str) -> float:
    """``values[name]`` as a float; 0 for a quantity the meter lacks (phase B of a 1-phase meter)."""
    try:
        return float(values[name])  # type: ignore[arg-type]
    except KeyError:
        return 0.0


@dataclass(slots=True)
class MeterState:
    """One moment of a simulated meter as floats: V, A, kW, kvar, kVA, kWh, kvarh, kVAh, Hz.

    Signs as the model has them (DL/T 645): ``i`` and ``s`` carry the sign of the phase's P.
    Absent phases (a single-phase meter's B and C) are 0.  The maximum demands are read from the
    model the first time a register asks for one.
    """

    unit: int
    address: str
    phases: int
    clock: datetime  # the meter's own clock
    key: int  # seeds the THD jitter
    v: tuple[float, float, float]
    i: tuple[float, float, float]
    p: tuple[float, float, float]
    q: tuple[float, float, float]
    s: tuple[float, float, float]
    pf: tuple[float, float, float]
    p_total: float
    q_total: float
    s_total: float
    pf_total: float
    i_n: float
    freq: float
    demand_now: float  # kW, import - export, sliding window
    e_import: float
    e_export: float
    e_q: tuple[float, float, float, float]  # Q1..Q4 reactive energy
    e_apparent: float  # import + export kVAh
    shares: tuple[float, float, float]
    model: MeterModel | None = None
    now: datetime | None = None
    _max_demand: tuple[float, float, float] | None = None

    @classmethod
    def of(cls, model: MeterModel, unit: int, now: datetime, memo: ShareMemo) -> MeterState:
        values = model.values(now, MODEL_QUANTITIES)

        def trio(kind: str) -> tuple[float, float, float]:
            return (_f(values, f"{kind}.a"), _f(values, f"{kind}.b"), _f(values, f"{kind}.c"))

        s = trio("power.apparent")
        return cls(
            unit=unit,
            address=model.address,
            phases=model.phases,
            clock=model.meter_clock(now),
            key=mix(int(model.address) ^ mix(model.seed)),
            v=trio("voltage"),
            i=trio("current"),
            p=trio("power.active"),
            q=trio("power.reactive"),
            s=s,
            pf=trio("pf"),
            p_total=_f(values, "power.active.total"),
            q_total=_f(values, "power.reactive.total"),
            s_total=abs(_f(values, "power.apparent.total")),
            pf_total=_f(values, "pf.total"),
            i_n=abs(_f(values, "current.n")),
            freq=_f(values, "frequency"),
            demand_now=_f(values, "demand.active.now"),
            e_import=_f(values, "energy.active.import.total"),
            e_export=_f(values, "energy.active.export.total"),
            e_q=tuple(_f(values, f"energy.reactive.q{n}.total") for n in range(1, 5)),  # type: ignore[arg-type]
            e_apparent=_f(values, "energy.apparent.import.total") + _f(values, "energy.apparent.export.total"),
            shares=memo.shares(model.address, model.phases, s),
            model=model,
            now=now,
        )

    def _maxima(self) -> tuple[float, float, float]:
        if self._max_demand is None:
            values = {} if self.model is None or self.now is None else self.model.values(self.now, MAX_DEMAND_QUANTITIES)
            self._max_demand = (
                _f(values, "demand.active.import.total"),
                _f(values, "demand.active.export.total"),
                max(_f(values, "demand.apparent.import.total"), _f(values, "demand.apparent.export.total")),
            )
        return self._max_demand

    @property
    def demand_import_max(self) -> float:
        """Maximum active import demand since the last demand reset (the model's settlement)."""
        return self._maxima()[0]

    @property
    def demand_export_max(self) -> float:
        return self._maxima()[1]

    @property
    def demand_apparent_max(self) -> float:
        return self._maxima()[2]

    # --- derived, the way a meter derives them ---------------------------------------------------

    @property
    def live(self) -> tuple[int, ...]:
        """Indexes of the phases the meter has."""
        return tuple(range(self.phases))

    def v_avg(self) -> float:
        return sum(self.v[k] for k in self.live) / self.phases

    def v_ll(self, k: int) -> float:
        """Line voltage from phase k to phase k+1 (0 on a single-phase meter)."""
        if self.phases == 1:
            return 0.0
        a, b = self.v[k], self.v[(k + 1) % 3]
        return round(math.sqrt(a * a + a * b + b * b), 1)  # to 0.1 V, as the mapped line voltages

    def v_ll_avg(self) -> float:
        return sum(self.v_ll(k) for k in range(3)) / 3

    def i_abs(self, k: int) -> float:
        return abs(self.i[k])

    def i_sum(self) -> float:
        return sum(abs(x) for x in self.i)

    def i_avg(self) -> float:
        return self.i_sum() / self.phases

    @staticmethod
    def _angle(p: float, q: float) -> float:
        return math.degrees(math.atan2(q, p)) if p or q else 0.0

    def angle(self, k: int) -> float:
        """Phase angle of the current against its voltage, atan2(Q, P), -180..180 degrees."""
        return self._angle(self.p[k], self.q[k])

    def angle_total(self) -> float:
        return self._angle(self.p_total, self.q_total)

    @property
    def e_reactive_import(self) -> float:
        return self.e_q[0] + self.e_q[1]

    @property
    def e_reactive_export(self) -> float:
        return self.e_q[2] + self.e_q[3]

    def charge_ah(self) -> float:
        """Ampere-hours through the meter, summed over phases: VAh / V."""
        return self.e_apparent * 1000.0 / self.v_avg() if self.v_avg() else 0.0

    # demand: Eastron's "power sum demand" is import - export
    def demand_import_now(self) -> float:
        return max(self.demand_now, 0.0)

    def demand_export_now(self) -> float:
        return max(-self.demand_now, 0.0)

    def demand_total_max(self) -> float:
        return max(self.demand_import_max, self.demand_now, 0.0)

    def demand_apparent_now(self) -> float:
        return abs(self.demand_now) / max(abs(self.pf_total), 0.2)

    def demand_apparent_peak(self) -> float:
        return max(self.demand_apparent_max, self.demand_apparent_now())

    def demand_current(self, k: int, peak: bool = False) -> float:
        va = self.demand_apparent_peak() if peak else self.demand_apparent_now()
        return va * 1000.0 * self.shares[k] / self.v[k] if self.v[k] else 0.0

    def demand_neutral(self, peak: bool = False) -> float:
        if not self.s_total:
            return 0.0
        va = self.demand_apparent_peak() if peak else self.demand_apparent_now()
        return self.i_n * va / self.s_total

    # harmonics: not in the model; seeded and plausible
    def _minute(self) -> int:
        return (self.clock - _EPOCH) // timedelta(minutes=1)

    def thd_v(self, k: int) -> float:
        if k >= self.phases:
            return 0.0
        return 2.0 + 0.8 * noise(self.key, 60 + k, self._minute())

    def thd_i(self, k: int) -> float:
        amps = abs(self.i[k])
        if amps < 0.005:
            return 0.0
        return 8.0 + 12.0 / (1.0 + amps) + 1.5 * noise(self.key, 63 + k, self._minute())

    def thd_v_ll(self, k: int) -> float:
        if self.phases == 1:
            return 0.0
        return (self.thd_v(k) + self.thd_v((k + 1) % 3)) / 2

    def phase_energy(self, total: float, k: int) -> float:
        return total * self.shares[k]


# --- tables ----------------------------------------------------------------------------------------

Value = float | int | str | tuple[int, ...]
KINDS: Final = ("f32", "u16", "s16", "u32", "str", "words")


@dataclass(frozen=True, slots=True)
class VendorRegister:
    """One parameter of a vendor's table: where, how it is encoded, and how it is worked out.

    ``kind``: ``f32`` (IEEE 754, 2 registers), ``u16``/``s16`` (1), ``u32`` (2), ``str`` (``count``
    registers of ASCII, NUL-padded) or ``words`` (``value`` returns the ``count`` registers).
    """

    address: int
    kind: str
    name: str
    value: Callable[[MeterState], Value]
    count: int = 0  # registers; 0: the kind's own size

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} must be one of {', '.join(KINDS)}")
        if not self.count:
            size = {"f32": 2, "u32": 2, "u16": 1, "s16": 1}.get(self.kind)
            if size is None:
                raise ValueError(f"{self.name}: a {self.kind} register needs its count")
            object.__setattr__(self, "count", size)

    @property
    def span(self) -> range:
        return range(self.address, self.address + self.count)

    def encode(self, state: MeterState) -> tuple[int, ...]:
        v = self.value(state)
        kind = self.kind
        if kind == "str":
            raw = str(v).encode("ascii")[: 2 * self.count].ljust(2 * self.count, b"\0")
            return struct.unpack(f">{self.count}H", raw)
        if kind == "words":
            if not isinstance(v, tuple) or len(v) != self.count:
                raise ValueError(f"{self.name}: {v!r} is not {self.count} registers")
            return tuple(int(w) & 0xFFFF for w in v)
        if isinstance(v, (str, tuple)):
            raise TypeError(f"{self.name}: {v!r} is not a number")
        if kind == "f32":
            hi, lo = struct.unpack(">HH", struct.pack(">f", float(v)))
            return (hi, lo)
        if kind == "u32":
            n = int(v) & 0xFFFFFFFF
            return (n >> 16, n & 0xFFFF)
        return (int(v) & 0xFFFF,)  # u16, s16 (two's complement)


@dataclass(frozen=True, slots=True)
class VendorTable:
    """A meter model's whole register table, per data table (input, holding).

    ``magnitudes``: quantities the vendor publishes unsigned; the simulator serves the map's
    registers of those quantities as magnitudes too, so a map read and a table read agree.
    """

    model: str  # the register map's name
    source: str
    tables: Mapping[Function, tuple[VendorRegister, ...]]
    magnitudes: frozenset[str] = frozenset()
    _index: dict[Function, dict[int, VendorRegister]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for function, registers in self.tables.items():
            seen: dict[int, str] = {}
            for r in registers:
                for a in r.span:
                    if a in seen:
                        raise ValueError(f"{self.model} {function}: {r.name} overlaps {seen[a]} at {a:#06x}")
                    seen[a] = r.name

    def covers(self, function: Function, address: int, count: int) -> bool:
        """A parameter of the table starts at ``address`` and holds ``count`` registers or more."""
        return any(r.address == address and r.count >= count for r in self.tables.get(function, ()))

    def addresses(self, function: Function) -> frozenset[int]:
        return frozenset(a for r in self.tables.get(function, ()) for a in r.span)

    def image(self, state: MeterState, function: Function) -> dict[int, int]:
        """Every register of ``function``'s table at once."""
        out: dict[int, int] = {}
        for r in self.tables.get(function, ()):
            for n, word in enumerate(r.encode(state)):
                out[r.address + n] = word
        return out

    def lazy_image(self, state: MeterState, function: Function) -> LazyImage:
        """The registers of ``function``'s table, each worked out when first read."""
        index = self._index.get(function)
        if index is None:
            index = {a: r for r in self.tables.get(function, ()) for a in r.span}
            self._index[function] = index
        return LazyImage(state, index)


class LazyImage:
    """A vendor table's registers at one moment, encoded parameter by parameter as reads reach
    them: a master polling the map's blocks touches a few of the table's registers in the holes
    between its fields, not the hundred it has."""

    __slots__ = ("_index", "_state", "_words")

    def __init__(self, state: MeterState, index: Mapping[int, VendorRegister]) -> None:
        self._state = state
        self._index = index
        self._words: dict[int, int] = {}

    def get(self, address: int, default: int = 0) -> int:
        word = self._words.get(address)
        if word is not None:
            return word
        register = self._index.get(address)
        if register is None:
            return default
        for n, w in enumerate(register.encode(self._state)):
            self._words[register.address + n] = w
        return self._words[address]


def _f32(address: int, name: str, value: Callable[[MeterState], float]) -> VendorRegister:
    return VendorRegister(address, "f32", name, value)


def _per_phase(first: int, name: str, value: Callable[[MeterState, int], float], step: int = 2) -> list[VendorRegister]:
    return [
        _f32(first + step * k, name.format(n=k + 1, m=(k + 1) % 3 + 1), lambda s, k=k: value(s, k))  # type: ignore[misc]
        for k in range(3)
    ]


# --- Eastron SDM630 ------------------------------------------------------------------------------

# holding-register factory defaults (SDM630 protocol 1.3.1) or what the simulator really does
SDM630_SYSTEM_VOLTAGE: Final = 230.0
SDM630_SYSTEM_CURRENT: Final = 100.0  # the direct-connected SDM630-Modbus: 100 A
EASTRON_BAUD_9600: Final = 2  # 0 = 2400, 1 = 4800, 2 = 9600, 3 = 19200, 4 = 38400
EASTRON_PARITY_N1: Final = 0  # 0 = one stop bit, no parity; 1 = even; 2 = odd; 3 = two stop bits


def _eastron_serial(s: MeterState) -> int:
    return int(s.address) % 100_000_000


SDM630_INPUT: Final = (
    *_per_phase(0x0000, "Phase {n} line to neutral volts (30001+)", lambda s, k: s.v[k]),
    *_per_phase(0x0006, "Phase {n} current (30007+)", lambda s, k: s.i_abs(k)),
    *_per_phase(0x000C, "Phase {n} power, W (30013+)", lambda s, k: s.p[k] * 1000),
    *_per_phase(0x0012, "Phase {n} volt amps (30019+)", lambda s, k: abs(s.s[k]) * 1000),
    *_per_phase(0x0018, "Phase {n} volt amps reactive (30025+)", lambda s, k: s.q[k] * 1000),
    *_per_phase(0x001E, "Phase {n} power factor (30031+)", lambda s, k: s.pf[k]),
    *_per_phase(0x0024, "Phase {n} phase angle, degrees (30037+)", lambda s, k: s.angle(k)),
    _f32(0x002A, "Average line to neutral volts (30043)", MeterState.v_avg),
    _f32(0x002E, "Average line current (30047)", MeterState.i_avg),
    _f32(0x0030, "Sum of line currents (30049)", MeterState.i_sum),
    _f32(0x0034, "Total system power, W (30053)", lambda s: s.p_total * 1000),
    _f32(0x0038, "Total system volt amps (30057)", lambda s: s.s_total * 1000),
    _f32(0x003C, "Total system VAr (30061)", lambda s: s.q_total * 1000),
    _f32(0x003E, "Total system power factor (30063)", lambda s: s.pf_total),
    _f32(0x0042, "Total system phase angle (30067)", MeterState.angle_total),
    _f32(0x0046, "Frequency of supply voltages (30071)", lambda s: s.freq),
    _f32(0x0048, "Import Wh since last reset, kWh (30073)", lambda s: s.e_import),
    _f32(0x004A, "Export Wh since last reset, kWh (30075)", lambda s: s.e_export),
    _f32(0x004C, "Import VArh since last reset, kvarh (30077)", lambda s: s.e_reactive_import),
    _f32(0x004E, "Export VArh since last reset, kvarh (30079)", lambda s: s.e_reactive_export),
    _f32(0x0050, "VAh since last reset, kVAh (30081)", lambda s: s.e_apparent),
    _f32(0x0052, "Ah since last reset (30083)", MeterState.charge_ah),
    _f32(0x0054, "Total system power demand, W (30085)", lambda s: s.demand_now * 1000),
    _f32(0x0056, "Maximum total system power demand, W (30087)", lambda s: s.demand_total_max() * 1000),
    _f32(0x0058, "Total system positive power demand, W (30089)", lambda s: s.demand_import_now() * 1000),
    _f32(0x005A, "Maximum system positive power demand, W (30091)",
         lambda s: max(s.demand_import_max, s.demand_import_now()) * 1000),
    _f32(0x005C, "Total system reverse power demand, W (30093)", lambda s: s.demand_export_now() * 1000),
    _f32(0x005E, "Maximum system reverse power demand, W (30095)",
         lambda s: max(s.demand_export_max, s.demand_export_now()) * 1000),
    _f32(0x0064, "Total system VA demand (30101)", lambda s: s.demand_apparent_now() * 1000),
    _f32(0x0066, "Maximum total system VA demand (30103)", lambda s: s.demand_apparent_peak() * 1000),
    _f32(0x0068, "Neutral current demand (30105)", lambda s: s.demand_neutral()),
    _f32(0x006A, "Maximum neutral current demand (30107)", lambda s: s.demand_neutral(peak=True)),
    *_per_phase(0x00C8, "Line {n} to line {m} volts (30201+)", lambda s, k: s.v_ll(k)),
    _f32(0x00CE, "Average line to line volts (30207)", MeterState.v_ll_avg),
    _f32(0x00E0, "Neutral current (30225)", lambda s: s.i_n),
    *_per_phase(0x00EA, "Phase {n} L/N volts THD, % (30235+)", lambda s, k: s.thd_v(k)),
    *_per_phase(0x00F0, "Phase {n} current THD, % (30241+)", lambda s, k: s.thd_i(k)),
    _f32(0x00F8, "Average line to neutral volts THD, % (30249)",
         lambda s: sum(s.thd_v(k) for k in s.live) / s.phases),
    _f32(0x00FA, "Average line current THD, % (30251)", lambda s: sum(s.thd_i(k) for k in s.live) / s.phases),
    _f32(0x00FE, "Total system power factor (30255)", lambda s: s.pf_total),
    *_per_phase(0x0102, "Phase {n} current demand (30259+)", lambda s, k: s.demand_current(k)),
    *_per_phase(0x0108, "Maximum phase {n} current demand (30265+)", lambda s, k: s.demand_current(k, peak=True)),
    *_per_phase(0x014E, "Line {n} to line {m} volts THD, % (30335+)", lambda s, k: s.thd_v_ll(k)),
    _f32(0x0154, "Average line to line volts THD, % (30341)", lambda s: sum(s.thd_v_ll(k) for k in range(3)) / 3),
    _f32(0x0156, "Total kWh, import + export (30343)", lambda s: s.e_import + s.e_export),
    _f32(0x0158, "Total kvarh, import + export (30345)", lambda s: s.e_reactive_import + s.e_reactive_export),
    *_per_phase(0x015A, "L{n} import kWh (30347+)", lambda s, k: s.phase_energy(s.e_import, k)),
    *_per_phase(0x0160, "L{n} export kWh (30353+)", lambda s, k: s.phase_energy(s.e_export, k)),
    *_per_phase(0x0166, "L{n} total kWh (30359+)", lambda s, k: s.phase_energy(s.e_import + s.e_export, k)),
    *_per_phase(0x016C, "L{n} import kvarh (30365+)", lambda s, k: s.phase_energy(s.e_reactive_import, k)),
    *_per_phase(0x0172, "L{n} export kvarh (30371+)", lambda s, k: s.phase_energy(s.e_reactive_export, k)),
    *_per_phase(0x0178, "L{n} total kvarh (30377+)",
                lambda s, k: s.phase_energy(s.e_reactive_import + s.e_reactive_export, k)),
)  # fmt: skip

SDM630_HOLDING: Final = (
    _f32(0x0000, "Demand time, minutes (40001)", lambda s: float(DEMAND_MINUTES)),
    _f32(0x0002, "Demand period, minutes (40003)", lambda s: float(DEMAND_MINUTES)),
    _f32(0x0006, "System voltage (40007)", lambda s: SDM630_SYSTEM_VOLTAGE),
    _f32(0x0008, "System current (40009)", lambda s: SDM630_SYSTEM_CURRENT),
    _f32(0x000A, "System type: 1 = 1P2W, 2 = 3P3W, 3 = 3P4W (40011)", lambda s: 3.0 if s.phases == 3 else 1.0),
    _f32(0x000C, "Pulse 1 width, ms (40013)", lambda s: 100.0),
    _f32(0x000E, "Key parameter programming authorization, 0 = locked (40015)", lambda s: 0.0),
    _f32(0x0012, "Network parity stop (40019)", lambda s: float(EASTRON_PARITY_N1)),
    _f32(0x0014, "Network node (40021)", lambda s: float(s.unit)),
    _f32(0x001C, "Network baud rate (40029)", lambda s: float(EASTRON_BAUD_9600)),
    _f32(0x0024, "System power, W (40037)", lambda s: SDM630_SYSTEM_VOLTAGE * SDM630_SYSTEM_CURRENT * s.phases),
    _f32(0xF910, "Pulse 1 divisor: 0 = 0.001 kWh/imp (463761)", lambda s: 0.0),
    _f32(0xF920, "Measurement mode: 2 = total import + export (463777)", lambda s: 2.0),
    VendorRegister(0xFC00, "u32", "Serial number (464513)", _eastron_serial),
)  # fmt: skip

_SIGNED_BY_P: Final = frozenset(
    {*(f"current.{p}" for p in PHASES), *(f"power.apparent.{p}" for p in (*PHASES, "total"))}
)

EASTRON_SDM630: Final = VendorTable(
    "eastron-sdm630",
    "Eastron SDM630 Modbus Protocol V1.8 (input 30001-30381, holding 40001-): nmakel/sdm_modbus",
    {Function.INPUT: SDM630_INPUT, Function.HOLDING: SDM630_HOLDING},
    magnitudes=_SIGNED_BY_P,
)


# --- CHINT DTSU666 -------------------------------------------------------------------------------

DTSU666_HOLDING: Final = (
    VendorRegister(0x0000, "u16", "REV. software version", lambda s: 204),
    VendorRegister(0x0001, "u16", "UCode programming password", lambda s: 701),
    VendorRegister(0x0002, "u16", "ClrE energy clear", lambda s: 0),
    VendorRegister(0x0003, "u16", "net: 0 = three phase four wire, 1 = three phase three wire", lambda s: 0),
    VendorRegister(0x0006, "u16", "IrAt current ratio", lambda s: 1),
    VendorRegister(0x0007, "u16", "UrAt voltage ratio, x0.1", lambda s: 10),
    VendorRegister(0x000A, "u16", "Disp rotating display time, s", lambda s: 0),
    VendorRegister(0x000C, "u16", "Endian (reserved)", lambda s: 0),
    VendorRegister(0x002C, "u16", "Protocol: 3 = Modbus 8N1", lambda s: 3),
    VendorRegister(0x002D, "u16", "bAud: 3 = 9600", lambda s: 3),
    VendorRegister(0x002E, "u16", "Addr communication address", lambda s: s.unit),
    VendorRegister(0x002F, "u16", "Second", lambda s: s.clock.second),
    VendorRegister(0x0030, "u16", "Minute", lambda s: s.clock.minute),
    VendorRegister(0x0031, "u16", "Hour", lambda s: s.clock.hour),
    VendorRegister(0x0032, "u16", "Day", lambda s: s.clock.day),
    VendorRegister(0x0033, "u16", "Month", lambda s: s.clock.month),
    VendorRegister(0x0034, "u16", "Year", lambda s: s.clock.year),
    _f32(0x101E, "ImpEp (current) positive total active energy, kWh", lambda s: s.e_import),
    _f32(0x1028, "ExpEp (current) negative total active energy, kWh", lambda s: s.e_export),
    *[_f32(0x1032 + 10 * n, f"Q{n + 1}Eq (current) quadrant {n + 1} reactive total energy, kvarh",
           lambda s, n=n: s.e_q[n]) for n in range(4)],  # type: ignore[misc]
    *_per_phase(0x2000, "Line voltage {n}, 0.1 V", lambda s, k: s.v_ll(k) * 10),
    *_per_phase(0x2006, "Phase voltage {n}, 0.1 V", lambda s, k: s.v[k] * 10),
    *_per_phase(0x200C, "Phase current {n}, 0.001 A", lambda s, k: s.i[k] * 1000),
    _f32(0x2012, "Pt combined active power, 0.1 W", lambda s: s.p_total * 10_000),
    *_per_phase(0x2014, "Phase {n} active power, 0.1 W", lambda s, k: s.p[k] * 10_000),
    _f32(0x201A, "Qt combined reactive power, 0.1 var", lambda s: s.q_total * 10_000),
    *_per_phase(0x201C, "Phase {n} reactive power, 0.1 var", lambda s, k: s.q[k] * 10_000),
    _f32(0x202A, "PFt combined power factor, 0.001", lambda s: s.pf_total * 1000),
    *_per_phase(0x202C, "Phase {n} power factor, 0.001", lambda s, k: s.pf[k] * 1000),
    _f32(0x2044, "Freq frequency, 0.01 Hz", lambda s: s.freq * 100),
    _f32(0x2050, "DmPt total active power demand, 0.1 W", lambda s: s.demand_now * 10_000),
)  # fmt: skip

CHINT_DTSU666: Final = VendorTable(
    "chint-dtsu666",
    "CHINT DTSU666 user manual ZTY0.464.1448 5.3 Table 11; aggsoft DSU666/DTSU666 register list",
    {Function.HOLDING: DTSU666_HOLDING},
)


# --- Schneider iEM3x55 ---------------------------------------------------------------------------


def schneider_pf_register(pf: float, p: float, q: float) -> float:
    """A power factor in the iEM3000's four-quadrant register encoding (DOCA0005EN, "Power factor
    register format"): P >= 0 inductive: PF (0..1); P >= 0 capacitive: 2 - PF (1..2); P < 0
    capacitive (Q >= 0): PF (-1..0); P < 0 inductive (Q < 0): -2 - PF (-2..-1)."""
    if p >= 0:
        return pf if q >= 0 else 2.0 - pf
    return pf if q >= 0 else -2.0 - pf


def schneider_datetime(t: datetime) -> tuple[int, int, int, int]:
    """Schneider's 4-register DATETIME: year-2000 (bits 0-6); month (8-11), weekday (5-7, Monday 1)
    and day (0-4); hour (8-12) and minute (0-5); milliseconds of the minute."""
    return (
        (t.year - 2000) & 0x7F,
        (t.month << 8) | (t.isoweekday() << 5) | t.day,
        (t.hour << 8) | t.minute,
        t.second * 1000 + t.microsecond // 1000,
    )


IEM3X55_MANUFACTURED: Final = datetime(2024, 3, 12, 10, 30)

IEM3X55_HOLDING: Final = (
    VendorRegister(29, "str", "Meter name (30)", lambda s: "iEM3155", count=20),
    VendorRegister(49, "str", "Meter model (50)", lambda s: "iEM3155", count=20),
    VendorRegister(69, "str", "Manufacturer (70)", lambda s: "Schneider Electric", count=20),
    VendorRegister(129, "u32", "Serial number (130)", lambda s: int(s.address) % 1_000_000_000),
    VendorRegister(131, "words", "Date of manufacture (132)", lambda s: schneider_datetime(IEM3X55_MANUFACTURED),
                   count=4),
    VendorRegister(135, "str", "Hardware revision (136)", lambda s: "V1.0", count=5),
    VendorRegister(1844, "words", "Date/time (1845)", lambda s: schneider_datetime(s.clock), count=4),
    VendorRegister(2013, "u16", "Number of phases (2014)", lambda s: s.phases),
    VendorRegister(2014, "u16", "Number of wires (2015)", lambda s: 4 if s.phases == 3 else 2),
    VendorRegister(2015, "u16", "Power system: 11 = 3PH4W, 0 = 1PH2W L-N (2016)", lambda s: 11 if s.phases == 3 else 0),
    VendorRegister(2016, "u16", "Nominal frequency, Hz (2017)", lambda s: 50),
    *_per_phase(2999, "I{n}, A (3000+)", lambda s, k: s.i_abs(k)),
    _f32(3009, "Current avg, A (3010)", MeterState.i_avg),
    *_per_phase(3019, "Voltage L{n}-L{m} (3020+)", lambda s, k: s.v_ll(k)),
    _f32(3025, "Average voltage L-L (3026)", MeterState.v_ll_avg),
    *_per_phase(3027, "Voltage L{n}-N (3028+)", lambda s, k: s.v[k]),
    _f32(3035, "Average voltage L-N (3036)", MeterState.v_avg),
    *_per_phase(3053, "Active power phase {n}, kW (3054+)", lambda s, k: s.p[k]),
    _f32(3059, "Total active power, kW (3060)", lambda s: s.p_total),
    _f32(3067, "Total reactive power, kvar (3068)", lambda s: s.q_total),
    _f32(3075, "Total apparent power, kVA (3076)", lambda s: s.s_total),
    _f32(3083, "Total power factor, -2..2 quadrant encoding (3084)",
         lambda s: schneider_pf_register(s.pf_total, s.p_total, s.q_total)),
    _f32(3109, "Frequency, Hz (3110)", lambda s: s.freq),
    _f32(3191, "Total power factor, IEC: sign of P (3192)", lambda s: s.pf_total),
    _f32(3193, "Total power factor, IEEE: - lagging, + leading (3194)",
         lambda s: -abs(s.pf_total) if s.p_total * s.q_total >= 0 else abs(s.pf_total)),
    _f32(45099, "Total active energy import, kWh (45100)", lambda s: s.e_import),
    _f32(45101, "Total active energy export, kWh (45102)", lambda s: s.e_export),
    _f32(45103, "Total reactive energy import, kvarh (45104)", lambda s: s.e_reactive_import),
    _f32(45105, "Total reactive energy export, kvarh (45106)", lambda s: s.e_reactive_export),
    _f32(45107, "Partial active energy import, kWh (45108)", lambda s: s.e_import),
    _f32(45109, "Partial reactive energy import, kvarh (45110)", lambda s: s.e_reactive_import),
    *_per_phase(45111, "Active energy import phase {n}, kWh (45112+)", lambda s, k: s.phase_energy(s.e_import, k)),
    *_per_phase(45127, "Reactive energy import phase {n}, kvarh (45128+)",
                lambda s, k: s.phase_energy(s.e_reactive_import, k)),
)  # fmt: skip

SCHNEIDER_IEM3X55: Final = VendorTable(
    "schneider-iem3x55",
    "Schneider Electric DOCA0005EN Modbus register list; Gaudi111/iem3155_esphome",
    {Function.HOLDING: IEM3X55_HOLDING},
    magnitudes=_SIGNED_BY_P,
)

VENDOR_TABLES: Final[Mapping[str, VendorTable]] = {
    t.model: t for t in (EASTRON_SDM630, CHINT_DTSU666, SCHNEIDER_IEM3X55)
}
