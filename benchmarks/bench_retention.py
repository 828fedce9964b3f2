"""Retention on a store of a few million rows: how long the longest prune transaction holds the
database, and how long the collector's writer waits meanwhile.

Builds ``--meters`` meters x ``--quantities`` quantities read every 15 minutes for ``--days`` days
(3.84 million readings by default) and an attempt per meter and read (0.96 million), then prunes
everything older than ``--keep`` days (the first prune of a backlog: 60 % of the rows by default)
while a writer thread goes on writing batches of 500 readings every 100 ms, as the daemon's
BatchWriter does, and a second, daily-sized prune (one more day).  Prints the rows deleted, the
time taken, the number of transactions, the longest transaction and the writer's waits.

    python benchmarks/bench_retention.py                   # SQLite, the embedded default
    python benchmarks/bench_retention.py --postgres        # a PostgreSQL server of its own (tests/pgserver.py)

Not a pass/fail test: figures to compare between runs on one machine.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from meterd.readings import Reading
from meterd.storage import open_store
from meterd.storage.database import Database, close_pools
from meterd.storage.quality import QualityStore
from meterd.storage.retention import Policy, prune
from meterd.storage.sqlite import Attempt

NOW = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
QUANTITIES = ("energy.active.import.total", "energy.active.export.total", "power.active.total", "voltage.a",
              "current.a", "power.reactive.total", "frequency", "power_factor.total")


def build(where, meters: int, quantities: int, days: int) -> tuple[int, int]:
    step = timedelta(minutes=15)
    points = days * 96
    start = NOW - points * step
    written = attempts = 0
    with open_store(where, clock=lambda: NOW) as store:
        for p in range(0, points, 96):  # a day of the whole site per batch (few commits: the build is not measured)
            batch, tries = [], []
            for k in range(p, min(p + 96, points)):
                at = start + k * step
                for m in range(meters):
                    address = f"{m:012d}"
                    batch += [Reading(address, q, at, Decimal(k) + Decimal(m) / 100, "kWh")
                              for q in QUANTITIES[:quantities]]
                    tries.append(Attempt(address, f"bus{m // 32}", "00010000", at, "ok", 0.2))
            store.write_readings(batch)
            store.record_attempts(tries)
            written += len(batch)
            attempts += len(tries)
    return written, attempts


class Writer(threading.Thread):
    """The collector's writer: a batch of 500 readings every 100 ms, each write timed."""

    def __init__(self, store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.waits: list[float] = []
        self.refused = 0  # writes that found the database locked past the busy timeout (BatchWriter retries them)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            batch = [Reading(f"{900_000 + n:012d}", "power.active.total", NOW + timedelta(seconds=i), Decimal(n), "kW")
                     for n in range(500)]
            t = time.perf_counter()
            try:
                self.store.write_readings(batch)
                self.store.record_attempts([Attempt(f"{900_000:012d}", "busX", "02030000", NOW + timedelta(seconds=i),
                                                    "ok")])
            except sqlite3.OperationalError:
                self.refused += 1
            self.waits.append(time.perf_counter() - t)
            i += 1
            self.stop.wait(0.1)


def run(name: str, where, args: argparse.Namespace) -> None:
    t = time.perf_counter()
    readings, attempts = build(where, args.meters, args.quantities, args.days)
    with QualityStore(where) as quality:  # the daemon folds attempts into the quality rollup every minute
        quality.update()
    print(f"{name}: built {readings:,} readings and {attempts:,} attempts in {time.perf_counter() - t:.1f} s")
    for label, keep in (("backlog", args.keep), ("daily", args.keep - 1)):
        policy = Policy(timedelta(days=keep), timedelta(days=keep))
        with open_store(where, clock=lambda: NOW) as store:
            idle = Writer(store)
            idle.start()
            time.sleep(2.0)  # the writer's waits with nothing else going on
            idle.stop.set()
            idle.join()
            writer = Writer(store)
            writer.start()
            report = prune(store, policy, NOW)
            writer.stop.set()
            writer.join()
        waits = sorted(writer.waits)
        r, a = report.readings, report.attempts
        assert r is not None and a is not None
        print(f"  {label} prune (keep {keep} d): {r.rows:,} readings in {r.transactions} transaction(s), "
              f"{a.rows:,} attempts in {a.transactions}; {report.seconds:.1f} s "
              f"({(r.rows + a.rows) / max(report.seconds, 1e-9):,.0f} rows/s)")
        readings_held = "held the table locked" if name == "PostgreSQL" else "longest transaction"  # the drops' lock
        print(f"    readings: {readings_held} {r.longest * 1000:.1f} ms; attempts: longest transaction "
              f"{a.longest * 1000:.1f} ms")
        print(f"    writer (500 readings + an attempt per write, {len(waits)} writes during the prune): "
              f"median {statistics.median(waits) * 1000:.1f} ms, p99 {waits[int(len(waits) * 0.99)] * 1000:.1f} ms, "
              f"max {waits[-1] * 1000:.1f} ms; idle median {statistics.median(idle.waits) * 1000:.1f} ms, "
              f"max {max(idle.waits) * 1000:.1f} ms; refused (database locked): {writer.refused}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--quantities", type=int, default=4, choices=range(1, len(QUANTITIES) + 1))
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--keep", type=int, default=4, help="days kept by the first prune (the second keeps one less)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL on a server of the benchmark's own")
    args = parser.parse_args()
    if not 1 < args.keep < args.days:
        parser.error("--keep must be between 2 and --days - 1")
    if args.postgres:
        import pgserver

        server = pgserver.PgServer()
        try:
            run("PostgreSQL", Database(server.new_database("bench"), pool_size=4), args)
        finally:
            close_pools()
            server.close()
        return
    with tempfile.TemporaryDirectory(prefix="meterd-bench-retention-") as tmp:
        run("SQLite", Path(tmp), args)


if __name__ == "__main__":
    main()
