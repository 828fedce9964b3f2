"""Compile the quantities a meter must deliver into as few Modbus read requests as possible.

Strategy (Telegraf's request optimiser, simplified): the plan is built once at start, logged with
:meth:`ReadPlan.describe`, and then replayed every poll round.

1. Look every wanted quantity up in the register map; every one that is unknown or not in the map
   is reported together in one ConfigError.
2. Group the entries by data table (holding, input, coil, discrete input): each table has its own
   read function code, so they never share a request.
3. Sort each group by address and sweep: an entry joins the open request when the registers
   between the request's end and the entry's start (the *gap*) are at most ``max_gap`` and the
   request stays within the per-request limit, else it opens a new request.  Reading a few unused
   registers is far cheaper than another round trip on a 9600-baud bus (a request costs ~45 ms of
   turnaround, a register ~2 ms), but some meters answer "illegal data address" when a request
   covers undefined registers, so the gap is bounded and the map may lower it (``max_gap = 0``).
4. Limits: 125 registers or 2000 bits per request (Modbus application protocol 6.1-6.4), lowered
   by the map's ``max_registers``/``max_bits``; ``one_request_per_quantity`` disables merging.

Addresses in the plan are *wire* addresses: the map address plus ``address_offset``.  Each field
records its offset inside its block, so decoding never recomputes the layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from meterd.errors import ConfigError
from meterd.protocols.modbus.quantities import known_quantities
from meterd.protocols.modbus.registermap import Function, RegisterEntry, RegisterMap

DEFAULT_MAX_GAP: Final = 8

_TABLE_ORDER: Final = (Function.HOLDING, Function.INPUT, Function.COIL, Function.DISCRETE)


@dataclass(frozen=True, slots=True)
class BlockField:
    entry: RegisterEntry
    offset: int  # registers (bits) from the start of the block


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (bits) of ``function`` from wire ``address``."""

    function: Function
    address: int
    count: int
    fields: tuple[BlockField, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(f.entry.quantity for f in self.fields)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    map_name: str
    blocks: tuple[ReadBlock, ...]
    max_gap: int = DEFAULT_MAX_GAP
    pause_between_requests: float = 0.0  # seconds the poller waits between two requests

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(q for b in self.blocks for q in b.quantities)

    def __iter__(self) -> Iterator[ReadBlock]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def describe(self) -> str:
        """A few lines for the start-up log: one per request, with the quantities it carries."""
        registers = sum(b.count for b in self.blocks if not b.function.is_bit)
        bits = sum(b.count for b in self.blocks if b.function.is_bit)
        sizes = ", ".join(part for part in (f"{registers} registers" if registers or not bits else "",
                                            f"{bits} bits" if bits else "") if part)
        head = (
            f"modbus plan {self.map_name}: {len(self.blocks)} request(s) for {len(self.quantities)} quantities, "
            f"{sizes}, max gap {self.max_gap}, pause {self.pause_between_requests:g} s"
        )
        lines = [head]
        for i, b in enumerate(self.blocks, 1):
            names = ", ".join(f"{f.entry.quantity}@+{f.offset}" for f in b.fields)
            lines.append(
                f"  {i:>2}. FC{b.function.read_code:02d} {b.function:<8} {b.address:5d} (0x{b.address:04X}) "
                f"x{b.count:<4d} {names}"
            )
        return "\n".join(lines)


def compile_plan(
    regmap: RegisterMap, quantities: Iterable[str] | None = None, *, max_gap: int = DEFAULT_MAX_GAP
) -> ReadPlan:
    """The read requests that fetch ``quantities`` (default: everything in the map)."""
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    wanted = list(dict.fromkeys(regmap.quantities if quantities is None else quantities))
    problems = []
    for q in wanted:
        if q not in regmap:
            why = "is not a known quantity" if q not in known_quantities() else "is not in the register map"
            problems.append(f"{regmap.source_file or regmap.name}: quantity {q!r} {why} (model {regmap.name})")
    if problems:
        raise ConfigError(problems)

    wa = regmap.workarounds
    gap = max_gap if wa.max_gap is None else min(max_gap, wa.max_gap)
    entries = [regmap.entry(q) for q in wanted]
    blocks: list[ReadBlock] = []
    for function in _TABLE_ORDER:
        group = sorted((e for e in entries if e.function is function), key=lambda e: e.address)
        blocks += _merge(group, function, wa.limit(function), gap, wa.one_request_per_quantity, wa.address_offset)
    return ReadPlan(regmap.name, tuple(blocks), gap, wa.pause_between_requests)


def _merge(
    group: list[RegisterEntry], function: Function, limit: int, gap: int, single: bool, offset: int
) -> list[ReadBlock]:
    runs: list[list[RegisterEntry]] = []
    for e in group:
        if runs and not single:
            run = runs[-1]
            start = run[0].address
            end = max(x.end for x in run)
            if e.address - end <= gap and max(end, e.end) - start <= limit:
                run.append(e)
                continue
        runs.append([e])
    blocks = []
    for run in runs:
        start = run[0].address
        end = max(x.end for x in run)
        fields = tuple(BlockField(x, x.address - start) for x in run)
        blocks.append(ReadBlock(function, start + offset, end - start, fields))
    return blocks
