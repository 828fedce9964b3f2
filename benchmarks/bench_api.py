"""The HTTP API under load while the daemon collects: requests per second and p50/p99 latency of
the latest-readings and reading-history endpoints, with ``--meters`` (100,000) meters in the store.

Builds a scratch data directory with ``--meters`` meters, each with ``--history`` readings of two
quantities; starts simulated meters (``meterd simulate``, TCP buses, no wire delay) and the daemon
(``meterd run``) polling them every second with its API on a free port -- so collection rounds run
throughout -- then, from ``--clients`` keep-alive connections in this process, asks for

* ``GET /api/v1/meters/{address}``: one meter with its latest reading of each quantity;
* ``GET /api/v1/meters/{address}/readings?since=..&until=..``: a day of one meter's history,

each for ``--seconds``, at random meters.  Prints requests/s, p50/p99 and the collection rounds
and reads the daemon made meanwhile.  The load generator shares the machine's cores with the
daemon and the simulators: the figures are a floor.

    python benchmarks/bench_api.py [--meters 100000] [--history 8] [--seconds 10] [--clients 8]

Prints numbers; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from meterd.api.tokens import TokenStore
from meterd.readings import Reading
from meterd.storage.sqlite import MeterRecord, SqliteStore

T0 = datetime(2026, 11, 22, 16, 0, tzinfo=timezone.utc)  # 00:00 CST
QUANTITIES = ("energy.active.import.total", "power.active.total")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(data_dir: Path, meters: int, history: int) -> float:
    started = time.perf_counter()
    addresses = [f"{500_000_000_000 + i:012d}" for i in range(meters)]
    with SqliteStore(data_dir) as store:
        store.upsert_meters(MeterRecord(a, "archive", "dlt645-2007", Decimal(1), Decimal(1)) for a in addresses)
        step = timedelta(hours=24) / history
        batch: list[Reading] = []
        for n, address in enumerate(addresses):
            for h in range(history):
                at = T0 + h * step
                batch.append(Reading(address, QUANTITIES[0], at, Decimal(1000 + n % 997 + h), "kWh"))
                batch.append(Reading(address, QUANTITIES[1], at, Decimal("1.25") + h, "kW"))
            if len(batch) >= 200_000:
                store.write_readings(batch)
                batch.clear()
        store.write_readings(batch)
    return time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def load(port: int, token: str, paths: list[str], seconds: float, clients: int) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        bad = 0
        while time.perf_counter() < deadline:
            path = rng.choice(paths)
            t = time.perf_counter()
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            body = response.read()
            mine.append(time.perf_counter() - t)
            if response.status != 200 or not body:
                bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), latencies, errors[0]


def collected(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "state.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=8, help="readings per quantity per meter (one day)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per endpoint")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--buses", type=int, default=4, help="simulated TCP buses the daemon polls meanwhile")
    parser.add_argument("--bus-meters", type=int, default=25)
    args = parser.parse_args()

    meterd = str(Path(sys.executable).with_name("meterd"))
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        data_dir.mkdir()
        took = seed(data_dir, args.meters, args.history)
        print(f"seeded {args.meters:,} meters x {args.history} x {len(QUANTITIES)} readings in {took:.1f} s")
        with TokenStore(data_dir) as tokens:
            token = tokens.create("bench", "viewer", datetime.now(timezone.utc))[1]

        sims = subprocess.Popen([meterd, "simulate", "--pty", "0", "--tcp-buses", str(args.buses),
                                 "--meters-per-bus", str(args.bus_meters), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        daemon = None
        try:
            assert sims.stdout is not None
            fleet = json.loads(sims.stdout.readline())
            port = free_port()
            lines = ["[store]", f'data_dir = "{data_dir}"', 'flush_interval = "200ms"', "",
                     "[api]", f"port = {port}", ""]
            for bus in fleet["buses"]:
                lines += [f"[channels.{bus['name']}]", f'tcp = {{ host = "{bus["host"]}", port = {bus["port"]} }}',
                          'response_timeout = "1s"', ""]
                for address in bus["meters"]:
                    lines += ["[[meters]]", f'address = "{address}"', f'channel = "{bus["name"]}"', ""]
            lines += ["[[polls]]", 'name = "rt"', 'interval = "1s"',
                      'quantities = ["energy.active.import.total", "power.active.total", "voltage.a"]']
            (root / "site.toml").write_text("\n".join(lines) + "\n")
            daemon = subprocess.Popen([meterd, "run", "-c", str(root / "site.toml")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.2)
            time.sleep(2)  # rounds under way

            rng = random.Random(1)
            sample = [f"{500_000_000_000 + rng.randrange(args.meters):012d}" for _ in range(5000)]
            since, until = T0.isoformat().replace("+", "%2B"), (T0 + timedelta(days=1)).isoformat().replace("+", "%2B")
            endpoints = {
                "latest  GET /api/v1/meters/{address}": [f"/api/v1/meters/{a}" for a in sample],
                "history GET /api/v1/meters/{address}/readings (1 day)": [
                    f"/api/v1/meters/{a}/readings?since={since}&until={until}" for a in sample],
            }
            print(f"daemon polling {args.buses * args.bus_meters} simulated meters every second; "
                  f"{args.clients} clients, {args.seconds:.0f} s per endpoint")
            for name, paths in endpoints.items():
                before = collected(data_dir)
                n, latencies, errors = load(port, token, paths, args.seconds, args.clients)
                reads = collected(data_dir) - before
                print(f"{name}: {n / args.seconds:,.0f} req/s, p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                      f"p99 {percentile(latencies, 99) * 1000:.1f} ms, {errors} errors; "
                      f"meanwhile the daemon made {reads / args.seconds:,.0f} reads/s")
        finally:
            for proc in (daemon, sims):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
