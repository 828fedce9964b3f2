"""The vendors' whole register tables behind the simulated Modbus meters (issue 17).

The map's registers and the table's registers must agree where they overlap, the table's values
must obey the same physics as the model (VA = V x I, PF = P / |S|, phases summing to totals),
signs follow the vendor (Eastron: current and VA magnitudes, direction in W and PF), and a
register outside the vendor's table is still ILLEGAL DATA ADDRESS.  Requests are built and replies
parsed with pymodbus' client side, as in test_sim_modbus.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime, timedelta

import pytest
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from meterd.protocols.modbus import Function, compile_plan, decode_block, get_map, loads_map
from meterd.simulators.modbus import ModbusBus, vendor_table
from meterd.simulators.model import MeterModel
from meterd.simulators.profile import LoadProfile
from meterd.simulators.vendor_tables import (
    VENDOR_TABLES,
    MeterState,
    ShareMemo,
    schneider_datetime,
    schneider_pf_register,
)

START = datetime(2025, 6, 1, 8, 0)
NOON = datetime(2025, 6, 1, 12, 30, 7)  # rooftop PV at its peak: the meter exports
EVENING = datetime(2025, 6, 1, 19, 45, 3)  # the evening peak: the meter imports
PV = LoadProfile(pv_peak_kw=6.0)
READS = {Function.HOLDING: ReadHoldingRegistersRequest, Function.INPUT: ReadInputRegistersRequest}


def meter(unit: int = 1, **kw: object) -> MeterModel:
    return MeterModel(f"{unit:012d}", start=START, seed=unit, profile=PV, **kw)  # type: ignore[arg-type]


class Master:
    """Modbus TCP master side: pymodbus' client PDUs and framer."""

    def __init__(self) -> None:
        self.decoder = DecodePDU(False)
        self.framer = FramerSocket(self.decoder)
        self.tid = 0

    def ask(self, bus: ModbusBus, pdu: ModbusPDU, unit: int, now: datetime) -> ModbusPDU:
        self.tid += 1
        pdu.dev_id, pdu.transaction_id = unit, self.tid
        (reply,) = bus.handle(self.framer.buildFrame(pdu), now)
        _, _, _, payload = self.framer.decode(reply.data)
        out = self.decoder.decode(payload)
        assert out is not None
        return out

    def registers(self, bus: ModbusBus, function: Function, address: int, count: int, unit: int, now: datetime) -> list[int]:
        reply = self.ask(bus, READS[function](address=address, count=count), unit, now)
        assert not reply.isError(), (function, hex(address), count, reply)
        return list(reply.registers)

    def f32(self, bus: ModbusBus, function: Function, address: int, unit: int, now: datetime) -> float:
        hi, lo = self.registers(bus, function, address, 2, unit, now)
        return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def floats(words: list[int]) -> list[float]:
    return [struct.unpack(">f", struct.pack(">HH", *words[i : i + 2]))[0] for i in range(0, len(words), 2)]


# --- the map and the table agree -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VENDOR_TABLES))
@pytest.mark.parametrize("now", [NOON, EVENING], ids=["export", "import"])
def test_map_registers_and_vendor_table_agree(name: str, now: datetime) -> None:
    """Every register the map reads holds what the vendor table says at that address."""
    regmap = get_map(name)
    table = VENDOR_TABLES[name]
    assert vendor_table(regmap) is table
    bus = ModbusBus({1: meter()}, regmap, framing="tcp")
    master = Master()
    state = MeterState.of(bus.meter(1), 1, now, ShareMemo())
    for block in compile_plan(regmap):
        served = master.registers(bus, block.function, block.address, block.count, 1, now)
        image = table.image(state, block.function)
        for f in block.fields:
            span = range(f.entry.address, f.entry.end)
            assert set(span) <= image.keys(), f"{name}: the table lacks {f.entry.quantity}"
        from_table = [image.get(a, 0) for a in range(block.address, block.address + block.count)]
        for got, want in zip(decode_block(block, served), decode_block(block, from_table), strict=True):
            tol = max(abs(float(want.value)), 1.0) * 2e-6  # type: ignore[arg-type]
            assert abs(float(got.value) - float(want.value)) <= tol, (name, got.quantity, got.value, want.value)  # type: ignore[arg-type]


def test_a_map_that_only_borrows_a_vendor_name_gets_no_table() -> None:
    shifted = loads_map(
        """
[model]
name = "eastron-sdm630"
manufacturer = "someone"
source = "a copy"
primary = true
function = "input"

[[register]]
quantity = "voltage.a"
address = 0x0001
type = "float32"
unit = "V"
"""
    )
    assert vendor_table(shifted) is None
    bus = ModbusBus({1: meter()}, shifted, framing="tcp")
    reply = Master().ask(bus, ReadInputRegistersRequest(address=0x0048, count=2), 1, NOON)
    assert isinstance(reply, ExceptionResponse) and reply.exception_code == 2
    assert vendor_table(get_map("generic")) is None


# --- Eastron: signs and physics -----------------------------------------------------------------


def test_eastron_reverse_flow_current_and_va_are_magnitudes_power_and_pf_negative() -> None:
    bus = ModbusBus({1: meter()}, get_map("eastron-sdm630"), framing="tcp")
    master = Master()
    model = bus.meter(1)
    assert float(model.values(NOON)["power.active.total"]) < -1  # exporting
    v = floats(master.registers(bus, Function.INPUT, 0x0000, 0x2C, 1, NOON))
    volts, amps, watts, va, var, pf, angle = (v[0:3], v[3:6], v[6:9], v[9:12], v[12:15], v[15:18], v[18:21])
    for k in range(3):
        assert amps[k] > 0 and va[k] > 0, (k, amps, va)
        assert watts[k] < 0 and pf[k] < 0, (k, watts, pf)
        # VA = V x I (to the model's rounding of V, I and kVA) and |PF| = |P| / VA
        assert va[k] == pytest.approx(volts[k] * amps[k], rel=2e-3)
        assert abs(pf[k]) == pytest.approx(abs(watts[k]) / va[k], abs=2e-3)
        assert va[k] == pytest.approx(math.hypot(watts[k], var[k]), rel=1e-3)
        assert 90 < abs(angle[k]) <= 180  # the current against its voltage: exporting
    total_w, total_va, total_var, total_pf = (master.f32(bus, Function.INPUT, a, 1, NOON) for a in (0x34, 0x38, 0x3C, 0x3E))
    assert total_w < 0 and total_va > 0 and total_pf < 0
    assert total_w == pytest.approx(sum(watts), rel=1e-3) and total_var == pytest.approx(sum(var), rel=1e-3)
    assert master.f32(bus, Function.INPUT, 0x0030, 1, NOON) == pytest.approx(sum(amps), rel=1e-5)  # sum of currents
    assert master.f32(bus, Function.INPUT, 0x002E, 1, NOON) == pytest.approx(sum(amps) / 3, rel=1e-5)
    assert master.f32(bus, Function.INPUT, 0x002A, 1, NOON) == pytest.approx(sum(volts) / 3, rel=1e-5)
    # demand is import - export (note 2): negative while exporting; the reverse demand positive
    assert master.f32(bus, Function.INPUT, 0x0054, 1, NOON) < 0 < master.f32(bus, Function.INPUT, 0x005C, 1, NOON)


def test_eastron_evening_import_everything_positive() -> None:
    bus = ModbusBus({1: meter()}, get_map("eastron-sdm630"), framing="tcp")
    v = floats(Master().registers(bus, Function.INPUT, 0x0000, 0x24, 1, EVENING))
    assert all(x > 0 for x in v[3:12] + v[15:18])  # currents, W, VA, PF


def test_eastron_line_voltages_neutral_thd_and_energies() -> None:
    bus = ModbusBus({1: meter()}, get_map("eastron-sdm630"), framing="tcp")
    master = Master()
    values = bus.meter(1).values(NOON)
    ll = floats(master.registers(bus, Function.INPUT, 0x00C8, 8, 1, NOON))
    for k, (p1, p2) in enumerate((("a", "b"), ("b", "c"), ("c", "a"))):
        a, b = float(values[f"voltage.{p1}"]), float(values[f"voltage.{p2}"])  # type: ignore[arg-type]
        assert ll[k] == pytest.approx(math.sqrt(a * a + a * b + b * b), abs=0.06)
    assert ll[3] == pytest.approx(sum(ll[:3]) / 3, rel=1e-5) and 370 < ll[3] < 395
    assert master.f32(bus, Function.INPUT, 0x00E0, 1, NOON) == pytest.approx(float(values["current.n"]), abs=1e-3)  # type: ignore[arg-type]
    thd = floats(master.registers(bus, Function.INPUT, 0x00EA, 12, 1, NOON))
    assert all(1.0 < x < 3.0 for x in thd[0:3]) and all(5.0 < x < 25.0 for x in thd[3:6])
    energy = floats(master.registers(bus, Function.INPUT, 0x0156, 40, 1, NOON))
    total, total_var = energy[0], energy[1]
    imp, exp = float(values["energy.active.import.total"]), float(values["energy.active.export.total"])  # type: ignore[arg-type]
    assert total == pytest.approx(imp + exp, rel=1e-6)
    phase_imp, phase_exp, phase_tot = energy[2:5], energy[5:8], energy[8:11]
    assert sum(phase_imp) == pytest.approx(imp, rel=1e-5) and sum(phase_exp) == pytest.approx(exp, rel=1e-5)
    assert all(t == pytest.approx(i + e, rel=1e-5) for t, i, e in zip(phase_tot, phase_imp, phase_exp, strict=True))
    assert sum(energy[17:20]) == pytest.approx(total_var, rel=1e-5)  # L1..L3 total kvarh


def test_eastron_holding_settings_name_the_unit() -> None:
    bus = ModbusBus({1: meter(), 7: meter(7)}, get_map("eastron-sdm630"), framing="tcp")
    master = Master()
    settings = floats(master.registers(bus, Function.HOLDING, 0x0000, 0x26, 7, NOON))
    assert settings[1] == 15.0  # demand period: the model's 15-minute sliding window
    assert settings[5] == 3.0  # system type 3P4W
    assert settings[10] == 7.0  # network node: the unit id
    assert settings[14] == 2.0  # 9600 baud
    serial = master.registers(bus, Function.HOLDING, 0xFC00, 2, 7, NOON)
    assert (serial[0] << 16) | serial[1] == 7


def test_single_phase_meter_on_a_three_phase_table_reads_zero_on_b_and_c() -> None:
    bus = ModbusBus({1: meter(phases=1)}, get_map("eastron-sdm630"), framing="tcp")
    master = Master()
    v = floats(master.registers(bus, Function.INPUT, 0x0000, 0x24, 1, EVENING))
    assert v[0] > 200 and v[1] == v[2] == 0.0 and v[3] > 0 and v[4] == v[5] == 0.0
    assert master.f32(bus, Function.HOLDING, 0x000A, 1, EVENING) == 1.0  # 1P2W
    assert master.f32(bus, Function.INPUT, 0x00C8, 1, EVENING) == 0.0  # no line voltage
    phase_energy = floats(master.registers(bus, Function.INPUT, 0x015A, 6, 1, EVENING))
    assert phase_energy[0] > 0 and phase_energy[1] == phase_energy[2] == 0.0


def test_outside_the_vendor_table_is_illegal_address() -> None:
    bus = ModbusBus({1: meter()}, get_map("eastron-sdm630"), framing="tcp")
    master = Master()
    for function, address, count in [
        (Function.INPUT, 0x006C, 2),  # after max neutral current demand: 92 undefined registers
        (Function.INPUT, 0x00C6, 4),  # runs into the hole before 0x00C8
        (Function.INPUT, 0x017E, 2),  # past L3 total kvarh
        (Function.INPUT, 0x0500, 2),  # an SDM72 register, not the SDM630's
        (Function.HOLDING, 0x0026, 2),
        (Function.HOLDING, 0xFC02, 1),
    ]:
        reply = master.ask(bus, READS[function](address=address, count=count), 1, NOON)
        assert isinstance(reply, ExceptionResponse) and reply.exception_code == 2, (function, hex(address))
    # inside the table a read may run over a reserved register (it reads 0), as long reads do
    words = master.registers(bus, Function.INPUT, 0x0000, 80, 1, NOON)
    assert words[0x2C:0x2E] == [0, 0] and words[0x2E:0x30] != [0, 0]


def test_phase_energies_never_run_backwards_when_the_relay_opens() -> None:
    bus = ModbusBus({1: meter()}, get_map("eastron-sdm630"), framing="tcp")
    master = Master()
    before = floats(master.registers(bus, Function.INPUT, 0x015A, 6, 1, EVENING))
    bus.meter(1).relay_open = True  # no current: the shares cannot be measured now
    later = floats(master.registers(bus, Function.INPUT, 0x015A, 6, 1, EVENING + timedelta(hours=1)))
    assert later == pytest.approx(before, rel=1e-7)
    assert master.f32(bus, Function.INPUT, 0x0006, 1, EVENING + timedelta(hours=1)) == 0.0
    assert master.f32(bus, Function.INPUT, 0x00F0, 1, EVENING + timedelta(hours=1)) == 0.0  # no current, no THD


def test_eastron_map_reads_of_current_are_magnitudes_through_the_planner() -> None:
    regmap = get_map("eastron-sdm630")
    bus = ModbusBus({1: meter()}, regmap, framing="tcp")
    master = Master()
    got = {}
    for block in compile_plan(regmap):
        got.update((v.quantity, v.value) for v in decode_block(block, master.registers(bus, block.function, block.address, block.count, 1, NOON)))
    model = bus.meter(1).values(NOON)
    for ph in "abc":
        assert got[f"current.{ph}"] == abs(model[f"current.{ph}"])  # type: ignore[arg-type]
        assert got[f"power.apparent.{ph}"] > 0 > got[f"power.active.{ph}"]  # type: ignore[operator]
        assert got[f"pf.{ph}"] < 0  # type: ignore[operator]


# --- CHINT DTSU666 --------------------------------------------------------------------------------


def test_dtsu666_parameters_quadrant_energies_and_demand() -> None:
    bus = ModbusBus({3: meter(3)}, get_map("chint-dtsu666"), framing="tcp")
    master = Master()
    model = bus.meter(3).values(NOON)
    params = master.registers(bus, Function.HOLDING, 0x0000, 0x35, 3, NOON)
    assert params[0x06] == 1 and params[0x07] == 10  # IrAt 1, UrAt 1.0: the values are secondary
    assert params[0x2E] == 3  # Addr: the unit id
    clock = bus.meter(3).meter_clock(NOON)
    assert params[0x2F:0x35] == [clock.second, clock.minute, clock.hour, clock.day, clock.month, clock.year]
    energy = floats(master.registers(bus, Function.HOLDING, 0x101E, 0x34, 3, NOON))
    assert energy[0] == pytest.approx(float(model["energy.active.import.total"]), rel=1e-6)  # type: ignore[arg-type]
    assert energy[5] == pytest.approx(float(model["energy.active.export.total"]), rel=1e-6)  # type: ignore[arg-type]
    for n in range(4):
        assert energy[10 + 5 * n] == pytest.approx(float(model[f"energy.reactive.q{n + 1}.total"]), rel=1e-6)  # type: ignore[arg-type]
    demand = master.f32(bus, Function.HOLDING, 0x2050, 3, NOON)
    assert demand == pytest.approx(float(model["demand.active.now"]) * 10_000, rel=1e-5) and demand < 0  # type: ignore[arg-type]
    reply = master.ask(bus, ReadHoldingRegistersRequest(address=0x1000, count=2), 3, NOON)
    assert isinstance(reply, ExceptionResponse) and reply.exception_code == 2


# --- Schneider iEM3x55 ---------------------------------------------------------------------------


def schneider_pf_value(register: float) -> float:
    """The iEM3000 manual's formula back from the register (DOCA0005EN, PF register format)."""
    if register > 1:
        return 2 - register
    if register < -1:
        return -2 - register
    return register


@pytest.mark.parametrize(
    ("pf", "p", "q", "low", "high"),
    [(0.9, 1, 0.4, 0, 1), (0.9, 1, -0.4, 1, 2), (-0.9, -1, 0.4, -1, 0), (-0.9, -1, -0.4, -2, -1)],
    ids=["Q1 import inductive", "Q4 import capacitive", "Q2 export capacitive", "Q3 export inductive"],
)
def test_schneider_pf_register_ranges_per_quadrant(pf: float, p: float, q: float, low: float, high: float) -> None:
    register = schneider_pf_register(pf, p, q)
    assert low <= register <= high
    assert schneider_pf_value(register) == pytest.approx(pf)


def test_schneider_datetime_layout() -> None:
    t = datetime(2025, 6, 1, 12, 30, 7, 250_000)  # a Sunday
    w = schneider_datetime(t)
    assert 2000 + (w[0] & 0x7F) == 2025 and (w[1] >> 8) & 0x0F == 6 and w[1] & 0x1F == 1
    assert (w[1] >> 5) & 0x07 == 7 and (w[2] >> 8) & 0x1F == 12 and w[2] & 0x3F == 30 and w[3] == 7250


def test_schneider_identity_pf_and_energies() -> None:
    bus = ModbusBus({2: meter(2)}, get_map("schneider-iem3x55"), framing="tcp")
    master = Master()
    name = master.registers(bus, Function.HOLDING, 69, 20, 2, NOON)
    assert struct.pack(">20H", *name).rstrip(b"\0") == b"Schneider Electric"
    model = bus.meter(2).values(NOON)
    pf_register = master.f32(bus, Function.HOLDING, 3083, 2, NOON)
    assert schneider_pf_value(pf_register) == pytest.approx(float(model["pf.total"]), abs=1e-6)  # type: ignore[arg-type]
    assert master.f32(bus, Function.HOLDING, 3191, 2, NOON) == pytest.approx(float(model["pf.total"]), abs=1e-6)  # type: ignore[arg-type]
    currents = floats(master.registers(bus, Function.HOLDING, 2999, 12, 2, NOON))
    assert all(c > 0 for c in currents[:3]) and currents[5] == pytest.approx(sum(currents[:3]) / 3, rel=1e-5)
    phases = floats(master.registers(bus, Function.HOLDING, 45111, 6, 2, NOON))
    assert sum(phases) == pytest.approx(float(model["energy.active.import.total"]), rel=1e-5)  # type: ignore[arg-type]
    when = master.registers(bus, Function.HOLDING, 1844, 4, 2, NOON)
    assert list(schneider_datetime(bus.meter(2).meter_clock(NOON))) == when
