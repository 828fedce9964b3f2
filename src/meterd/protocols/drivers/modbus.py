"""Modbus (RTU or TCP framing, chosen per channel): a meter is described by its register map.

Quantities are planned into the fewest register reads by :func:`meterd.protocols.modbus.compile_plan`;
there are no explicit identifiers.  Relay control is the map's ``[relay]`` write, TRIP and RECLOSE
only, confirmed by the map's ``relay.open`` entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from meterd.errors import ProtocolError
from meterd.protocols.dlt645.messages import RelayCommand
from meterd.protocols.drivers.base import Driver, LinkKind, Reads
from meterd.protocols.modbus.plan import ReadBlock, ReadPlan, compile_plan
from meterd.protocols.modbus.quantities import known_quantities
from meterd.protocols.modbus.schema import RegisterMap

RELAY_COMMANDS: Final = frozenset({RelayCommand.TRIP, RelayCommand.RECLOSE})


def block_label(block: ReadBlock) -> str:
    """``FC03 0x0000 x20``: how a Modbus read is named in attempts and logs."""
    return f"FC{block.function.read_code:02d} 0x{block.address:04X} x{block.count}"


class ModbusDriver(Driver):
    label = "Modbus"
    link = LinkKind.MODBUS
    missing_noun = "register"
    by_unit_and_map = True
    serial_bauds = (9600, 19200, 4800, 2400)
    serial_parities = ("N", "E")

    def known_quantities(self) -> frozenset[str]:
        return frozenset(known_quantities())

    def plan(
        self, quantities: Sequence[str], items: Sequence[int] = (), regmap: RegisterMap | None = None
    ) -> tuple[Reads | None, list[str]]:
        if regmap is None:
            raise ProtocolError("a Modbus meter needs its register map")
        missing = [q for q in quantities if q not in regmap]
        if missing:
            return None, missing
        return compile_plan(regmap, quantities), []

    def item_labels(self, reads: Reads) -> list[str]:
        assert isinstance(reads, ReadPlan)
        return [block_label(block) for block in reads]

    def describe(self, reads: Reads) -> str:
        assert isinstance(reads, ReadPlan)
        return f"modbus {reads.map_name}"

    def describe_meter(self, regmap: RegisterMap | None) -> str:
        return f"{self.name} model {regmap.name}" if regmap is not None else self.name

    def nothing_to_read(self) -> str:
        return "Modbus meters are read by quantities = [...]"

    def relay_commands(self, regmap: RegisterMap | None) -> frozenset[RelayCommand]:
        return RELAY_COMMANDS if regmap is not None and regmap.relay is not None else frozenset()

    def relay_refusal(self, command: RelayCommand, regmap: RegisterMap | None) -> str | None:
        if command not in RELAY_COMMANDS:
            return f"Modbus meters take TRIP and RECLOSE only, not {command.name}"
        if regmap is not None and regmap.relay is None:
            return f"register map {regmap.name} has no [relay]: this meter cannot be switched"
        return None

    def format_item(self, item: int) -> str:
        return f"0x{item:04X}"

    def parse_item(self, text: str) -> int:
        raise ProtocolError("--di is for DL/T 645 meters; read a Modbus meter by --quantity")
