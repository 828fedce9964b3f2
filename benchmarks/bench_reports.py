"""Time and memory of ``meterd report balances`` over a large district.

Builds a state database of ``--accounts`` accounts in 1,000 areas with ``--entries`` ledger
entries each (a payment on 1 October 2026, then a charge every other day through November), then
runs the real command -- ``meterd report balances --period 2026-11 -o FILE.xlsx`` (base: October)
-- in a child process and prints its wall and CPU time and peak RSS (the child's own VmHWM),
beside the peak RSS of a child that only loads the CLI, the reports and openpyxl: the difference is what the report
costs.  The workbook is then opened read-only and its rows counted.  With ``--quality-days N`` it
also times ``meterd report quality`` over the last N days of November 2026 beside its base (N = 30:
the month against October's 31 days; else the N days before) over ``--quality-meters`` meters
(default: as many as accounts), and prints a digest of the workbook's figures, so runs of two
versions of the report can be checked to agree.  ``--quality-only`` skips the balances report.

    python benchmarks/bench_reports.py --accounts 100000 --entries 30 [--quality-days 7] [--dir /tmp/district]
    python benchmarks/bench_reports.py --quality-only --quality-meters 100000 --quality-days 30 --dir /tmp/district
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from meterd.control.model import EntryKind, LedgerEntry
from meterd.control.state import AccountSpec, ControlStore

T0 = datetime(2026, 10, 1, 1, tzinfo=UTC)


def build_quality(data: Path, meters: int, first: date, last: date) -> None:
    """``meters`` meters on channels of 100 in areas of 100, rolled up for the days ``first`` ..
    ``last`` (written straight into the daily rollup: the fold itself is the daemon's cost, not the
    report's): 4 ok attempts a meter a day, except that a meter in 97 is silent each day (a
    different one each day), and one in 250 also has a timeout.  Each channel is watched from the
    day before ``first`` and online all day but an hour (a different hour per channel)."""
    import sqlite3

    from meterd.clock import CST
    from meterd.storage.quality import QualityStore
    from meterd.storage.sqlite import MeterRecord, SqliteStore, to_ms

    with SqliteStore(data) as store:
        store.upsert_meters([MeterRecord(f"{i:012d}", f"ch{i // 100}", "dlt645-2007", Decimal(1), Decimal(1))
                             for i in range(meters)])
    with QualityStore(data) as quality:
        quality.set_areas({f"{i:012d}": f"TA{i // 100:04d}" for i in range(meters)})
    conn = sqlite3.connect(data / "state.sqlite3")
    channels = (meters + 99) // 100
    watch = to_ms(datetime.combine(first - timedelta(days=1), datetime.min.time(), CST))
    conn.executemany("INSERT INTO terminal_watch (terminal, since_ts) VALUES (?, ?)",
                     [(f"ch{c}", watch) for c in range(channels)])
    for d in range((last - first).days + 1):
        day = first + timedelta(days=d)
        n = day.toordinal()
        conn.executemany("INSERT INTO quality_daily (day, meter, channel, outcome, count, latency_sum, latency_n, "
                         "first_ts, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)",
                         [row for i in range(meters) if (i + n) % 97
                          for row in ((day.isoformat(), f"{i:012d}", f"ch{i // 100}", "ok", 4, 0.4, 4),
                                      *(((day.isoformat(), f"{i:012d}", f"ch{i // 100}", "timeout", 1, 0, 0),)
                                        if i % 250 == 0 else ()))])
        start = to_ms(datetime.combine(day, datetime.min.time(), CST))
        out = []
        for c in range(channels):  # online 00:00 .. hh:00 and hh+1:00 .. 24:00
            hh = (c + n) % 24
            out += [(f"ch{c}", start, start + hh * 3_600_000), (f"ch{c}", start + (hh + 1) * 3_600_000,
                                                                 start + 86_400_000)]
        conn.executemany("INSERT OR IGNORE INTO terminal_online (terminal, start_ts, end_ts) VALUES (?, ?, ?)", out)
        conn.commit()
    conn.close()


def quality_periods(days: int) -> Any:
    """The reporting period of ``--quality-days`` and its base (mom)."""
    from meterd.reports.periods import report_periods

    text = "2026-11" if days == 30 else f"2026-11-{31 - days:02d}..2026-11-30"
    return report_periods(text, None, today=date(2026, 12, 5)), text


def digest(path: Path) -> str:
    """sha256 of every sheet's rows under the title block (the figures, not the time generated)."""
    import hashlib

    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True)
    h = hashlib.sha256()
    for ws in wb.worksheets:
        h.update(ws.title.encode())
        for row in ws.iter_rows(min_row=7, values_only=True):
            h.update(repr(row).encode())
    wb.close()
    return h.hexdigest()[:16]


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
                        help="also time meterd report quality over the last this many days of November 2026 "
                             "(1 to 30; 30: the month, against October) and its base (default: not)")
    parser.add_argument("--quality-meters", type=int, help="meters of the quality report (default: --accounts)")
    parser.add_argument("--quality-only", action="store_true", help="time the quality report only, not balances")
    parser.add_argument("--dir", type=Path, help="build the district here and keep it; a later run with the "
                                                 "same --dir reuses it")
    args = parser.parse_args()
    if not 0 <= args.quality_days <= 30:
        parser.error("--quality-days: 0 to 30 (the days are in November 2026)")
    if args.quality_only and not args.quality_days:
        parser.error("--quality-only needs --quality-days")
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not args.quality_only:
            balances(root, args.accounts, args.entries)
        if args.quality_days:
            quality(root, args.quality_meters or args.accounts, args.quality_days)
        print(f"this process (building the database): peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def balances(root: Path, accounts: int, entries: int) -> None:
    built = None
    if not (root / "site.toml").exists():
        t = time.perf_counter()
        build(root / "data", accounts, entries)
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
        found = len(store.accounts_by_state()) and sum(store.accounts_by_state().values())
    print(f"{found:,} accounts" + (f", {accounts * (entries + 1):,} ledger entries (built in "
                                   f"{built:.0f} s)" if built is not None else f" (reused {root})"))
    print(f"meterd report balances --period 2026-11: {took:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB "
          f"(loading meterd and openpyxl alone: {base_s:.1f} s, {base_rss:.0f} MiB); {size:.1f} MiB workbook, "
          f"{rows:,} account rows")


def quality(root: Path, meters: int, days: int) -> None:
    periods, period = quality_periods(days)
    qroot = root / f"quality-{meters}-{days}"
    qroot.mkdir(exist_ok=True)
    if not (qroot / "site.toml").exists():
        t = time.perf_counter()
        build_quality(qroot / "data", meters, periods.base.start, periods.report.end)
        (qroot / "site.toml").write_text('[store]\ndata_dir = "data"\n')
        print(f"quality rollup of {meters:,} meters, {periods.base.start}..{periods.report.end}: built in "
              f"{time.perf_counter() - t:.0f} s")
    took, cpu, rss = child(["report", "quality", "-c", "site.toml", "--period", period, "-o", "q.xlsx"], qroot)
    counted = periods.report.days + periods.base.days
    print(f"meterd report quality --period {period} (base {periods.base.text()}) of {meters:,} meters: "
          f"{took:.1f} s wall, {cpu:.1f} s CPU ({cpu / counted:.2f} s a day of {counted}), peak RSS {rss:.0f} MiB; "
          f"figures {digest(qroot / 'q.xlsx')}")


if __name__ == "__main__":
    main()
