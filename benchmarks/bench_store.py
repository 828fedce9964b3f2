"""Readings/s written by SqliteStore and PostgresStore, batch by batch, as the BatchWriter writes them.

Starts its own PostgreSQL (``tests/pgserver.py``: initdb on a free port, scratch directory) with
durability back on (``fsync``, ``synchronous_commit``, ``full_page_writes``: a committed batch
survives a power cut, as SQLite's ``synchronous=FULL`` does), unless ``--url`` names a running
server (an empty database: the benchmark creates its tables there).  ``--fast-pg`` keeps the test
server's settings (no fsync) to show what the disk costs.

Rows, per store: ``new`` (fresh keys, each batch one 15-minute round of ``--meters`` meters x 5
quantities: a day partition per 96 rounds on PostgreSQL) and ``rewrite`` (the same batches again:
a replay, every row an update), readings/s of wall time and µs of this process's CPU per reading
(the daemon's writer thread shares the GIL with the polling loop: client CPU is the cost that
matters there; the server's own CPU is not in it).  A third row, ``busy``, is the median time of
one batch while another thread spins (a busy event loop: each wait on the server gives the GIL
away and getting it back takes up to a switch interval, so round trips per batch count).
``--paths`` adds the ways a batch could be upserted on PostgreSQL, raw on the same table: one
``unnest`` of seven arrays sent in binary (what PostgresStore sends), one JSON array, COPY into a
staging table + one upsert, a multi-row ``VALUES``, ``executemany``.  Prints numbers;
it is not a pass/fail test.

    python benchmarks/bench_store.py [--readings 100000] [--batch 500] [--meters 2000] [--paths]
                                     [--url postgresql://...] [--fast-pg]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from meterd.readings import Reading
from meterd.storage import PostgresStore, SqliteStore
from meterd.storage.database import Database, close_pools

BASE = datetime(2024, 1, 1, tzinfo=UTC)
QUANTITIES = ["energy.active.import.total", "energy.active.export.total", "voltage.a", "current.a",
              "power.active.total"]


def make_readings(n: int, meters: int) -> list[Reading]:
    out = []
    for i in range(n):
        meter, rest = divmod(i, len(QUANTITIES))
        step, meter = divmod(meter, meters)
        out.append(Reading(f"{meter:012d}", QUANTITIES[rest], BASE + timedelta(minutes=15 * step),
                           Decimal(i % 100000) / 100 + Decimal("12000.00"), "kWh"))
    return out


def run(write: Callable[[Sequence[Reading]], int], batches: list[list[Reading]]) -> tuple[float, float]:
    """(readings/s, µs of CPU per reading) for writing ``batches`` one after the other."""
    n = sum(len(b) for b in batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        write(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def report(name: str, store: SqliteStore | PostgresStore, batches: list[list[Reading]]) -> None:
    for label in ("new", "rewrite"):
        rate, cpu = run(store.write_readings, batches)
        print(f"{name:24s} {label:8s} {rate:10,.0f} readings/s   {cpu:6.1f} µs CPU/reading")
    busy = busy_latency(store.write_readings, batches[:20])  # type: ignore[arg-type]
    print(f"{name:24s} {'busy':8s} {busy * 1000:10.1f} ms per batch while another thread holds the GIL")


def compare_paths(url: str, batches: list[list[Reading]]) -> None:
    """The ways a batch could be upserted into ``readings``, raw (what PostgresStore's choice rests on)."""
    import json

    import psycopg

    from meterd.storage.postgres import _UPSERT
    from meterd.storage.sqlite import _reading_row

    tail = _UPSERT[_UPSERT.index(" ON CONFLICT"):]
    head = "INSERT INTO readings (meter, quantity, ts, value, kind, unit, quality)"
    staging = ("CREATE TEMP TABLE IF NOT EXISTS readings_in (meter TEXT, quantity TEXT, ts BIGINT, value TEXT,"
               " kind TEXT, unit TEXT, quality TEXT) ON COMMIT DELETE ROWS")
    rows = [sorted(_reading_row(r) for r in batch) for batch in batches]

    def json_array(conn: psycopg.Connection, batch: list[tuple]) -> None:
        conn.execute(head + " SELECT r->>0, r->>1, (r->>2)::bigint, r->>3, r->>4, r->>5, r->>6"
                     " FROM json_array_elements(%s::json) AS r" + tail,
                     (json.dumps(batch, ensure_ascii=False, separators=(",", ":")),))

    def copy_staging(conn: psycopg.Connection, batch: list[tuple]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY readings_in FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)
            cur.execute(f"{head} SELECT * FROM readings_in{tail}")

    def unnest(conn: psycopg.Connection, batch: list[tuple]) -> None:
        conn.execute(_UPSERT, [list(c) for c in zip(*batch, strict=True)])

    def values(conn: psycopg.Connection, batch: list[tuple]) -> None:
        one = "(%s, %s, %s, %s, %s, %s, %s)"
        conn.execute(f"{head} VALUES {', '.join([one] * len(batch))}{tail}", [v for row in batch for v in row])

    def executemany(conn: psycopg.Connection, batch: list[tuple]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(f"{head} VALUES (%s, %s, %s, %s, %s, %s, %s){tail}", batch)

    paths = (("unnest arrays (ours)", unnest), ("JSON array", json_array), ("COPY + staging table", copy_staging),
             ("multi-row VALUES", values), ("executemany", executemany))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(staging)
        for name, path in paths:
            conn.execute("TRUNCATE readings")
            def write(batch: Sequence[tuple], path: Callable[..., None] = path) -> int:
                path(conn, batch)
                return len(batch)

            for label in ("new", "rewrite"):
                rate, cpu = run(write, rows)  # type: ignore[arg-type]
                print(f"  {name:22s} {label:8s} {rate:10,.0f} readings/s   {cpu:6.1f} µs CPU/reading")
            busy = busy_latency(write, rows[:20])
            print(f"  {name:22s} {'busy':8s} {busy * 1000:10.1f} ms per batch while another thread holds the GIL")


def busy_latency(write: Callable[[Sequence[tuple]], object], batches: list[list[tuple]]) -> float:
    """The median time of a write while another thread spins (the event loop, busy): every wait on
    the server gives the GIL away, and getting it back takes up to a switch interval (5 ms)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    times = []
    try:
        for batch in batches:
            started = time.perf_counter()
            write(batch)
            times.append(time.perf_counter() - started)
    finally:
        stop.set()
        spinner.join()
    return sorted(times)[len(times) // 2]


def own_server(durable: bool):  # -> tests/pgserver.PgServer, imported by path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import pgserver

    server = pgserver.PgServer()
    if durable:
        with open(server.data / "postgresql.conf", "a") as f:  # later lines win over the test settings
            f.write("\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
        server.restart()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--url", help="an empty PostgreSQL database to use instead of a server of our own")
    parser.add_argument("--fast-pg", action="store_true", help="our own server without fsync")
    parser.add_argument("--paths", action="store_true", help="also compare ways to upsert a batch on PostgreSQL")
    args = parser.parse_args()

    readings = make_readings(args.readings, args.meters)
    batches = [readings[i:i + args.batch] for i in range(0, len(readings), args.batch)]
    print(f"{args.readings:,} readings in batches of {args.batch}, {args.meters} meters x {len(QUANTITIES)} "
          f"quantities, {len({r.timestamp.date() for r in readings})} day(s)")

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, SqliteStore(Path(tmp)) as store:
        report("SqliteStore", store, batches)

    server = None
    try:
        if args.url:
            url = args.url
        else:
            server = own_server(durable=not args.fast_pg)
            url = server.new_database()
        with PostgresStore(Database(url), clock=lambda: BASE) as store:
            label = "PostgresStore" + ("" if args.url else " (no fsync)" if args.fast_pg else " (fsync)")
            report(label, store, batches)
        if args.paths:
            print("PostgreSQL write paths, raw (same table, same batches):")
            compare_paths(url, batches)
    finally:
        close_pools()
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
