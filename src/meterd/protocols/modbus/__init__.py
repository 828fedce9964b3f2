"""Modbus metering, sans-I/O: register maps as data, read planning, register decoding.

Imports nothing of meterd but ``meterd.errors`` and ``meterd.protocols`` (the DL/T 645 catalogue
supplies the canonical quantity names and the Scaling enum); the third-party import is pymodbus'
register conversion only.  No sockets, clocks or logging: the collector owns the pymodbus client,
sends the plan's requests and hands the replies to :func:`decode_block`.

* :mod:`.registermap` -- TOML register maps (``maps/*.toml``): the file format, loading.
* :mod:`.schema`      -- the frozen dataclasses and enums a map is made of.
* :mod:`.validate`    -- TOML -> RegisterMap, every problem reported at once.
* :mod:`.quantities`  -- the canonical quantities a map may name (DL/T 645 catalogue + extras).
* :mod:`.plan`        -- wanted quantities -> the fewest read requests (:class:`ReadPlan`).
* :mod:`.decode`      -- registers -> :class:`~meterd.protocols.dlt645.catalogue.DecodedValue`,
  and back (:func:`encode_values`) for the simulator.

Contract: decoding raises only :class:`~meterd.errors.ProtocolError` subclasses; map and plan
problems are :class:`~meterd.errors.ConfigError` listing every problem with file and key.
"""

from meterd.protocols.modbus.decode import (
    WriteRequest,
    decode_block,
    decode_value,
    encode_value,
    encode_values,
    float_to_decimal,
    relay_command,
)
from meterd.protocols.modbus.plan import DEFAULT_MAX_GAP, BlockField, ReadBlock, ReadPlan, compile_plan
from meterd.protocols.modbus.quantities import QuantitySpec, known_quantities
from meterd.protocols.modbus.registermap import (
    DataType,
    Function,
    ModelInfo,
    RegisterEntry,
    RegisterMap,
    RelaySpec,
    WordOrder,
    Workarounds,
    builtin_maps,
    get_map,
    load_map,
    loads_map,
    parse_map,
)

__all__ = [
    "DEFAULT_MAX_GAP",
    "BlockField",
    "DataType",
    "Function",
    "ModelInfo",
    "QuantitySpec",
    "ReadBlock",
    "ReadPlan",
    "RegisterEntry",
    "RegisterMap",
    "RelaySpec",
    "WordOrder",
    "Workarounds",
    "WriteRequest",
    "builtin_maps",
    "compile_plan",
    "decode_block",
    "decode_value",
    "encode_value",
    "encode_values",
    "float_to_decimal",
    "get_map",
    "known_quantities",
    "load_map",
    "loads_map",
    "parse_map",
    "relay_command",
]
