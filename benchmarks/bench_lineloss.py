"""Daily line loss of a district: seconds to read the registers and compute every report, peak RSS.

Builds a scratch state database holding two daily freezes (the register at the start of the day
and at the start of the next) for ``--areas`` transformer areas of ``--per-area`` meters each
(1 supply point + the rest sales points), with about 1 % of meters missing a freeze and 0.5 %
estimated, then times:

- ``record``: writing the two days of frozen readings into :class:`DailyRegisterStore` (setup),
- ``read``: :meth:`DailyRegisterStore.registers` for the two days, every meter,
- ``compute``: :func:`line_loss_all` over every area.

Target: read + compute < 10 s for 1,000 areas x 100 meters.

    python benchmarks/bench_lineloss.py [--areas 1000] [--per-area 100]

Prints wall and CPU seconds (on a shared machine the CPU figure is the steadier one); it is not a
pass/fail test.  Time is fixed (no clock reads in the data).
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from meterd.analytics import DailyRegisterStore, Point, Role, Topology, Unit, line_loss_all
from meterd.analytics.energy import IMPORT_DAILY
from meterd.readings import Quality, Reading

DAY = date(2026, 11, 22)
FREEZE = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)  # 00:00 CST on DAY


def build(areas: int, per_area: int) -> tuple[Topology, list[Reading]]:
    rng = random.Random(20261122)
    units, points, readings = [], [], []
    for a in range(areas):
        name = f"TA{a:04d}"
        units.append(Unit(name, "area"))
        supply_meter = f"S{a:011d}"
        points.append(Point(supply_meter, name, Role.SUPPLY))
        used = Decimal(0)
        for k in range(per_area - 1):
            meter = f"{a * per_area + k:012d}"
            points.append(Point(meter, name, Role.SALES, industry=("resident", "commerce", "industry")[k % 3]))
            start = Decimal(rng.randrange(100_000, 5_000_000)) / 100
            day_use = Decimal(rng.randrange(100, 3_000)) / 100
            used += day_use
            readings += freezes(rng, meter, start, day_use)
        loss = used * Decimal(rng.randrange(20, 90)) / 1000
        readings += freezes(rng, supply_meter, Decimal(10_000_000 + a), (used + loss).quantize(Decimal("0.01")))
    return Topology.of(units, points), readings


def freezes(rng: random.Random, meter: str, start: Decimal, use: Decimal) -> list[Reading]:
    out = []
    for n, value in enumerate((start, start + use)):
        roll = rng.random()
        if roll < 0.005:
            continue  # missed freeze
        quality = Quality.ESTIMATED if roll < 0.0075 else Quality.GOOD
        out.append(Reading(meter, IMPORT_DAILY, FREEZE + timedelta(days=n), value, "kWh", quality))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--areas", type=int, default=1_000)
    parser.add_argument("--per-area", type=int, default=100)
    args = parser.parse_args()
    topology, readings = build(args.areas, args.per_area)
    meters = len(topology.points)
    with tempfile.TemporaryDirectory(prefix="bench-lineloss-") as tmp:
        store = DailyRegisterStore(tmp)
        t, c = time.perf_counter(), time.process_time()
        written = store.record(readings)
        record_s, record_cpu = time.perf_counter() - t, time.process_time() - c
        del readings
        store.close()

        store = DailyRegisterStore(tmp)  # a fresh connection, as a report run would have
        t, c = time.perf_counter(), time.process_time()
        registers = store.registers([DAY, DAY + timedelta(days=1)])
        read_s, read_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        reports = line_loss_all(topology, registers, DAY, DAY)
        compute_s, compute_cpu = time.perf_counter() - t, time.process_time() - c
        store.close()
    flags = Counter(f for r in reports for f in r.flags)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"areas {args.areas}, meters {meters}, register rows written {written}")
    print(f"                   {'wall':>8}   {'cpu':>8}")
    print(f"record (setup)     {record_s:8.3f} s {record_cpu:8.3f} s")
    print(f"read registers     {read_s:8.3f} s {read_cpu:8.3f} s   ({len(registers)} registers)")
    print(f"compute reports    {compute_s:8.3f} s {compute_cpu:8.3f} s   ({len(reports)} reports)")
    print(f"read + compute     {read_s + compute_s:8.3f} s {read_cpu + compute_cpu:8.3f} s   (target < 10 s)")
    print(f"flags              {dict(sorted(flags.items()))}")
    print(f"peak RSS           {rss:8.1f} MiB")


if __name__ == "__main__":
    main()
