"""Modbus TCP: meterd's reads per second next to pymodbus' own client, same meters, same run.

The simulated Modbus meters run in a second process (``meterd simulate --modbus-tcp N``, no
turnaround).  Three clients take turns on the same buses for the same time, one request in
flight per bus, all buses in parallel:

* ``pymodbus``  -- ``AsyncModbusTcpClient.read_holding_registers``: raw registers, nothing else;
* ``pymodbus + convert`` -- the same client reading every block of the plan and converting each
  quantity with ``convert_from_registers`` and its scale: what a pymodbus user writes to get values;
* ``meterd read`` -- meterd's channel + :class:`~meterd.collector.modbus.ModbusLink.read_block`
  (pymodbus framer and PDUs under meterd's timeouts, retries, statistics and trace hooks);
* ``meterd poll`` -- the whole poll path: plan, read, decode every register with the map, CT/PT,
  one Reading per quantity, attempt bookkeeping.

The ratios are meterd's overhead: ``read_block`` against raw reads, the poll path against
``pymodbus + convert`` (target: within 1.5x).  Client and simulator share the machine's cores, so
absolute numbers depend on both; the ratios come from the same run.  Prints numbers; not a
pass/fail test.

    python benchmarks/bench_modbus.py [--buses 4] [--meters 5] [--seconds 5] [--model generic]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal

from pymodbus.client import AsyncModbusTcpClient

from meterd.collector.channel import Channel, Timing
from meterd.collector.modbus import ModbusLink
from meterd.collector.poll import MeterTarget, poll_meter
from meterd.collector.transports import TcpTransport
from meterd.protocols.modbus import Function, compile_plan, get_map
from meterd.protocols.modbus.decode import PYMODBUS_TYPES


def start_simulators(buses: int, meters: int, model: str) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "simulate", "--pty", "0",
           "--modbus-tcp", str(buses), "--modbus-model", model, "--meters-per-bus", str(meters),
           "--turnaround", "0", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"simulator exited: {proc.wait()}")
        lines.append(line)
        try:
            return proc, json.loads("".join(lines))
        except json.JSONDecodeError:
            continue


def endpoints(fleet: dict) -> list[tuple[str, int, list[tuple[str, int]]]]:
    out = []
    for bus in fleet["buses"]:
        if bus.get("protocol") != "modbus":
            continue
        host, _, port = bus["endpoint"].rpartition(":")
        units = bus["units"]
        out.append((host.strip("[]"), int(port), [(a, units[a]) for a in bus["meters"]]))
    return out


async def timed(workers, seconds: float) -> tuple[int, float]:
    count = 0
    stop_at = 0.0

    async def loop(step):
        nonlocal count
        while time.perf_counter() < stop_at:
            count += await step()

    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(loop(w) for w in workers))
    return count, time.perf_counter() - t0


async def bench_pymodbus(buses, block, seconds: float, plan=None) -> tuple[int, float]:
    clients = []
    for host, port, meters in buses:
        c = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
        await c.connect()
        clients.append((c, meters))

    def worker(client, meters):
        i = 0

        async def step() -> int:
            nonlocal i
            _, unit = meters[i % len(meters)]
            i += 1
            if plan is None:
                rr = await client.read_holding_registers(block.address, count=block.count, device_id=unit)
                assert not rr.isError() and len(rr.registers) == block.count
                return 1
            values = {}
            for b in plan.blocks:
                rr = await client.read_holding_registers(b.address, count=b.count, device_id=unit)
                assert not rr.isError()
                for f in b.fields:
                    e = f.entry
                    number = client.convert_from_registers(
                        rr.registers[f.offset : f.offset + e.size], PYMODBUS_TYPES[e.type], word_order=e.word_order.value)
                    values[e.quantity] = Decimal(number) * e.scale
            return len(plan.blocks)

        return step

    result = await timed([worker(c, m) for c, m in clients], seconds)
    for c, _ in clients:
        c.close()
    return result


async def bench_meterd(buses, plan, regmap, seconds: float, full_poll: bool) -> tuple[int, float]:
    links = []
    for n, (host, port, meters) in enumerate(buses):
        ch = Channel(f"mb{n}", TcpTransport(f"mb{n}", host, port), timing=Timing(2.0, 0.5), retries=0)
        links.append((ModbusLink(ch, "tcp"), meters))
    block = plan.blocks[0]

    def worker(link, meters):
        i = 0
        targets = [MeterTarget(a, protocol="modbus", unit=u, regmap=regmap) for a, u in meters]

        async def step() -> int:
            nonlocal i
            t = targets[i % len(targets)]
            i += 1
            if full_poll:
                readings, attempts = await poll_meter(link.channel, t, plan, datetime.now(timezone.utc), link=link)
                assert all(a.outcome == "ok" for a in attempts), attempts
                return len(attempts)
            data = await link.read_block(t.address, t.unit, block)
            assert len(data) == block.count
            return 1

        return step

    for link, meters in links:  # connect outside the timed window
        await link.read_block(meters[0][0], meters[0][1], block)
    result = await timed([worker(l, m) for l, m in links], seconds)
    for link, _ in links:
        await link.channel.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buses", type=int, default=4)
    ap.add_argument("--meters", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--model", default="generic")
    args = ap.parse_args()
    regmap = get_map(args.model)
    holding = [e.quantity for e in regmap if e.function is Function.HOLDING]
    plan = compile_plan(regmap, holding)
    block = plan.blocks[0]
    proc, fleet = start_simulators(args.buses, args.meters, args.model)
    try:
        buses = endpoints(fleet)

        async def run():
            raw = await bench_pymodbus(buses, block, args.seconds)
            conv = await bench_pymodbus(buses, block, args.seconds, plan)
            read = await bench_meterd(buses, plan, regmap, args.seconds, full_poll=False)
            poll = await bench_meterd(buses, plan, regmap, args.seconds, full_poll=True)
            return raw, conv, read, poll

        (n_raw, t_raw), (n_conv, t_conv), (n_read, t_read), (n_poll, t_poll) = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait()
    raw, conv, read, poll = n_raw / t_raw, n_conv / t_conv, n_read / t_read, n_poll / t_poll
    print(f"Modbus TCP, {len(buses)} bus(es) x {args.meters} meters (model {args.model}), "
          f"{args.seconds:g} s each, request FC03 {block.address} x{block.count} ({len(block.fields)} quantities)")
    print(f"  pymodbus client       {raw:9.0f} reads/s")
    print(f"  pymodbus + convert    {conv:9.0f} reads/s   ({len(plan.blocks)} request(s) per meter)")
    print(f"  meterd read_block     {read:9.0f} reads/s   overhead x{raw / read:.2f} (vs raw pymodbus)")
    print(f"  meterd poll (decoded) {poll:9.0f} reads/s   overhead x{conv / poll:.2f} (vs pymodbus + convert)")


if __name__ == "__main__":
    main()
