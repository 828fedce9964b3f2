"""Another master reads the simulated meters' registers that meterd's maps do not use (issue 17).

pymodbus' own clients over real links -- Modbus TCP, and RTU on a pty at 9600 8N1 -- read the
vendor-table registers (phase angles, averages, line voltages, neutral current, THD, demands,
per-phase energies, settings) and check them against the model and against physics.  The meter
exports (rooftop PV at noon): Eastron publishes current and VA as magnitudes, W and PF negative.
"""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from meterd.protocols.modbus import get_map
from meterd.simulators.modbus import ModbusBus
from meterd.simulators.model import MeterModel
from meterd.simulators.profile import LoadProfile
from meterd.simulators.serve import serve_pty, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
NOON = datetime(2025, 6, 1, 12, 30, 5)
F32 = AsyncModbusTcpClient.DATATYPE.FLOAT32


def frozen() -> datetime:
    return NOON


def exporting_bus(model: str, framing: str) -> ModbusBus:
    meters = {u: MeterModel(f"{u:012d}", start=START, seed=u, profile=LoadProfile(pv_peak_kw=6.0)) for u in (1, 2)}
    return ModbusBus(meters, get_map(model), framing=framing)


async def f32s(client: AsyncModbusTcpClient | AsyncModbusSerialClient, address: int, n: int, unit: int,
               *, holding: bool = False) -> list[float]:  # fmt: skip
    read = client.read_holding_registers if holding else client.read_input_registers
    reply = await read(address, count=2 * n, device_id=unit)
    assert not reply.isError(), (hex(address), reply)
    values = client.convert_from_registers(reply.registers, F32)
    return [float(v) for v in (values if isinstance(values, list) else [values])]


def host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


async def test_eastron_unmapped_registers_over_modbus_tcp_reverse_flow() -> None:
    bus = exporting_bus("eastron-sdm630", "tcp")
    async with await serve_tcp(bus, clock=frozen) as running:
        host, port = host_port(running.endpoint)
        client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        try:
            assert await client.connect()
            model = bus.meter(2).values(NOON)
            assert float(model["power.active.total"]) < 0  # type: ignore[arg-type]
            # the block 0x0000..0x0029: V, I, W, VA, VAr, PF, phase angle
            v = await f32s(client, 0x0000, 21, 2)
            volts, amps, watts, va, var, pf, angle = (v[i : i + 3] for i in range(0, 21, 3))
            for k in range(3):
                assert amps[k] > 0 and va[k] > 0 and watts[k] < 0 and pf[k] < 0, (amps, va, watts, pf)
                assert va[k] == pytest.approx(volts[k] * amps[k], rel=2e-3)
                assert angle[k] == pytest.approx(math.degrees(math.atan2(var[k], watts[k])), abs=0.05)
            avg_v, _, avg_i, sum_i = await f32s(client, 0x002A, 4, 2)
            assert avg_v == pytest.approx(sum(volts) / 3, rel=1e-5)
            assert (avg_i, sum_i) == (pytest.approx(sum(amps) / 3, rel=1e-5), pytest.approx(sum(amps), rel=1e-5))
            (total_va,) = await f32s(client, 0x0038, 1, 2)
            assert total_va > 0
            (phase_angle_total,) = await f32s(client, 0x0042, 1, 2)
            assert 90 < abs(phase_angle_total) <= 180
            line = await f32s(client, 0x00C8, 4, 2)
            assert all(375 < x < 392 for x in line)
            (neutral,) = await f32s(client, 0x00E0, 1, 2)
            assert neutral == pytest.approx(float(model["current.n"]), abs=1e-3)  # type: ignore[arg-type]
            demand = await f32s(client, 0x0054, 6, 2)
            assert demand[0] < 0 and demand[2] == 0 and demand[4] > 0  # net, import, export demand
            energy = await f32s(client, 0x0156, 5, 2)
            imp, exp = float(model["energy.active.import.total"]), float(model["energy.active.export.total"])  # type: ignore[arg-type]
            assert energy[0] == pytest.approx(imp + exp, rel=1e-6)
            assert sum(energy[2:5]) == pytest.approx(imp, rel=1e-5)
            (node,) = await f32s(client, 0x0014, 1, 2, holding=True)
            assert node == 2.0
            # outside the vendor's table: the meter's own exception, ILLEGAL DATA ADDRESS
            for address in (0x006C, 0x0180):
                refused = await client.read_input_registers(address, count=2, device_id=2)
                assert refused.isError() and refused.exception_code == 2, hex(address)
        finally:
            client.close()


async def test_dtsu666_and_schneider_unmapped_registers_over_the_pty() -> None:
    for model_name in ("chint-dtsu666", "schneider-iem3x55"):
        bus = exporting_bus(model_name, "rtu")
        async with await serve_pty(bus, clock=frozen, wire_time=False, turnaround=0.0) as running:
            client = AsyncModbusSerialClient(running.endpoint, baudrate=9600, bytesize=8, parity="N", stopbits=1,
                                             timeout=2, retries=0)  # fmt: skip
            try:
                assert await client.connect()
                model = bus.meter(1).values(NOON)
                if model_name == "chint-dtsu666":
                    reply = await client.read_holding_registers(0x002E, count=1, device_id=1)
                    assert reply.registers == [1]  # Addr
                    (dmpt,) = await f32s(client, 0x2050, 1, 1, holding=True)
                    assert dmpt == pytest.approx(float(model["demand.active.now"]) * 10_000, rel=1e-5)  # type: ignore[arg-type]
                    q = await f32s(client, 0x1032, 1, 1, holding=True)
                    assert q[0] == pytest.approx(float(model["energy.reactive.q1.total"]), rel=1e-6)  # type: ignore[arg-type]
                else:
                    (avg_i,) = await f32s(client, 3009, 1, 1, holding=True)
                    assert avg_i > 0
                    ll = await f32s(client, 3019, 4, 1, holding=True)
                    assert all(375 < x < 392 for x in ll)
                    (pf_register,) = await f32s(client, 3083, 1, 1, holding=True)
                    assert -1 <= pf_register < 0  # exporting, Q >= 0: quadrant II, the register is the PF
                    reply = await client.read_holding_registers(2013, count=4, device_id=1)
                    assert reply.registers == [3, 4, 11, 50]  # phases, wires, 3PH4W, 50 Hz
                refused = await client.read_holding_registers(0x5000, count=2, device_id=1)
                assert refused.isError() and refused.exception_code == 2
            finally:
                client.close()
