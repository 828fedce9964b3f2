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
  read;
* when every meter had been read once (from the attempts the daemon stored);
* whether each meter was collected at its configured interval over the window: the gaps between
  a meter's successive successful reads, as a multiple of the interval (p50 / p99 / max over all
  gaps), meters with a gap over 1.5 intervals, meters read fewer times than the window allows,
  and the rounds the daemon counted as overruns;
* the daemon's RSS when polling started, its peak (``VmHWM``) over the run, and its CPU seconds.

Targets: built and polling within 5 s of start, RSS under 400 MiB, every meter collected at its
interval.  Prints numbers; not a pass/fail test.

``--build-only``: no simulator (the broker still runs, the DTU listener listens): the daemon
stops once polling has started -- start-up alone, quick, for profiling (``--profile N`` prints
the daemon process's cProfile top N, by own time, of the time up to polling).  ``--src DIR`` runs
the daemon from another source tree (e.g. ``git archive`` of an older commit), to compare.

    python benchmarks/bench_startup.py [--dtus 999] [--mqtt-terminals 999] [--meters 50]
        [--interval 60] [--seconds 200] [--quantities energy.active.import.total]
        [--build-only] [--profile N] [--src DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))
sys.path.insert(0, str(HERE))

MIB = 1024 * 1024
PHASES = ("imported", "config", "store", "built", "polling", "ready", "first_read")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
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

    def on_round(result) -> None:  # a RoundResult of whichever source tree runs
        if "first_read" not in marks and any(a.outcome == "ok" for a in result.attempts):
            mark("first_read")

    rss: dict[str, int] = {}
    with store:
        node = build_node(config, store, on_round=on_round)
        mark("built")

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
                loop.call_later(max(0.0, args.seconds - (time.time() - args.t0)), stop.set)
            await task

        asyncio.run(main())
        stats = node.stats()
    status = proc_status()
    doc = {"meterd": str(Path(meterd.__file__).parent), "marks": marks, "rss_polling": rss.get("polling"),
           "hwm": status["VmHWM"], "rss_end": status["VmRSS"], "cpu_end": time.process_time(),
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


def collection(data_dir: Path, interval: float, t0: float, end: float) -> dict:
    """From the attempts the daemon stored: when every meter was first read, and the gaps between
    each meter's successive successful reads (reads less than half an interval apart are one
    collection: a meter asked several identifiers in one round)."""
    db = next((p for p in sorted(data_dir.glob("*.sqlite3"))
               if sqlite3.connect(p).execute("SELECT 1 FROM sqlite_master WHERE name = 'attempts'").fetchone()), None)
    if db is None:
        return {}
    conn = sqlite3.connect(db)
    first_max = 0
    meters = 0
    gaps: list[float] = []
    late_meters = 0
    short_meters = 0
    current: str | None = None
    times: list[int] = []

    def close() -> None:
        nonlocal first_max, meters, late_meters, short_meters
        if current is None or not times:
            return
        meters += 1
        first_max = max(first_max, times[0])
        collections = [times[0]]
        for t in times[1:]:
            if t - collections[-1] >= interval * 500:  # ms: half an interval
                collections.append(t)
        own = [(b - a) / 1000 / interval for a, b in itertools.pairwise(collections)]
        gaps.extend(own)
        if own and max(own) > 1.5:
            late_meters += 1
        # from its first read to the end of the run the schedule allows this many more collections
        allowed = int((end - times[0] / 1000) // interval)
        if len(collections) - 1 < allowed - 1:  # one of slack: the last round may be cut by the stop
            short_meters += 1

    for meter, ts in conn.execute("SELECT meter, ts FROM attempts WHERE outcome = 'ok' ORDER BY meter, ts"):
        if meter != current:
            close()
            current, times = meter, []
        times.append(ts)
    close()
    failed = dict(conn.execute("SELECT outcome, count(*) FROM attempts WHERE outcome != 'ok' GROUP BY outcome"))
    gaps.sort()

    def cut(q: float) -> float:
        return gaps[min(len(gaps) - 1, int(q * len(gaps)))] if gaps else float("nan")

    return {"meters_read": meters, "all_read_at": first_max / 1000 - t0 if meters else None,
            "gaps": len(gaps), "gap_p50": cut(0.5), "gap_p99": cut(0.99), "gap_max": gaps[-1] if gaps else float("nan"),
            "late_meters": late_meters, "short_meters": short_meters, "failed": failed}


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
                    help="the daemon runs this long from its start (default 200)")
    ap.add_argument("--quantities", default="energy.active.import.total", help="what the poll reads")
    ap.add_argument("--build-only", action="store_true", help="no fleet; stop once polling has started")
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
        t0 = time.time()
        cmd = [sys.executable, __file__, "--child", str(config), "--out", str(out), "--t0", repr(t0),
               "--seconds", str(args.seconds), "--profile", str(args.profile)]
        if args.build_only:
            cmd.append("--build-only")
        daemon = subprocess.Popen(cmd, env=env)
        rc = daemon.wait()
        end = time.time()
        if rc != 0 or not out.exists():
            raise SystemExit(f"the daemon process failed (exit {rc})")
        doc = json.loads(out.read_text())
        got = collection(workdir / "data", args.interval, t0, end) if not args.build_only else {}
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
    if got:
        at = got["all_read_at"]
        print(f"  every meter read once      {'-' if at is None else f'{at:.1f} s'} after start "
              f"({got['meters_read']} of {meters} meters read)")
        print(f"  collection over {args.seconds:g} s   {got['gaps']} gaps between a meter's reads, as intervals: "
              f"p50 {got['gap_p50']:.3f}, p99 {got['gap_p99']:.3f}, max {got['gap_max']:.3f}; "
              f"{got['late_meters']} meters with a gap > 1.5 intervals, {got['short_meters']} read fewer times "
              f"than the window allows; overruns {doc['overruns']} of {doc['rounds']} rounds")
        on = got["meters_read"] == meters and not got["late_meters"] and not got["short_meters"]
        print(f"  every meter at its interval: {'yes' if on else 'NO'}; failed attempts {got['failed'] or 'none'}")
    hwm = doc["hwm"]
    print(f"  daemon RSS  {doc['rss_polling'] / MIB:.0f} MiB when polling started, peak {hwm / MIB:.0f} MiB "
          f"(target < 400 MiB: {'met' if hwm < 400 * MIB else 'MISSED'}); CPU {doc['cpu_end']:.1f} s in all")
    if profile:
        print(f"\ncProfile of the daemon process up to polling, top {args.profile} by own time:\n{profile}")


if __name__ == "__main__":
    main()
