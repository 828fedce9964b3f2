"""Collection throughput over TCP: reads per second, 100 meters on 20 channels, one process.

The simulated meters run in a second process (``meterd simulate``) with no turnaround delay, so
the figure is the master's own cost per read: encode, write, wait, decode, catalogue, reading.
Every read is one DL/T 645 request/reply of one identifier.  Prints numbers; not a pass/fail test.

``--in-process`` leaves the sockets and the simulator out: each channel's transport answers every
request at once with the reply a simulated meter gave to it the first time (worked out before the
clock starts), and the rounds' readings and attempts go through the batching writer into a SQLite
store in a temporary folder, as the daemon's do.  What is left is the master's own CPU per read --
codec, channel, round bookkeeping, readings, store writes -- measured in CPU time
(``time.process_time``, all threads), steady enough on a busy machine, and exact under
``valgrind --tool=callgrind`` (``--rounds`` fixes the work; with ``--callgrind`` the counters are
zeroed before the measured rounds and dumped after them, so instructions per read are the dump's
total over the reads, start-up left out).

    python benchmarks/bench_collect.py [--channels 20] [--meters 5] [--seconds 10]
    python benchmarks/bench_collect.py --in-process [--channels 20] [--meters 5] [--rounds 200]
    valgrind --tool=callgrind python benchmarks/bench_collect.py --in-process --callgrind --rounds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

from meterd.collector.channel import Channel, Timing
from meterd.collector.poll import MeterTarget, poll_round
from meterd.collector.transports import TcpTransport
from meterd.collector.transports.base import Transport
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.storage.sqlite import SqliteStore
from meterd.storage.writer import BatchWriter

ITEMS = [0x00010000, 0x02010100, 0x02020100, 0x02030000, 0x04000503]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulators(channels: int, meters: int) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "simulate", "--pty", "0",
           "--tcp-buses", str(channels), "--meters-per-bus", str(meters), "--no-wire-time",
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


async def bench(fleet: dict, seconds: float) -> tuple[int, int, float, list[Channel]]:
    channels = []
    for i, bus in enumerate(fleet["buses"]):
        host, _, port = bus["endpoint"].rpartition(":")
        ch = Channel(f"ch{i}", TcpTransport(f"ch{i}", host, int(port)), timing=Timing(2.0, 0.5), retries=0,
                     preamble=4)
        channels.append((ch, [MeterTarget(a) for a in bus["meters"]]))
    reads = 0
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def worker(ch, meters):
        nonlocal reads, failures
        while time.perf_counter() < stop_at:
            result = await poll_round(ch, meters, ITEMS, datetime.now(timezone.utc))
            reads += len(result.attempts)
            failures += len(result.failures)

    # warm up (connect) outside the timed window
    await asyncio.gather(*(poll_round(ch, m[:1], ITEMS[:1], datetime.now(timezone.utc)) for ch, m in channels))
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker(ch, m) for ch, m in channels))
    elapsed = time.perf_counter() - t0
    for ch, _ in channels:
        await ch.close()
    return reads, failures, elapsed, [c for c, _ in channels]


class CannedTransport(Transport):
    """Answers each request at once with the reply the simulated bus gave to it first."""

    def __init__(self, name: str, bus: Dlt645Bus, now: datetime) -> None:
        super().__init__(name)
        self.bus = bus
        self.now = now
        self.replies: dict[bytes, bytes] = {}

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def write(self, data: bytes) -> None:
        reply = self.replies.get(data)
        if reply is None:
            reply = self.replies[data] = b"".join(r.data for r in self.bus.handle(data, self.now))
        self._received(reply)

    async def close(self) -> None:
        pass


def callgrind(*command: str, pid: int | None = None) -> None:
    """``callgrind_control`` on this process, or on ``pid`` (run under ``valgrind --tool=callgrind``)."""
    subprocess.run(["callgrind_control", *command, str(os.getpid() if pid is None else pid)], check=False,
                   capture_output=True)


async def bench_in_process(channels: int, meters: int, rounds: int, count: bool = False) -> None:
    now = datetime(2025, 6, 1, 10, 0, tzinfo=timezone.utc)
    fleet = []
    for c in range(channels):
        addresses = [f"{c + 1:06d}{m + 1:06d}" for m in range(meters)]
        bus = Dlt645Bus([MeterModel(a, start=now.replace(tzinfo=None), seed=c * 1000 + m)
                         for m, a in enumerate(addresses)], seed=c)
        ch = Channel(f"ch{c}", CannedTransport(f"ch{c}", bus, now.replace(tzinfo=None)), timing=Timing(2.0, 0.5),
                     retries=0, preamble=4)
        fleet.append((ch, [MeterTarget(a) for a in addresses]))
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp, SqliteStore(tmp) as store:
        writer = BatchWriter(store)
        writer.start()

        async def worker(ch: Channel, targets: list[MeterTarget], n: int) -> int:
            reads = 0
            for r in range(n):
                result = await poll_round(ch, targets, ITEMS, now + timedelta(seconds=r))
                writer.add_many(result.readings)
                writer.add_attempts(result.attempts)
                reads += len(result.attempts)
            return reads

        await asyncio.gather(*(worker(ch, t, 1) for ch, t in fleet))  # replies worked out, caches warm
        await writer.flush()
        if count:
            callgrind("-z")
        t0, cpu0 = time.perf_counter(), time.process_time()
        reads = sum(await asyncio.gather(*(worker(ch, t, rounds) for ch, t in fleet)))
        await writer.close()
        cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
        if count:
            callgrind("-d", "window")
        failures = sum(sum(ch.stats.failures.values()) for ch, _ in fleet)
    print(f"in-process collection: {channels} channels x {meters} meters x {len(ITEMS)} identifiers, {rounds} rounds, "
          "canned replies, readings and attempts through the writer into SQLite")
    print(f"  reads            {reads} ({failures} failed); {writer.written} readings, "
          f"{writer.attempts_written} attempts written")
    print(f"  CPU per read     {1e6 * cpu / reads:.1f} us (all threads: rounds, writer, SQLite)")
    print(f"  wall             {elapsed:.2f} s, {reads / elapsed:,.0f} reads/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--meters", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--in-process", action="store_true", help="no sockets, no simulator process (see above)")
    ap.add_argument("--rounds", type=int, default=200, help="rounds per channel with --in-process")
    ap.add_argument("--callgrind", action="store_true",
                    help="with --in-process under valgrind --tool=callgrind: zero the counters before the measured "
                         "rounds and dump them after (instructions per read = the dump's total / reads)")
    args = ap.parse_args()
    if args.in_process:
        asyncio.run(bench_in_process(args.channels, args.meters, args.rounds, args.callgrind))
        return
    proc, fleet = start_simulators(args.channels, args.meters)
    try:
        sim0, own0 = cpu_seconds(proc.pid), time.process_time()
        reads, failures, elapsed, channels = asyncio.run(bench(fleet, args.seconds))
        sim_cpu, own_cpu = cpu_seconds(proc.pid) - sim0, time.process_time() - own0
    finally:
        proc.terminate()
        proc.wait(10)
    lat = [c.stats.latency_mean for c in channels]
    print(f"TCP collection: {args.channels} channels x {args.meters} meters, {len(ITEMS)} identifiers per meter")
    print(f"  reads            {reads}")
    print(f"  failures         {failures}")
    print(f"  elapsed          {elapsed:.2f} s")
    print(f"  reads/s          {reads / elapsed:,.0f}")
    print(f"  mean latency     {1000 * sum(lat) / len(lat):.3f} ms per read (per channel, incl. simulator)")
    if reads:
        print(f"  CPU per read     master {1e6 * own_cpu / reads:.1f} us, simulator {1e6 * sim_cpu / reads:.1f} us "
              "(the two share the machine's cores)")


if __name__ == "__main__":
    main()
