"""Charging and policy for a whole district after one daily round: seconds and peak RSS.

Builds a scratch state database with ``--accounts`` prepaid accounts (one meter each, a mix of
flat, tiered and time-of-use-from-registers tariffs, payments applied, cursors set by the previous
day's readings), then feeds one daily round of register readings to the engine and times
:meth:`PrepaidEngine.run_pass` -- charging (ledger entries, cursors, tier usage, in one
transaction) and the policy (views, decisions, control states, queued commands).  About 2 % of the
accounts are set up to cross a threshold so commands are queued too.  Target: < 5 s for 100,000.

    python benchmarks/bench_prepaid.py [--accounts 100000]
    python benchmarks/bench_prepaid.py --postgres            # a temporary PostgreSQL of its own
    python benchmarks/bench_prepaid.py --database postgresql://user@host/emptydb
    python benchmarks/bench_prepaid.py --relays [--postgres]   # CommandStore.observe_relays only

The state lives in a temporary SQLite file by default.  ``--postgres`` starts a PostgreSQL server
of its own (tests/pgserver.py: initdb on a free port in a temporary directory, fsync off) and
removes it afterwards; ``--database`` uses an existing, empty database (refused if it holds
accounts) and leaves the tables behind.

``--relays`` times only the relay states the regular polls report
(:meth:`~meterd.control.command_store.CommandStore.observe_relays`, the start of every pass):
every meter's first state, then a pass per 15-minute round for two hours in which every meter
reports its four flags unchanged, then one with 1 % of them changed; with the rows each pass
wrote.  (CPU is this process's: on PostgreSQL the server's work is not in it.)

Prints numbers; it is not a pass/fail test.  Time is fixed (no clock reads in the data).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from meterd.control.engine import PrepaidEngine, PrepaidSettings
from meterd.control.model import TOU_RATES, EntryKind, LedgerEntry, Rate
from meterd.control.policy import SafetyRules, Threshold, Thresholds
from meterd.control.state import AccountSpec, ControlStore
from meterd.control.tariff import Tariff, TariffKind, TariffVersion, Tier
from meterd.readings import Reading
from meterd.storage.database import Database, Location, close_pools

DAY0 = datetime(2026, 11, 22, 16, 10, tzinfo=UTC)  # 00:10 CST: the daily frozen round
DAY1 = DAY0 + timedelta(days=1)
EFFECTIVE = date(2026, 1, 1)
TARIFFS = {
    "flat": Tariff("flat", (TariffVersion(EFFECTIVE, TariffKind.FLAT, price=Decimal("0.5283")),)),
    "tiered": Tariff("tiered", (TariffVersion(EFFECTIVE, TariffKind.TIERED, tiers=(
        Tier(Decimal(2160), Decimal("0.4883")), Tier(Decimal(4800), Decimal("0.5383")), Tier(None, Decimal("0.7883")))),)),
    "tou": Tariff("tou", (TariffVersion(EFFECTIVE, TariffKind.TOU, rate_prices={
        Rate.SHARP: Decimal("1.0"), Rate.PEAK: Decimal("0.8"), Rate.FLAT: Decimal("0.55"),
        Rate.VALLEY: Decimal("0.3")}),)),
}
THRESHOLDS = Thresholds(Threshold(Decimal(50)), Threshold(Decimal(20)), Threshold(Decimal(0)), Threshold(Decimal(10)))


def meter(i: int) -> str:
    return f"{i:012d}"


def readings(n: int, at: datetime, day: int) -> list[Reading]:
    out = []
    for i in range(1, n + 1):
        base = Decimal(1000 + i % 5000) + Decimal(day) * Decimal("8.37")
        if i % 3 == 2:  # time-of-use accounts: the four rate registers
            for k, rate in enumerate(TOU_RATES):
                out.append(Reading(meter(i), rate.quantity, at, base / 4 + k, "kWh"))
        else:
            out.append(Reading(meter(i), "frozen.daily.energy.active.import.total", at, base, "kWh"))
    return out


@contextlib.contextmanager
def location(args: argparse.Namespace) -> Iterator[tuple[Location, str]]:
    """Where the state lives for the run, and how to name it."""
    if args.database:
        db = Database(args.database)
        with ControlStore(db) as probe:
            if probe.accounts(limit=1):
                sys.exit(f"{db}: the database holds accounts already; give the benchmark an empty one")
        yield db, f"PostgreSQL {db}"
        close_pools()
        return
    if args.postgres:
        path = Path(__file__).resolve().parent.parent / "tests" / "pgserver.py"
        spec = importlib.util.spec_from_file_location("pgserver", path)
        assert spec is not None and spec.loader is not None
        pgserver = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(pgserver)
        server = pgserver.PgServer()
        try:
            yield Database(server.new_database("bench")), f"PostgreSQL (temporary server, port {server.port})"
        finally:
            close_pools()
            server.close()
        return
    with tempfile.TemporaryDirectory(prefix="bench-prepaid-") as tmp:
        yield Path(tmp), "SQLite (temporary file)"


def vacuum(db: Database) -> None:
    """VACUUM ANALYZE after the setup: the setup rewrote every account several times within
    minutes, and the pass would otherwise race autovacuum catching up (between two real daily
    passes it has a day)."""
    import psycopg

    with psycopg.connect(db.url, password=db.password, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


RELAY_FLAGS = ("relay.open", "relay.command_open", "alarm.pre_trip", "relay.protected")


def relay_passes(where: Location, n: int) -> None:
    """observe_relays for ``n`` meters: the first states, then passes of polls 15 minutes apart."""
    from meterd.control import command_store

    refresh = getattr(command_store, "RELAY_REFRESH", None)

    def polls(at: datetime, changed_every: int = 0) -> dict[str, dict[str, tuple[datetime, bool]]]:
        return {meter(i): {f: (at, f == "relay.open" and changed_every > 0 and i % changed_every == 0)
                           for f in RELAY_FLAGS} for i in range(1, n + 1)}

    def written(store: ControlStore, at: datetime) -> int:
        return int(store._read("SELECT COUNT(*) FROM relay_states WHERE ts = ?", (int(at.timestamp() * 1000),))[0][0])

    with ControlStore(where) as store:
        rounds = [("first states", DAY0, 0)]
        rounds += [(f"unchanged, +{15 * k} min", DAY0 + timedelta(minutes=15 * k), 0) for k in range(1, 9)]
        rounds.append(("1 % changed, +135 min", DAY0 + timedelta(minutes=135), 100))
        print(f"observe_relays for {n:,} meters, {len(RELAY_FLAGS)} flags each, polled every 15 minutes "
              f"(refresh age: {refresh if refresh is not None else 'none, every state rewritten'})")
        for label, at, every in rounds:
            observed = polls(at, every)
            t, c = time.perf_counter(), time.process_time()
            changes = store.observe_relays(observed, now=at + timedelta(seconds=30))
            t, c = time.perf_counter() - t, time.process_time() - c
            print(f"  {label:24s} {t:6.2f} s   CPU {c:5.2f} s   {written(store, at):7,} rows written"
                  f"   {len(changes):5,} relay-observed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    where_group = parser.add_mutually_exclusive_group()
    where_group.add_argument("--postgres", action="store_true",
                             help="start a temporary PostgreSQL server (tests/pgserver.py) and run on it")
    where_group.add_argument("--database", metavar="URL", help="an existing, empty PostgreSQL database")
    parser.add_argument("--relays", action="store_true",
                        help="time only CommandStore.observe_relays (relay states from the polls), not the pass")
    args = parser.parse_args()
    n = args.accounts
    if args.relays:
        with location(args) as (where, backend):
            print(f"state: {backend}")
            relay_passes(where, n)
        return
    kinds = ("flat", "tiered", "tou")
    with location(args) as (where, backend):
        store = ControlStore(where)
        t = time.perf_counter()
        store.upsert_accounts([AccountSpec(f"A{i:07d}", kinds[i % 3], {meter(i): Decimal(1)}, area=f"TA{i % 1000:04d}",
                                           opening_balance=Decimal(0))  # active: the policy acts on them
                               for i in range(1, n + 1)], actor="bench", now=DAY0)
        t_accounts = time.perf_counter() - t
        payments = [LedgerEntry(f"payment:open-{i}", f"A{i:07d}", EntryKind.PAYMENT,
                                Decimal("24.00") if i % 50 == 0 else Decimal("300.00"), DAY0) for i in range(1, n + 1)]
        t_apply = time.perf_counter()
        store.apply(payments, actor="bench", now=DAY0, audit_each=False)
        t_apply = time.perf_counter() - t_apply
        settings = PrepaidSettings(THRESHOLDS, SafetyRules(max_trips_per_area_hour=50))
        engine = PrepaidEngine(store, settings, TARIFFS)
        engine.observe(readings(n, DAY0, 0))
        engine.run_pass(DAY0)  # yesterday: cursors set, every account decided once
        setup = time.perf_counter() - t
        if isinstance(where, Database):  # what a day of autovacuum does between two daily passes
            vacuum(where)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        round_readings = readings(n, DAY1, 1)
        t0, c0 = time.perf_counter(), time.process_time()
        engine.observe(round_readings)
        t1, c1 = time.perf_counter(), time.process_time()
        main = time.thread_time()
        charged = engine.charge(DAY1)
        main = time.thread_time() - main
        t2, c2 = time.perf_counter(), time.process_time()
        decided = engine.decide(DAY1)
        t3, c3 = time.perf_counter(), time.process_time()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        problems = store.verify_balances()
        store.close()
    print(f"prepaid pass for {n:,} accounts after one daily round ({len(round_readings):,} register readings)")
    print(f"  state: {backend}" + (" (VACUUM ANALYZE after the setup)" if isinstance(where, Database) else ""))
    print(f"  setup (accounts, payments, yesterday's pass): {setup:.1f} s: upsert_accounts (with opening balances) "
          f"{t_accounts:.1f} s, apply of {n:,} payments {t_apply:.1f} s")
    print("  (CPU: all threads of the process; the charging pass writes from a thread of its own and")
    print("   checkpoints the WAL from another, so CPU may exceed the elapsed time)")
    print(f"  observe:  {t1 - t0:6.2f} s   CPU {c1 - c0:5.2f} s")
    print(f"  charge:   {t2 - t1:6.2f} s   CPU {c2 - c1:5.2f} s (main thread {main:5.2f} s)   "
          f"{charged.entries:,} ledger entries for {charged.accounts:,} accounts")
    print(f"  decide:   {t3 - t2:6.2f} s   CPU {c3 - c2:5.2f} s   "
          f"{decided.decisions:,} decisions, {len(decided.commands):,} commands queued")
    print(f"  total:    {t3 - t0:6.2f} s   CPU {c3 - c0:5.2f} s   (target < 5 s)")
    print(f"  peak RSS: {rss:.0f} MiB (before the pass {rss_before:.0f} MiB)")
    print(f"  balances equal to the ledger: {'yes' if not problems else problems[:3]}")


if __name__ == "__main__":
    main()
