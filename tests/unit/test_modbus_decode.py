"""Register decoding and encoding: every type, both word orders, scales, floats, booleans, relay.

Expected registers are worked out by hand from the Modbus application protocol (registers are
big-endian 16-bit words) and IEEE 754:

* float32 230.0 = 1.796875 x 2^7: sign 0, exponent 127+7 = 0x86, fraction 0x660000 -> 0x43660000
* float32 -1.5  = -1.5 x 2^0:     sign 1, exponent 0x7F, fraction 0x400000       -> 0xBFC00000
* float32 230.1 is not exact: the nearest float32 is 0x4366199A = 230.100006103515625
* float64 1.0 = 0x3FF0000000000000; float64 230.1 = 0x406CC33333333333
* "big" word order sends the most significant register first, "little" the least significant.
"""

import struct
from decimal import Decimal

import pytest
from hypothesis import example, given, settings, strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from meterd.errors import FrameLengthError, ProtocolError
from meterd.protocols.dlt645.catalogue import DecodedValue, Scaling
from meterd.protocols.modbus import (
    DataType,
    Function,
    RegisterEntry,
    WordOrder,
    builtin_maps,
    compile_plan,
    decode_block,
    decode_value,
    encode_value,
    encode_values,
    float_to_decimal,
    loads_map,
    relay_command,
)
from meterd.protocols.modbus.plan import BlockField, ReadBlock
from meterd.protocols.modbus.decode import PYMODBUS_TYPES

BIG, LITTLE = WordOrder.BIG, WordOrder.LITTLE


def entry(dtype, order=BIG, scale="1", quantity="energy.active.import.total", **kw):
    function = kw.pop("function", Function.COIL if dtype is DataType.BOOL else Function.HOLDING)
    return RegisterEntry(quantity, function, 0, dtype, order, Decimal(scale), **kw)


GOLDEN = [
    # (type, word order, registers, value)
    (DataType.U16, BIG, [0x1234], 4660),
    (DataType.U16, LITTLE, [0x1234], 4660),
    (DataType.U16, BIG, [0xFFFF], 65535),
    (DataType.S16, BIG, [0xFFFF], -1),
    (DataType.S16, LITTLE, [0xFF38], -200),
    (DataType.S16, BIG, [0x8000], -32768),
    (DataType.S16, BIG, [0x7FFF], 32767),
    (DataType.U32, BIG, [0x0001, 0x0002], 0x00010002),  # 65538
    (DataType.U32, LITTLE, [0x0001, 0x0002], 0x00020001),  # 131073: low word first
    (DataType.U32, BIG, [0xFFFF, 0xFFFF], 4294967295),
    (DataType.S32, BIG, [0xFFFF, 0xFFFE], -2),
    (DataType.S32, LITTLE, [0xFFFE, 0xFFFF], -2),
    (DataType.S32, BIG, [0x8000, 0x0000], -2147483648),
    (DataType.U64, BIG, [0x0000, 0x0000, 0x0001, 0x0000], 65536),
    (DataType.U64, LITTLE, [0x0000, 0x0001, 0x0000, 0x0000], 65536),
    (DataType.U64, BIG, [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    (DataType.U64, LITTLE, [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    (DataType.U64, BIG, [0xFFFF] * 4, 18446744073709551615),
    (DataType.S64, BIG, [0xFFFF] * 4, -1),
    (DataType.S64, LITTLE, [0x0000, 0x0000, 0x0000, 0x8000], -9223372036854775808),
    (DataType.FLOAT32, BIG, [0x4366, 0x0000], Decimal("230")),
    (DataType.FLOAT32, LITTLE, [0x0000, 0x4366], Decimal("230")),
    (DataType.FLOAT32, BIG, [0xBFC0, 0x0000], Decimal("-1.5")),
    (DataType.FLOAT32, LITTLE, [0x0000, 0xBFC0], Decimal("-1.5")),
    (DataType.FLOAT32, BIG, [0x4366, 0x199A], Decimal("230.1")),  # shortest decimal, not 230.10000610...
    (DataType.FLOAT32, BIG, [0x3DCC, 0xCCCD], Decimal("0.1")),
    (DataType.FLOAT32, BIG, [0x0000, 0x0000], Decimal("0")),
    (DataType.FLOAT64, BIG, [0x3FF0, 0x0000, 0x0000, 0x0000], Decimal("1")),
    (DataType.FLOAT64, LITTLE, [0x0000, 0x0000, 0x0000, 0x3FF0], Decimal("1")),
    (DataType.FLOAT64, BIG, [0x406C, 0xC333, 0x3333, 0x3333], Decimal("230.1")),
    (DataType.FLOAT64, LITTLE, [0x3333, 0x3333, 0xC333, 0x406C], Decimal("230.1")),
]


@pytest.mark.parametrize("dtype, order, registers, value", GOLDEN)
def test_decode_golden(dtype, order, registers, value):
    got = decode_value(entry(dtype, order), registers)
    assert got.value == value
    assert isinstance(got.value, Decimal)


@pytest.mark.parametrize("dtype, order, registers, value", GOLDEN)
def test_encode_golden(dtype, order, registers, value):
    assert encode_value(entry(dtype, order), value) == registers


@pytest.mark.parametrize(
    "dtype, registers, scale, expected",
    [
        (DataType.U16, [23010], "0.01", Decimal("230.10")),  # 0.01 V counts keep their resolution
        (DataType.S32, [0xFFFF, 0xCFC7], "0.0001", Decimal("-1.2345")),  # -12345 x 0.1 W -> kW
        (DataType.FLOAT32, [0x450F, 0xD000], "0.1", Decimal("230.1")),  # DTSU666: 2301.0 x 0.1 V
        (DataType.FLOAT32, [0x449A, 0x5000], "0.001", Decimal("1.2345")),  # SDM630: 1234.5 W -> kW
        (DataType.U32, [0x0001, 0x86A0], "10", Decimal("1000000")),
        (DataType.U64, [0xFFFF] * 4, "0.01", Decimal("184467440737095516.15")),  # exact, 20 digits
        (DataType.S16, [0x0064], "-1", Decimal("-100")),
    ],
)
def test_scale_is_exact_decimal(dtype, registers, scale, expected):
    value = decode_value(entry(dtype, scale=scale), registers).value
    assert value == expected
    assert str(value) == str(expected)


def test_float32_nearest_to_a_decimal_reads_back_as_that_decimal():
    # FLT_DIG = 6: any decimal of up to 6 significant digits survives a trip through float32
    for text in ("230.1", "49.99", "0.001", "1234.56", "-0.87", "3.40282e38", "1e-45", "999999"):
        registers = encode_value(entry(DataType.FLOAT32), Decimal(text))
        assert decode_value(entry(DataType.FLOAT32), registers).value == Decimal(text)
    # past that the float32 cannot tell: 1234.5678 and 1234.5677 are the same float32
    # (0x449A522B = 1234.5677490234375), and the shortest decimal at 8 digits is 1234.5677
    registers = encode_value(entry(DataType.FLOAT32), Decimal("1234.5678"))
    assert registers == [0x449A, 0x522B]
    assert decode_value(entry(DataType.FLOAT32), registers).value == Decimal("1234.5677")


def test_float_to_decimal_is_shortest_round_trip():
    assert str(float_to_decimal(250.0, DataType.FLOAT32)) == "250"
    assert str(float_to_decimal(1e7, DataType.FLOAT32)) == "10000000"
    assert str(float_to_decimal(1e16, DataType.FLOAT64)) == "10000000000000000"
    assert float_to_decimal(230.10000610351562, DataType.FLOAT32) == Decimal("230.1")
    assert float_to_decimal(0.1, DataType.FLOAT64) == Decimal("0.1")
    assert float_to_decimal(230.10000610351562, DataType.FLOAT64) == Decimal("230.10000610351562")


@pytest.mark.parametrize(
    "registers", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000], [0xFFFF, 0xFFFF]],
    ids=["nan", "+inf", "-inf", "nan-all-ones"],
)
def test_float32_nan_and_inf_name_the_quantity(registers):
    with pytest.raises(ProtocolError, match=r"voltage\.a: float32 is (nan|inf|-inf)"):
        decode_value(entry(DataType.FLOAT32, quantity="voltage.a"), registers)


def test_float64_nan_is_protocol_error():
    with pytest.raises(ProtocolError, match="frequency"):
        decode_value(entry(DataType.FLOAT64, quantity="frequency"), [0x7FF8, 0, 0, 0])


def test_decoded_value_is_the_catalogue_class_with_unit_and_scaling():
    e = RegisterEntry("voltage.a", Function.HOLDING, 0, DataType.U16, BIG, Decimal("0.1"), "V",
                      primary=False, base_scaling=Scaling.PT)
    assert decode_value(e, [2205]) == DecodedValue("voltage.a", Decimal("220.5"), "V", Scaling.PT)
    primary = RegisterEntry("voltage.a", Function.HOLDING, 0, DataType.U16, BIG, Decimal("0.1"), "V",
                            primary=True, base_scaling=Scaling.PT)
    assert decode_value(primary, [2205]).scaling is Scaling.NONE


def test_bits_and_register_booleans():
    coil = entry(DataType.BOOL, quantity="relay.open", true_value=True, false_value=False)
    assert decode_value(coil, [True]).value is True
    assert decode_value(coil, [0]).value is False
    inverted = entry(DataType.BOOL, quantity="relay.open", true_value=False, false_value=True)
    assert decode_value(inverted, [False]).value is True
    assert encode_value(inverted, True) == [False]
    reg = entry(DataType.U16, quantity="relay.open", true_value=0x0001, false_value=0x0000)
    assert decode_value(reg, [1]).value is True
    assert decode_value(reg, [0]).value is False
    assert encode_value(reg, True) == [1]
    with pytest.raises(ProtocolError, match="relay.open: register value 7 is neither 1"):
        decode_value(reg, [7])
    with pytest.raises(ProtocolError, match="boolean"):
        encode_value(reg, 1)


@pytest.mark.parametrize("bad", [[70000], [-1], [True], ["1"], [1.5]])
def test_registers_must_be_16_bit_integers(bad):
    with pytest.raises(ProtocolError, match="0..65535"):
        decode_value(entry(DataType.U16), bad)


def test_wrong_register_count():
    with pytest.raises(FrameLengthError):
        decode_value(entry(DataType.U32), [1])


def _block(*entries):
    start = min(e.address for e in entries)
    end = max(e.end for e in entries)
    return ReadBlock(entries[0].function, start, end - start, tuple(BlockField(e, e.address - start) for e in entries))


def test_decode_block_slices_each_field():
    a = RegisterEntry("voltage.a", Function.INPUT, 0, DataType.FLOAT32, unit="V")
    c = RegisterEntry("voltage.c", Function.INPUT, 4, DataType.FLOAT32, unit="V")
    block = _block(a, c)
    values = decode_block(block, [0x4366, 0x0000, 0xFFFF, 0xFFFF, 0x4366, 0x199A])
    assert [(v.quantity, v.value) for v in values] == [("voltage.a", Decimal("230")), ("voltage.c", Decimal("230.1"))]
    with pytest.raises(FrameLengthError):
        decode_block(block, [0x4366, 0x0000])
    with pytest.raises(FrameLengthError):
        decode_block(block, [0] * 7)


def test_decode_block_accepts_byte_padded_bits():
    e = RegisterEntry("relay.open", Function.DISCRETE, 0, DataType.BOOL, true_value=True, false_value=False)
    block = _block(e)
    assert decode_block(block, [True, False, False, False, False, False, False, False])[0].value is True
    with pytest.raises(FrameLengthError):
        decode_block(block, [])


@pytest.mark.parametrize(
    "dtype, value",
    [(DataType.U16, 65536), (DataType.U16, -1), (DataType.S16, 32768), (DataType.U32, 2**32), (DataType.S64, 2**63)],
)
def test_encode_out_of_range(dtype, value):
    with pytest.raises(ProtocolError, match="outside"):
        encode_value(entry(dtype), value)


def test_encode_rounds_half_even_to_the_register_resolution_and_rejects_junk():
    assert encode_value(entry(DataType.U16, scale="0.1"), Decimal("230.15")) == [2302]
    assert encode_value(entry(DataType.U16, scale="0.1"), Decimal("230.25")) == [2302]
    with pytest.raises(ProtocolError, match="does not fit float32"):
        encode_value(entry(DataType.FLOAT32), Decimal("1e39"))
    with pytest.raises(ProtocolError, match="not a number"):
        encode_value(entry(DataType.U16), "x")
    with pytest.raises(ProtocolError, match="finite"):
        encode_value(entry(DataType.FLOAT32), Decimal("NaN"))


def test_encode_values_keys_by_function_and_wire_address():
    m = loads_map(
        """
        [model]
        name = "t"
        manufacturer = "t"
        source = "t"
        primary = true
        [workarounds]
        address_offset = 1
        [[register]]
        quantity = "voltage.a"
        address = 10
        type = "u16"
        scale = "0.1"
        """
    )
    assert encode_values(m, {"voltage.a": Decimal("230.1")}) == {(Function.HOLDING, 11): [2301]}
    with pytest.raises(ProtocolError, match="has no frequency"):
        encode_values(m, {"frequency": 50})


def test_relay_commands():
    generic = builtin_maps()["generic"]
    trip = relay_command(generic, True)
    assert (trip.function, trip.address, trip.values, trip.write_code) == (Function.COIL, 0, (True,), 5)
    assert relay_command(generic, False).values == (False,)

    holding = loads_map(
        """
        [model]
        name = "r"
        manufacturer = "r"
        source = "r"
        primary = true
        [relay]
        function = "holding"
        address = 0x0100
        type = "u16"
        open = 0x55AA
        close = 0x66BB
        read_address = 0x0101
        read_open = 1
        read_closed = 0
        """
    )
    trip = relay_command(holding, True)
    assert (trip.function, trip.address, trip.values, trip.write_code) == (Function.HOLDING, 0x100, (0x55AA,), 6)
    assert relay_command(holding, False).values == (0x66BB,)
    state = holding.entry("relay.open")
    assert (state.function, state.address) == (Function.HOLDING, 0x101)
    assert decode_value(state, [1]).value is True

    wide = loads_map(
        """
        [model]
        name = "w"
        manufacturer = "w"
        source = "w"
        primary = true
        [relay]
        function = "holding"
        address = 0
        type = "u32"
        word_order = "little"
        open = 0x00010002
        close = 0
        """
    )
    trip = relay_command(wide, True)
    assert (trip.values, trip.write_code) == ((0x0002, 0x0001), 16)

    with pytest.raises(ProtocolError, match="no \\[relay\\]"):
        relay_command(builtin_maps()["eastron-sdm630"], True)


# --- property tests ----------------------------------------------------------------------------

SCALES = st.sampled_from(["1", "0.1", "0.01", "0.001", "0.0001", "10", "-1", "0.5"])
INT_TYPES = [t for t in DataType if not t.is_float and t is not DataType.BOOL]


@given(st.sampled_from(INT_TYPES), st.sampled_from([BIG, LITTLE]), SCALES, st.data())
def test_integer_round_trip(dtype, order, scale, data):
    low, high = dtype.int_range
    raw = data.draw(st.integers(low, high))
    e = entry(dtype, order, scale)
    value = Decimal(raw) * Decimal(scale)
    registers = encode_value(e, value)
    assert len(registers) == dtype.size and all(0 <= r <= 0xFFFF for r in registers)
    assert decode_value(e, registers).value == value


@given(st.sampled_from([BIG, LITTLE]), SCALES, st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trip(order, scale, x):
    e = entry(DataType.FLOAT32, order, scale)
    value = float_to_decimal(x, DataType.FLOAT32) * Decimal(scale)
    assert decode_value(e, encode_value(e, value)).value == value


def _shortest_by_search(x):
    """Reference: try 1, 2, ... 9 significant digits, keep the first that reads back as x."""
    packed = struct.pack(">f", x)
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        try:
            if struct.pack(">f", float(text)) == packed:
                return Decimal(text)
        except OverflowError:
            continue
    raise AssertionError(x)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
@example(2.0**-149)
@example(1.1754942e-38)
@example(3.4028234663852886e38)
@example(0.3)
@example(250.0)
@example(1e7)
def test_float32_shortest_matches_a_plain_search(x):
    got = float_to_decimal(x, DataType.FLOAT32)
    assert str(got.normalize()) == str(_shortest_by_search(x).normalize())  # same value, same digits
    if abs(x) < 1e30:
        assert got.as_tuple().exponent <= 0  # whole numbers print as integers: 250, not 2.5E+2


@given(st.sampled_from([BIG, LITTLE]), SCALES, st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trip(order, scale, x):
    e = entry(DataType.FLOAT64, order, scale)
    value = Decimal(repr(x)) * Decimal(scale)
    assert decode_value(e, encode_value(e, value)).value == value


@given(
    st.sampled_from(INT_TYPES + [DataType.FLOAT32, DataType.FLOAT64]),
    st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_arbitrary_registers_decode_or_raise_protocol_error(dtype, registers):
    try:
        decode_value(entry(dtype), registers[: dtype.size])
    except ProtocolError:
        pass


def _value_strategy(e):
    if e.boolean:
        return st.booleans()
    if e.type is DataType.FLOAT32:
        return st.floats(width=32, allow_nan=False, allow_infinity=False).map(
            lambda x: float_to_decimal(x, DataType.FLOAT32) * e.scale
        )
    if e.type is DataType.FLOAT64:
        return st.floats(allow_nan=False, allow_infinity=False).map(lambda x: Decimal(repr(x)) * e.scale)
    low, high = e.type.int_range
    return st.integers(low, high).map(lambda r: Decimal(r) * e.scale)


def _serve(encoded, block):
    """What a simulated meter holding ``encoded`` answers to ``block``: unused registers read 0."""
    data = [False if block.function.is_bit else 0] * block.count
    for (function, address), raw in encoded.items():
        if function is block.function and block.address <= address < block.end:
            start = address - block.address
            data[start : start + len(raw)] = raw
    return data


@pytest.mark.parametrize("name", sorted(builtin_maps()))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_shipped_map_round_trips_through_its_plan(name, data):
    regmap = builtin_maps()[name]
    values = {e.quantity: data.draw(_value_strategy(e), label=e.quantity) for e in regmap}
    encoded = encode_values(regmap, values)
    decoded = {}
    for block in compile_plan(regmap):
        for v in decode_block(block, _serve(encoded, block)):
            decoded[v.quantity] = v.value
    assert decoded == values


# --- the compiled block decoder agrees with pymodbus' conversion, field by field -------------------

from meterd.protocols.modbus import builtin_maps, compile_plan as _compile  # noqa: E402

_REGISTER_BLOCKS = [
    (name, block)
    for name, regmap in sorted(builtin_maps().items())
    for block in _compile(regmap)
    if not block.function.is_bit
]


@pytest.mark.parametrize(("name", "block"), _REGISTER_BLOCKS, ids=[f"{n}-{b.address}" for n, b in _REGISTER_BLOCKS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_block_decoder_matches_the_pymodbus_reference(name, block, data):
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count, max_size=block.count))
    try:
        reference = [_field(f.entry, registers[f.offset : f.offset + f.entry.size]) for f in block.fields]
    except ProtocolError:  # a flag value that is neither true nor false
        with pytest.raises(ProtocolError):
            decode_block(block, registers)
        return
    assert [(v.quantity, str(v.value), v.unit, v.scaling) for v in decode_block(block, registers)] == [
        (v.quantity, str(v.value), v.unit, v.scaling) for v in reference]  # str: NaN == NaN


def _field(entry, registers):
    """decode_value, or the NaN / infinity a float field holds (decode_block keeps it, the field alone)."""
    try:
        return decode_value(entry, registers)
    except ProtocolError:
        if not entry.type.is_float or entry.true_value is not None:
            raise
        number = ModbusClientMixin.convert_from_registers(registers, PYMODBUS_TYPES[entry.type],
                                                          word_order=entry.word_order.value)
        return DecodedValue(entry.quantity, Decimal(number), entry.unit, entry.scaling)
