"""The alarm list at district scale: how long one sync takes (gather the conditions from the stores,
raise / refresh / resolve) and how long a page of the list takes, with ``--anomalies`` open anomaly
events (each with its evidence, as the detectors keep it), ``--failed`` meters whose last trip
failed and ``--outages`` outages, in a scratch data directory (SQLite) or ``--postgres URL``.

Prints: the first sync (every alarm raised), a sync with nothing changed (what each list or
overview request costs at most every 10 s, and the daemon every 15 s), a sync after 10 % of the
anomalies closed, and a page of 100 alarms with their history, with the counts.

    python benchmarks/bench_alarms.py [--anomalies 20000] [--failed 500] [--outages 50] [--postgres URL]

Prints numbers; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterd.analytics.anomalies import AnomalyStore, Finding, Kind, Severity
from meterd.analytics.outages import OutageFinding, OutageStore
from meterd.api.alarms import AlarmWatch
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.state import ControlStore

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def seed(where: Any, anomalies: int, failed: int, outages: int) -> None:
    evidence = tuple({"meter": "m", "quantity": "voltage.a", "timestamp": (NOW - timedelta(minutes=i)).isoformat(),
                      "value": "180.1"} for i in range(10))
    with AnomalyStore(where) as store:
        store.update([Finding(f"{i:012d}", Kind.VOLTAGE, Severity.WARNING, NOW, "phase a 180..185 V", evidence)
                      for i in range(anomalies)], [], NOW)
    with ControlStore(where) as control:
        cmds = control.queue_commands([CommandRequest(f"{i:012d}", CommandKind.TRIP, "low balance", "policy")
                                       for i in range(failed)], now=NOW, ttl=timedelta(hours=2))
        for c in cmds:
            control.mark_sent(c.id, now=NOW)
            control.finish(c.id, CommandState.FAILED, now=NOW, detail="control anomaly",
                           read_back={"relay.open": False})
    with OutageStore(where) as store:
        store.update([OutageFinding(f"TA-{i}", NOW, (f"{i:012d}",), Decimal(1)) for i in range(outages)], NOW,
                     lambda m: None)


def timed(what: str, func: Any) -> Any:
    started = time.perf_counter()
    result = func()
    print(f"{what:<48} {1000 * (time.perf_counter() - started):9.1f} ms")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anomalies", type=int, default=20_000)
    parser.add_argument("--failed", type=int, default=500)
    parser.add_argument("--outages", type=int, default=50)
    parser.add_argument("--postgres", help="a PostgreSQL URL (an empty database) instead of SQLite")
    args = parser.parse_args()
    where: Any
    if args.postgres:
        from meterd.storage.database import Database

        where = Database(args.postgres)
    else:
        where = Path(tempfile.mkdtemp(prefix="bench-alarms-"))
    print(f"{args.anomalies} open anomalies, {args.failed} failed trips, {args.outages} outages "
          f"({'PostgreSQL' if args.postgres else 'SQLite'})")
    timed("seeding", lambda: seed(where, args.anomalies, args.failed, args.outages))
    with ControlStore(where) as control, AnomalyStore(where) as anomalies, OutageStore(where) as outages:
        watch = AlarmWatch(where, control=control, anomalies=anomalies, outages=outages)
        raised, _ = timed("first sync (every alarm raised)", lambda: watch.refresh(NOW, force=True))
        print(f"{'':<48} {len(raised):9d} alarms")
        timed("sync, nothing changed", lambda: watch.refresh(NOW + timedelta(seconds=15), force=True))
        closing = [(f"{i:012d}", Kind.VOLTAGE) for i in range(0, args.anomalies, 10)]
        anomalies.update([], closing, NOW + timedelta(seconds=20))
        _, resolved = timed("sync, 10 % of the anomalies closed", lambda: watch.refresh(NOW + timedelta(seconds=30),
                                                                                      force=True))
        print(f"{'':<48} {len(resolved):9d} resolved")
        timed("a page of 100 with history", lambda: watch.store.alarms(limit=100))
        timed("a page of 100 open ones", lambda: watch.store.alarms(state="open", limit=100))
        timed("counts", watch.store.counts)
        watch.close()


if __name__ == "__main__":
    main()
