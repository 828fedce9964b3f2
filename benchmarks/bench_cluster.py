"""Collector nodes: reads/s and daemon CPU per read with 1, 2 and 3 nodes on one PostgreSQL, one
node on SQLite for reference, and the failover time after a kill -9.

Everything runs as real processes: the simulated meters (``meterd simulate``: TCP buses, each
answering after ``--turnaround`` ms, so a bus has a wire-like limit of about 1000 / turnaround
requests per second), a PostgreSQL of the benchmark's own (``tests/pgserver.py``, a fresh
database per scenario) and ``meterd run`` per node, polling ``--buses`` channels back to back
(poll interval shorter than a round).

Per scenario, after every channel is held and reads flow: reads/s over ``--seconds`` (rows added
to the readings store), CPU seconds of all node processes per read (from /proc, the window only:
start-up is not in it), and of the simulator.  PostgreSQL's own CPU is not counted.  The
references: one node on SQLite, and ``--split`` independent SQLite nodes each given a static share
of the buses (no leases at all: what that many processes cost by themselves on this machine).

Two regimes: the default keeps every bus at its wire-like limit (``--turnaround 20``), where
reads/s is the buses' and CPU per read shows the per-process overheads; ``--turnaround 0
--interval 5ms`` makes the nodes CPU-bound.

Failover: two nodes with the default lease (``--lease``, ``--heartbeat``: 15 s and 3 s); the node
holding a channel is killed with SIGKILL, and the time to the first reading of a meter on that
channel written by the other node is printed (expected: about lease_time; at most lease_time +
heartbeat + one poll interval).  Prints numbers; not a pass/fail test.

``--callgrind`` counts instructions instead of CPU time, which separates what the nodes do from
what sharing two cores costs them (context switches, caches, a busy simulator and PostgreSQL):
each ``meterd run`` runs under ``valgrind --tool=callgrind --instr-atstart=no``, instrumentation
is switched on (``callgrind_control -i on``, counters zeroed) when the window opens and the
counters are dumped when it closes; the table gives instructions per read over all nodes, and
reads per event-loop wake-up (calls of ``epoll_wait`` in the window, all threads).  PostgreSQL's
own work is server-side and not counted, nor is the simulator's.  valgrind slows a node about
50x, so the buses must be slow enough for every node to keep up (``--buses 6 --turnaround 100``:
a few tens of reads/s per node, about one read per wake-up whatever the node count).

    python benchmarks/bench_cluster.py [--buses 24] [--meters 4] [--turnaround 20] [--seconds 10]
                                       [--nodes 1,2,3] [--lease 15] [--heartbeat 3] [--no-failover]
    python benchmarks/bench_cluster.py --callgrind --buses 6 --turnaround 100 --seconds 30 \
                                       --nodes 1,3 --no-failover
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_collect import callgrind

CALLGRIND = False  # --callgrind: nodes run under valgrind, instructions counted in the window


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulator(buses: int, meters: int, turnaround: float) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "simulate", "--pty", "0",
           "--tcp-buses", str(buses), "--meters-per-bus", str(meters), "--no-wire-time",
           "--turnaround", str(turnaround), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
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


FLUSH = "500ms"  # the store's flush interval (--flush)
INTERVAL = "50ms"  # the poll's interval (--interval): shorter than a round keeps every bus busy


def site(fleet: dict, data_dir: Path, *, url: str | None, node: str | None, lease: float, heartbeat: float,
         part: tuple[int, int] = (0, 1)) -> str:
    """A node's config; ``part`` = (k, n): only every n-th bus from the k-th (static split, SQLite)."""
    lines = [f'[store]\ndata_dir = "{data_dir}"\nflush_interval = "{FLUSH}"\nbatch_size = 2000\n']
    if url is not None:
        lines[0] += f'database = "{url}"\n'
        lines.append(f'[cluster]\nnode = "{node}"\nlease_time = "{lease:g}s"\nheartbeat = "{heartbeat:g}s"\n')
    for i, bus in enumerate(fleet["buses"]):
        if i % part[1] != part[0]:
            continue
        host, _, port = bus["endpoint"].rpartition(":")
        lines.append(f'[channels.bus{i:03d}]\ntcp = {{ host = "{host}", port = {port} }}\nresponse_timeout = "1s"\n'
                     "retries = 0\n")
        for a in bus["meters"]:
            lines.append(f'[[meters]]\naddress = "{a}"\nchannel = "bus{i:03d}"\n')
    lines.append(f'[[polls]]\nname = "rt"\ninterval = "{INTERVAL}"\nquantities = ["energy.active.import.total"]\n')
    return "\n".join(lines)


def start_node(cfg: Path, log: Path) -> subprocess.Popen:
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={cfg.with_suffix('.callgrind')}"] if CALLGRIND else []
    return subprocess.Popen([*valgrind, sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "run", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def count_pg(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])


def count_sqlite(data_dir: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(data_dir / "readings.sqlite3", timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def held(url: str) -> dict[str, str]:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return {r: h for r, h in conn.execute(
                "SELECT resource, holder FROM leases WHERE holder IS NOT NULL AND expires > clock_timestamp() "
                "AND resource LIKE 'channel:%'")}
    except psycopg.Error:
        return {}


def callgrind_all(pids: list[int], *command: str) -> None:
    """``callgrind_control`` on every node at once (the window's edges as close together as can be)."""
    with ThreadPoolExecutor(len(pids)) as pool:
        list(pool.map(lambda pid: callgrind(*command, pid=pid), pids))


def callgrind_window(cfg: Path) -> tuple[int, int]:
    """(instructions, epoll_wait calls) of the dump named ``window`` of the node configured by ``cfg``."""
    for dump in sorted(cfg.parent.glob(cfg.with_suffix(".callgrind").name + ".*")):
        text = dump.read_text(errors="replace")
        if "window" not in text.split("\npositions:", 1)[0]:
            continue
        total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
        names: dict[str, str] = {}
        wakeups = 0
        callee = ""
        for line in text.splitlines():
            if line.startswith(("fn=(", "cfn=(")):
                ref, _, name = line.split("=", 1)[1].partition(" ")
                if name:
                    names[ref] = name
                callee = names.get(ref, "") if line.startswith("cfn") else ""
            elif line.startswith("calls=") and callee in ("epoll_wait", "epoll_pwait"):
                wakeups += int(line[6:].split()[0])
        return total, wakeups
    raise SystemExit(f"no callgrind dump named 'window' for {cfg}")


def wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.2)


def scenario(fleet: dict, sim: subprocess.Popen, work: Path, *, nodes: int, url: str | None, seconds: float,
             lease: float, heartbeat: float) -> dict:
    procs = []
    data_dirs = []
    cfgs = []
    for n in range(nodes):
        data = work / f"data-{n}"
        cfg = work / f"node-{n}.toml"
        split = (n, nodes) if url is None else (0, 1)
        cfg.write_text(site(fleet, data, url=url, node=f"n{n + 1}", lease=lease, heartbeat=heartbeat, part=split))
        procs.append(start_node(cfg, work / f"node-{n}.log"))
        data_dirs.append(data)
        cfgs.append(cfg)
    buses = len(fleet["buses"])
    patience = 300 if CALLGRIND else 60
    try:
        if url is not None:
            # all channels held, and every node holding some (the balancing has settled)
            wait(lambda: len(held(url)) == buses and len(set(held(url).values())) == nodes, patience,
                 "channels shared")
            count = (lambda: count_pg(url))
        else:  # independent nodes, each with a static share of the buses and a SQLite store of its own
            wait(lambda: all((d / "readings.sqlite3").exists() for d in data_dirs), patience, "the nodes started")
            count = (lambda: sum(count_sqlite(d) for d in data_dirs))
        time.sleep(3.0)  # warm: reads flowing, writer batching
        if CALLGRIND:
            callgrind_all([p.pid for p in procs], "-i", "on")
            time.sleep(10.0)  # warm again: the code's first instrumented run (translation) out of the window
            callgrind_all([p.pid for p in procs], "-z")
        rows0, cpu0, sim0, t0 = count(), sum(cpu_seconds(p.pid) for p in procs), cpu_seconds(sim.pid), time.monotonic()
        time.sleep(seconds)
        if CALLGRIND:
            callgrind_all([p.pid for p in procs], "-d", "window")
        rows1, cpu1, sim1, t1 = count(), sum(cpu_seconds(p.pid) for p in procs), cpu_seconds(sim.pid), time.monotonic()
        spread = {} if url is None else {h: list(held(url).values()).count(h) for h in set(held(url).values())}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(120 if CALLGRIND else 30)
            except subprocess.TimeoutExpired:
                p.kill()
    reads = rows1 - rows0
    instructions = wakeups = 0
    if CALLGRIND:
        for cfg in cfgs:
            i, w = callgrind_window(cfg)
            instructions, wakeups = instructions + i, wakeups + w
    return {"nodes": nodes, "backend": "postgresql" if url else "sqlite" if nodes == 1 else "sqlite-split",
            "reads": reads,
            "reads_per_s": reads / (t1 - t0), "cpu_per_read_us": 1e6 * (cpu1 - cpu0) / max(1, reads),
            "sim_cpu_per_read_us": 1e6 * (sim1 - sim0) / max(1, reads), "node_cores": (cpu1 - cpu0) / (t1 - t0),
            "channels_per_node": dict(sorted(spread.items())),
            "instr_per_read": instructions / max(1, reads), "reads_per_wakeup": reads / max(1, wakeups),
            "instr_per_node_s": instructions / nodes / (t1 - t0)}


def failover(fleet: dict, work: Path, url: str, *, lease: float, heartbeat: float) -> dict:
    procs = {}
    for name in ("a", "b"):
        cfg = work / f"fail-{name}.toml"
        cfg.write_text(site(fleet, work / f"fail-{name}", url=url, node=name, lease=lease, heartbeat=heartbeat))
        procs[name] = start_node(cfg, work / f"fail-{name}.log")
    buses = len(fleet["buses"])
    try:
        wait(lambda: len(held(url)) == buses and len(set(held(url).values())) == 2, 90, "channels shared")
        time.sleep(2.0)
        leases = held(url)
        victim = leases["channel:bus000"]
        moved = [f"bus{i:03d}" for i in range(buses) if leases[f"channel:bus{i:03d}"] == victim]
        meters = [a for i, bus in enumerate(fleet["buses"]) if f"bus{i:03d}" in moved for a in bus["meters"]]
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(10)
        killed, killed_ms = time.monotonic(), datetime.now(UTC).timestamp() * 1000
        first = None
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() - killed < lease * 3:
                row = conn.execute("SELECT MIN(ts) FROM readings WHERE meter = ANY(%s) AND ts > %s",
                                   (meters, killed_ms)).fetchone()
                if row[0] is not None:
                    first = (row[0] - killed_ms) / 1000  # the reading's own timestamp: when it was read
                    break
                time.sleep(0.05)
        everything = None
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() - killed < lease * 4:
                row = conn.execute("SELECT COUNT(DISTINCT meter) FROM readings WHERE meter = ANY(%s) AND ts > %s",
                                   (meters, killed_ms)).fetchone()
                if row[0] == len(meters):
                    everything = time.monotonic() - killed
                    break
                time.sleep(0.1)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    return {"lease": lease, "heartbeat": heartbeat, "moved_channels": len(moved), "first_read_s": first,
            "all_moved_meters_read_s": everything}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buses", type=int, default=24)
    ap.add_argument("--meters", type=int, default=4)
    ap.add_argument("--turnaround", type=float, default=20.0, help="ms each simulated bus waits before answering")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--lease", type=float, default=15.0)
    ap.add_argument("--heartbeat", type=float, default=3.0)
    ap.add_argument("--no-failover", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--split", default="3", help="also N independent SQLite nodes with a static split of the buses "
                                                 "(no coordination: what N processes cost by themselves)")
    ap.add_argument("--flush", default=FLUSH, help="the store's flush_interval in every node's config")
    ap.add_argument("--interval", default=INTERVAL, help="the poll interval in every node's config")
    ap.add_argument("--callgrind", action="store_true",
                    help="run every node under valgrind --tool=callgrind and count instructions per read in the "
                         "window (use slow buses: --buses 6 --turnaround 100)")
    args = ap.parse_args()
    ap_interval = args.interval
    globals()["FLUSH"], globals()["INTERVAL"], globals()["CALLGRIND"] = args.flush, ap_interval, args.callgrind
    sys.path.insert(0, str(HERE.parent / "tests"))
    import pgserver

    server = pgserver.PgServer()
    sim, fleet = start_simulator(args.buses, args.meters, args.turnaround)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            work = Path(tmp)
            print(f"{args.buses} TCP buses x {args.meters} meters, turnaround {args.turnaround:g} ms "
                  f"(a bus tops out near {1000 / max(args.turnaround, 0.001):.0f} reads/s); {os.cpu_count()} cores")
            if not args.no_sqlite:  # the reference: one node on SQLite; and N processes with no coordination
                for n in (1, *(int(x) for x in args.split.split(",") if x)):
                    (work / f"sqlite{n}").mkdir()
                    results.append(scenario(fleet, sim, work / f"sqlite{n}", nodes=n, url=None, seconds=args.seconds,
                                            lease=args.lease, heartbeat=args.heartbeat))
            for n in (int(x) for x in args.nodes.split(",")):
                url = server.new_database("bench")
                (work / f"pg{n}").mkdir()
                results.append(scenario(fleet, sim, work / f"pg{n}", nodes=n, url=url, seconds=args.seconds,
                                        lease=args.lease, heartbeat=args.heartbeat))
            print(f"{'backend':<11} {'nodes':>5} {'reads/s':>9} {'node CPU/read':>14} {'node cores':>10} "
                  f"{'sim CPU/read':>13}  channels per node")
            for r in results:
                print(f"{r['backend']:<11} {r['nodes']:>5} {r['reads_per_s']:>9,.0f} {r['cpu_per_read_us']:>11.0f} us "
                      f"{r['node_cores']:>10.2f} {r['sim_cpu_per_read_us']:>10.0f} us  {r['channels_per_node']}")
            if args.callgrind:
                print("instructions per read (all nodes, the window only; PostgreSQL's server-side work not counted)")
                print(f"{'backend':<12} {'nodes':>5} {'reads':>7} {'instr/read':>11} {'reads/wake-up':>14} "
                      f"{'instr/s per node':>17}")
                for r in results:
                    print(f"{r['backend']:<12} {r['nodes']:>5} {r['reads']:>7} {r['instr_per_read'] / 1e3:>9.1f} k "
                          f"{r['reads_per_wakeup']:>14.2f} {r['instr_per_node_s'] / 1e6:>15.1f} M")
            if not args.no_failover:
                url = server.new_database("fail")
                (work / "fail").mkdir()
                f = failover(fleet, work / "fail", url, lease=args.lease, heartbeat=args.heartbeat)
                print(f"failover (lease {f['lease']:g} s, heartbeat {f['heartbeat']:g} s, {f['moved_channels']} "
                      f"channel(s) moved): kill -9 -> first read of a moved channel {f['first_read_s']} s; "
                      f"every meter of the moved channels read {f['all_moved_meters_read_s']} s")
    finally:
        sim.terminate()
        sim.wait(10)
        server.close()


if __name__ == "__main__":
    main()
