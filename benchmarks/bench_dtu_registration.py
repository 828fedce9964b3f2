"""What the DTU registration handling of issue #17 costs: per-read stripping on a registered
connection, the known-registration lookup with many terminals, registering many DTUs over TCP, and
the worst a peer can make the listener spend before it is refused.

* feed: :class:`~meterd.protocols.terminal.dtu.DtuStream` per read of a 20-byte DL/T 645 reply --
  plain (``usr-ascii``), with the registration in front ("with data"), and three packets merged in
  one read; beside it the heartbeat strip alone (what a read cost before);
* lookup: :class:`~meterd.protocols.terminal.dtu.KnownRegistrations` built for N terminals in
  three formats, and one lookup of a registration followed by data;
* register: N simulated DTUs (usr-ascii, usr-mac, with-data) connecting at once to one listener
  over loopback, until all are online;
* garbage: one connection sending 1 KiB reads of text/binary mixed noise (the worst case for the
  hunting) until the listener closes it; CPU of the listener's event loop for that connection.

Prints numbers; not a pass/fail test.

    python benchmarks/bench_dtu_registration.py [--terminals 10000] [--dtus 500]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from datetime import datetime

from meterd.collector.dtu import DtuListener
from meterd.protocols.terminal.dtu import HEX_FRAME, USR_ASCII, USR_MAC, DtuFormat, DtuStream, KnownRegistrations
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.dtu import DtuSimulator
from meterd.simulators.model import MeterModel

REPLY = bytes.fromhex("68 01 00 00 00 00 00 68 91 08 33 33 34 33 89 67 45 33 9F 16")
WITH_DATA = DtuFormat.from_dict("usr-data", {"preset": "usr-ascii", "data_carries_registration": True})


def per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bench_feed(n: int) -> None:
    plain = DtuStream(USR_ASCII, "DTU00000001")
    data = DtuStream(WITH_DATA, "DTU00000001")
    reg = b"DTU00000001"
    merged = reg + REPLY[:7] + reg + REPLY[7:14] + reg + REPLY[14:]
    print(f"feed, per read (us): heartbeat strip alone {per_call(lambda: USR_ASCII.strip_heartbeats(REPLY), n):.2f}"
          f" | plain {per_call(lambda: plain.feed(REPLY), n):.2f}"
          f" | with data {per_call(lambda: data.feed(reg + REPLY), n):.2f}"
          f" | with data, 3 packets merged {per_call(lambda: data.feed(merged), n):.2f}")


def bench_lookup(terminals: int) -> None:
    ids = [f"{861234500000000 + i}" for i in range(terminals)]
    macs = [f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(terminals)]
    t0 = time.perf_counter()
    known = KnownRegistrations([USR_ASCII, USR_MAC, HEX_FRAME], ids + macs)
    built = time.perf_counter() - t0
    probe = ids[terminals // 2].encode() + REPLY
    miss = b"\x00\xff" + REPLY
    print(f"lookup, {2 * terminals} terminals x 3 formats: built in {built:.2f} s, match {per_call(lambda: known.match(probe), 20000):.2f} us,"
          f" miss {per_call(lambda: known.match(miss), 20000):.2f} us,"
          f" incomplete {per_call(lambda: known.incomplete(probe[:7]), 20000):.2f} us")


async def bench_register(dtus: int) -> None:
    start = datetime(2025, 6, 1, 8, 0)
    kinds = [("usr-ascii", lambda i: f"DTU{i:08d}", {}), ("usr-mac", lambda i: f"02:00:00:00:{i >> 8 & 255:02x}:{i & 255:02x}", {}),
             (WITH_DATA, lambda i: f"{861234500000000 + i}", {"with_data": True})]
    specs = [(kinds[i % 3][0], kinds[i % 3][1](i), kinds[i % 3][2]) for i in range(dtus)]
    known = {tid: f"ch{i}" for i, (_, tid, _) in enumerate(specs)}
    listener = DtuListener("127.0.0.1", 0, known=known, formats=(WITH_DATA, "usr-ascii", "usr-mac"),
                           registration_timeout=60)
    await listener.start()
    sims = [DtuSimulator(tid, Dlt645Bus([MeterModel(f"{i + 1:012d}", start=start)]), "127.0.0.1",
                         listener.bound_port, fmt, heartbeat=None, tick=None, **kw)
            for i, (fmt, tid, kw) in enumerate(specs)]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(s.start() for s in sims))
    while listener.status()["online"] < dtus:
        await asyncio.sleep(0.01)
    took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"register: {dtus} DTUs (usr-ascii / usr-mac / with data) online in {took:.2f} s, "
          f"{cpu / dtus * 1e3:.2f} ms CPU per DTU (listener and simulators in one process)")
    await asyncio.gather(*(s.close() for s in sims))
    await listener.close()


async def bench_garbage() -> None:
    listener = DtuListener("127.0.0.1", 0, known={"DTU00000001": "c"}, formats=("usr-ascii", "hex-frame"),
                           registration_timeout=60)
    await listener.start()
    noise = (b"\x00A" * 512)  # text and binary alternating: every byte pair a place to hunt from
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
    cpu0, t0, sent = time.process_time(), time.perf_counter(), 0
    try:
        while not reader.at_eof() and sent < 2**24:
            writer.write(noise)
            await writer.drain()
            sent += len(noise)
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    writer.close()
    refused = {k: v for k, v in listener.status()["rejected"].items() if v}
    print(f"garbage: closed after {sent} bytes sent, {took * 1e3:.1f} ms, {cpu * 1e3:.1f} ms CPU "
          f"(sender and listener), rejected {refused}")
    await listener.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--terminals", type=int, default=10000)
    ap.add_argument("--dtus", type=int, default=500)
    ap.add_argument("--reads", type=int, default=200000)
    args = ap.parse_args()
    logging.getLogger("meterd").setLevel(logging.ERROR)  # the listener's warnings are the point, not the output
    bench_feed(args.reads)
    bench_lookup(args.terminals)
    asyncio.run(bench_register(args.dtus))
    asyncio.run(bench_garbage())


if __name__ == "__main__":
    main()
