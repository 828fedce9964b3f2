"""InfluxStore throughput: readings/s written to a line-protocol server, spooled, and replayed.

Starts its own VictoriaMetrics (``apt-get install victoria-metrics``; it speaks InfluxDB's
``/api/v2/write``) on a free port with a scratch data directory, unless ``--url`` names a running
server (a real InfluxDB 2: also pass ``--org``, ``--bucket``, ``--token``).  Rows:

- line-protocol encoding alone (``encode_reading``), readings/s;
- spool append (records/s; one fdatasync per ``--per-call`` lines), the durable path's floor;
- ``write_readings`` with the server up (direct HTTP), readings/s;
- ``write_readings`` with the server down (encode + spool), readings/s;
- ``replay`` of that spool into the server, readings/s.

Prints numbers; it is not a pass/fail test.  The readings are DL/T 645 energy registers of
``--meters`` meters, one minute apart, fixed timestamps (no clock reads in the data).

    python benchmarks/bench_influx.py [--readings 200000] [--per-call 500] [--batch 5000]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from meterd.readings import Reading
from meterd.storage.influx import InfluxStore, encode_reading
from meterd.storage.spool import Spool

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
QUANTITIES = [
    "energy.active.import.total",
    "energy.active.export.total",
    "voltage.a",
    "current.a",
    "power.active.total",
]


def make_readings(n: int, meters: int, offset: int = 0) -> list[Reading]:
    out = []
    for i in range(offset, offset + n):
        meter, rest = divmod(i, len(QUANTITIES))
        step, meter = divmod(meter, meters)
        out.append(
            Reading(
                f"{meter:012d}",
                QUANTITIES[rest],
                BASE + timedelta(minutes=step),
                Decimal(i % 100000) / 100 + Decimal("12000.00"),
                "kWh",
            )
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_victoria(data: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise SystemExit("victoria-metrics is not installed (apt-get install -y victoria-metrics), or pass --url")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}", "-retentionPeriod=100y"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(500):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("victoria-metrics did not start")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--per-call", type=int, default=500, help="readings per write_readings call (BatchWriter size)")
    ap.add_argument("--batch", type=int, default=5000, help="InfluxStore batch: lines per HTTP request")
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--url", help="a running server instead of a scratch VictoriaMetrics")
    ap.add_argument("--org", default="meterd")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--token", default="")
    args = ap.parse_args()
    n = args.readings
    readings = make_readings(n, args.meters)
    calls = chunks(readings, args.per_call)

    with tempfile.TemporaryDirectory(prefix="bench-influx-") as tmp:
        root = Path(tmp)
        proc = None
        url = args.url
        if url is None:
            proc, url = start_victoria(root / "vm")
        try:
            rows: list[tuple[str, float, str]] = []

            encoded: list[bytes] = []
            t = timed(lambda: encoded.extend(encode_reading(r) for r in readings))
            rows.append(("encode_reading (line protocol)", n / t, "readings/s"))
            avg = sum(map(len, encoded)) / n

            with Spool(root / "spool-only") as spool:
                t = timed(lambda: [spool.append(c) for c in chunks(encoded, args.per_call)])
                rows.append((f"Spool.append, {args.per_call} records + fdatasync per call", n / t, "records/s"))
                rows.append(("  = appends (fdatasync) per second", len(calls) / t, "calls/s"))
                rows.append(("  spool bytes per reading", spool.size_bytes / n, "bytes"))

            def store(spool_dir: Path, target: str) -> InfluxStore:
                return InfluxStore(target, args.org, args.bucket, args.token, spool_dir, timeout=10, batch=args.batch)

            with store(root / "spool-up", url) as s:
                t = timed(lambda: [s.write_readings(c) for c in calls])
                assert s.spool_size() == (0, 0) and s.stats.written == n, s.stats
                rows.append((f"write_readings, server up ({args.per_call}/call)", n / t, "readings/s"))

            big = make_readings(n, args.meters, offset=n)  # other timestamps: no overwrites
            with store(root / "spool-down", f"http://127.0.0.1:{free_port()}") as s:
                t = timed(lambda: [s.write_readings(c) for c in chunks(big, args.per_call)])
                assert s.spool_size()[0] == n, s.spool_size()
                rows.append((f"write_readings, server down -> spool ({args.per_call}/call)", n / t, "readings/s"))
            with store(root / "spool-down", url) as s:
                written = 0

                def replay() -> None:
                    nonlocal written
                    written = s.replay()

                t = timed(replay)
                assert written == n and s.spool_size() == (0, 0), (written, s.spool_size())
                rows.append((f"replay spool -> server ({args.batch}/request)", n / t, "readings/s"))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait()

    server = args.url or "VictoriaMetrics (scratch)"
    print(f"InfluxStore, {n} readings, {avg:.0f} bytes of line protocol each, server {server}")
    for name, value, unit in rows:
        print(f"  {name:<58} {value:>12,.0f} {unit}")


if __name__ == "__main__":
    main()
