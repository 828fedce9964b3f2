"""The daemon against a fleet of terminals: 500 GPRS DTUs and 500 MQTT terminals with 10 meters
each (10,000 meters), every meter read by one poll.

A Mosquitto broker (``tests/mosquitto.py``) and the fleet (``meterd simulate --dtus ...
--mqtt-terminals ... --write-config``, zero wire delay) run in their own processes; the daemon
(:class:`~meterd.collector.daemon.Daemon`) runs in this one, on the site config the simulator
wrote, with the SQLite store in a temporary folder.  After every DTU and terminal is online and a
warm-up, it counts for ``--seconds``:

* reads/s: successful attempts (one request/reply of one identifier) per second;
* latency p50/p95/p99 of those attempts (``Attempt.latency``: request sent -> whole reply, as the
  channel measures it, so it includes the broker / DTU hop and the simulator, not a round's queue);
* readings/s the batching writer handed to the store, and how many were queued (at the end, and
  the most seen at a look once a second), and the share of the window the writer spent writing:
  a queue that grows, or a writer busy near 100%, means it falls behind;
* the daemon's RSS (``VmRSS``, and its peak ``VmHWM``), and CPU seconds of the daemon, the
  simulator and the broker over the window (a 2-core machine runs all three), and the daemon's per
  read split by thread (the event loop, the store writer) into user and system (kernel) time: over
  loopback a send runs the receiving side's TCP work too, so the system share is larger than it
  would be against terminals on a network.

Targets: >= 5,000 reads/s, RSS < 500 MiB for the 10,000-meter fleet.  Prints numbers; not a
pass/fail test.  ``--profile N`` runs cProfile over the daemon's thread during the window and
prints the top N functions (it slows the daemon down; take the rates from a run without it).

    python benchmarks/bench_terminals.py [--dtus 500] [--mqtt-terminals 500] [--meters 10]
        [--seconds 30] [--interval 2] [--quantities energy.active.import.total,voltage.a]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from statistics import quantiles

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from meterd.collector.daemon import Daemon
from meterd.collector.poll import RoundResult
from meterd.config.loader import load_config
from meterd.heap import settle_heap
from meterd.storage.sqlite import SqliteStore
from mosquitto import Mosquitto

MIB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free port below the kernel's ephemeral range: the simulator's thousand outgoing
    connections (DTU dials, MQTT terminals) take ephemeral ports, and one of them can grab a port
    picked from that range before the daemon listens on it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    ports = list(range(low - 2000, low)) if low > 3024 else []
    random.shuffle(ports)  # two benchmarks at once do not pick the same one
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu() -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each thread of this process, by its Python thread name (the
    event loop's is ``MainThread``; the store writer runs in the loop's executor, ``asyncio_N``);
    threads Python did not start (SQLite, libc) are ``tid N``."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, tuple[float, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        name = names.get(int(task.name), f"tid {task.name}")
        user, system = out.get(name, (0.0, 0.0))
        out[name] = (user + int(fields[11]) / TICK, system + int(fields[12]) / TICK)
    return out


def percentiles(lat: list[float]) -> list[float]:
    return quantiles(lat, n=100, method="inclusive") if len(lat) >= 2 else [float("nan")] * 99


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the simulator's MQTT helper processes)."""
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def start_simulator(args: argparse.Namespace, workdir: Path, dtu_port: int, broker: int) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "simulate",
           "--dtus", str(args.dtus), "--mqtt-terminals", str(args.mqtt_terminals),
           "--meters-per-terminal", str(args.meters), "--dtu-connect", f"127.0.0.1:{dtu_port}",
           "--mqtt", f"127.0.0.1:{broker}", "--write-config", str(workdir / "site.toml"),
           "--data-dir", str(workdir / "data"), "--poll-interval", str(args.interval),
           "--poll-quantities", args.quantities, "--turnaround", "0", "--json"]
    if not args.dtus:
        cmd[cmd.index("--dtus"):cmd.index("--dtus") + 2] = []
        cmd[cmd.index("--dtu-connect"):cmd.index("--dtu-connect") + 2] = []
    if not args.mqtt_terminals:
        cmd[cmd.index("--mqtt-terminals"):cmd.index("--mqtt-terminals") + 2] = []
        cmd[cmd.index("--mqtt"):cmd.index("--mqtt") + 2] = []
    with open(workdir / "simulator.log", "w") as log:  # its counters at the end, warnings
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(120):
            proc.kill()
            raise SystemExit("the simulator printed no document within 120 s")
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"simulator exited: {proc.wait()}")
    return proc, json.loads(line)


class Counter:
    """Counts successful attempts and keeps their latencies while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.ok = 0
        self.failed: dict[str, int] = {}
        self.latency = array("d")
        self.by_kind: dict[str, array] = {"dtu": array("d"), "mqtt": array("d")}

    def __call__(self, result: RoundResult) -> None:
        if not self.on:
            return
        for a in result.attempts:
            if a.outcome == "ok":
                self.ok += 1
                if a.latency is not None:
                    self.latency.append(a.latency)
                    self.by_kind["dtu" if a.channel.startswith("DTU") else "mqtt"].append(a.latency)
            else:
                self.failed[a.outcome] = self.failed.get(a.outcome, 0) + 1


async def wait_online(daemon: Daemon, dtus: int, terminals: int, timeout: float) -> tuple[int, int, float]:
    started = time.monotonic()
    online_dtus = online_mqtt = 0
    while time.monotonic() - started < timeout:
        online_dtus = sum(s["online"] for s in daemon.listener_status().values())  # type: ignore[index]
        online_mqtt = sum(1 for v in daemon.hub.terminals.values() if v == "online") if daemon.hub else 0
        if online_dtus >= dtus and online_mqtt >= terminals:
            break
        await asyncio.sleep(0.5)
    return online_dtus, online_mqtt, time.monotonic() - started


async def bench(args: argparse.Namespace, config_path: Path, sim_pid: int, broker_pid: int) -> dict:
    config = load_config(config_path)
    counter = Counter()
    with SqliteStore(config.store.data_dir) as store:
        t_build = time.perf_counter()
        daemon = Daemon(config, store, on_round=counter)
        build = time.perf_counter() - t_build
        settle_heap()  # the benchmark owns the process and sets its GC policy, as `meterd run` does
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            online_dtus, online_mqtt, took = await wait_online(daemon, args.dtus, args.mqtt_terminals,
                                                               args.online_timeout)
            await asyncio.sleep(args.warmup)
            rss_samples = []
            pending_samples = []
            counter.on = True
            written0, attempts_w0 = daemon.writer.written, daemon.writer.attempts_written
            write_s0 = daemon.writer.write_seconds
            overruns0 = sum(s["overruns"] for s in daemon.stats().values())  # type: ignore[index]
            cpu0 = (cpu_seconds(), tree_cpu_seconds(sim_pid), cpu_seconds(broker_pid))
            threads0 = thread_cpu()
            busy0 = machine_busy()
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            if args.callgrind:  # the daemon runs under valgrind --tool=callgrind: count the window only
                subprocess.run(["callgrind_control", "-z", str(os.getpid())], check=False, capture_output=True)
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < args.seconds:
                rss_samples.append(proc_status()["VmRSS"])
                pending_samples.append(daemon.writer.pending)
                await asyncio.sleep(min(1.0, args.seconds - elapsed))
            elapsed = time.perf_counter() - t0
            if args.callgrind:
                subprocess.run(["callgrind_control", "-d", "window", str(os.getpid())], check=False,
                               capture_output=True)
            if profiler:
                profiler.disable()
            counter.on = False
            cpu1 = (cpu_seconds(), tree_cpu_seconds(sim_pid), cpu_seconds(broker_pid))
            threads1 = thread_cpu()
            busy1 = machine_busy()
            written = daemon.writer.written - written0
            attempts_written = daemon.writer.attempts_written - attempts_w0
            write_s = daemon.writer.write_seconds - write_s0
            overruns = sum(s["overruns"] for s in daemon.stats().values()) - overruns0  # type: ignore[index]
            status = proc_status()
            pending = daemon.writer.pending
        finally:
            stop.set()
            await task
    lat = sorted(counter.latency)
    cuts = percentiles(lat)
    return {
        "kinds": {k: (len(v), percentiles(sorted(v))) for k, v in counter.by_kind.items() if v},
        "build_s": build, "online_dtus": online_dtus, "online_mqtt": online_mqtt, "online_after_s": took,
        "elapsed": elapsed, "ok": counter.ok, "failed": counter.failed, "written": written,
        "attempts_written": attempts_written, "write_s": write_s, "pending_at_end": pending,
        "pending_max": max(pending_samples, default=0), "overruns": overruns,
        "p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": lat[-1] if lat else float("nan"),
        "rss": status["VmRSS"], "hwm": status["VmHWM"], "rss_window_max": max(rss_samples),
        "cpu": [b - a for a, b in zip(cpu0, cpu1)], "profile": profiler,
        "threads": {name: (u - threads0.get(name, (0.0, 0.0))[0], k - threads0.get(name, (0.0, 0.0))[1])
                    for name, (u, k) in threads1.items()},
        "machine": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtus", type=int, default=500)
    ap.add_argument("--mqtt-terminals", type=int, default=500)
    ap.add_argument("--meters", type=int, default=10, help="meters per DTU / terminal (default 10)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measuring window (default 30)")
    ap.add_argument("--interval", type=float, default=2.0, help="poll interval, s (default 2)")
    ap.add_argument("--quantities", default="energy.active.import.total,voltage.a",
                    help="what the poll reads, one request each (default 2 quantities)")
    ap.add_argument("--warmup", type=float, default=5.0, help="after everything is online (default 5)")
    ap.add_argument("--online-timeout", type=float, default=90.0)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile the daemon, print top N")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--callgrind", action="store_true",
                    help="run under valgrind --tool=callgrind: zero the counters when the window opens and "
                         "dump them when it closes (instructions per read = the dump's total / reads; "
                         "exact on a busy machine; the daemon runs ~50x slower, so use a small fleet)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for name in ("meterd.collector.dtu", "meterd.collector.mqtt", "meterd.collector.channel"):
        logging.getLogger(name).setLevel(logging.ERROR)  # a line per terminal going on/offline, per late DTU
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the broker inherits it too
    except (ImportError, ValueError, OSError):
        pass

    workdir = Path(tempfile.mkdtemp(prefix="bench-terminals-"))
    broker = Mosquitto(workdir / "broker")
    broker.start()
    sim = None
    try:
        dtu_port = free_port()
        t = time.perf_counter()
        sim, doc = start_simulator(args, workdir, dtu_port, broker.port)
        sim_start = time.perf_counter() - t
        meters = sum(len(m) for part in ("dtus", "mqtt") if part in doc for m in doc[part]["terminals"].values())
        quantities = [q for q in args.quantities.split(",") if q]
        assert broker.proc is not None
        r = asyncio.run(bench(args, workdir / "site.toml", sim.pid, broker.proc.pid))
        sim_rss = proc_status(sim.pid)["VmRSS"]
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(60)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        broker.stop()
        sim_log = (workdir / "simulator.log").read_text() if (workdir / "simulator.log").exists() else ""
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    demand = meters * len(quantities) / args.interval
    reads = r["ok"] / r["elapsed"]
    cpu = r["cpu"]
    print(f"terminal fleet: {args.dtus} DTUs + {args.mqtt_terminals} MQTT terminals x {args.meters} meters = "
          f"{meters} meters; poll every {args.interval:g} s of {len(quantities)} quantities "
          f"(asks for {demand:,.0f} reads/s)")
    print(f"  simulator up in  {sim_start:.1f} s; Daemon() built in {r['build_s']:.1f} s; "
          f"online {r['online_dtus']} DTUs + {r['online_mqtt']} terminals after {r['online_after_s']:.1f} s; "
          f"warm-up {args.warmup:g} s")
    print(f"  window           {r['elapsed']:.1f} s, {r['ok']} reads")
    print(f"  reads/s          {reads:,.0f}   (target >= 5,000: {'met' if reads >= 5000 else 'MISSED'})")
    print(f"  failed attempts  {sum(r['failed'].values())} {r['failed'] or ''}")
    print(f"  overruns         {r['overruns']} poll ticks missed (rounds longer than the interval)")
    print(f"  latency          p50 {r['p50'] * 1000:.1f} ms  p95 {r['p95'] * 1000:.1f} ms  "
          f"p99 {r['p99'] * 1000:.1f} ms  max {r['max'] * 1000:.1f} ms")
    for kind, (n, cuts) in r["kinds"].items():
        print(f"    {kind:<5} {n / r['elapsed']:7,.0f} reads/s, p50 {cuts[49] * 1000:.1f} ms  "
              f"p95 {cuts[94] * 1000:.1f} ms  p99 {cuts[98] * 1000:.1f} ms")
    print(f"  readings/s       {r['written'] / r['elapsed']:,.0f} written to the store "
          f"({r['attempts_written'] / r['elapsed']:,.0f} attempts/s recorded; {r['pending_at_end']} queued at the end, "
          f"at most {r['pending_max']} at the once-a-second looks)")
    if r["write_s"] > 0:
        print(f"  store writer     busy {r['write_s'] / r['elapsed']:.0%} of the window: drains "
              f"~{r['written'] / r['write_s']:,.0f} readings/s (+ as many attempts) while it writes "
              "(rounds end together, so the queue comes in bursts)")
    rss_ok = "met" if r["hwm"] < 500 * MIB else "MISSED"
    print(f"  daemon RSS       {r['rss'] / MIB:.0f} MiB now, {r['rss_window_max'] / MIB:.0f} MiB max in the window, "
          f"peak {r['hwm'] / MIB:.0f} MiB (target < 500 MiB: {rss_ok}); simulator {sim_rss / MIB:.0f} MiB")
    print(f"  CPU per read     daemon {cpu[0] / max(1, r['ok']) * 1e6:.0f} us, simulator "
          f"{cpu[1] / max(1, r['ok']) * 1e6:.0f} us, broker {cpu[2] / max(1, r['ok']) * 1e6:.0f} us")
    per = 1e6 / max(1, r["ok"])
    split = sorted(r["threads"].items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    print("    by thread      " + "; ".join(
        f"{name} {(u + k) * per:.0f} us (user {u * per:.0f}, system {k * per:.0f})"
        for name, (u, k) in split if (u + k) * per >= 0.5))
    ceiling = r["ok"] / cpu[0] if cpu[0] else float("nan")
    print(f"  daemon ceiling   ~{ceiling:,.0f} reads/s if it had a core to itself (1 s / its CPU per read; "
          "an extrapolation)")
    print(f"  CPU in window    daemon {cpu[0] / r['elapsed']:.0%}, simulator {cpu[1] / r['elapsed']:.0%}, "
          f"broker {cpu[2] / r['elapsed']:.0%} of one core; the machine's {os.cpu_count()} cores "
          f"{r['machine']:.0%} busy")
    for line in sim_log.splitlines():
        if line.startswith(("dtus:", "mqtt:", "meterd simulate:")):
            print(f"  simulator        {line}")
    if r["profile"] is not None:
        print(f"\ncProfile of the daemon thread, top {args.profile} by own time:")
        stats = pstats.Stats(r["profile"], stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
