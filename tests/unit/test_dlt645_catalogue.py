"""The data-identifier catalogue: formats, scales, signs, blocks, status word 3, load curves.

Expected values are worked out by hand from DL/T 645-2007 appendix A (data formats) and the
identifier tables (A.1 energy, A.2 demand, A.3 variables, A.5 parameters, A.6 frozen data, 2013
amendment for per-quantity load curves).
"""

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from meterd.errors import FrameLengthError, ProtocolError, UnknownIdentifierError
from meterd.protocols.dlt645 import catalogue
from meterd.protocols.dlt645.catalogue import Scaling


def values(di, hexdata):
    return {v.quantity: v.value for v in catalogue.decode(di, bytes.fromhex(hexdata))}


@pytest.mark.parametrize(
    "di, payload, expected",
    [
        # XXXXXX.XX kWh, low byte first: 56 34 12 00 -> 001234.56
        (0x00010000, "56341200", {"energy.active.import.total": Decimal("1234.56")}),
        (0x00020000, "01000000", {"energy.active.export.total": Decimal("0.01")}),
        (0x00010100, "99999999", {"energy.active.import.rate1": Decimal("999999.99")}),
        (0x00010001, "00100000", {"energy.active.import.total.prev1": Decimal("10.00")}),
        # combined active is signed: top bit of the top byte
        (0x00000000, "00010080", {"energy.active.combined.total": Decimal("-1.00")}),
        (0x00050000, "25000000", {"energy.reactive.q1.total": Decimal("0.25")}),
        # XXX.X V
        (0x02010100, "0522", {"voltage.a": Decimal("220.5")}),
        # XXX.XXX A, signed
        (0x02020200, "005081", {"current.b": Decimal("-15.000")}),
        # XX.XXXX kW, signed
        (0x02030000, "452381", {"power.active.total": Decimal("-1.2345")}),
        (0x02040300, "000100", {"power.reactive.c": Decimal("0.0100")}),
        # X.XXX power factor, signed
        (0x02060000, "5009", {"pf.total": Decimal("0.950")}),
        (0x02800002, "0250", {"frequency": Decimal("50.02")}),
        (0x04000401, "010000000000", {"meter.address": "000000000001"}),
        (0x04000102, "563412", {"meter.time": "12:34:56"}),
        (0x0400010C, "563412012311 26".replace(" ", ""),
         {"clock": datetime(2026, 11, 23, 12, 34, 56)}),
        (0x05060001, "0000231126", {"frozen.daily.time": datetime(2026, 11, 23, 0, 0)}),
    ],
)
def test_known_values(di, payload, expected):
    assert values(di, payload) == expected


def test_demand_with_time():
    # 01 01 00 00: XX.XXXX kW + YYMMDDhhmm -> 12.3456 kW at 2026-11-22 18:15
    got = values(0x01010000, "563412" + "1518221126")
    assert got == {
        "demand.active.import.total": Decimal("12.3456"),
        "demand.active.import.total.time": datetime(2026, 11, 22, 18, 15),
    }


def test_demand_after_a_reset_has_no_time():
    # a meter reports demand 0 with an all-zero time after its demand is cleared
    assert values(0x01010000, "000000" + "0000000000") == {"demand.active.import.total": Decimal("0.0000")}


def test_rate_block_length_follows_the_meter():
    four = "00010000" * 5
    got = values(0x0001FF00, four)
    assert list(got) == ["energy.active.import.total"] + [f"energy.active.import.rate{i}" for i in range(1, 5)]
    assert all(v == Decimal("1.00") for v in got.values())
    assert len(values(0x0001FF00, "00010000" * 9)) == 9
    with pytest.raises(FrameLengthError):
        catalogue.decode(0x0001FF00, bytes(6))


def test_voltage_block():
    assert values(0x0201FF00, "0022" "1022" "9921") == {
        "voltage.a": Decimal("220.0"), "voltage.b": Decimal("221.0"), "voltage.c": Decimal("219.9")}


def test_status_word_3_carries_the_relay_state():
    got = values(0x04000503, "5010")  # bits 4, 6 and 12: relay open, command open, protected
    assert got["status.word3"] == 0x1050
    assert got["relay.open"] is True and got["relay.command_open"] is True
    assert got["relay.protected"] is True and got["alarm.pre_trip"] is False
    closed = values(0x04000503, "0000")
    assert closed["relay.open"] is False


def test_frozen_energy_is_stamped_by_its_freeze_time_identifier():
    item = catalogue.lookup(0x05060103)
    assert item.timestamp_di == 0x05060003
    assert item.quantities[0] == "frozen.daily.energy.active.import.total"


def test_scaling_says_which_ratio_applies():
    assert catalogue.lookup(0x00010000).fields[0].scaling is Scaling.CTPT
    assert catalogue.lookup(0x02020100).fields[0].scaling is Scaling.CT
    assert catalogue.lookup(0x02010100).fields[0].scaling is Scaling.PT
    assert catalogue.lookup(0x02800002).fields[0].scaling is Scaling.NONE


@pytest.mark.parametrize("di", [0x00FF0000, 0x00014000, 0x0001000D, 0x02010400, 0x12345678, 0x05060000, 0x06100109])
def test_unknown_identifiers(di):
    with pytest.raises(UnknownIdentifierError) as info:
        catalogue.lookup(di)
    assert f"{di:08X}" in str(info.value)


def test_wrong_length_and_bad_bcd_are_protocol_errors():
    with pytest.raises(FrameLengthError):
        catalogue.decode(0x00010000, bytes(3))
    with pytest.raises(ProtocolError):
        catalogue.decode(0x00010000, bytes.fromhex("5A341200"))


def test_load_curve_records():
    start = datetime(2026, 11, 23, 8, 0)
    raw = catalogue.encode_records(0x06100601, start, [Decimal("10.00"), None, Decimal("10.50")])
    assert raw[:5] == bytes.fromhex("0008231126")
    field, points = catalogue.decode_records(0x06100601, raw)
    assert field.quantity == "curve.energy.active.import.total"
    assert [(p.timestamp.strftime("%H:%M"), p.value) for p in points] == [
        ("08:00", Decimal("10.00")), ("08:15", None), ("08:30", Decimal("10.50"))]
    with pytest.raises(ProtocolError):
        catalogue.decode(0x06100601, raw)


def test_encode_refuses_values_that_do_not_fit():
    with pytest.raises(ProtocolError):
        catalogue.encode(0x00010000, {"energy.active.import.total": Decimal("1000000.00")})
    with pytest.raises(ProtocolError):
        catalogue.encode(0x02030000, {"power.active.total": Decimal("80")})
    with pytest.raises(UnknownIdentifierError):
        catalogue.encode(0x00010000, {})


# --- properties ---------------------------------------------------------------------------------

NUMERIC_DIS = [0x00010000, 0x00000000, 0x00030000, 0x02010100, 0x02020100, 0x02030000, 0x02060000,
               0x02800002, 0x01010000, 0x05060101]


@st.composite
def item_values(draw):
    di = draw(st.sampled_from(NUMERIC_DIS))
    item = catalogue.lookup(di)
    vals = {}
    for f in item.fields:
        if f.kind is catalogue.Kind.DATETIME:
            vals[f.quantity] = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))\
                .replace(second=0, microsecond=0)
        else:
            limit = (100 ** f.size * 8 // 10 if f.signed else 100 ** f.size) - 1
            n = draw(st.integers(-limit if f.signed else 0, limit))
            vals[f.quantity] = Decimal(n).scaleb(-f.decimals)
    return di, vals


@given(item_values())
def test_encode_decode_round_trip(case):
    di, vals = case
    decoded = {v.quantity: v.value for v in catalogue.decode(di, catalogue.encode(di, vals))}
    assert decoded == vals


@given(st.sampled_from(NUMERIC_DIS + [0x0001FF00, 0x04000503, 0x0400010C, 0x04000401]), st.binary(max_size=64))
def test_arbitrary_payloads_raise_only_protocol_errors(di, payload):
    try:
        catalogue.decode(di, payload)
    except ProtocolError:
        pass
