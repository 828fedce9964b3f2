"""Serial polling against the wire limit.

A bus's wire limit is what its line allows and no code can beat: one read takes the request's
wire time, the meter's turnaround and the reply's wire time, back to back (2400 baud 8E1: 11 bits
a byte, 4.58 ms; a 20-byte request, 20 ms, a 20-byte reply: ~203 ms).  The share of the limit a
bus reaches is the time its reads would take on the wire over the time they took; what is lost
is the gaps: the master reacting late to a reply, its next request written late, timers firing
late.  The pty simulator times the wire (``meterd simulate --pty``, see
:mod:`meterd.simulators.serve`), so this is measured on ptys as on real RS-485.

Two ways to run:

``--buses N`` (default 256): the daemon against ``meterd simulate --pty N`` (one DL/T 645 meter a
bus, its own process(es)), on the site config the simulator writes (a serial channel per bus, one
poll every ``--interval``, 100 ms, of two quantities: the buses never rest).  The daemon
(:class:`~meterd.collector.daemon.Daemon`) runs in this process, which raises its open-file limit
as ``meterd run`` does (256 pyserial ports are 1,280 descriptors).  After a warm-up it measures
each bus over ``--seconds`` from its channel's counters, reply to reply (successes between the
first and the last reply of the window and the time between them, so no read is cut in half),
and prints the share of the wire limit per bus (median, min, the worst buses), the buses that
collected nothing, failures, the daemon's CPU seconds and CPU per read, the simulator's CPU and
the machine's load (other programs on the machine make the figures noisy: compare CPU seconds).

``--single``: one bus, the simulator in this process, a channel reading back to back.

    python benchmarks/bench_serial.py [--buses 256] [--seconds 20] [--warmup 5] [--baud 2400]
    python benchmarks/bench_serial.py --single [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from meterd.cli.run import raise_nofile_limit
from meterd.collector.channel import Channel, Timing
from meterd.collector.daemon import Daemon
from meterd.collector.transports import SerialTransport
from meterd.config.loader import load_config
from meterd.heap import settle_heap
from meterd.protocols.dlt645.frame import PREAMBLE, encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, encode_request
from meterd.simulators.dlt645 import Dlt645Bus
from meterd.simulators.model import MeterModel
from meterd.simulators.serve import LineSettings, SimClock, serve_pty
from meterd.storage.sqlite import SqliteStore

TURNAROUND = 0.020
ADDRESS = "000000000001"
TICK = os.sysconf("SC_CLK_TCK")
QUANTITIES = "energy.active.import.total,voltage.a"


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (a simulator's helper processes)."""
    total, pids = 0.0, [pid]
    while pids:
        p = pids.pop()
        try:
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


PROBE = """
import sys, time
late, end = [], time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t = time.monotonic(); time.sleep(0.002); late.append(time.monotonic() - t - 0.002)
late.sort()
print(" ".join(f"{late[int(q * (len(late) - 1))] * 1000:.2f}" for q in (0.5, 0.9, 0.99)))
"""


def read_wire_time(line: LineSettings, turnaround: float, preamble: int, item: int) -> float:
    """One read of ``item`` on the wire: request (with the channel's preamble), turnaround, reply
    (as the simulator sends it, FE preamble included)."""
    request = encode_request(ReadRequest(ADDRESS, item))
    start = datetime(2025, 6, 1, 8, 0)
    bus = Dlt645Bus([MeterModel(ADDRESS, start=start, seed=1)])
    [reply] = bus.handle(encode_frame(request), start)
    return line.wire_time(len(encode_frame(request, preamble=PREAMBLE[:preamble])) + len(reply.data)) + turnaround


# --- one bus, in process ---------------------------------------------------------------------------


async def bench_single(seconds: float, baud: int) -> None:
    clock = SimClock.starting()
    bus = Dlt645Bus([MeterModel(ADDRESS, start=clock.start, seed=1)])
    running = await serve_pty(bus, baud=baud, wire_time=True, turnaround=TURNAROUND, clock=clock)
    request = encode_request(ReadRequest(ADDRESS, 0x00010000))
    channel = Channel("bench", SerialTransport("bench", running.endpoint, baud=baud),
                      timing=Timing(2.0, 0.5), retries=0, preamble=4)
    line = LineSettings(baud=baud)
    try:
        reply = await channel.transact(request)  # warm up
        assert reply is not None
        per_read = read_wire_time(line, TURNAROUND, 4, 0x00010000)
        n = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await channel.transact(request)
            n += 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await channel.close()
        await running.close()
    achieved, limit = n / elapsed, 1 / per_read
    print(f"one serial pty bus at {baud} 8E1, turnaround {TURNAROUND * 1000:g} ms, simulator in this process")
    print(f"  reads            {n} in {elapsed:.2f} s; CPU {cpu:.2f} s (master + simulator)")
    print(f"  achieved         {achieved:.2f} reads/s; wire limit {limit:.2f} reads/s")
    print(f"  share of limit   {100 * achieved / limit:.1f} %")


# --- a fleet of buses, the daemon in this process ----------------------------------------------------


def start_simulator(args: argparse.Namespace, workdir: Path, index: int, buses: int,
                    first: int) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "simulate",
           "--pty", str(buses), "--meters-per-bus", "1", "--first-address", f"{first:012d}", "--baud", str(args.baud),
           "--turnaround", f"{args.turnaround * 1000:g}", "--write-config", str(workdir / f"site{index}.toml"),
           "--data-dir", str(workdir / "data"), "--poll-interval", f"{args.interval:g}",
           "--poll-quantities", QUANTITIES, "--json"]
    log_path = workdir / f"simulator{index}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(120):
            proc.kill()
            raise SystemExit("the simulator printed no document within 120 s")
    text = ""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"simulator exited: {proc.wait()}: {log_path.read_text()[-2000:]}")
        text += line
        try:
            return proc, json.loads(text)
        except json.JSONDecodeError:
            continue


def merged_config(workdir: Path, parts: int) -> Path:
    """One site config from the ones each simulator process wrote: the first one's store and poll,
    every process's channels and meters (channel ``ptyN`` of process i renamed ``s<i>-ptyN``)."""
    if parts == 1:
        return workdir / "site0.toml"
    head: list[str] = []
    buses: list[str] = []
    tail: list[str] = []
    for i in range(parts):
        text = (workdir / f"site{i}.toml").read_text()
        text = re.sub(r'(\[channels\.|channel = "|group = ")(pty\d+)', rf"\1s{i}-\2", text)
        sections = re.split(r"(?m)^(?=\[)", text)
        for section in sections:
            if section.startswith(("[channels.", "[[meters]]")):
                buses.append(section)
            elif i == 0 and section.startswith("[[polls]]"):
                tail.append(section)
            elif i == 0:
                head.append(section)
    path = workdir / "site.toml"
    path.write_text("".join(head + buses + tail))
    return path


async def bench_fleet(args: argparse.Namespace, config_path: Path, sim_pids: list[int]) -> dict:
    config = load_config(config_path)
    line = LineSettings(baud=args.baud)
    per_read = {c.name: c.preamble for c in config.channels}
    wire = {p: statistics.fmean(read_wire_time(line, args.turnaround, p, item) for item in (0x00010000, 0x02010100))
            for p in set(per_read.values())}
    with SqliteStore(config.store.data_dir) as store:
        daemon = Daemon(config, store)
        settle_heap()
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await asyncio.sleep(args.warmup)
            before = {f.name: f for f in daemon.channel_figures()}
            cpu0, sim0 = time.process_time(), sum(tree_cpu_seconds(p) for p in sim_pids)
            busy0, t0 = machine_busy(), time.perf_counter()
            load0 = os.getloadavg()
            # how late an idle process on this machine wakes from a 2 ms sleep meanwhile: the part of
            # every gap no code of ours can remove (other programs holding the cores)
            probe = subprocess.Popen([sys.executable, "-c", PROBE, str(args.seconds)], stdout=subprocess.PIPE,  # noqa: ASYNC220
                                     text=True)
            profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not wall time
            if profiler:
                profiler.enable()
            await asyncio.sleep(args.seconds)
            if profiler:
                profiler.disable()
            after = {f.name: f for f in daemon.channel_figures()}
            cpu, sim = time.process_time() - cpu0, sum(tree_cpu_seconds(p) for p in sim_pids) - sim0
            busy1, elapsed, load1 = machine_busy(), time.perf_counter() - t0, os.getloadavg()
            wake = probe.communicate()[0].split()
        finally:
            stop.set()
            await task
    shares: dict[str, float] = {}
    failures: dict[str, int] = {}
    reads = 0
    latency = 0.0
    for name, f1 in after.items():
        f0 = before[name]
        n = f1.successes - f0.successes
        reads += n
        latency += f1.latency_total - f0.latency_total
        for kind, count in f1.failures:
            failures[kind] = failures.get(kind, 0) + count - dict(f0.failures).get(kind, 0)
        if n and f0.last_success is not None and f1.last_success is not None and f1.last_success > f0.last_success:
            shares[name] = n * wire[per_read[name]] / (f1.last_success - f0.last_success)
        else:
            shares[name] = 0.0
    return {"shares": shares, "failures": {k: v for k, v in failures.items() if v}, "reads": reads,
            "elapsed": elapsed, "cpu": cpu, "sim_cpu": sim, "latency": latency / max(1, reads),
            "wire": statistics.fmean(wire.values()), "load": (load0, load1),
            "machine": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), "profile": profiler,
            "wake": wake}


def run_fleet(args: argparse.Namespace) -> None:
    soft, hard = raise_nofile_limit()  # as `meterd run` does at start
    workdir = Path(tempfile.mkdtemp(prefix="bench-serial-"))
    sims: list[subprocess.Popen] = []
    try:
        per, extra = divmod(args.buses, args.sim_processes)
        first = 1
        for i in range(args.sim_processes):
            n = per + (i < extra)
            sim, _doc = start_simulator(args, workdir, i, n, first)
            sims.append(sim)
            first += n
        r = asyncio.run(bench_fleet(args, merged_config(workdir, args.sim_processes), [s.pid for s in sims]))
    finally:
        for sim in sims:
            sim.send_signal(signal.SIGTERM)
        for sim in sims:
            try:
                sim.wait(60)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    shares = sorted(r["shares"].items(), key=lambda kv: kv[1])
    values = [v for _, v in shares]
    dead = [name for name, v in shares if v == 0.0]
    print(f"{args.buses} serial pty buses at {args.baud} 8E1, 1 meter each, turnaround {args.turnaround * 1000:g} ms, "
          f"poll every {args.interval:g} s of {QUANTITIES} (the buses never rest); open-file limit {soft} (hard {hard})")
    print(f"  wire time a read {r['wire'] * 1000:.1f} ms (request + turnaround + reply); mean latency "
          f"{r['latency'] * 1000:.1f} ms (request written -> reply complete)")
    print(f"  window           {r['elapsed']:.1f} s after {args.warmup:g} s warm-up; {r['reads']} reads "
          f"({r['reads'] / r['elapsed']:.0f}/s)")
    print(f"  share of wire    median {100 * statistics.median(values):.1f} %  min {100 * values[0]:.1f} %  "
          f"p10 {100 * values[len(values) // 10]:.1f} %  max {100 * values[-1]:.1f} %")
    print("  worst buses      " + ", ".join(f"{n} {100 * v:.1f} %" for n, v in shares[:5]))
    print(f"  buses below 97 % {sum(v < 0.97 for v in values)}; collected nothing {len(dead)}"
          + (f" ({', '.join(dead[:8])}{' ...' if len(dead) > 8 else ''})" if dead else ""))
    print(f"  failed attempts  {sum(r['failures'].values())} {r['failures'] or ''}")
    print(f"  daemon CPU       {r['cpu']:.2f} s in the window ({100 * r['cpu'] / r['elapsed']:.0f} % of a core), "
          f"{r['cpu'] / max(1, r['reads']) * 1e6:.0f} us a read")
    print(f"  simulator CPU    {r['sim_cpu']:.2f} s ({100 * r['sim_cpu'] / r['elapsed']:.0f} % of a core) in "
          f"{args.sim_processes} process{'es' if args.sim_processes > 1 else ''}")
    print(f"  machine          {100 * r['machine']:.0f} % busy (all cores) during the window; load average "
          f"{r['load'][0][0]:.2f} -> {r['load'][1][0]:.2f} on {os.cpu_count()} CPUs")
    if len(r["wake"]) == 3:
        print(f"  scheduling       an idle process's 2 ms sleep wakes late by {r['wake'][0]} ms median, "
              f"{r['wake'][1]} ms p90, {r['wake'][2]} ms p99 (0.1 ms on a quiet machine)")
    if r["profile"]:
        pstats.Stats(r["profile"]).sort_stats("tottime").print_stats(args.profile)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single", action="store_true", help="one bus, the simulator in this process")
    ap.add_argument("--buses", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring window (default 20)")
    ap.add_argument("--warmup", type=float, default=5.0, help="after start (default 5)")
    ap.add_argument("--interval", type=float, default=0.1, help="poll interval, s (default 0.1)")
    ap.add_argument("--baud", type=int, default=2400)
    ap.add_argument("--turnaround", type=float, default=TURNAROUND, help="meter turnaround, s (default 0.02)")
    ap.add_argument("--sim-processes", type=int, default=1, metavar="K",
                    help="run the buses in K `meterd simulate` processes (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="cProfile the daemon's CPU in the window, print the top N (slows it down)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.single:
        asyncio.run(bench_single(args.seconds, args.baud))
    else:
        run_fleet(args)


if __name__ == "__main__":
    main()
