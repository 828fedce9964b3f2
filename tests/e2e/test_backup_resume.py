"""A site restored from a backup resumes: ``meterd backup`` taken while the daemon polls simulated
meters and charges their accounts, more payments after it, the daemon stopped, ``meterd restore
--force``, and the billing system's payment files and the counter's payment delivered again; then
``meterd run`` again.  Afterwards every payment is in the ledger exactly once, the restored ledger
is what it was when the backup was taken (no entry changed), the balances equal the ledger, no
interval is charged twice, and collection and charging have gone on from where the backup was.

The simulated meters run in this test's process (a thread with its own event loop, real TCP); the
daemon and every command are real ``meterd`` processes on SQLite, the embedded default, forked
from one process that imported the package (tests/cliserver.py), without a second of imports each.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from test_prepaid_crash import M1, M2, SECRETS, SimThread

import cliserver
from cliserver import Spawned
from meterd.control.model import EntryKind
from meterd.control.state import ControlStore
from meterd.storage.sqlite import SqliteStore

pytestmark = pytest.mark.slow

ENERGY = "energy.active.import.total"


def config(endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    return f"""
[store]
data_dir = "data"
flush_interval = "200ms"

[channels.bus1]
tcp = {{ host = "{host}", port = {port} }}
response_timeout = "500ms"
retries = 1

[[meters]]
address = "{M1}"
channel = "bus1"

[[meters]]
address = "{M2}"
channel = "bus1"

[plausibility]  # the simulated meters run 60x faster than the wall clock, and so does their energy
rated_current = 9000

[[polls]]
name = "energy"
interval = 0.3
quantities = ["{ENERGY}"]

[prepaid]
dry_run = true  # about money and collection, not relays
check_every = "300ms"
thresholds = {{ reminder = "30", alarm = "20", trip = "0", reclose = "10" }}

[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2020-01-01
kind = "flat"
price = "0.50"

[[prepaid.accounts]]
account = "A1"
tariff = "res"
meters = ["{M1}"]
opening_balance = "500"

[[prepaid.accounts]]
account = "A2"
tariff = "res"
meters = ["{M2}"]
opening_balance = "500"

[[sync.jobs]]
name = "payments"
kind = "import_payments"
folder = "billing/payments"
"""


def payments_file(tmp_path, name: str, rows: list[tuple[str, str, str]]) -> None:
    inbox = tmp_path / "billing" / "payments" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    text = "payment_id,account,amount,paid_at,channel\n" + "".join(
        f"{pid},{account},{amount},2026-11-20 10:00:00,bank\n" for pid, account, amount in rows)
    (inbox / f"{name}.tmp").write_text(text)
    (inbox / f"{name}.tmp").rename(inbox / name)


def ledger(data) -> list[tuple[int, str, str, str, int]]:
    """Every ledger entry: (seq, account, key, kind, amount in fen), read as an auditor's sqlite3
    would, without writing (a backup copy opened by a store would no longer match its checksums)."""
    conn = sqlite3.connect(f"file:{data / 'state.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT seq, account, key, kind, amount_fen FROM ledger ORDER BY seq").fetchall()
    finally:
        conn.close()


def charged(data) -> int:
    return sum(1 for row in ledger(data) if row[3] == "charge")


def newest(data) -> float:
    with SqliteStore(data) as store:
        return max(store.latest(m)[ENERGY].timestamp.timestamp() for m in (M1, M2))


def wait_for(what, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def cli_server():
    """``meterd`` processes forked from one that imported the package (tests/cliserver.py)."""
    return cliserver.shared()


def test_a_restored_site_resumes_collecting_and_charging_with_no_payment_twice(tmp_path, cli_server):
    sim = SimThread(speed=60.0)
    try:
        (tmp_path / "site.toml").write_text(config(sim.running.endpoint))
        env = {**os.environ, **SECRETS, "PYTHONUNBUFFERED": "1"}
        data = tmp_path / "data"

        def meterd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
            p = cli_server.run(*args, "-c", "site.toml", env=env, cwd=tmp_path, timeout=timeout)
            assert p.returncode == 0, (args, p.stderr)
            assert "Traceback" not in p.stderr, p.stderr
            return p

        def start() -> Spawned:
            return cli_server.spawn("--log-level", "WARNING", "run", "-c", "site.toml", env=env, cwd=tmp_path)

        def stop(daemon: Spawned) -> None:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, daemon.stderr()
            assert "Traceback" not in daemon.stderr(), daemon.stderr()

        # before the backup: a counter payment and the billing system's first file
        meterd("pay", "A1", "40", "--ref", "P1")
        payments_file(tmp_path, "day1.csv", [("B1", "A1", "10.00"), ("B2", "A2", "20.00")])
        meterd("sync", "run", "payments")
        daemon = start()
        wait_for("charges of both accounts", lambda: charged(data) >= 4)
        meterd("backup", "--to", "backup")  # online: the daemon goes on polling and charging
        backed_up = ledger(tmp_path / "backup")
        # after the backup: lost by the restore, delivered again afterwards
        meterd("pay", "A2", "15", "--ref", "P2")
        payments_file(tmp_path, "day2.csv", [("B3", "A1", "30.00")])
        meterd("sync", "run", "payments")
        wait_for("more charges", lambda: charged(data) >= charged(tmp_path / "backup") + 2)
        stop(daemon)
        before_restore = ledger(data)
        assert len(before_restore) > len(backed_up)

        meterd("restore", "--from", "backup", "--force")
        assert ledger(data) == backed_up  # the ledger as it was when the copy was taken, entry by entry
        assert set(backed_up) <= set(before_restore)  # ... which is what the live one held then
        restored_newest = newest(data)

        # the billing system delivers its files again, the counter enters P2 again (and P1 by mistake)
        payments_file(tmp_path, "day1.csv", [("B1", "A1", "10.00"), ("B2", "A2", "20.00")])
        payments_file(tmp_path, "day2.csv", [("B3", "A1", "30.00")])
        meterd("sync", "run", "payments")
        meterd("pay", "A2", "15", "--ref", "P2")
        meterd("pay", "A1", "40", "--ref", "P1")  # already in the restored ledger: not applied again
        daemon = start()
        after_charges = charged(data)
        wait_for("charging after the restore", lambda: charged(data) >= after_charges + 2)
        wait_for("collection after the restore", lambda: newest(data) > restored_newest + 1)
        stop(daemon)

        with ControlStore(data) as store:
            assert store.verify_balances() == []
            for account, refs in (("A1", {"payment:P1", "payment:B1", "payment:B3"}), ("A2", {"payment:P2",
                                                                                          "payment:B2"})):
                rows = store.ledger(account)
                payments = [r.key for r in rows if r.kind is EntryKind.PAYMENT]
                assert sorted(payments) == sorted(refs), (account, payments)  # each exactly once
                periods = store._read("SELECT period_start_ts, period_end_ts FROM ledger WHERE account = ? AND "
                                      "kind = 'charge' ORDER BY period_start_ts", (account,))
                for a, b in itertools.pairwise(periods):
                    assert b["period_start_ts"] >= a["period_end_ts"], "an interval charged twice"
        assert set(backed_up) <= set(ledger(data))  # the restored entries unchanged, new ones after them
    finally:
        sim.close()
