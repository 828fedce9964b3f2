"""Billing link: payment import throughput from a drop-folder CSV into the ledger.

Builds a scratch state database with ``--accounts`` prepaid accounts, drops one CSV of
``--payments`` payments (UTF-8, a header row, every account paying in turn) into a drop folder's
inbox and times :func:`run_job` -- parse, validate, the bulk ledger path (one
``ControlStore.apply`` per chunk of ``payment:ID`` entries, audited per entry) and the per-chunk
progress commits.  Then the same file is dropped again (recognised by its SHA-256: all
duplicates), the same payments in a file with other bytes (every record looked up in the ledger
as a duplicate), and, for comparison, ``--pay-sample`` payments go through ``ControlStore.pay`` one
transaction each.

    python benchmarks/bench_billing.py [--accounts 10000] [--payments 100000] [--chunk 500]
    python benchmarks/bench_billing.py --postgres            # a temporary PostgreSQL of its own
    python benchmarks/bench_billing.py --database postgresql://user@host/emptydb
    python benchmarks/bench_billing.py --file-mb 60          # one large file: peak RSS and CPU only

``--file-mb N`` drops one payments CSV of about N MB (``max_file_mb`` raised to fit) and prints the
import's wall and CPU time, the process's RSS before it and its peak RSS after it (the peak the
import reached: the setup before it is small), and nothing else.

The state lives in a temporary SQLite file by default; ``--postgres`` and ``--database`` as in
bench_prepaid.py (a temporary server of its own from tests/pgserver.py, or an existing, empty
database).  The drop folder is a temporary directory either way.

Prints numbers; it is not a pass/fail test.  Time is fixed (no clock reads in the data).
"""

from __future__ import annotations

import argparse
import math
import resource
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from bench_prepaid import location  # benchmarks/ is the script's directory: on sys.path

from meterd.billing_link.jobs import JobKind, JobSpec, run_job
from meterd.control.state import AccountSpec, ControlStore
from meterd.storage.database import Database

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)


def account(i: int) -> str:
    return f"A{i:06d}"


def write_payments(path: Path, n: int, accounts: int, prefix: str = "P") -> Decimal:
    total = Decimal(0)
    paid = (NOW - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("payment_id,account,amount,paid_at,channel\r\n")
        for i in range(n):
            amount = Decimal(10 + i % 190) + Decimal(i % 100) / 100
            total += amount
            f.write(f"{prefix}{i:08d},{account(i % accounts)},{amount},{paid},wechat\r\n")
    return total


def drop(folder: Path, src: Path, name: str) -> None:
    tmp = folder / "inbox" / (name + ".tmp")
    shutil.copy(src, tmp)
    tmp.rename(folder / "inbox" / name)


def rss_mb() -> float:
    """The process's resident set now, MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_large_file(args: argparse.Namespace, state_at: Path, folder: Path, tmp: Path) -> None:
    """One payments CSV of about ``--file-mb`` MB: peak RSS and CPU of its import."""
    src = tmp / "payments.csv"
    per_line = len(f"P{0:08d},{account(0)},10.00,2026-11-23 09:00:00,wechat\r\n")
    n = int(args.file_mb * 1e6 / per_line)
    total = write_payments(src, n, args.accounts)
    size = src.stat().st_size
    spec = JobSpec("payments", JobKind.IMPORT_PAYMENTS, folder=folder, chunk=args.chunk,
                   max_file_mb=max(64, math.ceil(size / 2**20) + 1))
    drop(folder, src, "payments-1.csv")
    before = rss_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = run_job(spec, where=state_at, now=NOW)
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert result.applied == n, result.as_dict()
    with ControlStore(state_at) as store:
        assert sum((a.balance for a in store.accounts()), Decimal(0)) == total
    print(f"import {n:,} payments, one {size / 1e6:.1f} MB CSV (chunk {args.chunk}): {elapsed:.1f} s wall, "
          f"{cpu:.1f} s CPU; RSS {before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.0f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--payments", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--pay-sample", type=int, default=2000)
    ap.add_argument("--file-mb", type=float, metavar="MB",
                    help="only import one payments CSV of about MB megabytes and print peak RSS and CPU")
    where_group = ap.add_mutually_exclusive_group()
    where_group.add_argument("--postgres", action="store_true",
                             help="start a temporary PostgreSQL server (tests/pgserver.py) and run on it")
    where_group.add_argument("--database", metavar="URL", help="an existing, empty PostgreSQL database")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, location(args) as (where, backend):
        state_at = where if isinstance(where, Database) else Path(tmp) / "data"
        folder = Path(tmp) / "drop"
        (folder / "inbox").mkdir(parents=True)
        print(f"state: {backend}")
        t0 = time.perf_counter()
        with ControlStore(state_at) as store:
            store.upsert_accounts([AccountSpec(account(i), "flat", {f"{i:012d}": Decimal(1)})
                                   for i in range(args.accounts)], actor="bench", now=NOW)
        print(f"setup: {args.accounts} accounts in {time.perf_counter() - t0:.2f} s")
        if args.file_mb:
            one_large_file(args, state_at, folder, Path(tmp))
            return
        src = Path(tmp) / "payments.csv"
        total = write_payments(src, args.payments, args.accounts)
        size = src.stat().st_size
        spec = JobSpec("payments", JobKind.IMPORT_PAYMENTS, folder=folder, chunk=args.chunk)

        drop(folder, src, "payments-1.csv")
        t0 = time.perf_counter()
        result = run_job(spec, where=state_at, now=NOW)
        elapsed = time.perf_counter() - t0
        assert result.applied == args.payments, result.as_dict()
        print(f"import {args.payments} payments ({size / 1e6:.1f} MB CSV, chunk {args.chunk}): {elapsed:.2f} s, "
              f"{args.payments / elapsed:,.0f} records/s")

        drop(folder, src, "payments-2.csv")
        t0 = time.perf_counter()
        result = run_job(spec, where=state_at, now=NOW + timedelta(minutes=5))
        elapsed = time.perf_counter() - t0
        assert result.applied == 0 and result.duplicates == args.payments, result.as_dict()
        print(f"the same file dropped again (identical bytes): {elapsed:.2f} s")

        resent = Path(tmp) / "resent.csv"
        resent.write_bytes(src.read_bytes().replace(b"\r\n", b"\n"))  # other bytes, the same payments
        drop(folder, resent, "payments-3.csv")
        t0 = time.perf_counter()
        result = run_job(spec, where=state_at, now=NOW + timedelta(minutes=10))
        elapsed = time.perf_counter() - t0
        assert result.applied == 0 and result.duplicates == args.payments, result.as_dict()
        print(f"the same payments in another file, every record looked up as a duplicate: {elapsed:.2f} s, "
              f"{args.payments / elapsed:,.0f} records/s")

        with ControlStore(state_at) as store:
            balance = sum((a.balance for a in store.accounts()), Decimal(0))
            assert balance == total, (balance, total)
            assert not store.verify_balances()
            n = min(args.pay_sample, args.payments)
            t0 = time.perf_counter()
            for i in range(n):
                store.pay(account(i % args.accounts), "10.00", f"Q{i:08d}", actor="bench", now=NOW)
            elapsed = time.perf_counter() - t0
        print(f"for comparison, ControlStore.pay one by one: {n} in {elapsed:.2f} s, {n / elapsed:,.0f} records/s")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"sum of balances = file total = {total}; peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
