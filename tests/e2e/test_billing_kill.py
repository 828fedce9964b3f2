"""kill -9 of a payment import half-way through a 20,000-record drop-folder file, twice, then a run
to completion: every payment is in the ledger exactly once, the balances add up to the file's
total, and the job's status is ok with the file done.

The import runs in a real subprocess (``python -c`` importing :mod:`meterd.billing_link.jobs`);
the test watches ``sync_files.records_done`` through its own read connection and sends SIGKILL
while the file is part-way done.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from meterd.billing_link.jobs import SyncStore
from meterd.control.model import EntryKind
from meterd.control.state import AccountSpec, ControlStore
from meterd.storage.sqlite import STATE_FILE

pytestmark = pytest.mark.slow

NOW = datetime(2026, 3, 1, 4, 0, tzinfo=timezone.utc)
PAYMENTS = 20_000
ACCOUNTS = 200
CHUNK = 100

RUN = """
import sys
from datetime import datetime
from pathlib import Path
from meterd.billing_link.jobs import JobKind, JobSpec, run_job
folder, data_dir, chunk, now = sys.argv[1:5]
spec = JobSpec("payments", JobKind.IMPORT_PAYMENTS, folder=Path(folder), chunk=int(chunk))
r = run_job(spec, where=Path(data_dir), now=datetime.fromisoformat(now))
print(r.applied, r.replayed, r.duplicates, r.quarantined, flush=True)
"""


def start(folder: Path, data_dir: Path, now: datetime) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(folder), str(data_dir), str(CHUNK), now.isoformat()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def progress(data_dir: Path) -> tuple[int, int] | None:
    conn = sqlite3.connect(f"file:{data_dir / STATE_FILE}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT records_done, records_total FROM sync_files WHERE job = 'payments' "
                           "AND status = 'running' ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # the table is not there yet
        return None
    finally:
        conn.close()
    return row


def kill_part_way(proc: subprocess.Popen, data_dir: Path, *, after: int) -> int:
    """SIGKILL once at least ``after`` records are committed and the file is not finished."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the import ended before it could be killed: {proc.communicate()}")
        got = progress(data_dir)
        if got is not None and after <= got[0] < got[1]:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # what was committed when it died: a chunk may have committed between the look and the kill
            landed = progress(data_dir)
            assert landed is not None and got[0] <= landed[0]
            return landed[0]
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no progress to kill in")


def test_payment_import_survives_kill_9(tmp_path):
    data_dir, folder = tmp_path / "data", tmp_path / "drop"
    with ControlStore(data_dir) as store:
        store.upsert_accounts([AccountSpec(f"A{i:05d}", "residential", {f"{i:012d}": Decimal(1)})
                               for i in range(ACCOUNTS)], actor="test", now=NOW)
    expected: dict[str, Decimal] = Counter()
    ids: dict[str, set[str]] = {}
    lines = ["payment_id,account,amount,paid_at,channel"]
    for i in range(PAYMENTS):
        account, amount = f"A{i % ACCOUNTS:05d}", Decimal(i % 500 + 1) + Decimal(i % 97) / 100
        expected[account] += amount
        ids.setdefault(account, set()).add(f"payment:PAY{i:06d}")
        lines.append(f"PAY{i:06d},{account},{amount},2026-03-01 08:{i % 60:02d}:00,bank")
    total = sum(expected.values())
    (folder / "inbox").mkdir(parents=True)
    tmp = folder / "inbox" / "payments-20260301.csv.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(tmp.with_suffix(""))

    killed = [kill_part_way(start(folder, data_dir, NOW), data_dir, after=1)]
    killed.append(kill_part_way(start(folder, data_dir, NOW + timedelta(minutes=1)), data_dir,
                                after=killed[0] + CHUNK))
    assert 0 < killed[0] < killed[1] < PAYMENTS
    with SyncStore(data_dir) as sync:
        assert sync.status()[0]["last_status"] == "running"  # interrupted: shows until the next run

    final = start(folder, data_dir, NOW + timedelta(minutes=2))
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    applied, replayed, duplicates, quarantined = map(int, out.split())
    assert duplicates == 0 and quarantined == 0
    assert applied + replayed == PAYMENTS - killed[1] and replayed <= CHUNK

    with ControlStore(data_dir) as store:
        assert store.verify_balances() == []
        accounts = store.accounts()
        assert sum(a.balance for a in accounts) == total
        for a in accounts:
            assert a.balance == expected[a.account]
            keys = [r.key for r in store.ledger(a.account) if r.kind == EntryKind.PAYMENT]
            assert len(keys) == len(set(keys)) and set(keys) == ids[a.account]
    with SyncStore(data_dir) as sync:
        [status] = sync.status()
        assert status["last_status"] == "ok" and status["files_unfinished"] == 0
        assert sync.quarantine(job="payments") == []
        [f] = [f for f in sync.files("payments") if f.status == "done"]
        assert f.records_done == PAYMENTS and f.counts["applied"] + f.counts.get("replayed", 0) == PAYMENTS
        assert "duplicates" not in f.counts
    assert not list((folder / "inbox").iterdir())
    assert [p.name for p in (folder / "processed").iterdir()] == ["payments-20260301.20260301T040200Z.csv"]
