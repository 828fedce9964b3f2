"""The analytics runtime's anomaly check at district scale: one :meth:`AnomalyStore.update` round
as ``AnalyticsRuntime._detect`` makes it every ``check_every`` (60 s): a finding for each of
``--meters`` meters whose event is already open, every detected kind of every meter checked, in a
scratch data directory (SQLite) or ``--postgres URL`` (an empty database).

Two cases, ``--case``:

- ``same``: each event's evidence holds ``--evidence`` entries and every check brings one of them
  again (a meter without data: the same newest reading each check) -- nothing changes but
  ``last_seen``;
- ``fresh``: every check brings a new reading (chronic low voltage), so each event's evidence
  changes; seeded with ``--evidence`` entries (50 = full: the oldest of the latest half goes).

The round takes new evidence into an event once in ``--evidence-every`` minutes at most, as the
runtime's does (:data:`~meterd.storage.anomalies.EVIDENCE_EVERY`); 0: every check.

Prints the seeding time and, per check, wall time, CPU time of this process, bytes this process
wrote to disk (SQLite; /proc/self/io) and the peak RSS, then the size of the database files.

    python benchmarks/bench_anomalies.py [--meters 100000] [--evidence 1] [--case same] [--checks 2]
    python benchmarks/bench_anomalies.py --evidence 50 --case fresh [--evidence-every 0] [--postgres URL]

Prints numbers; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.storage import anomalies as _store
from meterd.storage.anomalies import DETECTED

EVIDENCE_EVERY: timedelta = getattr(_store, "EVIDENCE_EVERY", timedelta(0))  # none before it was (old code)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
QUANTITY = "voltage.a"


def evidence(meter: str, first: datetime, count: int) -> tuple[dict[str, str], ...]:
    return tuple({"meter": meter, "quantity": QUANTITY, "timestamp": (first + timedelta(minutes=j)).isoformat(),
                  "value": "171.3"} for j in range(count))


def written() -> int | None:
    """Bytes this process has caused to be written to storage (Linux), or None."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--evidence", type=int, default=1, help="entries of each open event's evidence at the start")
    parser.add_argument("--case", choices=("same", "fresh"), default="same")
    parser.add_argument("--checks", type=int, default=2)
    parser.add_argument("--evidence-every", type=float, default=EVIDENCE_EVERY.total_seconds() / 60,
                        help="minutes (0: new evidence taken every check)")
    parser.add_argument("--postgres", help="a PostgreSQL URL (an empty database) instead of SQLite")
    args = parser.parse_args()
    where: Any
    if args.postgres:
        from meterd.storage.database import Database

        where = Database(args.postgres)
    else:
        where = Path(tempfile.mkdtemp(prefix="bench-anomalies-"))
    meters = [f"{i:012d}" for i in range(args.meters)]
    print(f"{args.meters} open events of {args.evidence} evidence entries, case {args.case} "
          f"({'PostgreSQL' if args.postgres else 'SQLite'}), evidence taken every {args.evidence_every:g} min")
    with AnomalyStore(where) as store:
        started = time.perf_counter()
        store.update([Finding(m, Kind.VOLTAGE, Severity.WARNING, T0, "phase a 171.3..171.3 V",
                              evidence(m, T0, args.evidence)) for m in meters], [], T0 + timedelta(minutes=args.evidence - 1))
        print(f"seeding {time.perf_counter() - started:9.1f} s")
        checked = [(m, k) for m in meters for k in DETECTED]
        every = timedelta(minutes=args.evidence_every) if args.evidence_every else None
        for r in range(args.checks):
            now = T0 + timedelta(minutes=args.evidence + r)
            newest = T0 + timedelta(minutes=args.evidence - 1 if args.case == "same" else args.evidence + r)
            findings = [Finding(m, Kind.VOLTAGE, Severity.WARNING, T0, "phase a 171.3..171.3 V",
                                evidence(m, newest, 1)) for m in meters]
            cpu, wall, io = time.process_time(), time.perf_counter(), written()
            opened, closed = store.update(findings, checked, now, **({"evidence_every": every} if every else {}))
            assert not opened and not closed
            after = None if args.postgres else written()  # PostgreSQL writes in its server
            wrote = f"{(after - io) / 2**20:8.0f} MiB written, " if io is not None and after is not None else ""
            print(f"check {r}: {time.perf_counter() - wall:6.2f} s wall, {time.process_time() - cpu:6.2f} s CPU, "
                  f"{wrote}peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        newest = [e.evidence[-1]["timestamp"] for e in store.events("open", limit=args.meters)]
        print(f"evidence's newest entry: {len(set(newest))} distinct, the latest {max(newest)}")
    if not args.postgres:
        print(f"database files {sum(f.stat().st_size for f in where.iterdir()) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
