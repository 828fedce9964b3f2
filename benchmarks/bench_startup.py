"""Start-up of the daemon for a big fleet (issue 21): 999 GPRS DTUs + 999 MQTT terminals x 50
meters (99,900 meters) by default.

A Mosquitto broker (``tests/mosquitto.py``) and the fleet (``meterd simulate ... --write-config``,
zero wire delay) run in their own processes.  Then the daemon is started as a process of its own
(this script with ``--child``), which does what ``meterd run`` does -- load the config, migrate
and open the store, ``build_node``, run -- and notes when it got where.  It prints, from the
daemon process's start (the moment before it was spawned):

* when each phase ended, wall and the daemon's CPU seconds (on a loaded machine the CPU is the
  steadier figure): imports, config loaded and validated, store migrated and opened, node built
  (``Daemon()`` and the rest), polling (a channel's first request is on its way: the channels
  run), ready (``readiness()``: the archive written, the services started), the first successful
  read's reply (wall: its round's start plus the latencies up to it; CPU at its round's end);
* when every meter had been read once (from the attempts the daemon stored);
* whether each meter was collected at its configured interval over the window: the gaps between
  a meter's successive successful reads, as a multiple of the interval (p50 / p99 / max over all
  gaps), meters with a gap over 1.5 intervals, meters read fewer times than the window allows,
  and the rounds the daemon counted as overruns;
* the daemon's RSS when polling started, its peak (``VmHWM``) over the run, and its CPU seconds.

Targets: built and polling within 5 s of start, RSS under 400 MiB, every meter collected at its
interval.  Prints numbers; not a pass/fail test.

The store is migrated beforehand (``meterd migrate``), as it is at a restart; ``--fresh-store``
measures a first start, which also creates the store's tables.  ``--build-only``: no simulator (the broker still runs, the DTU listener listens): the daemon
stops once polling has started -- start-up alone, quick, for profiling (``--profile N`` prints
the daemon process's cProfile top N, by own time, of the time up to polling).  ``--src DIR`` runs
the daemon from another source tree (e.g. ``git archive`` of an older commit), to compare.

    python benchmarks/bench_startup.py [--dtus 999] [--mqtt-terminals 999] [--meters 50]
        [--interval 60] [--seconds 200] [--quantities energy.active.import.total]
        [--build-only] [--fresh-store] [--profile N] [--src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))
sys.path.insert(0, str(HERE))

MIB = 1024 * 1024
PHASES = ("imported", "config", "store", "built", "polling", "ready", "first_read", "all_read")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def failures_of(stats: dict) -> dict[str, int]:
    """Failed attempts by kind over every channel's statistics."""
    out: dict[str, int] = {}
    for st in stats.values():
        for kind, n in st.get("failures", {}).items():
            out[kind] = out.get(kind, 0) + n
    return out


# --- the daemon process --------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """The daemon, as ``meterd run`` builds it, with a note of each phase's end (wall, CPU)."""
    import cProfile

    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    marks: dict[str, tuple[float, float]] = {}

    def mark(name: str) -> None:
        if name not in marks:
            marks[name] = (time.time(), time.process_time())

    import asyncio
    import logging

    import meterd
    from meterd.app import build_node
    from meterd.cli.common import load_site_config
    from meterd.cli.migrate import migrate, probe
    from meterd.cli.run import raise_nofile_limit
    from meterd.clock import utc_now
    from meterd.heap import settle_heap
    from meterd.storage import open_store

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for name in ("meterd.collector.dtu", "meterd.collector.mqtt", "meterd.collector.channel"):
        logging.getLogger(name).setLevel(logging.ERROR)  # a line per terminal going on/offline
    mark("imported")
    config = load_site_config(args.child)
    mark("config")
    raise_nofile_limit()
    probe(config.store.state)
    migrate(config.store.state)
    store = open_store(config.store.state, clock=utc_now)
    mark("store")

    # Each meter's collections, as the daemon completes them (a round's end: when on_round is
    # called): index by address, then per meter the last collection, the longest gap and the
    # count.  Made after the node is built; what it costs in RSS is measured and printed.
    index: dict[str, int] = {}
    first = array("d")
    last = array("d")
    longest = array("d")
    count = array("L")
    unread = [0]
    first_failures: dict[str, int] = {}  # failed attempts by kind until every meter was read once
    nodes: list = []

    def on_round(result) -> None:  # a RoundResult of whichever source tree runs
        now = time.time()
        # the first read's reply came in at the round's start plus the latencies of the attempts
        # up to it (the hook sees a round at its end, 50 reads later): the earliest of the
        # rounds that end while nothing better can come (wall only; CPU at the round's end)
        spent = 0.0
        for a in result.attempts:
            spent += a.latency or 0.0
            if a.outcome == "ok":
                at = result.started.timestamp() + spent
                if "first_read" not in marks or at < marks["first_read"][0]:
                    marks["first_read"] = (at, time.process_time())
                break
        for a in result.attempts:
            if a.outcome != "ok":
                continue
            i = index.get(a.meter)
            if i is None or last[i] == now:  # not configured (cannot be) / this round counted it already
                continue
            if count[i]:
                longest[i] = max(longest[i], now - last[i])
            else:
                first[i] = now
                unread[0] -= 1
                if not unread[0]:
                    mark("all_read")
                    first_failures.update(failures_of(nodes[0].stats()))
            count[i] += 1
            last[i] = now

    rss: dict[str, int] = {}
    with store:
        node = build_node(config, store, on_round=on_round)
        nodes.append(node)
        mark("built")
        before = proc_status()["VmRSS"]
        for i, m in enumerate(config.meters):
            index[m.address] = i
        unread[0] = len(index)
        first[:] = array("d", [0.0]) * len(index)
        last[:] = array("d", [0.0]) * len(index)
        longest[:] = array("d", [0.0]) * len(index)
        count[:] = array("L", [0]) * len(index)
        rss["bookkeeping"] = proc_status()["VmRSS"] - before

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            settle_heap()  # as meterd run does, once start-up is built
            task = asyncio.create_task(node.run(stop))
            runners = node.collector.runners
            while node.collector.readiness() is not None and not task.done():
                if "polling" not in marks and any(r.channel.stats.transactions for r in runners):
                    mark("polling")  # a channel's first request is on its way
                await asyncio.sleep(0.005)
            mark("polling")
            mark("ready")
            rss["polling"] = proc_status()["VmRSS"]
            if profiler is not None:
                profiler.disable()
            if args.build_only:
                await asyncio.sleep(0.5)
                stop.set()
            else:
                loop.call_later(args.seconds, stop.set)  # the window: from ready, however long start-up took
            await task

        asyncio.run(main())
        stats = node.stats()
    end = time.time()
    status = proc_status()
    interval = min(p.interval for p in config.polls)
    gaps = sorted(g / interval for g, n in zip(longest, count, strict=True) if n > 1)
    # from its first collection to the end the schedule allows this many more (the last round may
    # be cut by the stop: one of slack)
    short = sum(1 for i in range(len(index)) if count[i] and count[i] - 1 < (end - first[i]) // interval - 1)
    failures = failures_of(stats)
    doc = {"meterd": str(Path(meterd.__file__).parent), "marks": marks, "rss_polling": rss.get("polling"),
           "rss_bookkeeping": rss.get("bookkeeping", 0), "hwm": status["VmHWM"], "rss_end": status["VmRSS"],
           "cpu_end": time.process_time(), "meters": len(index), "read": sum(1 for n in count if n),
           "collections": sum(count), "late": sum(1 for g in gaps if g > 1.5), "short": short,
           "gap_p50": gaps[len(gaps) // 2] if gaps else None, "gap_p99": gaps[int(len(gaps) * 0.99)] if gaps else None,
           "gap_max": gaps[-1] if gaps else None, "failures": failures, "first_failures": first_failures,
           "overruns": sum(int(s.get("overruns", 0)) for s in stats.values()),  # type: ignore[call-overload]
           "rounds": sum(int(s.get("rounds", 0)) for s in stats.values())}  # type: ignore[call-overload]
    Path(args.out).write_text(json.dumps(doc))
    if profiler is not None:
        import pstats

        with open(args.out + ".profile", "w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("tottime").print_stats(args.profile)


# --- the parent: fleet, daemon, figures ----------------------------------------------------------


def write_build_only_config(args: argparse.Namespace, workdir: Path, dtu_port: int, broker: int) -> Path:
    """The config ``meterd simulate --write-config`` writes for the fleet, without the fleet."""
    from meterd.cli import simulate

    parser = argparse.ArgumentParser(prog="meterd")
    simulate.add_parser(parser.add_subparsers(dest="command"))
    path = workdir / "site.toml"
    sim = parser.parse_args(simulate_args(args, workdir, dtu_port, broker))
    plan = simulate.plan_from_args(sim)
    path.write_text(simulate.site_config(plan.terminals, plan.site, []), encoding="utf-8")
    return path


def simulate_args(args: argparse.Namespace, workdir: Path, dtu_port: int, broker: int) -> list[str]:
    cmd = ["simulate", "--meters-per-terminal", str(args.meters), "--write-config", str(workdir / "site.toml"),
           "--data-dir", str(workdir / "data"), "--poll-interval", str(args.interval),
           "--poll-quantities", args.quantities, "--turnaround", "0", "--json"]
    if args.dtus:
        cmd += ["--dtus", str(args.dtus), "--dtu-connect", f"127.0.0.1:{dtu_port}"]
    if args.mqtt_terminals:
        cmd += ["--mqtt-terminals", str(args.mqtt_terminals), "--mqtt", f"127.0.0.1:{broker}"]
    return cmd


def start_fleet(args: argparse.Namespace, workdir: Path, dtu_port: int, broker: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING",
           *simulate_args(args, workdir, dtu_port, broker)]
    with open(workdir / "simulator.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the document, once every terminal runs
    if not line:
        raise SystemExit(f"simulator exited: {proc.wait()}; see {workdir / 'simulator.log'}")
    json.loads(line)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtus", type=int, default=999)
    ap.add_argument("--mqtt-terminals", type=int, default=999)
    ap.add_argument("--meters", type=int, default=50, help="meters per DTU / terminal (default 50)")
    ap.add_argument("--interval", type=float, default=60.0, help="poll interval, s (default 60)")
    ap.add_argument("--seconds", type=float, default=200.0,
                    help="the daemon runs this long once ready (default 200)")
    ap.add_argument("--quantities", default="energy.active.import.total", help="what the poll reads")
    ap.add_argument("--build-only", action="store_true", help="no fleet; stop once polling has started")
    ap.add_argument("--fresh-store", action="store_true",
                    help="start on an empty data folder (a first start: the store's tables are created, ~0.7 s "
                         "more); default: migrated beforehand, as at a restart")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile start-up, print top N")
    ap.add_argument("--src", default=None, metavar="DIR", help="run the daemon from this source tree")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from bench_terminals import free_port

    from mosquitto import Mosquitto

    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    broker = Mosquitto(workdir / "broker")
    broker.start()
    sim = daemon = None
    try:
        dtu_port = free_port()
        t = time.perf_counter()
        if args.build_only:
            config = write_build_only_config(args, workdir, dtu_port, broker.port)
        else:
            sim = start_fleet(args, workdir, dtu_port, broker.port)
            config = workdir / "site.toml"
        fleet_up = time.perf_counter() - t
        out = workdir / "daemon.json"
        env = dict(os.environ)
        if args.src:
            env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), env.get("PYTHONPATH", "")])
        if not args.fresh_store:  # a restart: the store exists (a first start also creates its tables)
            subprocess.run([sys.executable, "-m", "meterd.cli.main", "--log-level", "WARNING", "migrate", "-c",
                            str(config)], env=env, check=True, stdout=subprocess.DEVNULL)
        t0 = time.time()
        cmd = [sys.executable, __file__, "--child", str(config), "--out", str(out), "--t0", repr(t0),
               "--seconds", str(args.seconds), "--profile", str(args.profile)]
        if args.build_only:
            cmd.append("--build-only")
        daemon = subprocess.Popen(cmd, env=env)
        rc = daemon.wait()
        if rc != 0 or not out.exists():
            raise SystemExit(f"the daemon process failed (exit {rc})")
        doc = json.loads(out.read_text())
        profile = Path(str(out) + ".profile").read_text() if args.profile else ""
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(60)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    meters = (args.dtus + args.mqtt_terminals) * args.meters
    print(f"start-up: {args.dtus} DTUs + {args.mqtt_terminals} MQTT terminals x {args.meters} meters = {meters} "
          f"meters; poll every {args.interval:g} s ({', '.join(args.quantities.split(','))}); "
          f"{'build only' if args.build_only else f'fleet up in {fleet_up:.1f} s'}; meterd from {doc['meterd']}")
    print(f"  {'from the daemon process start':<32} {'wall s':>7} {'CPU s':>7}")
    marks = doc["marks"]
    for name in PHASES:
        if name in marks:
            wall, cpu = marks[name]
            print(f"  {name:<32} {wall - t0:7.2f} {cpu:7.2f}")
    polling = marks.get("polling", [float("nan")] * 2)[0] - t0
    print(f"  built and polling in {polling:.2f} s (target <= 5 s: {'met' if polling <= 5 else 'MISSED'})")
    if not args.build_only:
        print(f"  every meter read once: {'yes' if doc['read'] == meters else 'NO'} ({doc['read']} of {meters} "
              f"meters); {doc['collections']} collections in {args.seconds:g} s from ready; failed attempts "
              f"{doc['failures'] or 'none'} ({doc['first_failures'] or 'none'} of them until every meter was read)")
        if doc["gap_max"] is not None:
            print(f"  each meter's longest gap between collections, in intervals: p50 {doc['gap_p50']:.3f}, "
                  f"p99 {doc['gap_p99']:.3f}, max {doc['gap_max']:.3f}; {doc['late']} meters with a gap over 1.5 "
                  f"intervals, {doc['short']} collected fewer times than the window allows; overruns "
                  f"{doc['overruns']} of {doc['rounds']} rounds")
        on = doc["read"] == meters and not doc["late"] and not doc["short"] and doc["gap_max"] is not None
        print(f"  every meter collected at its interval: {'yes' if on else 'NO'}")
    hwm = doc["hwm"]
    print(f"  daemon RSS  {doc['rss_polling'] / MIB:.0f} MiB when ready, peak {hwm / MIB:.0f} MiB "
          f"(target < 400 MiB: {'met' if hwm < 400 * MIB else 'MISSED'}; of it the benchmark's own bookkeeping "
          f"{doc['rss_bookkeeping'] / MIB:.0f} MiB); CPU {doc['cpu_end']:.1f} s in all")
    if profile:
        print(f"\ncProfile of the daemon process up to polling, top {args.profile} by own time:\n{profile}")


if __name__ == "__main__":
    main()
