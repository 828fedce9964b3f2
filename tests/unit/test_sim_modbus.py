"""The sans-I/O Modbus bus: every shipped map read back through meterd's own planner and decoder,
the relay, exception responses, faults, stream decoders and the fleet's Modbus/1997 options.

Requests are built and replies parsed with pymodbus' client side (request PDUs, framers, the
client decoder) -- the same pieces a master uses -- and the values checked against the model.
"""

from __future__ import annotations

import cmath
import math
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.other_message import ReportDeviceIdRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from meterd.errors import ConfigError
from meterd.protocols.modbus import (
    DataType,
    Function,
    ReadBlock,
    RegisterMap,
    builtin_maps,
    compile_plan,
    decode_block,
    get_map,
    loads_map,
)
from meterd.simulators.dlt645 import FaultPlan
from meterd.simulators.fleet import FleetSpec, describe_plan
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import (
    MODBUS_FAULT_KINDS,
    MbapStreamDecoder,
    ModbusBus,
    ModbusFaultPlan,
    RtuStreamDecoder,
)

START = datetime(2025, 6, 1, 8, 0)
NOW = START + timedelta(hours=3, minutes=7, seconds=11)
A1, A2, A3 = "000000000001", "000000000002", "000000000003"

READS = {
    Function.HOLDING: ReadHoldingRegistersRequest,
    Function.INPUT: ReadInputRegistersRequest,
    Function.COIL: ReadCoilsRequest,
    Function.DISCRETE: ReadDiscreteInputsRequest,
}

HOLDING_RELAY_MAP = """
[model]
name = "holding-relay"
manufacturer = "test"
source = "test"
function = "holding"
primary = true

[[register]]
quantity = "voltage.a"
address = 0
type = "u16"
scale = "0.1"
unit = "V"

[relay]
function = "holding"
address = 0x0100
type = "u16"
open = 0x55AA
close = 0x66BB
read_function = "holding"
read_address = 0x0101
read_open = 1
read_closed = 0
"""


def models(n: int = 3, **kw: object) -> dict[int, MeterModel]:
    return {u: MeterModel(f"{u:012d}", start=START, seed=u, **kw) for u in range(1, n + 1)}  # type: ignore[arg-type]


class Master:
    """The master side of one bus: pymodbus' client PDUs and framer."""

    def __init__(self, framing: str = "rtu") -> None:
        self.decoder = DecodePDU(False)
        self.framer = FramerRTU(self.decoder) if framing == "rtu" else FramerSocket(self.decoder)
        self.tid = 0

    def adu(self, pdu: ModbusPDU, unit: int) -> bytes:
        self.tid += 1
        pdu.dev_id, pdu.transaction_id = unit, self.tid
        return self.framer.buildFrame(pdu)

    def parse(self, data: bytes) -> ModbusPDU:
        used, unit, tid, payload = self.framer.decode(data)
        assert used and payload, f"reply {data.hex(' ')} does not frame"
        pdu = self.decoder.decode(payload)
        assert pdu is not None
        pdu.dev_id, pdu.transaction_id = unit, tid
        return pdu

    def ask(self, bus: ModbusBus, pdu: ModbusPDU, unit: int = 1, now: datetime = NOW) -> ModbusPDU:
        replies = bus.handle(self.adu(pdu, unit), now)
        assert len(replies) == 1, replies
        reply = self.parse(replies[0].data)
        assert reply.dev_id == unit and reply.transaction_id == (self.tid if isinstance(self.framer, FramerSocket) else 0)
        return reply

    def read(self, bus: ModbusBus, block: ReadBlock, unit: int = 1, now: datetime = NOW) -> list:
        reply = self.ask(bus, READS[block.function](address=block.address, count=block.count), unit, now)
        assert not reply.isError(), reply
        return list(reply.bits if block.function.is_bit else reply.registers)


def expected_values(model: MeterModel, regmap: RegisterMap, now: datetime) -> dict[str, object]:
    """What the meter should publish, derived independently of the simulator's code."""
    have = model.values(now)
    out: dict[str, object] = {q: have[q] for q in regmap.quantities if q in have}
    for q, (p1, p2) in {"voltage.ab": ("a", "b"), "voltage.bc": ("b", "c"), "voltage.ca": ("c", "a")}.items():
        va = float(have[f"voltage.{p1}"])
        vb = float(have[f"voltage.{p2}"]) * cmath.exp(-2j * math.pi / 3)
        out[q] = Decimal(str(round(abs(va - vb), 1)))
    q1, q2, q3, q4 = (have[f"energy.reactive.q{i}.total"] for i in range(1, 5))
    out["energy.reactive.import.total"] = q1 + q2  # type: ignore[operator]
    out["energy.reactive.export.total"] = q3 + q4  # type: ignore[operator]
    return out


def tolerance(regmap: RegisterMap, quantity: str, expected: Decimal) -> Decimal:
    entry = regmap.entry(quantity)
    if entry.type.is_float:  # a float32 keeps ~7 significant digits
        return max(abs(expected), entry.scale) * Decimal("1e-6")
    return entry.scale / 2


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(builtin_maps()))
@pytest.mark.parametrize("framing", ["rtu", "tcp"])
def test_every_map_serves_the_models_values(name: str, framing: str) -> None:
    regmap = get_map(name)
    meters = models(3)
    bus = ModbusBus(meters, regmap, framing=framing)
    master = Master(framing)
    plan = compile_plan(regmap)
    for unit in (1, 3):
        got = {}
        for block in plan:
            for v in decode_block(block, master.read(bus, block, unit)):
                got[v.quantity] = v.value
        want = expected_values(meters[unit], regmap, NOW)
        assert set(got) == set(regmap.quantities)
        for q, value in got.items():
            if isinstance(value, bool):
                assert value == want[q], q
            else:
                assert abs(value - want[q]) <= tolerance(regmap, q, want[q]), (q, value, want[q])  # type: ignore[operator]
    assert bus.stats.requests == 2 * len(plan) and bus.stats.replies == 2 * len(plan) and not bus.stats.refusals


def test_registers_follow_the_moving_model() -> None:
    bus = ModbusBus(models(1), get_map("generic"))
    master = Master()
    block = next(b for b in compile_plan(get_map("generic"), ["energy.active.import.total"]))
    first = decode_block(block, master.read(bus, block, now=NOW))[0].value
    later = decode_block(block, master.read(bus, block, now=NOW + timedelta(hours=5)))[0].value
    assert later > first  # type: ignore[operator]
    assert later == bus.meter(1).values(NOW + timedelta(hours=5))["energy.active.import.total"]


def test_holes_read_as_zero_up_to_the_gap_and_beyond_is_illegal() -> None:
    regmap = get_map("generic")  # pf.total at 0x14, energy from 0x20: an 11-register hole
    bus = ModbusBus(models(1), regmap)
    master = Master()
    reply = master.ask(bus, ReadHoldingRegistersRequest(address=0x15, count=11))
    assert list(reply.registers) == [0] * 11
    for address, count in [(0x30, 1), (0x2F, 2), (0x100, 1), (0xFFFF, 1)]:
        reply = master.ask(bus, ReadHoldingRegistersRequest(address=address, count=count))
        assert isinstance(reply, ExceptionResponse) and reply.exception_code == 2, (address, count)
    reply = master.ask(bus, ReadInputRegistersRequest(address=0, count=1))  # generic has no input registers
    assert reply.exception_code == 2  # type: ignore[attr-defined]
    reply = master.ask(bus, ReadDiscreteInputsRequest(address=0, count=3))  # only inputs 0 and 1 exist
    assert reply.exception_code == 2  # type: ignore[attr-defined]
    assert bus.stats.refusals == 6


def test_a_map_with_max_gap_zero_rejects_reads_over_holes() -> None:
    text = HOLDING_RELAY_MAP + """
[[register]]
quantity = "voltage.b"
address = 4
type = "u16"
scale = "0.1"
unit = "V"

[workarounds]
max_gap = 0
max_registers = 4
"""
    bus = ModbusBus(models(1), loads_map(text))
    master = Master()
    assert master.ask(bus, ReadHoldingRegistersRequest(address=0, count=4)).exception_code == 2  # type: ignore[attr-defined]
    assert master.ask(bus, ReadHoldingRegistersRequest(address=0, count=5)).exception_code == 3  # type: ignore[attr-defined]
    assert master.ask(bus, ReadHoldingRegistersRequest(address=4, count=1)).registers[0] > 2000
    assert list(master.ask(bus, ReadHoldingRegistersRequest(address=0x100, count=2)).registers) == [0x66BB, 0]


def test_count_limits_and_unsupported_functions() -> None:
    bus = ModbusBus(models(1), get_map("eastron-sdm630"), framing="tcp")  # max_registers = 80
    master = Master("tcp")
    assert master.ask(bus, ReadInputRegistersRequest(address=0, count=81)).exception_code == 3  # type: ignore[attr-defined]
    assert not master.ask(bus, ReadInputRegistersRequest(address=0, count=80)).isError()
    # pymodbus' own decoder refuses 126 registers (Modbus allows 125): illegal value
    adu = bytearray(master.adu(ReadInputRegistersRequest(address=0, count=1), 1))
    adu[-2:] = (126).to_bytes(2, "big")
    reply = master.parse(bus.handle(bytes(adu), NOW)[0].data)
    assert isinstance(reply, ExceptionResponse) and reply.exception_code == 3 and reply.function_code == 0x84
    # Eastron's holding registers are its settings (40001..40037, 463761.., 464513): past them
    # FC03 finds nothing
    assert not master.ask(bus, ReadHoldingRegistersRequest(address=0, count=2)).isError()
    assert master.ask(bus, ReadHoldingRegistersRequest(address=0x26, count=2)).exception_code == 2  # type: ignore[attr-defined]
    # report server id (FC17): pymodbus knows it, a meter does not
    reply = master.ask(bus, ReportDeviceIdRequest())
    assert isinstance(reply, ExceptionResponse) and reply.function_code == 0x91 and reply.exception_code == 1


# --- relay -------------------------------------------------------------------------------------


def test_coil_relay_trips_and_recloses_the_model() -> None:
    bus = ModbusBus(models(2), get_map("generic"))
    master = Master()
    meter = bus.meter(2)
    reply = master.ask(bus, WriteSingleCoilRequest(address=0, bits=[True]), unit=2)
    assert not reply.isError() and list(reply.bits) == [True]
    assert meter.relay_open and meter.command_open and not bus.meter(1).relay_open
    assert master.ask(bus, ReadDiscreteInputsRequest(address=0, count=1), unit=2).bits[0] is True
    assert master.ask(bus, ReadCoilsRequest(address=0, count=1), unit=2).bits[0] is True
    power = ReadHoldingRegistersRequest(address=0x0A, count=2)
    assert list(master.ask(bus, power, unit=2, now=NOW + timedelta(minutes=5)).registers) == [0, 0]  # no current
    master.ask(bus, WriteSingleCoilRequest(address=0, bits=[False]), unit=2, now=NOW + timedelta(minutes=6))
    assert not meter.relay_open and not meter.command_open
    assert master.ask(bus, ReadDiscreteInputsRequest(address=0, count=1), unit=2).bits[0] is False


def test_stuck_relay_acknowledges_but_does_not_move_and_protected_meter_refuses() -> None:
    meters = models(2)
    meters[1].stuck_relay = True
    meters[2].protected = True
    bus = ModbusBus(meters, get_map("generic"))
    master = Master()
    assert not master.ask(bus, WriteSingleCoilRequest(address=0, bits=[True]), unit=1).isError()
    assert master.ask(bus, ReadCoilsRequest(address=0, count=1), unit=1).bits[0] is True  # the command
    assert master.ask(bus, ReadDiscreteInputsRequest(address=0, count=1), unit=1).bits[0] is False  # the relay
    reply = master.ask(bus, WriteSingleCoilRequest(address=0, bits=[True]), unit=2)
    assert isinstance(reply, ExceptionResponse) and reply.exception_code == 4 and not meters[2].relay_open


def test_writes_elsewhere_are_illegal() -> None:
    bus = ModbusBus(models(1), get_map("generic"))
    master = Master()
    for pdu in (
        WriteSingleCoilRequest(address=1, bits=[True]),  # no such coil
        WriteSingleRegisterRequest(address=0, registers=[1]),  # a measured value
        WriteMultipleRegistersRequest(address=0x20, registers=[0, 0, 0, 0]),  # the energy register
        WriteMultipleCoilsRequest(address=0, bits=[True, True]),  # the relay coil and one more
    ):
        reply = master.ask(bus, pdu)
        assert isinstance(reply, ExceptionResponse) and reply.exception_code == 2, pdu
    assert not bus.meter(1).relay_open


def test_holding_register_relay() -> None:
    master = Master("tcp")
    bus = ModbusBus(models(1), loads_map(HOLDING_RELAY_MAP), framing="tcp")
    assert master.ask(bus, WriteSingleRegisterRequest(address=0x100, registers=[0x1234])).exception_code == 3  # type: ignore[attr-defined]
    reply = master.ask(bus, WriteSingleRegisterRequest(address=0x100, registers=[0x55AA]))
    assert not reply.isError() and list(reply.registers) == [0x55AA] and bus.meter(1).relay_open
    assert list(master.ask(bus, ReadHoldingRegistersRequest(address=0x100, count=2)).registers) == [0x55AA, 1]
    master.ask(bus, WriteMultipleRegistersRequest(address=0x100, registers=[0x66BB]))
    assert not bus.meter(1).relay_open
    assert list(master.ask(bus, ReadHoldingRegistersRequest(address=0x100, count=2)).registers) == [0x66BB, 0]


def test_broadcast_write_acts_on_every_meter_and_nobody_answers() -> None:
    bus = ModbusBus(models(3), get_map("generic"))
    master = Master()
    assert bus.handle(master.adu(WriteSingleCoilRequest(address=0, bits=[True]), 0), NOW) == []
    assert all(m.relay_open for m in bus.meters)
    assert bus.handle(master.adu(ReadHoldingRegistersRequest(address=0, count=1), 0), NOW) == []
    assert bus.stats.replies == 0 and bus.stats.ignored == 1


# --- who answers -------------------------------------------------------------------------------


def test_unknown_unit_and_corrupt_requests_are_silent() -> None:
    bus = ModbusBus(models(2), get_map("generic"))
    master = Master()
    assert bus.handle(master.adu(ReadHoldingRegistersRequest(address=0, count=1), 7), NOW) == []
    bad = bytearray(master.adu(ReadHoldingRegistersRequest(address=0, count=1), 1))
    bad[3] ^= 0x01
    assert bus.handle(bytes(bad), NOW) == []
    assert bus.stats.ignored == 2 and bus.stats.requests == 0
    tcp = ModbusBus(models(2), get_map("generic"), framing="tcp")
    assert tcp.handle(Master("tcp").adu(ReadHoldingRegistersRequest(address=0, count=1), 9), NOW) == []
    assert tcp.units == {1: A1, 2: A2} and tcp.addresses == [A1, A2]


def test_bus_validation() -> None:
    regmap = get_map("generic")
    with pytest.raises(ValueError, match="unit id"):
        ModbusBus({0: MeterModel(A1, start=START)}, regmap)
    with pytest.raises(ValueError, match="unit id"):
        ModbusBus({248: MeterModel(A1, start=START)}, regmap)
    with pytest.raises(ValueError, match="twice"):
        m = MeterModel(A1, start=START)
        ModbusBus({1: m, 2: m}, regmap)
    with pytest.raises(ValueError, match="framing"):
        ModbusBus(models(1), regmap, framing="ascii")
    with pytest.raises(ValueError, match="units not on the bus: 5"):
        ModbusBus(models(1), regmap, faults={5: ModbusFaultPlan(no_answer=1.0)})


# --- faults ------------------------------------------------------------------------------------


def faulty(kind: str, framing: str = "rtu", **extra: float) -> tuple[ModbusBus, Master]:
    bus = ModbusBus(models(2), get_map("generic"), framing=framing, faults={1: ModbusFaultPlan.of(kind, **extra)})
    return bus, Master(framing)


READ_V = ReadHoldingRegistersRequest(address=0, count=3)


def test_fault_no_answer_drops_the_request_before_the_meter() -> None:
    bus, master = faulty("no_answer")
    assert bus.handle(master.adu(WriteSingleCoilRequest(address=0, bits=[True]), 1), NOW) == []
    assert not bus.meter(1).relay_open
    assert len(bus.handle(master.adu(READ_V, 2), NOW)) == 1  # unit 2 is fine
    assert bus.stats.faults["no_answer"] == 1


@pytest.mark.parametrize("framing", ["rtu", "tcp"])
def test_fault_exception_refuses_without_acting(framing: str) -> None:
    bus, master = faulty("exception", framing)
    reply = master.ask(bus, WriteSingleCoilRequest(address=0, bits=[True]))
    assert isinstance(reply, ExceptionResponse) and reply.exception_code == 4 and reply.function_code == 0x85
    assert not bus.meter(1).relay_open
    bus, master = faulty("exception", framing, exception_code=2)
    reply = master.ask(bus, READ_V)
    assert reply.exception_code == 2  # type: ignore[attr-defined]
    assert bus.stats.faults["exception"] == 1 and bus.stats.refusals == 0


def test_fault_late_adds_the_delay() -> None:
    bus, master = faulty("late", late_by=1.5)
    (reply,) = bus.handle(master.adu(READ_V, 1), NOW)
    assert reply.delay == 1.5 and reply.faults == ("late",) and reply.meter == A1
    assert not master.parse(reply.data).isError()


def test_fault_garble_rtu_breaks_the_crc() -> None:
    bus, master = faulty("garble")
    for _ in range(20):
        (reply,) = bus.handle(master.adu(READ_V, 1), NOW)
        assert reply.faults == ("garble",)
        used, _, _, payload = master.framer.decode(reply.data)
        assert used and not payload  # framed (same length), CRC wrong
        assert len(reply.data) == 5 + 2 * 3 and reply.data[:3] == bytes([1, 3, 6])


def test_fault_garble_tcp_spoils_the_mbap_header() -> None:
    bus, master = faulty("garble", "tcp")
    (reply,) = bus.handle(master.adu(READ_V, 1), NOW)
    assert reply.data[2:4] != b"\x00\x00"
    decoder = MbapStreamDecoder()
    decoder.feed(reply.data)
    assert list(decoder.frames()) == [] and decoder.dropped == 1


@pytest.mark.parametrize("framing", ["rtu", "tcp"])
def test_fault_partial_sends_a_short_frame(framing: str) -> None:
    bus, master = faulty("partial", framing)
    full = len(Master(framing).framer.buildFrame(master.parse(bus.handle(master.adu(READ_V, 2), NOW)[0].data)))
    for _ in range(10):
        (reply,) = bus.handle(master.adu(READ_V, 1), NOW)
        assert 1 <= len(reply.data) < full and reply.faults == ("partial",)
        used, _, _, payload = master.framer.decode(reply.data)
        assert not payload


@pytest.mark.parametrize("framing", ["rtu", "tcp"])
def test_fault_wrong_unit(framing: str) -> None:
    bus, master = faulty("wrong_unit", framing)
    (reply,) = bus.handle(master.adu(READ_V, 1), NOW)
    pdu = master.parse(reply.data)  # a sound frame ...
    assert pdu.dev_id == 2 and not pdu.isError()  # ... from the other unit
    assert bus.stats.faults["wrong_unit"] == 1


def test_faults_are_seeded_and_reproducible() -> None:
    def run(seed: int) -> list[tuple[str, ...]]:
        plan = ModbusFaultPlan(no_answer=0.2, exception=0.2, garble=0.3, partial=0.2, late=0.3, wrong_unit=0.1)
        bus = ModbusBus(models(1), get_map("generic"), faults={1: plan}, seed=seed)
        master = Master()
        out = []
        for _ in range(40):
            replies = bus.handle(master.adu(READ_V, 1), NOW)
            out.append(replies[0].faults if replies else ("silent",))
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)
    kinds = {k for r in run(7) for k in r}
    assert {"silent", "exception", "garble", "partial", "late"} <= kinds


def test_fault_plan_validation_and_coercion() -> None:
    with pytest.raises(ValueError, match="within 0..1"):
        ModbusFaultPlan(garble=1.5)
    with pytest.raises(ValueError, match="late_by"):
        ModbusFaultPlan(late=1.0, late_by=-1)
    with pytest.raises(ValueError, match="exception_code"):
        ModbusFaultPlan.of("exception", 1.0, exception_code=0)
    with pytest.raises(ValueError, match="unknown Modbus fault kind"):
        ModbusFaultPlan.of("abnormal")
    assert set(MODBUS_FAULT_KINDS) == {"no_answer", "exception", "late", "garble", "partial", "wrong_unit"}
    plan = ModbusFaultPlan.coerce(FaultPlan(wrong_address=0.5, abnormal=1.0, late=0.2, late_by=3))
    assert (plan.wrong_unit, plan.exception, plan.late, plan.late_by) == (0.5, 1.0, 0.2, 3)
    assert ModbusFaultPlan.coerce({"partial": 0.5, "exception": 1, "exception_code": 6}).exception_code == 6
    merged = ModbusFaultPlan.of("garble", 0.2).merged(ModbusFaultPlan.of("exception", 1.0, exception_code=3))
    assert merged.describe() == {"exception": 1.0, "garble": 0.2, "exception_code": 3}


# --- stream decoders ---------------------------------------------------------------------------


def test_rtu_decoder_finds_frames_in_noise_and_pieces() -> None:
    master = Master()
    a = master.adu(ReadHoldingRegistersRequest(address=0, count=3), 1)
    b = master.adu(WriteMultipleRegistersRequest(address=0x100, registers=[1, 2]), 2)
    corrupt = bytearray(a)
    corrupt[4] ^= 0xFF
    d = RtuStreamDecoder()
    for piece in (b"\x00\xff", bytes(corrupt), a[:3]):
        d.feed(piece)
        assert list(d.frames()) == []
    d.feed(a[3:] + b[:5])
    assert list(d.frames()) == [a]
    d.feed(b[5:])
    assert list(d.frames()) == [b] and d.pending == b""
    assert d.dropped >= 1
    d.feed(a[:5])
    d.idle()  # the line went quiet: the cut frame is gone
    d.feed(a)
    assert list(d.frames()) == [a]


def test_mbap_decoder_splits_and_rejects_garbage() -> None:
    master = Master("tcp")
    a = master.adu(ReadHoldingRegistersRequest(address=0, count=3), 1)
    b = master.adu(ReadCoilsRequest(address=0, count=1), 2)
    d = MbapStreamDecoder()
    d.feed(a + b[:4])
    assert list(d.frames()) == [a]
    d.feed(b[4:])
    assert list(d.frames()) == [b]
    d.feed(b"\x00\x01\x00\x07\x00\x06\x01\x03\x00\x00\x00\x01")  # protocol id 7
    assert list(d.frames()) == [] and d.dropped == 1 and d.pending == b""


# --- the fleet's Modbus and DL/T 645-1997 options (no I/O) ---------------------------------------


def test_fleet_spec_lays_out_modbus_buses_after_dlt645() -> None:
    spec = FleetSpec(pty_buses=1, tcp_buses=1, modbus_pty_buses=1, modbus_tcp_buses=2, meters_per_bus=2,
                     v1997=["2"], faults={"6": "exception:1:2,late:0.5:3", "3": "garble", "8": "stuck_relay"})  # fmt: skip
    assert spec.bus_layout() == [("dlt645", "pty"), ("dlt645", "tcp"), ("modbus", "pty"), ("modbus", "tcp"), ("modbus", "tcp")]
    assert spec.addresses()[2] == ["000000000005", "000000000006"]
    assert spec.modbus_addresses()[0] == "000000000005" and len(spec.modbus_addresses()) == 6
    assert spec.meter_protocol("2") == "dlt645-1997" and spec.meter_protocol("1") == "dlt645-2007"
    assert spec.meter_protocol("10") == "modbus"
    plans, stuck = spec.fault_plans()
    assert isinstance(plans["000000000006"], ModbusFaultPlan) and isinstance(plans["000000000003"], FaultPlan)
    assert describe_plan(plans["000000000006"]) == {"exception": 1.0, "late": 0.5, "late_by": 3.0, "exception_code": 2}
    assert stuck == {"000000000008"}


def test_fleet_spec_names_every_modbus_problem() -> None:
    with pytest.raises(ConfigError) as err:
        FleetSpec(pty_buses=1, modbus_tcp_buses=1, modbus_model="nope", modbus_tcp_framing="udp",
                  modbus_baud=0, v1997=["4", "9", "x"], faults={"4": "wrong_address", "1": "partial"})  # fmt: skip
    text = str(err.value)
    for needle in ("modbus_model", "'nope'", "modbus_tcp_framing", "modbus_baud", "v1997: 000000000004 is a Modbus",
                   "v1997: 000000000009: no such meter", "v1997: 'x'", "unknown Modbus fault kind 'wrong_address'",
                   "unknown fault kind 'partial'"):  # fmt: skip
        assert needle in text, needle
    with pytest.raises(ConfigError, match="1..247 on Modbus"):
        FleetSpec(pty_buses=0, modbus_pty_buses=1, meters_per_bus=250)
    with pytest.raises(ConfigError, match="at least one bus"):
        FleetSpec(pty_buses=0)
    with pytest.raises(ConfigError, match="no room for 3 TCP buses"):
        FleetSpec(tcp_buses=1, modbus_tcp_buses=2, port=65534)
    assert FleetSpec(pty_buses=0, modbus_pty_buses=1).modbus_buses == 1


def test_data_types_of_the_shipped_maps_are_all_exercised() -> None:
    types = {e.type for m in builtin_maps().values() for e in m.entries}
    assert {DataType.U16, DataType.S16, DataType.S32, DataType.U32, DataType.U64, DataType.FLOAT32, DataType.BOOL} <= types
