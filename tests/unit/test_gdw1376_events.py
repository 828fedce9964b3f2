"""Q/GDW 1376.1 event records (AFN 0E): the ERCs meterd decodes, checked both ways.

The golden records are laid out by hand from the layouts the public terminal firmware
gdgly/NUC97X_JS writes (``STM32F4xx/Terminal/Terminal_AFN0E_Event.c``: ``ERC1_Event`` -- Le 14,
``ERC3_Event`` -- Le 6 + 4n, ``ERC10_Event_Write`` -- Le 28, ``ERC13_Event`` -- Le 8,
``ERC21_Event`` -- Le 6, ``ERC31_Event`` -- Le 21), which follow Q/GDW 1376.1-2013 appendix B; an
AFN 0E F1 reply carrying them is checked as a whole message too.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_gdw1376_messages import TERMINAL, _both_ways, _frame

from meterd.protocols.gdw1376.catalogue import EventLog
from meterd.protocols.gdw1376.events import (
    DECODED,
    EventRecord,
    InitVersionChange,
    MeterFault,
    ParameterChange,
    PowerOnOff,
    ReadFailure,
    TerminalFault,
    VoltageFault,
    decode_record,
    record_data,
)
from meterd.protocols.gdw1376.explain import explain
from meterd.protocols.gdw1376.frame import decode_frame

D = Decimal
AT = datetime(2026, 12, 7, 14, 30)
T = "30 14 07 12 26"  # A.15 of AT

GOLDEN = [
    # ERC1: data initialised and version changed (flags 03), "V1.0" -> "V1.1"
    (1, f"{T} 03 56 31 2E 30 56 31 2E 31", InitVersionChange(AT, 3, "V1.0", "V1.1")),
    # ERC3: master 2 set p0 F10 (meter archive) and p0 F3 (master address)
    (3, f"{T} 02 00 00 02 01 00 00 04 00", ParameterChange(AT, 2, (bytes.fromhex("00000201"), bytes.fromhex("00000400")))),
    # ERC10: p1 voltage loss (kind 2 in D6..D7) on phase a (D0), began (D15 of the pn word)
    (10, f"{T} 01 80 81  00 00 20 22 10 22  00 00 00 00 15 00 00 15 00  00 56 34 12 00",
     VoltageFault(AT, 1, True, 0x81, (D("0.0"), D("222.0"), D("221.0")), (D("0.000"), D("1.500"), D("1.500")),
                  D("1234.5600"))),
    # ERC13: p2 meter fault began: battery low (D4)
    (13, f"{T} 02 80 10", MeterFault(AT, 2, True, 0x10)),
    # ERC21: terminal fault 4, RS-485 meter reading
    (21, f"{T} 04", TerminalFault(AT, 4)),
    # ERC31: p3 stopped answering; last good read 14:15 with 1234.5600 kWh and 56.78 kvarh
    (31, f"{T} 03 80  15 14 07 12 26  00 56 34 12 00  78 56 00 00",
     ReadFailure(AT, 3, True, datetime(2026, 12, 7, 14, 15), D("1234.5600"), D("56.78"))),
    # ERC31 ended: the registers are not carried (EE)
    (31, f"{T} 03 00  EE EE EE EE EE  EE EE EE EE EE  EE EE EE EE", ReadFailure(AT, 3, False, None, None, None)),
    # ERC14, 2013 form with the attribute byte
    (14, f"{T} 45 14 07 12 26 03", PowerOnOff(AT, datetime(2026, 12, 7, 14, 45), 3)),
]


@pytest.mark.parametrize(("erc", "data", "value"), GOLDEN, ids=[f"ERC{g[0]}-{i}" for i, g in enumerate(GOLDEN)])
def test_golden_records_both_ways(erc: int, data: str, value: object) -> None:
    raw = bytes.fromhex(data)
    assert decode_record(erc, raw) == value
    assert record_data(value) == (erc, raw)  # type: ignore[arg-type]


def test_fields_and_descriptions_name_what_happened() -> None:
    erc31 = GOLDEN[5][2]
    assert isinstance(erc31, ReadFailure)
    assert erc31.fields()["pn"] == "3" and erc31.fields()["state"] == "began"
    assert "p3 does not answer" in erc31.describe() and "1234.5600 kWh" in erc31.describe()
    erc10 = GOLDEN[2][2]
    assert isinstance(erc10, VoltageFault) and erc10.phases == "a" and "voltage loss" in erc10.kind
    assert "p0 F10" in GOLDEN[1][2].describe()  # type: ignore[attr-defined]
    assert TerminalFault(AT, 4).fault.startswith("RS-485 meter reading")
    assert MeterFault(AT, 2, True, 0x10).faults() == ["battery low"]


@pytest.mark.parametrize(("erc", "data"), [
    (99, "01 02 03"),                     # an ERC meterd does not know
    (31, "30 14 07 12 26 03 80"),         # ERC31 cut short: not its layout
    (1, "99 99 99 99 99 00 41 41 41 41 42 42 42 42"),  # ERC1 with a time that is no time
    (21, "30 14 07 12 26 04 00"),         # ERC21 one byte too long
    (9, ""),                              # no data at all
])
def test_records_that_do_not_decode_are_kept_raw(erc: int, data: str) -> None:
    raw = bytes.fromhex(data)
    record = decode_record(erc, raw)
    assert record == EventRecord(erc, raw)
    assert record.fields()["raw"] == raw.hex(" ").upper()
    assert f"ERC{erc}" in record.describe()


def test_an_event_log_reply_with_every_kind_decodes_and_explains() -> None:
    records = "".join(f"{erc:02X} {len(bytes.fromhex(data)):02X} {data} " for erc, data, _ in GOLDEN)
    records += "63 03 01 02 03"  # ERC99, unknown: kept
    n = len(GOLDEN) + 1
    wire = _frame(0xA8, 0x0E, 0x65, f"00 00 01 00  {n:02X} 00 00 {n:02X} " + records, aux=f"{n:02X} 00")
    msg = _both_ways(wire)
    assert msg.address == TERMINAL
    log = msg.value(1)
    assert isinstance(log, EventLog)
    assert log.records == (*(g[2] for g in GOLDEN), EventRecord(99, b"\x01\x02\x03"))
    shown = [str(v) for item in explain(decode_frame(wire)).items for _, v, _ in item.fields]
    assert any("ERC31" in v and "p3 does not answer" in v for v in shown)
    assert any("ERC99" in v and "01 02 03" in v for v in shown)


times = st.none() | st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
    lambda d: d.replace(second=0, microsecond=0))
volts = st.none() | st.integers(0, 9999).map(lambda v: D(v).scaleb(-1))
amps = st.none() | st.integers(-799999, 799999).map(lambda v: D(v).scaleb(-3))
energy = st.none() | st.integers(0, 9_999_999_999).map(lambda v: D(v).scaleb(-4))
pns = st.integers(0, 0x0FFF)
typed = st.one_of(
    st.builds(PowerOnOff, times, times, st.none() | st.integers(0, 255)),
    st.builds(InitVersionChange, times, st.integers(0, 255), st.text("ABCV0123456789.", min_size=4, max_size=4),
              st.text("ABCV0123456789.", min_size=4, max_size=4)),
    st.builds(ParameterChange, times, st.integers(0, 255), st.lists(st.binary(min_size=4, max_size=4),
                                                                    max_size=10).map(tuple)),
    st.builds(VoltageFault, times, pns, st.booleans(), st.integers(0, 255), st.tuples(volts, volts, volts),
              st.tuples(amps, amps, amps), energy),
    st.builds(MeterFault, times, pns, st.booleans(), st.integers(0, 255)),
    st.builds(TerminalFault, times, st.integers(0, 255)),
    st.builds(ReadFailure, times, pns, st.booleans(), times, energy,
              st.none() | st.integers(0, 99_999_999).map(lambda v: D(v).scaleb(-2))),
)


@given(typed)
def test_typed_records_round_trip(value: object) -> None:
    erc, data = record_data(value)  # type: ignore[arg-type]
    assert decode_record(erc, data) == value


@given(st.integers(0, 255), st.binary(max_size=40))
def test_any_record_decodes_and_lays_out_to_the_same_bytes(erc: int, data: bytes) -> None:
    record = decode_record(erc, data)  # never raises
    assert record_data(record) == (erc, data)
    assert isinstance(record, EventRecord) or erc in DECODED
