"""A fleet of simulated buses built from a few parameters: what ``meterd simulate`` and ``meterd demo`` run.

Strategy: :class:`FleetSpec` is plain data and validated all at once (every problem listed in one
:class:`~meterd.errors.ConfigError`).  :func:`run_fleet` derives everything else from it
deterministically: meter addresses are sequential 12-digit BCD numbers from ``first_address``
across all buses, in bus order -- DL/T 645 pty buses, DL/T 645 TCP buses, then Modbus pty buses
(RTU) and Modbus TCP buses (MBAP, or RTU over TCP); each meter's seed, load scale (0.6..1.6) and
rooftop PV (every fourth meter) come from ``seed`` and its position, so one spec always yields
the same fleet.  All meters share one :class:`~meterd.simulators.serve.SimClock` (``speed``
simulated seconds per real second) and start at its start time.

DL/T 645 meters speak DL/T 645-2007 unless listed in ``v1997``.  A Modbus bus serves every meter
through the register map ``modbus_model``, under unit ids 1..``meters_per_bus`` in address order;
the meters keep their 12-digit address as their name (what ``faults`` and the fleet document use).

Faults are given per address, as a plan, a mapping ``{kind: probability}``, or text
``"KIND[:PROB]"`` (several joined by commas; ``late`` takes ``late:PROB:SECONDS`` as well, and the
Modbus ``exception`` takes ``exception:PROB:CODE``).  Kinds are the link faults of the meter's
protocol -- :data:`~meterd.simulators.dlt645.FAULT_KINDS` (a :class:`FaultPlan`) for DL/T 645,
:data:`~meterd.simulators.modbus.MODBUS_FAULT_KINDS` (a :class:`ModbusFaultPlan`) for Modbus -- plus
``stuck_relay`` (a meter fault: the relay acknowledges control but does not move) and the meter
conditions of :data:`CONDITION_KINDS`, held from the start, whose number is not a probability:
``power_down`` (no supply: silent; DL/T 645 meters only), ``reverse`` (reversed wiring),
``sag[:SCALE]`` / ``swell[:SCALE]`` (the voltage times SCALE, default 0.85 / 1.12),
``imbalance[:SHARE]`` (phase A carries SHARE of the load, default 0.7, B and C the rest evenly) and
``clock_drift[:SECONDS]`` (the clock gains SECONDS a day, default 60; negative: loses).

Areas (``areas``, :class:`AreaSpec`): a supply meter measuring its customers plus a loss
(:class:`~meterd.simulators.area.Area`), for line loss and whole-area outages.

``history_days``: the meters start with that many daily freezes from before the start (line loss and
reading-day exports have yesterday at once; see :meth:`MeterModel.backfill_daily`).

``control``: a Unix socket path where :mod:`meterd.simulators.control` takes commands while the
fleet runs -- press a meter's button, power meters or whole areas down and up, change conditions.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Self

from meterd.errors import ConfigError, ProtocolError
from meterd.protocols.dlt645.frame import normalize_address
from meterd.protocols.modbus import get_map
from meterd.simulators.area import DEFAULT_LOSS, MAX_LOSS, Area
from meterd.simulators.control import SimControl, serve_control
from meterd.simulators.dlt645 import FAULT_KINDS, Dlt645Bus, FaultPlan
from meterd.simulators.modbus import FRAMINGS, MAX_UNIT, MODBUS_FAULT_KINDS, ModbusBus, ModbusFaultPlan
from meterd.simulators.model import (
    FROZEN_KEEP,
    MAX_DRIFT_PER_DAY,
    VOLTAGE_SCALE_RANGE,
    LoadProfile,
    MeterModel,
    noise,
)
from meterd.simulators.serve import DEFAULT_PTY_TURNAROUND, RunningBus, SimClock, serve_pty, serve_tcp

STUCK_RELAY: Final = "stuck_relay"
# meter conditions: kind -> (default value, lowest, highest, what the value is)
CONDITION_KINDS: Final[dict[str, tuple[float, float, float, str]]] = {
    "power_down": (1.0, 1.0, 1.0, "nothing"),
    "reverse": (1.0, 1.0, 1.0, "nothing"),
    "sag": (0.85, VOLTAGE_SCALE_RANGE[0], 1.0, "the voltage scale"),
    "swell": (1.12, 1.0, VOLTAGE_SCALE_RANGE[1], "the voltage scale"),
    "imbalance": (0.7, 1 / 3, 1.0, "phase A's share of the load"),
    "clock_drift": (60.0, -MAX_DRIFT_PER_DAY, MAX_DRIFT_PER_DAY, "seconds a day"),
}
ALL_FAULT_KINDS: Final = (*FAULT_KINDS, STUCK_RELAY, *CONDITION_KINDS)
MODBUS_ALL_FAULT_KINDS: Final = (*MODBUS_FAULT_KINDS, STUCK_RELAY, *(k for k in CONDITION_KINDS if k != "power_down"))
PV_EVERY: Final = 4

DLT645: Final = "dlt645"
MODBUS: Final = "modbus"
DLT645_2007: Final = "dlt645-2007"
DLT645_1997: Final = "dlt645-1997"

FaultSource = str | FaultPlan | ModbusFaultPlan | Mapping[str, float]
AnyFaultPlan = FaultPlan | ModbusFaultPlan


def dlt645_speaks_1997() -> bool:
    """Whether this build's :class:`Dlt645Bus` takes ``protocols=`` (DL/T 645-1997 meters)."""
    return "protocols" in inspect.signature(Dlt645Bus.__init__).parameters


def parse_fault(text: str) -> tuple[str, str]:
    """``"ADDR:KIND[:PROB[:SECONDS]]"`` (the ``--fault`` option) -> (12-digit address, ``"KIND[:PROB...]"``)."""
    address, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise ConfigError(f"--fault {text!r}: expected ADDR:KIND[:PROB], e.g. 000000000002:garble:0.3")
    try:
        return normalize_address(address), rest
    except ProtocolError as exc:
        raise ConfigError(f"--fault {text!r}: {exc}") from None


def _parse_kinds(
    address: str, source: FaultSource, problems: list[str], protocol: str = DLT645
) -> tuple[AnyFaultPlan | None, bool]:
    """One address's faults -> (link fault plan or None, stuck relay).

    ``protocol`` says which fault kinds and plan class apply: DL/T 645 or Modbus.
    """
    modbus = protocol == MODBUS
    if modbus and isinstance(source, (ModbusFaultPlan, FaultPlan)):
        return ModbusFaultPlan.coerce(source), False
    if isinstance(source, ModbusFaultPlan):
        problems.append(f"faults.{address}: a Modbus fault plan for a DL/T 645 meter")
        return None, False
    if isinstance(source, FaultPlan):
        return source, False
    kinds = MODBUS_ALL_FAULT_KINDS if modbus else ALL_FAULT_KINDS
    with_extra = ("late", "exception") if modbus else ("late",)
    items: list[tuple[str, float | None, float | None]] = []  # kind, its number if given, the second
    if isinstance(source, str):
        for part in filter(None, (p.strip() for p in source.split(","))):
            kind, *nums = part.split(":")
            try:
                values = [float(n) for n in nums]
            except ValueError:
                problems.append(f"faults.{address}: {part!r} is not KIND[:PROB]")
                continue
            if len(values) > (2 if kind in with_extra else 1):
                problems.append(f"faults.{address}: {part!r} has too many fields")
                continue
            items.append((kind, values[0] if values else None, values[1] if len(values) > 1 else None))
    elif isinstance(source, Mapping):
        items = [(str(k), float(v), None) for k, v in source.items()]
    else:
        problems.append(f"faults.{address}: {source!r} is not a fault description")
    plan: Any = None
    stuck = False
    for kind, number, extra_value in items:
        prob = 1.0 if number is None else number
        if kind in CONDITION_KINDS and kind in kinds:
            _check_condition(address, kind, number, problems)
        elif kind not in kinds:
            what = "Modbus fault kind" if modbus else "fault kind"
            problems.append(f"faults.{address}: unknown {what} {kind!r} (known: {', '.join(kinds)})")
        elif not 0.0 <= prob <= 1.0:
            problems.append(f"faults.{address}: probability {prob} of {kind} must be within 0..1")
        elif kind == STUCK_RELAY:
            stuck = prob > 0
        else:
            extra: dict[str, float] = {}
            if extra_value is not None:
                extra = {"exception_code": extra_value} if kind == "exception" else {"late_by": extra_value}
            try:
                one = ModbusFaultPlan.of(kind, prob, **extra) if modbus else FaultPlan.of(kind, prob, **extra)
            except ValueError as exc:
                problems.append(f"faults.{address}: {exc}")
                continue
            plan = one if plan is None else plan.merged(one)
    return plan, stuck


def _check_condition(address: str, kind: str, value: float | None, problems: list[str]) -> None:
    _, low, high, what = CONDITION_KINDS[kind]
    if value is None:
        return  # the default
    if low == high and value != low:
        problems.append(f"faults.{address}: {kind} takes no number (or 1)")
    elif not low <= value <= high:
        problems.append(f"faults.{address}: {kind} {value:g} must be within {low:g}..{high:g} ({what})")


def _condition_items(source: FaultSource) -> list[tuple[str, float]]:
    """The meter conditions of one address's faults (checked already), with their defaults."""
    if isinstance(source, (FaultPlan, ModbusFaultPlan)):
        return []
    if isinstance(source, Mapping):
        return [(str(k), float(v)) for k, v in source.items() if str(k) in CONDITION_KINDS]
    out = []
    for part in filter(None, (p.strip() for p in str(source).split(","))):
        kind, *nums = part.split(":")
        if kind in CONDITION_KINDS:
            out.append((kind, float(nums[0]) if nums else CONDITION_KINDS[kind][0]))
    return out


def apply_conditions(model: MeterModel, conditions: Mapping[str, float], now: datetime) -> None:
    """Set a meter's conditions (kind -> value, as :data:`CONDITION_KINDS`) at true time ``now``."""
    for kind, value in conditions.items():
        if kind == "power_down":
            model.power_down(now)
        elif kind == "reverse":
            model.set_reversed(True, now)
        elif kind in ("sag", "swell"):
            model.set_voltage(value, now)
        elif kind == "imbalance":
            rest = (1.0 - value) / 2
            model.set_phase_shares((value, rest, rest), now)
        elif kind == "clock_drift":
            model.set_clock_drift(value, now)


def describe_plan(plan: AnyFaultPlan) -> dict[str, float | int]:
    """A plan as the fleet document shows it: active kinds, plus ``late_by``/``exception_code``."""
    if isinstance(plan, ModbusFaultPlan):
        return plan.describe()
    return plan.active | ({"late_by": plan.late_by} if plan.late else {})


@dataclass(frozen=True, slots=True)
class AreaSpec:
    """A transformer area: ``supply`` measures ``customers`` plus ``loss`` (a fraction of the
    supply); ``ct``: CT ratios of its meters (default 1)."""

    name: str
    supply: str
    customers: tuple[str, ...]
    loss: float = DEFAULT_LOSS
    ct: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def coerce(cls, source: AreaSpec | Mapping[str, Any], where: str, problems: list[str]) -> AreaSpec | None:
        """An AreaSpec from itself or a mapping (``name``, ``supply``, ``customers``, ``loss``, ``ct``)."""
        if isinstance(source, AreaSpec):
            spec = source
        elif isinstance(source, Mapping):
            unknown = sorted(set(source) - {"name", "supply", "customers", "loss", "ct"})
            if unknown:
                problems.append(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                                "(expected name, supply, customers, loss, ct)")
                return None
            customers = source.get("customers", ())
            if isinstance(customers, str) or not isinstance(customers, (list, tuple)):
                problems.append(f"{where}.customers: must be a list of meter addresses")
                return None
            ct = source.get("ct", {})
            loss = source.get("loss", DEFAULT_LOSS)
            if not isinstance(ct, Mapping) or isinstance(loss, bool) or not isinstance(loss, (int, float)):
                problems.append(f"{where}: loss must be a number and ct a table of address = ratio")
                return None
            spec = cls(str(source.get("name", "")), str(source.get("supply", "")), tuple(map(str, customers)),
                       float(loss), {str(k): v for k, v in ct.items()})
        else:
            problems.append(f"{where}: {source!r} is not an area (name, supply, customers, loss)")
            return None
        try:
            supply = normalize_address(spec.supply)
            customers = tuple(normalize_address(c) for c in spec.customers)
            ct = {normalize_address(a): r for a, r in spec.ct.items()}
        except ProtocolError as exc:
            problems.append(f"{where}: {exc}")
            return None
        return cls(spec.name, supply, customers, spec.loss, ct)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What to simulate.  ``turnaround`` None means 20 ms on pty buses and 0 on TCP.

    ``pty_buses``/``tcp_buses`` are DL/T 645 buses (``baud`` 8E1 on ptys); ``modbus_pty_buses``
    are Modbus RTU lines (``modbus_baud`` 8N1), ``modbus_tcp_buses`` Modbus TCP ports speaking
    ``modbus_tcp_framing`` (``"tcp"``: MBAP; ``"rtu"``: RTU over TCP), every Modbus meter through
    the register map ``modbus_model``.  ``v1997``: addresses of DL/T 645 meters that speak
    DL/T 645-1997.  TCP ports: DL/T 645 buses from ``port``, Modbus TCP buses after them.
    """

    pty_buses: int = 1
    tcp_buses: int = 0
    meters_per_bus: int = 3
    first_address: str | int = "000000000001"
    faults: Mapping[str, FaultSource] = field(default_factory=dict)
    speed: float = 1.0
    wire_time: bool = True
    baud: int = 2400
    turnaround: float | None = None
    host: str = "127.0.0.1"
    port: int = 0  # first TCP port (bus i listens on port + i); 0 = free ports
    seed: int = 0
    start: datetime | None = None  # simulated start time; None = local wall time now
    password: str = "02123456"
    tick: float = 1.0
    modbus_pty_buses: int = 0
    modbus_tcp_buses: int = 0
    modbus_model: str = "generic"
    modbus_tcp_framing: str = "tcp"
    modbus_baud: int = 9600
    v1997: Collection[str] = ()
    areas: Sequence[AreaSpec | Mapping[str, Any]] = ()
    control: str | None = None  # a Unix socket path for commands while the fleet runs
    history_days: int = 0  # daily freezes the meters have from before the start (MeterModel.backfill_daily)

    def __post_init__(self) -> None:
        problems: list[str] = []
        counts = (self.pty_buses, self.tcp_buses, self.modbus_pty_buses, self.modbus_tcp_buses)
        if min(counts) < 0:
            problems.append("bus counts must be >= 0")
        if sum(max(c, 0) for c in counts) < 1:
            problems.append("a fleet needs at least one bus (pty, tcp, modbus pty or modbus tcp)")
        if not 1 <= self.meters_per_bus <= 255:
            problems.append(f"meters_per_bus {self.meters_per_bus} must be 1..255")
        elif self.modbus_buses and self.meters_per_bus > MAX_UNIT:
            problems.append(f"meters_per_bus {self.meters_per_bus} must be 1..{MAX_UNIT} on Modbus buses (unit ids)")
        if self.modbus_tcp_framing not in FRAMINGS:
            problems.append(f"modbus_tcp_framing {self.modbus_tcp_framing!r} must be tcp (MBAP) or rtu (RTU over TCP)")
        if self.modbus_baud <= 0:
            problems.append(f"modbus_baud {self.modbus_baud} must be > 0")
        try:
            get_map(self.modbus_model)
        except ConfigError as exc:
            problems.extend(f"modbus_model: {p}" for p in exc.problems)
        if self.speed <= 0:
            problems.append(f"speed {self.speed} must be > 0")
        if self.baud <= 0:
            problems.append(f"baud {self.baud} must be > 0")
        if self.turnaround is not None and self.turnaround < 0:
            problems.append(f"turnaround {self.turnaround} must be >= 0 seconds")
        tcp_ports = self.tcp_buses + self.modbus_tcp_buses
        if not 0 <= self.port <= 65535 or (self.port and self.port + tcp_ports - 1 > 65535):
            problems.append(f"port {self.port} leaves no room for {tcp_ports} TCP buses")
        first = None
        try:
            first = int(normalize_address(self.first_address))
        except (ProtocolError, ValueError):
            problems.append(f"first_address {self.first_address!r} is not a 12-digit decimal address")
        total = max(sum(max(c, 0) for c in counts), 0) * max(self.meters_per_bus, 0)
        if first is not None and first + total > 10**12:
            problems.append(f"{total} meters from {self.first_address} run past 999999999999")
        layout_ok = (
            min(counts) >= 0 and sum(counts) > 0 and 1 <= self.meters_per_bus <= 255
            and first is not None and first + total <= 10**12
        )  # fmt: skip
        known = set(self.all_addresses()) if layout_ok else set()
        modbus = set(self.modbus_addresses()) if layout_ok else set()
        for address, source in self.faults.items():
            try:
                key = normalize_address(address)
            except ProtocolError as exc:
                problems.append(f"faults: {exc}")
                continue
            if known and key not in known:
                problems.append(f"faults.{key}: no such meter in the fleet ({self.all_addresses()[0]}..)")
            if layout_ok or not self.modbus_buses:  # else: which protocol the meter speaks is unknown
                _parse_kinds(key, source, problems, MODBUS if key in modbus else DLT645)
        if isinstance(self.v1997, str):
            problems.append(f"v1997 {self.v1997!r} must be a collection of addresses, not one string")
        else:
            for address in self.v1997:
                try:
                    key = normalize_address(address)
                except ProtocolError as exc:
                    problems.append(f"v1997: {exc}")
                    continue
                if key in modbus:
                    problems.append(f"v1997: {key} is a Modbus meter; only DL/T 645 meters speak DL/T 645-1997")
                elif known and key not in known:
                    problems.append(f"v1997: {key}: no such meter in the fleet ({self.all_addresses()[0]}..)")
            if self.v1997 and not dlt645_speaks_1997():
                problems.append("v1997: this build's DL/T 645 simulator cannot speak DL/T 645-1997 "
                                "(Dlt645Bus has no protocols=)")  # fmt: skip
        self._check_areas(known, problems)
        if isinstance(self.history_days, bool) or not isinstance(self.history_days, int) \
                or not 0 <= self.history_days <= FROZEN_KEEP:
            problems.append(f"history_days {self.history_days!r} must be a whole number 0..{FROZEN_KEEP}")
        if self.control is not None and (not self.control or "\0" in self.control):
            problems.append(f"control {self.control!r} must be a socket path")
        if problems:
            raise ConfigError(problems)

    def _check_areas(self, known: set[str], problems: list[str]) -> None:
        if isinstance(self.areas, (str, Mapping)):
            problems.append("areas must be a list of areas")
            return
        names: set[str] = set()
        supplies: set[str] = set()
        customers: dict[str, str] = {}
        for i, source in enumerate(self.areas):
            area = AreaSpec.coerce(source, f"areas[{i}]", problems)
            if area is None:
                continue
            where = f"areas.{area.name or i}"
            if not area.name or area.name in names:
                problems.append(f"areas[{i}]: every area needs a name of its own, got {area.name!r}")
            names.add(area.name)
            meters = (area.supply, *area.customers)
            strangers = [m for m in meters if known and m not in known]
            if strangers:
                problems.append(f"{where}: no such meter in the fleet: {', '.join(strangers)}")
            if not area.customers:
                problems.append(f"{where}: an area needs customers")
            if area.supply in area.customers or len(set(area.customers)) != len(area.customers):
                problems.append(f"{where}: a meter is listed twice (the supply meter among its customers?)")
            if area.supply in supplies:
                problems.append(f"{where}: meter {area.supply} is the supply meter of another area already")
            supplies.add(area.supply)
            for c in area.customers:
                if c in customers:
                    problems.append(f"{where}: meter {c} is a customer of area {customers[c]} already")
                customers[c] = area.name
            if not 0.0 <= area.loss <= MAX_LOSS:
                problems.append(f"{where}: loss {area.loss} must be within 0..{MAX_LOSS} (a fraction of the supply)")
            for a, r in area.ct.items():
                if a not in meters:
                    problems.append(f"{where}.ct: meter {a} is not in this area")
                elif isinstance(r, bool) or not isinstance(r, int) or r < 1:
                    problems.append(f"{where}.ct: ratio {r!r} of meter {a} must be a whole number >= 1")

    def area_specs(self) -> list[AreaSpec]:
        """The areas, checked and with 12-digit addresses."""
        problems: list[str] = []
        out = [AreaSpec.coerce(a, f"areas[{i}]", problems) for i, a in enumerate(self.areas)]
        return [a for a in out if a is not None]

    def conditions(self) -> dict[str, dict[str, float]]:
        """Meter conditions held from the start, per address: kind -> value (defaults filled in)."""
        out: dict[str, dict[str, float]] = {}
        for address, source in self.faults.items():
            found = dict(_condition_items(source))
            if found:
                out.setdefault(normalize_address(address), {}).update(found)
        return out

    @property
    def modbus_buses(self) -> int:
        return max(self.modbus_pty_buses, 0) + max(self.modbus_tcp_buses, 0)

    def bus_layout(self) -> list[tuple[str, str]]:
        """(protocol, kind) of every bus, in bus order: ``("dlt645" | "modbus", "pty" | "tcp")``."""
        return (
            [(DLT645, "pty")] * self.pty_buses
            + [(DLT645, "tcp")] * self.tcp_buses
            + [(MODBUS, "pty")] * self.modbus_pty_buses
            + [(MODBUS, "tcp")] * self.modbus_tcp_buses
        )

    def addresses(self) -> list[list[str]]:
        """Meter addresses per bus, in bus order (see :meth:`bus_layout`)."""
        first = int(normalize_address(self.first_address))
        n = self.meters_per_bus
        return [[f"{first + b * n + i:012d}" for i in range(n)] for b in range(len(self.bus_layout()))]

    def all_addresses(self) -> list[str]:
        return [a for bus in self.addresses() for a in bus]

    def modbus_addresses(self) -> list[str]:
        """Addresses of the meters on Modbus buses."""
        return [a for (protocol, _), bus in zip(self.bus_layout(), self.addresses()) if protocol == MODBUS for a in bus]

    def v1997_addresses(self) -> frozenset[str]:
        return frozenset(normalize_address(a) for a in self.v1997)

    def meter_protocol(self, address: str) -> str:
        """``"dlt645-2007"``, ``"dlt645-1997"`` or ``"modbus"``."""
        key = normalize_address(address)
        if key in self.modbus_addresses():
            return MODBUS
        return DLT645_1997 if key in self.v1997_addresses() else DLT645_2007

    def fault_plans(self) -> tuple[dict[str, AnyFaultPlan], frozenset[str]]:
        """(link fault plan per address -- a :class:`ModbusFaultPlan` for Modbus meters, else a
        :class:`FaultPlan` --, addresses with a stuck relay)."""
        plans: dict[str, Any] = {}
        stuck: set[str] = set()
        problems: list[str] = []
        modbus = set(self.modbus_addresses())
        for address, source in self.faults.items():
            key = normalize_address(address)
            plan, is_stuck = _parse_kinds(key, source, problems, MODBUS if key in modbus else DLT645)
            if plan is not None:
                plans[key] = plan if key not in plans else plans[key].merged(plan)
            if is_stuck:
                stuck.add(key)
        return plans, frozenset(stuck)


@dataclass(frozen=True, slots=True)
class FleetBus:
    """One running bus: ``protocol`` ``"dlt645"`` or ``"modbus"``; ``framing`` (Modbus only) ``"rtu"``
    or ``"tcp"`` (MBAP); ``units`` (Modbus only) the unit id of each meter, in ``meters`` order;
    ``meter_protocols`` each meter's protocol (``dlt645-2007``, ``dlt645-1997``, ``modbus``);
    ``model`` (Modbus only) the register map's name."""

    kind: str  # "pty" or "tcp"
    endpoint: str  # device path or "host:port"
    meters: tuple[str, ...]
    running: RunningBus = field(compare=False, repr=False)
    protocol: str = DLT645
    framing: str | None = None
    units: tuple[int, ...] = ()
    meter_protocols: tuple[str, ...] = ()
    model: str | None = None

    @property
    def protocols(self) -> dict[str, str]:
        """Meter address -> its protocol."""
        default = MODBUS if self.protocol == MODBUS else DLT645_2007
        return {a: p for a, p in zip(self.meters, self.meter_protocols or (default,) * len(self.meters))}

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "endpoint": self.endpoint, "meters": list(self.meters),
                               "protocol": self.protocol, "framing": self.framing, "protocols": self.protocols}
        if self.protocol == MODBUS:
            doc.update(model=self.model, units=dict(zip(self.meters, self.units)))
        r = self.running
        if self.kind == "pty" and r.line is not None:
            doc.update(baud=r.line.baud, bytesize=r.line.bytesize, parity=r.line.parity,
                       stopbits=r.line.stopbits, wire_time=r.wire_time)
        else:
            host, _, port = self.endpoint.rpartition(":")
            doc.update(host=host.strip("[]"), port=int(port))
        doc["turnaround_ms"] = round(r.turnaround * 1000, 3)
        return doc


class Fleet:
    """Running buses, their meters and the shared simulated clock."""

    def __init__(self, spec: FleetSpec, clock: SimClock, buses: list[FleetBus], models: dict[str, MeterModel],
                 areas: dict[str, Area] | None = None) -> None:
        self.spec = spec
        self.clock = clock
        self.buses = buses
        self.models = models
        self.areas = dict(areas or {})
        self.control: SimControl | None = None  # the control socket's commands, when it runs
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def meter(self, address: str) -> MeterModel:
        return self.models[normalize_address(address)]

    def area(self, name: str) -> Area:
        return self.areas[name]

    @property
    def addresses(self) -> list[str]:
        return [a for b in self.buses for a in b.meters]

    @property
    def bus_names(self) -> list[str]:
        """``pty1``, ``pty2``, ..., ``tcp1``, ... (DL/T 645), ``mbpty1``, ..., ``mbtcp1``, ... (Modbus):
        stable names to use as channel names."""
        counts: dict[str, int] = {}
        names = []
        for b in self.buses:
            name = f"mb{b.kind}" if b.protocol == MODBUS else b.kind
            counts[name] = counts.get(name, 0) + 1
            names.append(f"{name}{counts[name]}")
        return names

    def unit(self, address: str) -> int | None:
        """The Modbus unit id of a meter, None for a DL/T 645 meter."""
        key = normalize_address(address)
        for b in self.buses:
            if key in b.meters and b.units:
                return b.units[b.meters.index(key)]
        return None

    def as_dict(self) -> dict[str, Any]:
        plans, stuck = self.spec.fault_plans()
        faults: dict[str, dict[str, float | int]] = {a: describe_plan(p) for a, p in plans.items()}
        for address, conditions in self.spec.conditions().items():  # shown with the faults, as given
            faults.setdefault(address, {}).update(conditions)
        return {
            "start": self.clock.start.isoformat(),
            "speed": self.clock.speed,
            "seed": self.spec.seed,
            "password": self.spec.password,
            "buses": [{"name": name, **b.as_dict()} for name, b in zip(self.bus_names, self.buses)],
            "faults": dict(sorted(faults.items())),
            "stuck_relays": sorted(stuck),
            "areas": [{"name": a.name, "supply": a.supply.address, "customers": [c.address for c in a.customers],
                       "loss": a.loss, "ct": dict(a.ct)} for a in self.areas.values()],
            "control": self.spec.control,
        }

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in closers:
            with contextlib.suppress(Exception):
                await closer()
        for b in self.buses:
            with contextlib.suppress(Exception):
                await b.running.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def build_meters(spec: FleetSpec, start: datetime) -> dict[str, MeterModel]:
    """The fleet's meter models, deterministic from the spec, with their conditions set."""
    _, stuck = spec.fault_plans()
    models: dict[str, MeterModel] = {}
    for index, address in enumerate(spec.all_addresses()):
        key = spec.seed * 1_000_003 + index
        profile = LoadProfile(
            scale=round(1.1 + 0.5 * noise(key, 1, 0), 3),
            pv_peak_kw=3.0 if index % PV_EVERY == PV_EVERY - 1 else 0.0,
        )
        models[address] = MeterModel(
            address,
            start=start,
            profile=profile,
            seed=key,
            password=spec.password,
            stuck_relay=address in stuck,
        )
    for address, conditions in spec.conditions().items():
        apply_conditions(models[address], conditions, start)
    return models


def build_areas(spec: FleetSpec, models: Mapping[str, MeterModel]) -> dict[str, Area]:
    """The spec's areas over ``models``; ConfigError naming the area when one cannot be (a supply
    meter whose customers would overflow its power registers without a CT ratio)."""
    areas: dict[str, Area] = {}
    problems: list[str] = []
    for a in spec.area_specs():
        try:
            areas[a.name] = Area(a.name, models[a.supply], [models[c] for c in a.customers], loss=a.loss, ct=a.ct)
        except ValueError as exc:
            problems.append(f"areas.{a.name}: {exc}")
    if problems:
        raise ConfigError(problems)
    return areas


async def run_fleet(spec: FleetSpec) -> Fleet:
    """Start every bus of ``spec``; the caller closes the returned :class:`Fleet`."""
    clock = SimClock.starting(spec.start, spec.speed)
    models = build_meters(spec, clock.start)
    areas = build_areas(spec, models)
    if spec.history_days:
        try:
            for model in models.values():  # after the areas: a supply meter's history is its customers'
                model.backfill_daily(spec.history_days)
        except ValueError as exc:
            raise ConfigError([f"history_days: {exc}"]) from None
    plans, _ = spec.fault_plans()
    v1997 = spec.v1997_addresses()
    regmap = get_map(spec.modbus_model) if spec.modbus_buses else None
    buses: list[FleetBus] = []
    tcp_index = 0
    try:
        for i, (addresses, (protocol, kind)) in enumerate(zip(spec.addresses(), spec.bus_layout())):
            seed = spec.seed * 7919 + i
            bus: Dlt645Bus | ModbusBus
            if protocol == MODBUS:
                assert regmap is not None
                units = tuple(range(1, len(addresses) + 1))
                framing = "rtu" if kind == "pty" else spec.modbus_tcp_framing
                bus = ModbusBus(
                    {u: models[a] for u, a in zip(units, addresses)},
                    regmap,
                    framing=framing,
                    faults={u: plans[a] for u, a in zip(units, addresses) if a in plans},
                    seed=seed,
                )
                extra: dict[str, Any] = {"protocol": MODBUS, "framing": framing, "units": units,
                                         "meter_protocols": (MODBUS,) * len(addresses), "model": regmap.name}
            else:
                old = {a: DLT645_1997 for a in addresses if a in v1997}
                bus = Dlt645Bus(
                    [models[a] for a in addresses],
                    {a: p for a in addresses if isinstance(p := plans.get(a), FaultPlan)},
                    seed=seed,
                    **({"protocols": old} if old else {}),
                )
                extra = {"meter_protocols": tuple(old.get(a, DLT645_2007) for a in addresses)}
            if kind == "pty":
                turnaround = DEFAULT_PTY_TURNAROUND if spec.turnaround is None else spec.turnaround
                baud = spec.modbus_baud if protocol == MODBUS else spec.baud
                running = await serve_pty(
                    bus, baud=baud, wire_time=spec.wire_time, turnaround=turnaround, clock=clock, tick=spec.tick
                )
            else:
                port = spec.port + tcp_index if spec.port else 0
                tcp_index += 1
                running = await serve_tcp(
                    bus, spec.host, port, turnaround=spec.turnaround or 0.0, clock=clock, tick=spec.tick
                )
            buses.append(FleetBus(running.kind, running.endpoint, tuple(addresses), running, **extra))
        fleet = Fleet(spec, clock, buses, models, areas)
        if spec.control is not None:
            fleet.control = SimControl(models, areas, clock)
            fleet._closers.append(await serve_control(fleet.control, spec.control))
    except BaseException:
        for b in buses:
            with contextlib.suppress(Exception):
                await b.running.close()
        raise
    return fleet
