"""Modbus register maps: one TOML data file per meter model, validated all at once.

A register map says where a meter model keeps each canonical quantity and how to read it.  Maps
are data, not code: the ones meterd ships live in ``maps/*.toml`` next to this module, and a site
can load its own with :func:`load_map`.  A file looks like this (``generic.toml`` documents every
key)::

    [model]
    name = "eastron-sdm630"            # the name meters refer to; [a-z0-9._-]
    manufacturer = "Eastron"
    description = "SDM630-Modbus V2"   # optional
    source = "Eastron SDM630 Modbus Protocol V1.x, input register table"   # the document
    checked_against = ["volkszaehler/mbmd meters/rs485/sdm.go"]          # repo + path
    function = "input"                 # default for entries: holding | input | coil | discrete
    word_order = "big"                 # default for entries: big | little
    primary = true                     # default side: the meter applies CT/PT itself (true)

    [workarounds]                      # device quirks; every key optional
    max_registers = 125                # per read request (FC03/FC04), 1..125
    max_bits = 2000                    # per read request (FC01/FC02), 1..2000
    max_gap = 0                        # unread registers a request may span (device rejects gaps)
    pause_between_requests = 0.05      # seconds (or "50ms") the poller waits between requests
    one_request_per_quantity = false   # never merge quantities into one request
    address_offset = 0                 # -1/0/+1 added to every address on the wire (see below)

    [[register]]
    quantity = "voltage.a"             # a canonical quantity (see quantities.py)
    address = 0x0000                   # 0-based protocol address, as sent in the request PDU
    type = "float32"                   # u16 s16 u32 s32 u64 s64 float32 float64; bool for bits
    scale = 1                          # Decimal multiplier (number or string, e.g. "0.01")
    unit = "V"                         # optional; must be the quantity's canonical unit
    # function, word_order, primary: override the [model] defaults

    [relay]                            # optional: remote trip / reclose (write-then-verify)
    function = "coil"                  # where commands go: coil (FC05) | holding (FC06/FC16)
    address = 0
    open = true                        # value written to trip; for holding: an integer
    close = false                      # value written to reclose
    read_function = "discrete"         # optional: where relay.open is read back (default: same)
    read_address = 0                   # optional, default: address
    read_open = true                   # optional: value read back when open (read_closed too)

Addresses are the 0-based *protocol* address that goes into the request PDU.  Manuals often
print 1-based register numbers instead ("30001", "register 3000"): subtract one (and the
40001/30001 prefix) when writing a map.  ``workarounds.address_offset`` is for the rarer device
whose firmware itself is off by one (it answers register N at wire address N): it is added to
every address when requests are built, so the map keeps the manual's numbering.

``word_order`` is the order of the 16-bit registers of a multi-register value: ``big`` sends the
most significant register first (ABCD), ``little`` the least significant first (CDAB).  Bytes
inside a register are always big-endian, as Modbus defines them.

``primary`` says whether the meter already applies its CT/PT ratios (primary-side values) or
reports what its terminals see (secondary side): decoded secondary values carry the quantity's
:class:`Scaling` (CT for current, PT for voltage, CT x PT for energy, power and demand) so the
collector multiplies by the meter's configured ratios; primary values carry ``Scaling.NONE``.

Every problem is reported at once, as ``"<file>: <key path>: <what is wrong>"`` (array indexes
from 0), like the site config: unknown keys, unknown quantities, types that do not fit the
function or run past address 65535, overlapping registers, bad scales, units that are not the
canonical one, duplicate quantities, impossible workarounds.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path

from meterd.checking import hint
from meterd.errors import ConfigError
from meterd.protocols.modbus.schema import (
    MAX_ADDRESS,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    RELAY_QUANTITY,
    DataType,
    Function,
    ModelInfo,
    RegisterEntry,
    RegisterMap,
    RelaySpec,
    WordOrder,
    Workarounds,
)
from meterd.protocols.modbus.validate import parse_map

__all__ = [
    "MAX_ADDRESS", "MAX_READ_BITS", "MAX_READ_REGISTERS", "RELAY_QUANTITY", "DataType", "Function",
    "ModelInfo", "RegisterEntry", "RegisterMap", "RelaySpec", "WordOrder", "Workarounds",
    "builtin_maps", "get_map", "load_map", "loads_map", "parse_map",
]


# --- loading -----------------------------------------------------------------------------------


MAX_MAP_BYTES = 4 * 2**20  # the largest built-in map is ~10 KiB


def load_map(path: str | Path) -> RegisterMap:
    """Read and validate one register-map file; ConfigError lists every problem in it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MAP_BYTES + 1)
        if len(raw) > MAX_MAP_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_MAP_BYTES // 2**20} MiB: not a register map")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    return loads_map(text, source=str(path))


def loads_map(text: str, source: str = "<map>") -> RegisterMap:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses per level of ``[[[[...``
        raise ConfigError(f"{source}: nested too deeply") from None
    try:
        return parse_map(data, source)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


@lru_cache(maxsize=1)
def _builtin() -> tuple[RegisterMap, ...]:
    folder = resources.files(__package__).joinpath("maps")
    maps = []
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            maps.append(loads_map(item.read_text(encoding="utf-8"), source=f"maps/{item.name}"))
    return tuple(maps)


def builtin_maps() -> dict[str, RegisterMap]:
    """The maps shipped with meterd, by model name."""
    return {m.name: m for m in _builtin()}


def get_map(name: str) -> RegisterMap:
    maps = builtin_maps()
    try:
        return maps[name]
    except KeyError:
        raise ConfigError(f"unknown register map {name!r}{hint(name, maps)}; known: {', '.join(maps)}") from None
