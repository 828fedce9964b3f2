"""The daemon while its HTTP API port is flooded with idle and half-sent connections.

Starts ``meterd run`` as a process (its soft ``RLIMIT_NOFILE`` set to ``--nofile`` before it starts,
1024 by default: the soft limit most Linux logins and containers hand a process) with the HTTP API
and a DTU listener on free ports, and simulated DTUs with meters behind them polled every second.
Then it opens ``--idle`` connections that send nothing and ``--half`` that send half a request
(a request line and one header, never the blank line), and for ``--seconds`` measures, each second:

* ``/healthz`` on a fresh connection: latency, or the error;
* readings written to the store in that second (the readings database, read from outside);
* how many of the flood's connections the daemon still holds open (closed ones read EOF);
* how fast the daemon's log grows.

Half-way through, the simulated DTUs drop their connections and dial in again: whether they are
read again afterwards shows whether the DTU listener still accepts.

    python benchmarks/bench_api_connections.py [--idle 1000] [--half 1000] [--seconds 20] [--nofile 1024] [--fixed]

``--fixed`` also sets the hard limit, as on a host where the daemon cannot raise its soft limit.

Prints numbers; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meterd.simulators.dtu import run_dtu_fleet

HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: meterd\r\n"  # no blank line: the headers never end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(data_dir: Path, api_port: int, dtu_port: int, dtus: int, extra_api: str) -> str:
    parts = [f"""
[store]
data_dir = "{data_dir}"
flush_interval = "200ms"

[api]
host = "127.0.0.1"
port = {api_port}
{extra_api}

[listeners.gprs]
host = "127.0.0.1"
port = {dtu_port}
formats = ["usr-ascii"]
heartbeat_timeout = "30s"

[[polls]]
name = "realtime"
interval = "1s"
quantities = ["energy.active.import.total", "voltage.a"]
"""]
    for n in range(1, dtus + 1):
        parts.append(f"""
[channels.feeder{n}]
dtu = {{ listener = "gprs", terminal = "DTU{n:08d}" }}
response_timeout = "1s"
retries = 0

[[meters]]
address = "{n}"
channel = "feeder{n}"
""")
    return "".join(parts)


def healthz(port: int, timeout: float = 5.0) -> tuple[float | None, str]:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: meterd\r\nConnection: close\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return None, type(exc).__name__
    status = reply.split(b"\r\n", 1)[0].decode(errors="replace")
    return time.perf_counter() - started, status or "closed without an answer"


def readings_count(data_dir: Path) -> int:
    path = data_dir / "readings.sqlite3"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        conn.close()


def still_open(conns: list[socket.socket]) -> int:
    """Connections of the flood the daemon has not closed (EOF or reset means closed)."""
    n = 0
    for s in conns:
        try:
            data = s.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            n += 1
            continue
        except OSError:
            continue
        if data:
            n += 1  # an answer waiting to be read (a 4xx/5xx before the close): count as open
    return n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--half", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--nofile", type=int, default=1024, help="the daemon's soft RLIMIT_NOFILE")
    ap.add_argument("--fixed", action="store_true",
                    help="set the daemon's hard limit to --nofile as well, so it cannot raise the soft one")
    ap.add_argument("--dtus", type=int, default=4)
    ap.add_argument("--api", default="", help="extra [api] lines, e.g. 'header_timeout = \"5s\"'")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the flood

    with tempfile.TemporaryDirectory(prefix="meterd-bench-conn-") as tmp:
        data_dir = Path(tmp) / "data"
        api_port, dtu_port = free_port(), free_port()
        cfg = Path(tmp) / "site.toml"
        cfg.write_text(config_text(data_dir, api_port, dtu_port, args.dtus, args.api.replace("\\n", "\n")))
        log_path = Path(tmp) / "daemon.log"
        nofile = args.nofile

        cap = min(nofile, hard)

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (cap, cap if args.fixed else hard))

        with open(log_path, "wb") as log_file:
            daemon = subprocess.Popen([sys.executable, "-m", "meterd.cli.main", "--log-level", "INFO", "run",
                                       "-c", str(cfg)], stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=limit)
        fleet = None
        conns: list[socket.socket] = []
        try:
            for _ in range(100):
                if healthz(api_port, 1.0)[0] is not None:
                    break
                await asyncio.sleep(0.1)
            fleet = await run_dtu_fleet(args.dtus, 1, "127.0.0.1", dtu_port, fmt="usr-ascii", heartbeat=5.0)
            await asyncio.sleep(3)
            before = readings_count(data_dir)
            await asyncio.sleep(2)
            print(f"daemon soft RLIMIT_NOFILE at exec {cap} (hard {cap if args.fixed else hard}); "
                  f"{args.dtus} DTUs, 1 meter each, polled every 1 s")
            print(f"before the flood: healthz {healthz(api_port)}, readings/s {(readings_count(data_dir) - before) / 2:.1f}")

            started = time.perf_counter()
            refused = 0
            for i in range(args.idle + args.half):
                try:
                    s = socket.create_connection(("127.0.0.1", api_port), timeout=5.0)
                except OSError:
                    refused += 1
                    continue
                if i >= args.idle:
                    try:
                        s.sendall(HALF_REQUEST)
                    except OSError:
                        pass
                s.setblocking(False)  # still_open() peeks without waiting
                conns.append(s)
            print(f"opened {len(conns)} connections ({args.idle} idle, {args.half} half-sent, {refused} refused) "
                  f"in {time.perf_counter() - started:.2f} s")
            log_size = log_path.stat().st_size
            last = readings_count(data_dir)
            print(f"{'s':>3} {'healthz':>22} {'readings':>9} {'held open':>9} {'log bytes':>10}")
            for second in range(1, args.seconds + 1):
                if second == args.seconds // 2 and fleet is not None:
                    await fleet.close()
                    fleet = await run_dtu_fleet(args.dtus, 1, "127.0.0.1", dtu_port, fmt="usr-ascii", heartbeat=5.0)
                    print("    -- the DTUs dropped and dialled in again --")
                tick = time.perf_counter()
                latency, status = await asyncio.to_thread(healthz, api_port)
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - tick)))
                now = readings_count(data_dir)
                size = log_path.stat().st_size
                shown = f"{latency * 1000:8.1f} ms {status[:10]}" if latency is not None else f"failed {status}"
                print(f"{second:>3} {shown:>22} {now - last:>9} {still_open(conns):>9} {size - log_size:>10}")
                last, log_size = now, size
        finally:
            for s in conns:
                s.close()
            if fleet is not None:
                await fleet.close()
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        tail = log_path.read_bytes()[-2000:].decode(errors="replace")
        print(f"daemon log: {log_path.stat().st_size} bytes; its last lines:\n{tail}")


if __name__ == "__main__":
    asyncio.run(main())
