"""Disk full: a write refused for want of space is rolled back whole and said in one clear line --
the API answers 503 with what cannot be written, the CLI exits 1 without a traceback.

Two real ways to fill a database, no mocks:

* SQLite's ``PRAGMA max_page_count`` on the store's own connection: the database cannot grow past
  that many pages, and SQLite refuses the write with ``SQLITE_FULL``, exactly as on a full disk;
* a 4 MiB tmpfs filled up with a file (needs ``mount``, which root has here; skipped where it
  does not work): the CLI in its own process and the API in this one, against a disk that is full
  for real -- with a few KiB left (``SQLITE_FULL`` while the WAL grows) and with none at all (SQLite
  cannot even set up its shared-memory file: "disk I/O error").
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

from meterd.api.app import create_app
from meterd.api.tokens import TokenStore
from meterd.control.state import AccountSpec, ControlStore
from meterd.errors import StorageFullError
from meterd.storage.spool import Spool

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
M1 = "000000000001"

SITE = """
[store]
data_dir = "data"

[channels.bus1]
tcp = { host = "127.0.0.1", port = 9 }

[[meters]]
address = "000000000001"
channel = "bus1"

[[polls]]
name = "energy"
interval = 60
quantities = ["energy.active.import.total"]

[prepaid]
thresholds = { reminder = "50", alarm = "20", trip = "0", reclose = "10" }

[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "flat"
price = "0.50"

[[prepaid.accounts]]
account = "A1"
customer = "Zhang"
area = "TA1"
tariff = "res"
meters = ["000000000001"]
opening_balance = "0.00"
"""


# --- SQLITE_FULL through max_page_count ----------------------------------------------------------


def test_a_full_state_database_refuses_the_payment_whole_and_says_so(tmp_path):
    with ControlStore(tmp_path) as setup:
        setup.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, area="TA1")], actor="test", now=T0)
        pages = setup._read("PRAGMA page_count")[0][0]

    class Capped(ControlStore):
        PRAGMAS = (f"max_page_count={pages}",)  # the file may not grow by a single page

    with Capped(tmp_path) as store:
        applied = Decimal(0)
        with pytest.raises(StorageFullError) as info:
            for n in range(100_000):
                store.pay("A1", "1.00", f"R{n}", actor="counter", now=T0 + timedelta(seconds=n))
                applied += 1
        assert str(info.value) == f"the state database cannot be written: disk full ({store.path})"
        # nothing half-written: the refused payment left no ledger row, no balance change, no audit row
        assert store.balance("A1") == applied
        assert len(store.ledger("A1")) == applied
        assert store.verify_balances() == []
        refused = f"R{int(applied)}"
        assert all(not row.key.endswith(f":{refused}") for row in store.ledger("A1"))
        # the connection is not left inside a transaction: once there is room, the next write goes through
        store._conn.execute(f"PRAGMA max_page_count={pages + 1000}")
        assert store.pay("A1", "1.00", refused, actor="counter", now=T0 + timedelta(days=1)).applied
        assert store.balance("A1") == applied + 1


# --- a full tmpfs ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` with a file, then give ``leave`` bytes back."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


@pytest.mark.parametrize("leave", [24 * 1024, 0], ids=["a-few-KiB-left", "nothing-left"])
def test_meterd_pay_on_a_full_disk_exits_1_with_one_line(small_disk, run_meterd, leave):
    site = small_disk / "site.toml"
    site.write_text(SITE)
    first = run_meterd("pay", "A1", "10.00", "--ref", "R1", "-c", str(site))
    assert first.returncode == 0, first.stderr
    fill(small_disk, leave)
    refused = run_meterd("pay", "A1", "5.00", "--ref", "R2", "-c", str(site))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"meterd: the state database cannot be written: disk full ({small_disk / 'data' / 'state.sqlite3'})"]
    (small_disk / "filler").unlink()
    ledger = run_meterd("ledger", "A1", "-c", str(site), "--json")
    assert ledger.returncode == 0, ledger.stderr
    doc = json.loads(ledger.stdout)
    assert doc["balance"] == "10.00" and [e["key"] for e in doc["entries"] if e["kind"] == "payment"] == ["payment:R1"]


def test_the_api_answers_503_when_the_disk_is_full(small_disk):
    from test_api import serve  # the one helper that starts uvicorn for the API tests

    data_dir = small_disk / "data"
    with ControlStore(data_dir) as store:
        store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, area="TA1")], actor="test", now=T0)
    with TokenStore(data_dir) as tokens:
        _, secret = tokens.create("counter", "operator", T0)

    def pay(base: str, ref: str) -> tuple[int, dict]:
        request = urllib.request.Request(f"{base}/api/v1/payments", method="POST",
                                         data=json.dumps({"account": "A1", "amount": "5.00", "ref": ref}).encode(),
                                         headers={"Authorization": f"Bearer {secret}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    with serve(create_app(data_dir, clock=lambda: datetime.now(timezone.utc))) as base:
        assert pay(base, "P1")[0] == 201
        fill(small_disk, 24 * 1024)
        status, body = pay(base, "P2")
        assert status == 503
        assert body == {"error": "the state database cannot be written: disk full"}
        (small_disk / "filler").unlink()
        assert pay(base, "P3")[0] == 201  # room again: the API goes on
    with ControlStore(data_dir) as store:
        assert store.balance("A1") == Decimal("10.00")
        assert [row.key.rsplit(":", 1)[-1] for row in store.ledger("A1")] == ["P1", "P3"]
        assert store.verify_balances() == []


def test_the_spool_leaves_no_half_record_on_a_full_disk(small_disk):
    with Spool(small_disk / "spool") as spool:
        spool.append([b"first line"])
        fill(small_disk, 0)
        with pytest.raises(OSError):
            spool.append([b"x" * 200_000])  # more than is left
        (small_disk / "filler").unlink()
        spool.append([b"after"])
        lines = [line for batch in spool.batches() for line in batch.lines]
    assert lines == [b"first line", b"after"]
