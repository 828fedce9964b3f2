"""A fleet of simulated buses built from a few parameters: what ``meterd simulate`` and ``meterd demo`` run.

Strategy: :class:`FleetSpec` is plain data and validated all at once (every problem listed in one
:class:`~meterd.errors.ConfigError`).  :func:`run_fleet` derives everything else from it
deterministically: meter addresses are sequential 12-digit BCD numbers from ``first_address``
across all buses (pty buses first, then TCP buses); each meter's seed, load scale (0.6..1.6) and
rooftop PV (every fourth meter) come from ``seed`` and its position, so one spec always yields
the same fleet.  All meters share one :class:`~meterd.simulators.serve.SimClock` (``speed``
simulated seconds per real second) and start at its start time.

Faults are given per address, as a :class:`FaultPlan`, a mapping ``{kind: probability}``, or text
``"KIND[:PROB]"`` (several joined by commas; ``late`` takes ``late:PROB:SECONDS`` as well).  Kinds
are the link faults of :data:`~meterd.simulators.dlt645.FAULT_KINDS` plus ``stuck_relay`` (a
meter fault: the relay acknowledges control but does not move).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Mapping, Union

from meterd.errors import ConfigError, ProtocolError
from meterd.protocols.dlt645.frame import normalize_address
from meterd.simulators.dlt645 import FAULT_KINDS, Dlt645Bus, FaultPlan
from meterd.simulators.model import LoadProfile, MeterModel, noise
from meterd.simulators.serve import DEFAULT_PTY_TURNAROUND, RunningBus, SimClock, serve_pty, serve_tcp

STUCK_RELAY: Final = "stuck_relay"
ALL_FAULT_KINDS: Final = (*FAULT_KINDS, STUCK_RELAY)
PV_EVERY: Final = 4

FaultSource = Union[str, FaultPlan, Mapping[str, float]]


def parse_fault(text: str) -> tuple[str, str]:
    """``"ADDR:KIND[:PROB[:SECONDS]]"`` (the ``--fault`` option) -> (12-digit address, ``"KIND[:PROB...]"``)."""
    address, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise ConfigError(f"--fault {text!r}: expected ADDR:KIND[:PROB], e.g. 000000000002:garble:0.3")
    try:
        return normalize_address(address), rest
    except ProtocolError as exc:
        raise ConfigError(f"--fault {text!r}: {exc}") from None


def _parse_kinds(address: str, source: FaultSource, problems: list[str]) -> tuple[FaultPlan | None, bool]:
    """One address's faults -> (link fault plan or None, stuck relay)."""
    if isinstance(source, FaultPlan):
        return source, False
    items: list[tuple[str, float, float | None]] = []
    if isinstance(source, str):
        for part in filter(None, (p.strip() for p in source.split(","))):
            kind, *nums = part.split(":")
            try:
                values = [float(n) for n in nums]
            except ValueError:
                problems.append(f"faults.{address}: {part!r} is not KIND[:PROB]")
                continue
            if len(values) > (2 if kind == "late" else 1):
                problems.append(f"faults.{address}: {part!r} has too many fields")
                continue
            items.append((kind, values[0] if values else 1.0, values[1] if len(values) > 1 else None))
    elif isinstance(source, Mapping):
        items = [(str(k), float(v), None) for k, v in source.items()]
    else:
        problems.append(f"faults.{address}: {source!r} is not a fault description")
    plan: FaultPlan | None = None
    stuck = False
    for kind, prob, late_by in items:
        if kind not in ALL_FAULT_KINDS:
            problems.append(f"faults.{address}: unknown fault kind {kind!r} (known: {', '.join(ALL_FAULT_KINDS)})")
        elif not 0.0 <= prob <= 1.0:
            problems.append(f"faults.{address}: probability {prob} of {kind} must be within 0..1")
        elif kind == STUCK_RELAY:
            stuck = prob > 0
        else:
            extra = {} if late_by is None else {"late_by": late_by}
            try:
                one = FaultPlan.of(kind, prob, **extra)
            except ValueError as exc:
                problems.append(f"faults.{address}: {exc}")
                continue
            plan = one if plan is None else plan.merged(one)
    return plan, stuck


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What to simulate.  ``turnaround`` None means 20 ms on pty buses and 0 on TCP."""

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

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.pty_buses < 0 or self.tcp_buses < 0:
            problems.append("bus counts must be >= 0")
        if self.pty_buses + self.tcp_buses < 1:
            problems.append("a fleet needs at least one bus (pty or tcp)")
        if not 1 <= self.meters_per_bus <= 255:
            problems.append(f"meters_per_bus {self.meters_per_bus} must be 1..255")
        if self.speed <= 0:
            problems.append(f"speed {self.speed} must be > 0")
        if self.baud <= 0:
            problems.append(f"baud {self.baud} must be > 0")
        if self.turnaround is not None and self.turnaround < 0:
            problems.append(f"turnaround {self.turnaround} must be >= 0 seconds")
        if not 0 <= self.port <= 65535 or (self.port and self.port + self.tcp_buses - 1 > 65535):
            problems.append(f"port {self.port} leaves no room for {self.tcp_buses} TCP buses")
        first = None
        try:
            first = int(normalize_address(self.first_address))
        except (ProtocolError, ValueError):
            problems.append(f"first_address {self.first_address!r} is not a 12-digit decimal address")
        total = max(self.pty_buses + self.tcp_buses, 0) * max(self.meters_per_bus, 0)
        if first is not None and first + total > 10**12:
            problems.append(f"{total} meters from {self.first_address} run past 999999999999")
        known = set() if problems else set(self.all_addresses())
        for address, source in self.faults.items():
            try:
                key = normalize_address(address)
            except ProtocolError as exc:
                problems.append(f"faults: {exc}")
                continue
            if known and key not in known:
                problems.append(f"faults.{key}: no such meter in the fleet ({self.all_addresses()[0]}..)")
            _parse_kinds(key, source, problems)
        if problems:
            raise ConfigError(problems)

    def addresses(self) -> list[list[str]]:
        """Meter addresses per bus, pty buses first."""
        first = int(normalize_address(self.first_address))
        n = self.meters_per_bus
        return [[f"{first + b * n + i:012d}" for i in range(n)] for b in range(self.pty_buses + self.tcp_buses)]

    def all_addresses(self) -> list[str]:
        return [a for bus in self.addresses() for a in bus]

    def fault_plans(self) -> tuple[dict[str, FaultPlan], frozenset[str]]:
        """(link fault plan per address, addresses with a stuck relay)."""
        plans: dict[str, FaultPlan] = {}
        stuck: set[str] = set()
        problems: list[str] = []
        for address, source in self.faults.items():
            key = normalize_address(address)
            plan, is_stuck = _parse_kinds(key, source, problems)
            if plan is not None:
                plans[key] = plan if key not in plans else plans[key].merged(plan)
            if is_stuck:
                stuck.add(key)
        return plans, frozenset(stuck)


@dataclass(frozen=True, slots=True)
class FleetBus:
    kind: str  # "pty" or "tcp"
    endpoint: str  # device path or "host:port"
    meters: tuple[str, ...]
    running: RunningBus = field(compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "endpoint": self.endpoint, "meters": list(self.meters)}
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

    def __init__(self, spec: FleetSpec, clock: SimClock, buses: list[FleetBus], models: dict[str, MeterModel]) -> None:
        self.spec = spec
        self.clock = clock
        self.buses = buses
        self.models = models

    def meter(self, address: str) -> MeterModel:
        return self.models[normalize_address(address)]

    @property
    def addresses(self) -> list[str]:
        return [a for b in self.buses for a in b.meters]

    @property
    def bus_names(self) -> list[str]:
        """``pty1``, ``pty2``, ..., ``tcp1``, ...: stable names to use as channel names."""
        counts: dict[str, int] = {}
        names = []
        for b in self.buses:
            counts[b.kind] = counts.get(b.kind, 0) + 1
            names.append(f"{b.kind}{counts[b.kind]}")
        return names

    def as_dict(self) -> dict[str, Any]:
        plans, stuck = self.spec.fault_plans()
        return {
            "start": self.clock.start.isoformat(),
            "speed": self.clock.speed,
            "seed": self.spec.seed,
            "password": self.spec.password,
            "buses": [{"name": name, **b.as_dict()} for name, b in zip(self.bus_names, self.buses)],
            "faults": {a: p.active | ({"late_by": p.late_by} if p.late else {}) for a, p in sorted(plans.items())},
            "stuck_relays": sorted(stuck),
        }

    async def close(self) -> None:
        for b in self.buses:
            with contextlib.suppress(Exception):
                await b.running.close()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def build_meters(spec: FleetSpec, start: datetime) -> dict[str, MeterModel]:
    """The fleet's meter models, deterministic from the spec."""
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
    return models


async def run_fleet(spec: FleetSpec) -> Fleet:
    """Start every bus of ``spec``; the caller closes the returned :class:`Fleet`."""
    clock = SimClock.starting(spec.start, spec.speed)
    models = build_meters(spec, clock.start)
    plans, _ = spec.fault_plans()
    buses: list[FleetBus] = []
    try:
        for i, addresses in enumerate(spec.addresses()):
            bus = Dlt645Bus(
                [models[a] for a in addresses],
                {a: plans[a] for a in addresses if a in plans},
                seed=spec.seed * 7919 + i,
            )
            if i < spec.pty_buses:
                turnaround = DEFAULT_PTY_TURNAROUND if spec.turnaround is None else spec.turnaround
                running = await serve_pty(
                    bus, baud=spec.baud, wire_time=spec.wire_time, turnaround=turnaround, clock=clock, tick=spec.tick
                )
            else:
                port = spec.port + (i - spec.pty_buses) if spec.port else 0
                running = await serve_tcp(
                    bus, spec.host, port, turnaround=spec.turnaround or 0.0, clock=clock, tick=spec.tick
                )
            buses.append(FleetBus(running.kind, running.endpoint, tuple(addresses), running))
    except BaseException:
        for b in buses:
            with contextlib.suppress(Exception):
                await b.running.close()
        raise
    return Fleet(spec, clock, buses, models)
