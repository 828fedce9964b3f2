"""Time and memory of ``meterd report balances`` over a large district.

Builds a state database of ``--accounts`` accounts in 1,000 areas with ``--entries`` ledger
entries each (a payment on 1 October 2026, then a charge every other day through November), then
runs the real command -- ``meterd report balances --period 2026-11 -o FILE.xlsx`` (base: October)
-- in a child process and prints its wall and CPU time and peak RSS (the child's own VmHWM),
beside the peak RSS of a child that only loads the CLI, the reports and openpyxl: the difference is what the report
costs.  The workbook is then opened read-only and its rows counted.  With ``--quality-days N`` it
also times ``meterd report quality`` over N days beside the N before, of as many meters.

    python benchmarks/bench_reports.py --accounts 100000 --entries 30 [--quality-days 7] [--dir /tmp/district]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

from meterd.control.model import EntryKind, LedgerEntry
from meterd.control.state import AccountSpec, ControlStore

T0 = datetime(2026, 10, 1, 1, tzinfo=UTC)


def build_quality(data: Path, meters: int, days: int) -> None:
    """``meters`` meters on channels of 100 in areas of 100, each with 4 ok attempts a day rolled up
    for ``days`` days from 2026-11-01 (written straight into the daily rollup: the fold itself is
    the daemon's cost, not the report's)."""
    import sqlite3

    from meterd.storage.quality import QualityStore
    from meterd.storage.sqlite import MeterRecord, SqliteStore

    with SqliteStore(data) as store:
        store.upsert_meters([MeterRecord(f"{i:012d}", f"ch{i // 100}", "dlt645-2007", Decimal(1), Decimal(1))
                             for i in range(meters)])
    with QualityStore(data) as quality:
        quality.set_areas({f"{i:012d}": f"TA{i // 100:04d}" for i in range(meters)})
    conn = sqlite3.connect(data / "state.sqlite3")
    for d in range(days):
        day = f"2026-11-{d + 1:02d}"
        conn.executemany("INSERT INTO quality_daily (day, meter, channel, outcome, count, latency_sum, latency_n, "
                         "first_ts, last_ts) VALUES (?, ?, ?, 'ok', 4, 0.4, 4, 0, 0)",
                         [(day, f"{i:012d}", f"ch{i // 100}") for i in range(meters)])
    conn.commit()
    conn.close()


def build(data: Path, accounts: int, entries: int) -> None:
    with ControlStore(data) as store:
        store.upsert_accounts([AccountSpec(f"A{i:07d}", "res", {f"{i:012d}": Decimal(1)}, customer=f"客户{i}",
                                           area=f"TA{i % 1000:04d}", opening_balance=Decimal(0))
                               for i in range(accounts)], actor="bench", now=T0 - timedelta(days=1))
        for n in range(entries):
            at = T0 + timedelta(days=2 * n)
            store.apply([LedgerEntry(f"bench:{i}:{n}", f"A{i:07d}", EntryKind.PAYMENT if n == 0 else EntryKind.CHARGE,
                                     Decimal("300.00") if n == 0 else Decimal("-4.37"), at) for i in range(accounts)],
                        actor="bench", now=at, audit_each=False)


# The child reports its own peak: VmHWM of the process after exec.  (getrusage's ru_maxrss of a
# child is no good here: Linux carries the parent's high-water mark -- this process has just built
# the database -- over fork and exec.)
_RUN: Final = """
import sys
from meterd.cli.main import build_parser, main
if len(sys.argv) > 1:
    rc = main(sys.argv[1:])
else:  # the baseline: every command's module, the reports and openpyxl loaded, nothing done
    import meterd.reports.kinds, openpyxl
    build_parser()
    rc = 0
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("VmHWM", hwm, file=sys.stderr)
sys.exit(rc)
"""


def child(args: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of ``meterd ARGS`` in a child process."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", _RUN, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    took = time.perf_counter() - t
    assert p.stderr is not None
    err = p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"meterd {' '.join(args)} failed: {err}")
    hwm = int(next(line.split()[1] for line in err.splitlines() if line.startswith("VmHWM")))
    return took, usage.ru_utime + usage.ru_stime, hwm / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=30, help="ledger entries per account (default 30)")
    parser.add_argument("--quality-days", type=int, default=0,
                        help="also time meterd report quality over this many days (at most 15; the base is as "
                             "many before) of --accounts meters (default: not)")
    parser.add_argument("--dir", type=Path, help="build the district here and keep it; a later run with the "
                                                 "same --dir reuses it")
    args = parser.parse_args()
    if not 0 <= args.quality_days <= 15:
        parser.error("--quality-days: 0 to 15 (the days are in November 2026)")
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        built = None
        if not (root / "site.toml").exists():
            t = time.perf_counter()
            build(root / "data", args.accounts, args.entries)
            built = time.perf_counter() - t
            (root / "site.toml").write_text('[store]\ndata_dir = "data"\n')
        base_s, _, base_rss = child([], root)
        took, cpu, rss = child(["report", "balances", "-c", "site.toml", "--period", "2026-11", "-o", "b.xlsx"], root)
        size = (root / "b.xlsx").stat().st_size / 2**20
        from openpyxl import load_workbook

        wb = load_workbook(root / "b.xlsx", read_only=True)
        rows = sum(1 for _ in wb["余额明细 Accounts"].iter_rows(min_row=8))
        wb.close()
        with ControlStore(root / "data") as store:
            accounts = len(store.accounts_by_state()) and sum(store.accounts_by_state().values())
        print(f"{accounts:,} accounts" + (f", {args.accounts * (args.entries + 1):,} ledger entries (built in "
                                          f"{built:.0f} s)" if built is not None else f" (reused {root})"))
        print(f"meterd report balances --period 2026-11: {took:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB "
              f"(loading meterd and openpyxl alone: {base_s:.1f} s, {base_rss:.0f} MiB); {size:.1f} MiB workbook, "
              f"{rows:,} account rows")
        if args.quality_days:
            qroot = root / "quality"
            qroot.mkdir(exist_ok=True)
            if not (qroot / "site.toml").exists():
                build_quality(qroot / "data", args.accounts, 2 * args.quality_days)
                (qroot / "site.toml").write_text('[store]\ndata_dir = "data"\n')
            period = f"2026-11-{args.quality_days + 1:02d}..2026-11-{2 * args.quality_days:02d}"  # base: the days before
            took, cpu, rss = child(["report", "quality", "-c", "site.toml", "--period", period, "-o", "q.xlsx"], qroot)
            print(f"meterd report quality --period {period} (and the {args.quality_days} days before) of "
                  f"{args.accounts:,} meters: {took:.1f} s wall, {cpu:.1f} s CPU "
                  f"({cpu / (2 * args.quality_days):.2f} s a day), peak RSS {rss:.0f} MiB")
        print(f"this process (building the database): peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
