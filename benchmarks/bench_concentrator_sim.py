"""What the concentrator simulator costs: collections, answers, and a fleet over TCP.

1. ``collect``: one :class:`~meterd.simulators.gdw_terminal.Gdw1376Terminal` with ``--meters``
   meters collects on its quarter-hour grid (11 DL/T 645 reads per meter through its bus, real
   frames both ways): CPU per meter per collection.
2. ``answer``: the same terminal answers AFN 0C F129 for all its points (8 per data unit, 4 units
   per request, through the codec both ways): requests per second.
3. ``fleet``: ``--terminals`` concentrators of ``--meters`` meters dial in to a master written here
   with the codec (in this process, one event loop with them): time until all are logged in, then
   F129 requests (all points of one terminal each) answered per second over TCP, one request in
   flight per terminal.

Prints numbers; not a pass/fail test.

    python benchmarks/bench_concentrator_sim.py [--terminals 500] [--meters 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timedelta

from meterd.protocols.gdw1376.frame import Afn, StreamDecoder, TerminalAddress, decode_frame, encode_frame
from meterd.protocols.gdw1376.messages import DataUnit, decode_message, encode_request, link_confirm
from meterd.simulators.concentrator import run_concentrator_fleet
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.gdw_terminal import Gdw1376Terminal
from meterd.simulators.model import MeterModel

START = datetime(2025, 6, 1, 8, 0)


def units_for(meters: int) -> list[DataUnit]:
    return [DataUnit(tuple(range(g + 1, min(g + 8, meters) + 1)), (129,)) for g in range(0, meters, 8)]


def bench_collect(meters: int) -> None:
    bus = Dlt645Bus([MeterModel(f"{i:012d}", start=START, seed=i) for i in range(1, meters + 1)])
    terminal = Gdw1376Terminal(TerminalAddress("4401", 1), bus, start=START)
    terminal.advance(START)
    rounds = 20
    t0 = time.process_time()
    for n in range(1, rounds + 1):
        terminal.advance(START + timedelta(minutes=15 * n))
    cpu = time.process_time() - t0
    print(f"collect: {meters} meters x {rounds} collections: {cpu / rounds * 1000:.1f} ms CPU per collection, "
          f"{cpu / rounds / meters * 1e6:.0f} us per meter ({terminal.stats.meter_reads} DL/T 645 reads)")

    request = encode_request(terminal.address, Afn.CLASS1_DATA, units_for(meters), seq=1)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        msg = decode_message(decode_frame(request))
        for frame in terminal.handle(msg, START + timedelta(minutes=20 * 15)):
            decode_message(decode_frame(encode_frame(frame)))
    dt = time.perf_counter() - t0
    print(f"answer: AFN 0C F129 of {meters} points, through the codec both ways: {n / dt:,.0f} requests/s "
          f"({n * meters / dt:,.0f} points/s)")


async def bench_fleet(terminals: int, meters: int, seconds: float) -> None:
    writers: dict[str, asyncio.StreamWriter] = {}
    answers: dict[str, asyncio.Queue[None]] = {}

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = StreamDecoder()
        while data := await reader.read(65536):
            decoder.feed(data)
            for frame in decoder.frames():
                key = frame.address.key
                if frame.afn == Afn.LINK:
                    writer.write(link_confirm(decode_message(frame)))
                    writers[key] = writer
                    answers.setdefault(key, asyncio.Queue())
                elif frame.fin:
                    answers[key].put_nowait(None)

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t0 = time.perf_counter()
    fleet = await run_concentrator_fleet(terminals, meters, "127.0.0.1", port, start=START, heartbeat=None,
                                         reconnect_delay=0.2)
    async with fleet:
        ok = await fleet.wait_logged_in(120)
        print(f"fleet: {terminals} concentrators x {meters} meters logged in: {ok}, "
              f"{time.perf_counter() - t0:.1f} s after the start")
        t1 = time.perf_counter()
        while not all(c.terminal.stats.collections for c in fleet.concentrators):  # the first collections
            await asyncio.sleep(0.1)
        collected = [c.terminal.stats for c in fleet.concentrators]
        print(f"fleet: first collections of all {terminals * meters} meters done {time.perf_counter() - t1:.1f} s "
              f"after the last login ({sum(s.meter_reads for s in collected)} DL/T 645 reads, one terminal at a time)")

        done = 0
        stop = time.perf_counter() + seconds

        async def ask(key: str) -> None:
            nonlocal done
            address = TerminalAddress(key[:4], int(key[5:], 16))
            seq = 0
            while time.perf_counter() < stop:
                seq = (seq + 1) & 0x0F
                writers[key].write(encode_request(address, Afn.CLASS1_DATA, units_for(meters), seq=seq))
                await answers[key].get()
                done += 1

        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(ask(key) for key in list(writers)))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(f"fleet: {done / wall:,.0f} F129 requests/s over TCP ({done * meters / wall:,.0f} points/s), "
              f"{cpu / done * 1e6:.0f} us CPU per request (master and simulators in one process)")
    server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--terminals", type=int, default=500)
    p.add_argument("--meters", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    bench_collect(args.meters)
    asyncio.run(bench_fleet(args.terminals, args.meters, args.seconds))


if __name__ == "__main__":
    main()
