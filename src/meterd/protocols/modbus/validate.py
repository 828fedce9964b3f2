"""Register-map validation: parsed TOML in, a :class:`RegisterMap` or every problem out.

Strategy (as the site-config loader): one pass with a :class:`_Checker` that records a problem
instead of raising; each ``_section`` function returns its typed node or ``None`` when something
inside was wrong, so the pass carries on and the cross-checks (duplicate quantities, overlapping
registers, request limits, address offset) still run on what could be read.  Problems read
``"<file>: <key path>: <what is wrong>"``, array indexes from 0, unknown keys with a "did you
mean" hint, so a typo never silently leaves a default in force.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from meterd.checking import Checker, hint, show
from meterd.errors import ConfigError
from meterd.protocols.modbus.quantities import known_quantities
from meterd.protocols.modbus.schema import (
    MAX_ADDRESS,
    MAX_ADDRESS_OFFSET,
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


def parse_map(data: dict[str, Any], source: str = "<map>") -> RegisterMap:
    """Validate an already-parsed map; ``source`` names the file in every problem."""
    check = _Checker(source)
    check.known_keys("", data, _TOP_KEYS)
    model, defaults = _model(check, data.get("model"))
    workarounds = _workarounds(check, data.get("workarounds", {}))
    entries = [
        _entry(check, f"register[{i}]", raw, defaults)
        for i, raw in check.array_of_tables("register", data.get("register", []))
    ]
    if "register" not in data and "relay" not in data:
        check.problem("register", "missing: a map needs at least one [[register]]")
    relay = _relay(check, data["relay"]) if "relay" in data else None

    labelled = [(f"register[{i}]", e) for i, e in enumerate(entries) if e is not None]
    if relay is not None:
        labelled.append(("relay", relay.state))
    _cross_check(check, labelled, workarounds)

    if check.problems:
        raise ConfigError(check.problems)
    assert model is not None and workarounds is not None
    return RegisterMap(
        model=model,
        entries=tuple(e for _, e in labelled),
        workarounds=workarounds,
        relay=relay,
        source_file=source,
    )


# --- sections ----------------------------------------------------------------------------------

_TOP_KEYS: Final = ("model", "workarounds", "register", "relay")
_MODEL_KEYS: Final = (
    "name", "manufacturer", "description", "source", "checked_against", "notes",
    "function", "word_order", "primary",
)
_WORKAROUND_KEYS: Final = (
    "max_registers", "max_bits", "max_gap", "pause_between_requests", "one_request_per_quantity",
    "address_offset",
)
_ENTRY_KEYS: Final = (
    "quantity", "function", "address", "type", "word_order", "scale", "unit", "primary",
    "true_value", "false_value",
)
_RELAY_KEYS: Final = (
    "function", "address", "type", "word_order", "open", "close",
    "read_function", "read_address", "read_open", "read_closed",
)
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*$")


@dataclass(frozen=True, slots=True)
class _Defaults:
    function: Function = Function.HOLDING
    word_order: WordOrder = WordOrder.BIG
    primary: bool | None = None


def _model(check: _Checker, raw: Any) -> tuple[ModelInfo | None, _Defaults]:
    if raw is None:
        check.problem("model", "missing: the [model] table is required")
        return None, _Defaults()
    table = check.table("model", raw)
    if table is None:
        return None, _Defaults()
    check.known_keys("model", table, _MODEL_KEYS)
    name = check.required_string("model", table, "name")
    if name is not None and not _NAME.match(name):
        check.problem("model.name", f"must be lower-case letters, digits, '.', '_' or '-', got {name!r}")
        name = None
    manufacturer = check.required_string("model", table, "manufacturer")
    source = check.required_string("model", table, "source")
    description = check.string("model.description", table.get("description", ""), allow_empty=True)
    notes = check.string("model.notes", table.get("notes", ""), allow_empty=True)
    checked = check.string_list("model.checked_against", table.get("checked_against", []))
    function = check.choice("model.function", table.get("function", "holding"), Function)
    word_order = check.choice("model.word_order", table.get("word_order", "big"), WordOrder)
    primary: bool | None = None
    if "primary" not in table:
        check.problem("model.primary", "missing: say whether values are primary side (the meter "
                      "applies CT/PT: true) or secondary side (false)")
    else:
        primary = check.boolean("model.primary", table["primary"])
    defaults = _Defaults(function or Function.HOLDING, word_order or WordOrder.BIG, primary)
    if None in (name, manufacturer, source, description, notes, checked):
        return None, defaults
    assert name and manufacturer and source and checked is not None
    info = ModelInfo(name, manufacturer, source, description or "", tuple(checked), notes or "")
    return info, defaults


def _workarounds(check: _Checker, raw: Any) -> Workarounds | None:
    table = check.table("workarounds", raw)
    if table is None:
        return None
    check.known_keys("workarounds", table, _WORKAROUND_KEYS)
    w = "workarounds"
    max_registers = check.integer(f"{w}.max_registers", table.get("max_registers", MAX_READ_REGISTERS),
                                  low=1, high=MAX_READ_REGISTERS)
    max_bits = check.integer(f"{w}.max_bits", table.get("max_bits", MAX_READ_BITS), low=1, high=MAX_READ_BITS)
    max_gap = None
    if "max_gap" in table:
        max_gap = check.integer(f"{w}.max_gap", table["max_gap"], low=0, high=MAX_READ_REGISTERS)
    pause = check.duration(f"{w}.pause_between_requests", table.get("pause_between_requests", 0.0))
    single = check.boolean(f"{w}.one_request_per_quantity", table.get("one_request_per_quantity", False))
    offset = check.integer(f"{w}.address_offset", table.get("address_offset", 0),
                           low=-MAX_ADDRESS_OFFSET, high=MAX_ADDRESS_OFFSET)
    if None in (max_registers, max_bits, pause, single, offset) or ("max_gap" in table and max_gap is None):
        return None
    assert max_registers is not None and max_bits is not None and pause is not None
    assert single is not None and offset is not None
    return Workarounds(max_registers, max_bits, max_gap, pause, single, offset)


def _entry(check: _Checker, path: str, table: dict[str, Any], defaults: _Defaults) -> RegisterEntry | None:
    check.known_keys(path, table, _ENTRY_KEYS)
    ok = True
    quantity = check.required_string(path, table, "quantity")
    qspec = None
    if quantity is not None:
        qspec = known_quantities().get(quantity)
        if qspec is None:
            check.problem(f"{path}.quantity", f"unknown quantity {quantity!r}{hint(quantity, known_quantities())}")
    function = check.choice(f"{path}.function", table.get("function", defaults.function), Function)
    address = check.address(f"{path}.address", table)
    dtype = None
    if "type" not in table:
        check.problem(f"{path}.type", "missing: required")
    else:
        dtype = check.choice(f"{path}.type", table["type"], DataType)
    word_order = check.choice(f"{path}.word_order", table.get("word_order", defaults.word_order), WordOrder)
    scale = check.scale(f"{path}.scale", table.get("scale", 1))
    primary = defaults.primary
    if "primary" in table:
        primary = check.boolean(f"{path}.primary", table["primary"])
    if None in (quantity, qspec, function, address, dtype, word_order, scale, primary):
        ok = False
    if not ok:
        # still check what can be checked on the parts that were read
        if function is not None and dtype is not None:
            _check_fit(check, path, function, dtype)
        return None
    assert quantity and qspec and function and address is not None and dtype and word_order and scale
    assert primary is not None

    fits = _check_fit(check, path, function, dtype)
    if dtype is DataType.BOOL and not qspec.boolean:
        check.problem(f"{path}.type", f"{quantity} is a number, a {function} holds only a bit")
        fits = False
    if address + dtype.size - 1 > MAX_ADDRESS:
        check.problem(f"{path}.address", f"{dtype} at {address} needs {dtype.size} registers and runs past "
                                         f"address {MAX_ADDRESS}")
        fits = False
    unit = qspec.unit
    if "unit" in table:
        given = check.string(f"{path}.unit", table["unit"], allow_empty=True)
        if given is not None and given != qspec.unit:
            advice = _unit_hint(given, qspec.unit)
            check.problem(f"{path}.unit", f"{given!r} is not the canonical unit {qspec.unit!r} of {quantity}{advice}")
            fits = False
    true_value, false_value = _boolean_values(check, path, table, qspec.boolean, dtype, scale)
    if qspec.boolean and true_value is None:
        fits = False
    if not fits:
        return None
    return RegisterEntry(
        quantity=quantity,
        function=function,
        address=address,
        type=dtype,
        word_order=word_order,
        scale=scale,
        unit=unit,
        primary=primary,
        true_value=true_value,
        false_value=false_value,
        base_scaling=qspec.scaling,
    )


def _check_fit(check: _Checker, path: str, function: Function, dtype: DataType) -> bool:
    if function.is_bit and dtype is not DataType.BOOL:
        check.problem(f"{path}.type", f"a {function} holds one bit: type must be bool, got {dtype}")
        return False
    if not function.is_bit and dtype is DataType.BOOL:
        check.problem(f"{path}.type", f"bool is for coils and discrete inputs, not {function} registers")
        return False
    return True


def _boolean_values(
    check: _Checker, path: str, table: dict[str, Any], boolean: bool, dtype: DataType, scale: Decimal
) -> tuple[int | bool | None, int | bool | None]:
    given = [k for k in ("true_value", "false_value") if k in table]
    if not boolean:
        for key in given:
            check.problem(f"{path}.{key}", "only boolean quantities (relay.*, alarm.*) take true/false values")
        return None, None
    if scale != 1:
        check.problem(f"{path}.scale", "a boolean quantity has no scale")
    if dtype is DataType.BOOL:
        if "false_value" in table:
            check.problem(f"{path}.false_value", "a bit is false when it is not true_value: leave this out")
        level = check.boolean(f"{path}.true_value", table.get("true_value", True))
        return (None, None) if level is None else (level, not level)
    values: list[int | None] = []
    for key in ("true_value", "false_value"):
        if key not in table:
            check.problem(f"{path}.{key}", f"missing: a boolean held in a {dtype} register needs both values")
            values.append(None)
        else:
            values.append(check.raw_int(f"{path}.{key}", table[key], dtype))
    if None not in values and values[0] == values[1]:
        check.problem(f"{path}.false_value", "must differ from true_value")
        return None, None
    return values[0], values[1]


def _relay(check: _Checker, raw: Any) -> RelaySpec | None:
    table = check.table("relay", raw)
    if table is None:
        return None
    check.known_keys("relay", table, _RELAY_KEYS)
    function = check.choice("relay.function", table.get("function", "coil"), Function)
    if function is not None and function not in (Function.COIL, Function.HOLDING):
        check.problem("relay.function", f"commands are written to a coil or a holding register, not {function}")
        function = None
    address = check.address("relay.address", table)
    default_type = DataType.BOOL if function is Function.COIL else DataType.U16
    dtype = check.choice("relay.type", table.get("type", default_type), DataType)
    word_order = check.choice("relay.word_order", table.get("word_order", "big"), WordOrder)
    if function is None or address is None or dtype is None or word_order is None:
        return None
    if not _check_fit(check, "relay", function, dtype) or dtype.is_float:
        if dtype.is_float:
            check.problem("relay.type", "relay commands are integers or bits, not floats")
        return None
    values: list[int | bool | None] = []
    for key in ("open", "close"):
        if key not in table:
            check.problem(f"relay.{key}", "missing: required")
            values.append(None)
        elif dtype is DataType.BOOL:
            values.append(check.boolean(f"relay.{key}", table[key]))
        else:
            values.append(check.raw_int(f"relay.{key}", table[key], dtype))
    open_value, close_value = values
    if open_value is not None and open_value == close_value:
        check.problem("relay.close", "must differ from open")
        return None

    read_function = check.choice("relay.read_function", table.get("read_function", function), Function)
    read_address: int | None = address
    if "read_address" in table:
        read_address = check.address("relay.read_address", table, "read_address")
    if read_function is None or read_address is None or open_value is None or close_value is None:
        return None
    read_type = DataType.BOOL if read_function.is_bit else (dtype if not function.is_bit else DataType.U16)
    read_open: int | bool | None
    read_closed: int | bool | None
    if read_type is DataType.BOOL:
        default_open = open_value if dtype is DataType.BOOL else True
        read_open = check.boolean("relay.read_open", table.get("read_open", default_open))
        read_closed = None if read_open is None else not read_open
        if "read_closed" in table:
            check.problem("relay.read_closed", "a bit is closed when it is not read_open: leave this out")
    else:
        read_open = check.raw_int("relay.read_open", table.get("read_open", open_value), read_type)
        read_closed = check.raw_int("relay.read_closed", table.get("read_closed", close_value), read_type)
        if read_open is not None and read_open == read_closed:
            check.problem("relay.read_closed", "must differ from read_open")
            return None
    if read_open is None or (read_type is not DataType.BOOL and read_closed is None):
        return None
    state = RegisterEntry(
        quantity=RELAY_QUANTITY,
        function=read_function,
        address=read_address,
        type=read_type,
        word_order=word_order,
        true_value=read_open,
        false_value=read_closed,
    )
    if state.end - 1 > MAX_ADDRESS:
        check.problem("relay.read_address", f"{read_type} at {read_address} runs past address {MAX_ADDRESS}")
        return None
    return RelaySpec(function, address, dtype, word_order, open_value, close_value, state)


def _cross_check(check: _Checker, labelled: list[tuple[str, RegisterEntry]], workarounds: Workarounds | None) -> None:
    seen: dict[str, str] = {}
    for label, e in labelled:
        if e.quantity in seen:
            check.problem(f"{label}.quantity", f"{e.quantity} is already mapped by {seen[e.quantity]}")
        else:
            seen[e.quantity] = label

    for function in Function:
        rows = sorted(((e.address, e.end, label, e) for label, e in labelled if e.function is function),
                      key=lambda r: (r[0], r[1]))
        widest: tuple[int, int, str, RegisterEntry] | None = None
        for row in rows:
            if widest is not None and row[0] < widest[1]:
                check.problem(f"{row[2]}.address",
                              f"{row[3].quantity} ({function} {_span(row[3])}) overlaps "
                              f"{widest[3].quantity} ({_span(widest[3])}) of {widest[2]}")
            if widest is None or row[1] > widest[1]:
                widest = row

    if workarounds is None:
        return
    for label, e in labelled:
        limit = workarounds.limit(e.function)
        if e.size > limit:
            key = "max_bits" if e.function.is_bit else "max_registers"
            check.problem(f"workarounds.{key}",
                          f"{limit} is less than the {e.size} registers of {e.quantity} ({label})")
        wire = e.address + workarounds.address_offset
        if wire < 0 or wire + e.size - 1 > MAX_ADDRESS:
            check.problem("workarounds.address_offset",
                          f"{workarounds.address_offset:+d} moves {e.quantity} ({label}) outside 0..{MAX_ADDRESS}")


def _span(e: RegisterEntry) -> str:
    if e.size == 1:
        return f"{e.address:#06x}"
    return f"{e.address:#06x}..{e.end - 1:#06x}"


def _unit_hint(given: str, canonical: str) -> str:
    factors = {("W", "kW"), ("var", "kvar"), ("VAr", "kvar"), ("VA", "kVA"), ("Wh", "kWh"), ("varh", "kvarh"),
               ("VArh", "kvarh"), ("VAh", "kVAh")}
    if (given, canonical) in factors:
        return "; scale the register into it instead (e.g. scale = 0.001)"
    return ""


# --- checker -----------------------------------------------------------------------------------


class _Checker(Checker):
    """The shared checker plus the value kinds this file needs."""

    def string_list(self, path: str, value: Any) -> list[str] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.problem(path, f"must be a list of non-empty strings, got {show(value)}")
            return None
        return value

    def boolean(self, path: str, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {show(value)}")
            return None
        return value

    def integer(self, path: str, value: Any, *, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer, got {show(value)}")
            return None
        if not low <= value <= high:
            self.problem(path, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def address(self, path: str, table: dict[str, Any], key: str = "address") -> int | None:
        if key not in table:
            self.problem(path, "missing: required")
            return None
        return self.integer(path, table[key], low=0, high=MAX_ADDRESS)

    def raw_int(self, path: str, value: Any, dtype: DataType) -> int | None:
        low, high = dtype.int_range
        return self.integer(path, value, low=low, high=high)

    def choice(self, path: str, value: Any, enum_type: type[Any]) -> Any:
        options = [m.value for m in enum_type]
        if isinstance(value, enum_type):
            return value
        if not isinstance(value, str) or value not in options:
            self.problem(path, f"must be one of {', '.join(options)}, got {show(value)}{hint(value, options)}")
            return None
        return enum_type(value)

    def scale(self, path: str, value: Any) -> Decimal | None:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            self.problem(path, f"must be a number or a decimal string such as \"0.01\", got {show(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(path, f"must be a finite number, got {value}")
            return None
        try:
            # repr keeps a TOML 0.01 as Decimal("0.01"), not the binary float's 0.01000000000000000020816...
            if isinstance(value, float):
                number = Decimal(repr(value))
            else:
                number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            self.problem(path, f"must be a decimal number, got {show(value)}")
            return None
        if not number.is_finite() or number == 0:
            self.problem(path, f"must be a finite, non-zero number, got {show(value)}")
            return None
        return number

    def duration(self, path: str, value: Any) -> float | None:
        seconds: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * (0.001 if m.group(2) == "ms" else 1.0)
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            self.problem(path, f"must be seconds (>= 0) or a string like \"50ms\", got {show(value)}")
            return None
        return seconds


