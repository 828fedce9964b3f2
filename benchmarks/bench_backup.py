"""Backup and restore times of a site's system of record, SQLite and PostgreSQL.

Builds a state database of ``--accounts`` accounts with ``--entries`` ledger entries each (a year
of daily charges is 365), then times ``meterd backup`` and ``meterd restore`` (the library calls
the commands make) and checks the restored ledger equals the balances.  PostgreSQL runs on a
temporary server of its own (tests/pgserver.py), as the tests do.

    python benchmarks/bench_backup.py --accounts 100000 --entries 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from meterd.control.model import EntryKind, LedgerEntry  # noqa: E402
from meterd.control.state import AccountSpec, ControlStore  # noqa: E402
from meterd.storage.backup import backup, restore  # noqa: E402
from meterd.storage.database import Database, close_pools  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build(where, accounts: int, entries: int) -> None:
    with ControlStore(where) as store:
        specs = [AccountSpec(f"A{i:07d}", "res", {f"{i:012d}": Decimal(1)}, area=f"TA{i % 1000}")
                 for i in range(accounts)]
        store.upsert_accounts(specs, actor="bench", now=T0)
        for day in range(entries):
            at = T0 + timedelta(days=day)
            batch = [LedgerEntry(f"bench:{i}:{day}", f"A{i:07d}", EntryKind.PAYMENT if day == 0 else EntryKind.CHARGE,
                                 Decimal("500.00") if day == 0 else Decimal("-1.37"), at)
                     for i in range(accounts)]
            store.apply(batch, actor="bench", now=at, audit_each=False)


def measure(name: str, source, target, root: Path, accounts: int, entries: int) -> None:
    t = time.perf_counter()
    build(source, accounts, entries)
    built = time.perf_counter() - t
    t = time.perf_counter()
    files = backup(source, root / f"{name}-backup", now=datetime.now(UTC))
    took_backup = time.perf_counter() - t
    t = time.perf_counter()
    restore(root / f"{name}-backup", target)
    took_restore = time.perf_counter() - t
    with ControlStore(target) as store:
        assert store.verify_balances() == [], "restored balances differ from the ledger"
    size = sum(f.bytes for f in files) / 2**20
    print(f"{name:10s} {accounts:,} accounts, {accounts * entries:,} ledger entries (built in {built:.1f} s): "
          f"backup {took_backup:.1f} s ({size:.0f} MiB), restore {took_restore:.1f} s; balances equal the ledger")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=30, help="ledger entries per account")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.backend in ("sqlite", "both"):
            measure("sqlite", root / "live", root / "restored", root, args.accounts, args.entries)
        if args.backend in ("postgresql", "both"):
            import pgserver

            server = pgserver.PgServer()
            try:
                measure("postgresql", Database(server.new_database()), Database(server.new_database()), root,
                        args.accounts, args.entries)
            finally:
                close_pools()
                server.close()


if __name__ == "__main__":
    main()
