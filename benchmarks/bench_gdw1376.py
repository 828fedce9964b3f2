"""Concentrators (Q/GDW 1376.1) against transparent DTUs: readings per second and daemon CPU per reading.

A fleet of ``--terminals`` terminals with ``--meters`` meters each dials in to the real daemon
(:class:`~meterd.collector.daemon.Daemon`, config from TOML, SQLite store) and is polled for the
forward active energy registers (total and 4 rates: 5 readings per meter) as fast as the rounds go:

* ``gdw1376``: concentrators that log in (AFN 02 F1) and answer AFN 0C F129 by pn from what they
  collected -- the daemon asks 8 meters per data unit, 32 per request;
* ``dtu``: the same meters behind transparent DTUs (usr-ascii registration), each read with one
  DL/T 645 request of 0001FF00 (``meterd.simulators.dtu.run_dtu_fleet``).

The terminals run in a child process (a lightweight terminal written here with the codec for
1376.1, the DTU fleet simulator for DTUs), so the daemon's CPU is its own: ``time.process_time``
of this process (all threads: the event loop and the store's writer) over the measured window,
after every terminal is online and a warm-up.  Prints numbers; not a pass/fail test.

    python benchmarks/bench_gdw1376.py [--terminals 500] [--meters 32] [--seconds 15] [--paths gdw1376,dtu] [--sim]

``--sim`` runs the concentrator simulator (``meterd.simulators.concentrator``: it collects its
simulated meters itself, so its process is much busier) in place of the lightweight terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

REGION = "4401"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def terminal_key(n: int) -> str:
    return f"{REGION}-{n:04X}"


def address(n_terminal: int, pn: int, meters: int) -> str:
    return f"{(n_terminal - 1) * meters + pn:012d}"


def config_text(path: str, port: int, terminals: int, meters: int, data_dir: str) -> str:
    if path == "gdw1376":
        kind = 'protocol = "gdw1376"'
    else:
        kind = 'formats = ["usr-ascii"]'
    head = f'[listeners.gw]\n{kind}\nhost = "127.0.0.1"\nport = {port}\n'
    parts = [head + 'heartbeat_timeout = "600s"\nregistration_timeout = "60s"\n']
    for t in range(1, terminals + 1):
        if path == "gdw1376":
            link = f'gdw1376 = {{ listener = "gw", terminal = "{terminal_key(t)}", archive = false }}'
        else:
            link = f'dtu = {{ listener = "gw", terminal = "DTU{t:08d}" }}'
        parts.append(f'[channels.t{t}]\n{link}\nresponse_timeout = "5s"\nretries = 0\n')
        for pn in range(1, meters + 1):
            pn_line = f"pn = {pn}\n" if path == "gdw1376" else ""
            parts.append(f'[[meters]]\naddress = "{address(t, pn, meters)}"\nchannel = "t{t}"\n{pn_line}')
    return (f'[store]\ndata_dir = "{data_dir}"\nbatch_size = 5000\nflush_interval = "500ms"\n'
            + "\n".join(parts)
            + '\n[[polls]]\nname = "energy"\ninterval = "1ms"\nitems = ["0001FF00"]\n')


# --- the child: the terminals -----------------------------------------------------------------------


async def gdw_terminal(n: int, port: int) -> None:
    """One concentrator: log in, then answer AFN 0C F129 for any pn (replies cached per request)."""
    from meterd.protocols.gdw1376.catalogue import EnergyReading
    from meterd.protocols.gdw1376.frame import (
        Afn,
        PrimaryFunction,
        StreamDecoder,
        control_byte,
        parse_terminal_address,
        seq_byte,
    )
    from meterd.protocols.gdw1376.messages import DataUnit, Message, decode_message, encode, reply, unit

    addr = parse_terminal_address(terminal_key(n))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Message(addr, Afn.LINK, (unit(0, 1),),
                                control_byte(uplink=True, prm=True, function=PrimaryFunction.LINK_TEST),
                                seq_byte(1, con=True))))
    read_at = datetime(2026, 12, 7, 19, 0)
    cache: dict[tuple[bytes, int], bytes] = {}
    decoder = StreamDecoder()
    while True:
        data = await reader.read(65536)
        if not data:
            return
        decoder.feed(data)
        for frame in decoder.frames():
            if frame.afn != Afn.CLASS1_DATA:
                continue
            key = (frame.data, frame.seq)
            out = cache.get(key)
            if out is None:
                msg = decode_message(frame)
                units = [DataUnit(u.pns, u.fns, tuple(
                    EnergyReading(read_at, (Decimal(f"{1000 + pn}.00"), Decimal("100.00"), Decimal("200.00"),
                                            Decimal("300.00"), Decimal(f"{400 + pn}.00")))
                    for pn in u.pns for _ in u.fns)) for u in msg.units]
                out = cache[key] = encode(reply(msg, units))
            writer.write(out)


async def child(path: str, port: int, terminals: int, meters: int, sim: bool) -> None:
    if path == "gdw1376" and sim:
        from meterd.simulators.concentrator import run_concentrator_fleet

        await run_concentrator_fleet(terminals, meters, "127.0.0.1", port, region=REGION, heartbeat=None,
                                     start=datetime(2026, 12, 7, 19, 0))
        await asyncio.Event().wait()
    elif path == "gdw1376":
        await asyncio.gather(*(gdw_terminal(n, port) for n in range(1, terminals + 1)))
    else:
        from meterd.simulators.dtu import run_dtu_fleet

        await run_dtu_fleet(terminals, meters, "127.0.0.1", port, fmt="usr-ascii", heartbeat=None,
                            start=datetime(2026, 12, 7, 19, 0))
        await asyncio.Event().wait()


# --- the master ---------------------------------------------------------------------------------------


async def measure(path: str, terminals: int, meters: int, seconds: float, sim: bool) -> dict[str, float]:
    from meterd.collector.daemon import Daemon
    from meterd.config.loader import parse_config
    from meterd.storage.sqlite import SqliteStore

    port = free_port()
    data_dir = tempfile.mkdtemp(prefix=f"bench-{path}-")
    config = parse_config(tomllib.loads(config_text(path, port, terminals, meters, data_dir)), f"{path}.toml")
    counted = {"readings": 0, "attempts": 0, "failed": 0}
    kinds: Counter[str] = Counter()

    def on_round(result) -> None:
        counted["readings"] += len(result.readings)
        counted["attempts"] += len(result.attempts)
        counted["failed"] += len(result.failures)
        kinds.update(f"{a.outcome}: {a.detail[:60]}" for a in result.failures)

    with SqliteStore(data_dir) as store:
        daemon = Daemon(config, store, on_round=on_round, clock=lambda: datetime.now(UTC))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.sleep(0.5)
        proc = subprocess.Popen([sys.executable, __file__, "--child", path, "--port", str(port),  # noqa: ASYNC220
                                 "--terminals", str(terminals), "--meters", str(meters), *(["--sim"] if sim else [])])
        try:
            t0 = time.perf_counter()
            while daemon.listener_status()["gw"]["online"] < terminals:
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"{path}: only {daemon.listener_status()['gw']['online']} terminals online")
                await asyncio.sleep(0.2)
            online_after = time.perf_counter() - t0
            await asyncio.sleep(3.0)  # warm-up: every channel past its first rounds
            before = dict(counted)
            kinds.clear()  # failures of the measured window only
            cpu0, child0, w0 = time.process_time(), cpu_seconds(proc.pid), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, child_cpu, wall = (time.process_time() - cpu0, cpu_seconds(proc.pid) - child0,
                                    time.perf_counter() - w0)
            got = {k: counted[k] - before[k] for k in counted}
        finally:
            stop.set()
            await task
            proc.terminate()
            proc.wait(10)
    readings = max(got["readings"], 1)
    return {"readings": got["readings"], "failed": got["failed"], "wall": wall, "cpu": cpu,
            "child_cpu": child_cpu, "per_s": got["readings"] / wall, "cpu_us": 1e6 * cpu / readings,
            "online_after": online_after, "kinds": kinds.most_common(3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--terminals", type=int, default=500)
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--paths", default="gdw1376,dtu")
    ap.add_argument("--child", choices=("gdw1376", "dtu"))
    ap.add_argument("--port", type=int)
    ap.add_argument("--sim", action="store_true", help="concentrators: the concentrator simulator "
                    "(meterd.simulators.concentrator) instead of the lightweight terminal written here")
    args = ap.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.port, args.terminals, args.meters, args.sim))
        return
    logging.basicConfig(level=logging.ERROR)
    print(f"{args.terminals} terminals x {args.meters} meters, forward active energy total + 4 rates "
          f"(5 readings per meter), {args.seconds:g} s measured per path")
    results = {}
    for path in args.paths.split(","):
        r = results[path] = asyncio.run(measure(path, args.terminals, args.meters, args.seconds, args.sim))
        print(f"  {path:8} {r['per_s']:>9,.0f} readings/s   daemon CPU {r['cpu_us']:6.1f} us/reading   "
              f"({r['readings']:,} readings, {r['failed']} failed attempts, daemon CPU {r['cpu']:.1f} s, "
              f"terminals' CPU {r['child_cpu']:.1f} s in {r['wall']:.1f} s; all online after "
              f"{r['online_after']:.1f} s)")
        if r["failed"]:
            print(f"           most frequent failures: {r['kinds']}")
    if "gdw1376" in results and "dtu" in results:
        g, d = results["gdw1376"], results["dtu"]
        print(f"  gdw1376 / dtu: {g['per_s'] / d['per_s']:.2f}x readings/s, "
              f"{g['cpu_us'] / d['cpu_us']:.2f}x CPU per reading")


if __name__ == "__main__":
    main()
