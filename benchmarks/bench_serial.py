"""Serial polling against the wire limit: one pty bus, the simulator honouring 2400-baud 8E1 wire
time and a 20 ms meter turnaround.  The achievable rate is bounded by the wire, not by code:
limit = 1 / (request wire time + turnaround + reply wire time).  Prints the share reached.

    python benchmarks/bench_serial.py [--seconds 10] [--baud 2400]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime

from meterd.collector.channel import Channel, Timing
from meterd.collector.transports import SerialTransport
from meterd.protocols.dlt645.frame import PREAMBLE, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import LineSettings, SimClock, serve_pty

TURNAROUND = 0.020
ADDRESS = "000000000001"


async def bench(seconds: float, baud: int) -> None:
    clock = SimClock.starting()
    bus = Dlt645Bus([MeterModel(ADDRESS, start=clock.start, seed=1)])
    running = await serve_pty(bus, baud=baud, wire_time=True, turnaround=TURNAROUND, clock=clock)
    request = encode_request(ReadRequest(ADDRESS, 0x00010000))
    channel = Channel("bench", SerialTransport("bench", running.endpoint, baud=baud),
                      timing=Timing(2.0, 0.5), retries=0, preamble=4)
    try:
        reply = await channel.transact(request)  # warm up, and measure the reply length
        assert reply is not None
        req_len = len(encode_frame(request, preamble=PREAMBLE))
        rep_len = len(PREAMBLE) + len(encode_frame(reply))
        line = LineSettings(baud=baud)
        per_read = line.wire_time(req_len) + TURNAROUND + line.wire_time(rep_len)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await channel.transact(request)
            n += 1
        elapsed = time.perf_counter() - t0
    finally:
        await channel.close()
        await running.close()
    achieved = n / elapsed
    limit = 1 / per_read
    print(f"serial pty bus at {baud} 8E1 ({line.bits_per_byte:g} bits/byte), turnaround {TURNAROUND * 1000:g} ms, "
          f"request {req_len} B, reply {rep_len} B")
    print(f"  reads            {n} in {elapsed:.2f} s")
    print(f"  achieved         {achieved:.2f} reads/s")
    print(f"  wire limit       {limit:.2f} reads/s")
    print(f"  share of limit   {100 * achieved / limit:.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--baud", type=int, default=2400)
    args = ap.parse_args()
    asyncio.run(bench(args.seconds, args.baud))


if __name__ == "__main__":
    main()
