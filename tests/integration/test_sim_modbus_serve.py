"""Simulated Modbus meters over real links, read by pymodbus' own clients.

* Modbus TCP: ``AsyncModbusTcpClient`` (socket framer) against :func:`serve_tcp`;
* RTU over TCP: ``AsyncModbusTcpClient(framer=FramerType.RTU)``;
* RTU on a serial line: ``AsyncModbusSerialClient`` on the pty device path, 9600 8N1;
* ``meterd simulate`` with Modbus buses and DL/T 645-1997 meters, as a process.

The simulated clock is frozen where values are compared, so the model answers the same numbers
to the client and to the test.  Timing is only checked from below (a reply never beats the wire).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from meterd.protocols.dlt645.frame import PREAMBLE, StreamDecoder, encode_frame
from meterd.protocols.dlt645.v1997 import ReadRequest97, ReadResponse97, decode_response97, encode_request97
from meterd.protocols.modbus import Function, RegisterMap, compile_plan, decode_block, get_map
from meterd.simulators.fleet import FleetSpec, run_fleet
from meterd.simulators.model import MeterModel
from meterd.simulators.modbus import ModbusBus, ModbusFaultPlan
from meterd.simulators.serve import serve_pty, serve_tcp

START = datetime(2025, 6, 1, 8, 0)
NOW = START + timedelta(hours=2, minutes=30)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def frozen() -> datetime:
    return NOW


def make_bus(regmap: RegisterMap, framing: str, faults: dict[int, ModbusFaultPlan] | None = None) -> ModbusBus:
    meters = {u: MeterModel(f"{u:012d}", start=START, seed=u) for u in (1, 2, 3)}
    return ModbusBus(meters, regmap, framing=framing, faults=faults)


async def read_all(client: AsyncModbusTcpClient | AsyncModbusSerialClient, regmap: RegisterMap, unit: int) -> dict:
    """Every quantity of the map, read as the collector plans it, decoded by meterd."""
    got = {}
    for block in compile_plan(regmap):
        read = {
            Function.HOLDING: client.read_holding_registers,
            Function.INPUT: client.read_input_registers,
            Function.COIL: client.read_coils,
            Function.DISCRETE: client.read_discrete_inputs,
        }[block.function]
        reply = await read(block.address, count=block.count, device_id=unit)
        assert not reply.isError(), reply
        data = reply.bits if block.function.is_bit else reply.registers
        got.update((v.quantity, v.value) for v in decode_block(block, data))
    return got


def assert_model_values(got: dict, bus: ModbusBus, unit: int) -> None:
    want = bus.meter(unit).values(NOW)
    assert got.keys() == set(bus.regmap.quantities)
    for q, value in got.items():
        if q not in want:
            continue  # derived (line voltages, reactive import/export): see the unit tests
        if isinstance(value, bool):
            assert value == want[q], q
        else:
            entry = bus.regmap.entry(q)
            tol = abs(float(want[q])) * 1e-6 if entry.type.is_float else float(entry.scale) / 2
            assert abs(float(value) - float(want[q])) <= tol + 1e-12, (q, value, want[q])


def host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


async def test_modbus_tcp_client_reads_the_model() -> None:
    bus = make_bus(get_map("schneider-iem3x55"), "tcp")
    async with await serve_tcp(bus, clock=frozen) as running:
        host, port = host_port(running.endpoint)
        client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        try:
            assert await client.connect()
            for unit in (1, 3):
                assert_model_values(await read_all(client, bus.regmap, unit), bus, unit)
            illegal = await client.read_holding_registers(0, count=2, device_id=1)
            assert illegal.isError() and illegal.exception_code == 2
        finally:
            client.close()
        assert running.stats.requests == running.stats.replies == 2 * len(compile_plan(bus.regmap)) + 1


async def test_rtu_over_tcp_relay_write_then_verify() -> None:
    bus = make_bus(get_map("generic"), "rtu")
    async with await serve_tcp(bus, clock=frozen) as running:
        host, port = host_port(running.endpoint)
        client = AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, timeout=2, retries=0)
        try:
            assert await client.connect()
            assert_model_values(await read_all(client, bus.regmap, 2), bus, 2)
            assert not (await client.write_coil(0, True, device_id=2)).isError()
            assert (await client.read_discrete_inputs(0, count=1, device_id=2)).bits[0] is True
            assert bus.meter(2).relay_open and not bus.meter(1).relay_open
        finally:
            client.close()


async def test_unknown_unit_times_out_and_exception_fault_answers() -> None:
    bus = make_bus(get_map("generic"), "tcp", faults={3: ModbusFaultPlan.of("exception", exception_code=6)})
    async with await serve_tcp(bus, clock=frozen) as running:
        host, port = host_port(running.endpoint)
        client = AsyncModbusTcpClient(host, port=port, timeout=0.3, retries=0)
        try:
            assert await client.connect()
            reply = await client.read_holding_registers(0, count=1, device_id=3)
            assert reply.isError() and reply.exception_code == 6
            with pytest.raises(Exception, match="(?i)no response"):
                await client.read_holding_registers(0, count=1, device_id=9)
        finally:
            client.close()


async def test_serial_client_on_the_pty_rtu_9600_8n1_with_wire_time() -> None:
    bus = make_bus(get_map("eastron-sdm630"), "rtu")
    async with await serve_pty(bus, clock=frozen) as running:
        assert str(running.line) == "9600 8N1" and running.wire_time
        client = AsyncModbusSerialClient(running.endpoint, baudrate=9600, bytesize=8, parity="N", stopbits=1,
                                         timeout=2, retries=0)  # fmt: skip
        try:
            assert await client.connect()
            assert_model_values(await read_all(client, bus.regmap, 1), bus, 1)
            t0 = time.monotonic()
            reply = await client.read_input_registers(0, count=60, device_id=2)
            elapsed = time.monotonic() - t0
            assert len(reply.registers) == 60
            # 8 request bytes + 125 reply bytes at 10 bits each, plus the 20 ms turnaround
            assert elapsed >= running.line.wire_time(8 + 5 + 120) + running.turnaround - 0.005
        finally:
            client.close()
        assert running.stats.tx_bytes > 0 and running.stats.dropped == 0


async def test_fleet_with_modbus_buses() -> None:
    spec = FleetSpec(pty_buses=0, tcp_buses=1, modbus_pty_buses=1, modbus_tcp_buses=1, meters_per_bus=2,
                     wire_time=False, start=START, modbus_model="chint-dtsu666", v1997=["2"],
                     faults={"6": "exception"})  # fmt: skip
    async with await run_fleet(spec) as fleet:
        assert fleet.bus_names == ["tcp1", "mbpty1", "mbtcp1"]
        tcp1, mbpty1, mbtcp1 = fleet.buses
        assert (mbpty1.protocol, mbpty1.framing, mbpty1.units, mbpty1.model) == ("modbus", "rtu", (1, 2), "chint-dtsu666")
        assert mbpty1.running.line is not None and str(mbpty1.running.line) == "9600 8N1"
        assert tcp1.protocols == {"000000000001": "dlt645-2007", "000000000002": "dlt645-1997"}
        assert fleet.unit("000000000006") == 2 and fleet.unit("000000000001") is None
        doc = fleet.as_dict()
        assert doc["buses"][2]["units"] == {"000000000005": 1, "000000000006": 2}
        assert doc["faults"] == {"000000000006": {"exception": 1.0, "exception_code": 4}}
        host, port = host_port(mbtcp1.endpoint)
        client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        try:
            assert await client.connect()
            ok = await client.read_holding_registers(0x2044, count=2, device_id=1)
            assert not ok.isError() and len(ok.registers) == 2
            refused = await client.read_holding_registers(0x2044, count=2, device_id=2)
            assert refused.isError() and refused.exception_code == 4
        finally:
            client.close()


def simulate(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "meterd.cli.simulate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def test_meterd_simulate_modbus_and_v1997() -> None:
    proc = simulate("--pty", "0", "--tcp-buses", "1", "--modbus-tcp", "1", "--modbus-pty", "1",
                    "--modbus-framing", "rtu", "--modbus-model", "eastron-sdm630", "--meters-per-bus", "2",
                    "--v1997", "1,2", "--fault", "3:no_answer", "--json")  # fmt: skip
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert [b["name"] for b in doc["buses"]] == ["tcp1", "mbpty1", "mbtcp1"]
        tcp1, mbpty1, mbtcp1 = doc["buses"]
        assert tcp1["protocol"] == "dlt645" and tcp1["framing"] is None
        assert tcp1["protocols"] == {"000000000001": "dlt645-1997", "000000000002": "dlt645-1997"}
        assert mbpty1["framing"] == "rtu" and mbpty1["baud"] == 9600 and mbpty1["parity"] == "N"
        assert mbtcp1["framing"] == "rtu" and mbtcp1["model"] == "eastron-sdm630"
        assert mbtcp1["meters"] == ["000000000005", "000000000006"] and mbtcp1["units"]["000000000006"] == 2
        assert set(mbpty1["protocols"].values()) == {"modbus"}
        assert doc["faults"] == {"000000000003": {"no_answer": 1.0}}
        # a DL/T 645-1997 read (total active energy, 9010) through the DL/T 645 TCP bus
        with socket.create_connection((tcp1["host"], tcp1["port"]), timeout=5) as sock:
            sock.sendall(encode_frame(encode_request97(ReadRequest97("000000000002", 0x9010)), preamble=PREAMBLE))
            decoder = StreamDecoder()
            frame = None
            while frame is None:
                decoder.feed(sock.recv(256))
                frame = decoder.next_frame()
        reply = decode_response97(frame)
        assert isinstance(reply, ReadResponse97) and reply.di == 0x9010
        # and a Modbus RTU-over-TCP read through pymodbus
        registers = asyncio.run(_read_rtu_over_tcp(mbtcp1["host"], mbtcp1["port"]))
        assert len(registers) == 2
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "mbtcp1" in err and "1 requests, 1 replies" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _read_rtu_over_tcp(host: str, port: int) -> list[int]:
    client = AsyncModbusTcpClient(host, port=port, framer=FramerType.RTU, timeout=2, retries=0)
    try:
        assert await client.connect()
        reply = await client.read_input_registers(0, count=2, device_id=2)
        assert not reply.isError(), reply
        return list(reply.registers)
    finally:
        client.close()


def test_meterd_simulate_names_bad_modbus_arguments() -> None:
    proc = simulate("--duration", "0", "--modbus-tcp", "1", "--modbus-model", "nope", "--modbus-framing", "udp",
                    "--v1997", "12x", "--fault", "4:wrong_address")  # fmt: skip
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    for needle in ("--modbus-model", "nope", "--modbus-framing", "udp", "--v1997", "12x", "wrong_address"):
        assert needle in err, needle
