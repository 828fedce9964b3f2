"""``meterd backup`` / ``meterd restore``: an online, consistent copy of the system of record that
restores and resumes, on SQLite (taken while a writer goes on) and on PostgreSQL (pg_dump)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.control.state import AccountSpec, ControlStore
from meterd.storage.backup import MANIFEST, BackupError, backup, restore
from meterd.storage.database import Database

T0 = datetime(2026, 12, 1, tzinfo=UTC)
M1 = "000000000001"


def _site(where) -> None:
    with ControlStore(where) as store:
        store.upsert_accounts([AccountSpec("A1", "res", {M1: Decimal(1)}, customer="Li", area="TA1")],
                              actor="test", now=T0)
        for i in range(20):
            store.pay("A1", "1.25", f"R{i}", actor="counter", now=T0 + timedelta(minutes=i))


def test_an_sqlite_backup_taken_while_a_writer_writes_restores_consistent_and_resumes(tmp_path, run_meterd):
    live, copy, restored = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    _site(live)
    stop = threading.Event()
    paid: list[int] = []

    def writer() -> None:  # the daemon going on: payments commit while the copy is taken
        with ControlStore(live) as store:
            i = 100
            while not stop.is_set():
                store.pay("A1", "0.01", f"W{i}", actor="counter", now=T0 + timedelta(hours=1, seconds=i))
                paid.append(i)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(paid) < 20:
            pass
        result = run_meterd("backup", "--data-dir", str(live), "--to", str(copy), "--json")
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stderr
    files = {f["file"] for f in json.loads(result.stdout)["files"]}
    assert "state.sqlite3" in files
    assert json.loads((copy / MANIFEST).read_text())["backend"] == "sqlite"

    result = run_meterd("restore", "--data-dir", str(restored), "--from", str(copy))
    assert result.returncode == 0, result.stderr
    with ControlStore(restored) as store:
        assert store.verify_balances() == []  # balance == SUM(ledger): a consistent snapshot
        ledger = store.ledger("A1")
        assert len(ledger) >= 20 + 20  # the site and at least what was paid before the copy began
        assert store.balance("A1") == sum((r.amount for r in ledger), Decimal(0))
        before = store.balance("A1")
        assert store.pay("A1", "5.00", "AFTER", actor="counter", now=T0 + timedelta(days=1)).applied  # resumes
        assert store.balance("A1") == before + Decimal("5.00")
        assert not store.pay("A1", "1.25", "R3", actor="counter", now=T0 + timedelta(days=1)).applied  # keys kept


def test_a_restore_refuses_a_damaged_backup_and_an_occupied_data_directory(tmp_path, run_meterd):
    live, copy = tmp_path / "live", tmp_path / "backup"
    _site(live)
    backup(live, copy, now=T0)
    with pytest.raises(BackupError, match="already holds state.sqlite3"):
        restore(copy, live)
    result = run_meterd("restore", "--data-dir", str(live), "--from", str(copy))
    assert result.returncode == 1 and "--force" in result.stderr and "Traceback" not in result.stderr

    data = bytearray((copy / "state.sqlite3").read_bytes())
    data[-100] ^= 0xFF
    (copy / "state.sqlite3").write_bytes(bytes(data))
    fresh = tmp_path / "fresh"
    with pytest.raises(BackupError, match="does not match its checksum"):
        restore(copy, fresh)
    assert not (fresh / "state.sqlite3").exists()  # nothing written


def test_a_backup_refuses_a_non_empty_target_and_a_directory_without_a_store(tmp_path, run_meterd):
    live = tmp_path / "live"
    _site(live)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    result = run_meterd("backup", "--data-dir", str(live), "--to", str(tmp_path / "used"))
    assert result.returncode == 1 and "not empty" in result.stderr
    result = run_meterd("backup", "--data-dir", str(tmp_path / "nothing"), "--to", str(tmp_path / "b"))
    assert result.returncode == 1 and "nothing to back up" in result.stderr


def test_restoring_over_a_live_copy_with_force_drops_its_stale_log(tmp_path):
    live, copy = tmp_path / "live", tmp_path / "backup"
    _site(live)
    backup(live, copy, now=T0)
    with ControlStore(live) as store:  # after the backup: this must be gone once restored
        store.pay("A1", "99.00", "LATE", actor="counter", now=T0 + timedelta(days=2))
    restore(copy, live, force=True)
    with ControlStore(live) as store:
        assert "LATE" not in {r.key for r in store.ledger("A1")}
        assert store.balance("A1") == Decimal("25.00")
    conn = sqlite3.connect(live / "state.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_postgresql_backup_restores_into_another_database_and_resumes(pg_server, tmp_path):
    source, target = Database(pg_server.new_database()), Database(pg_server.new_database())
    _site(source)
    files = backup(source, tmp_path / "pg", now=T0)
    assert [f.file for f in files] == ["meterd.pgdump"]
    restore(tmp_path / "pg", target)
    with ControlStore(target) as store:
        assert store.verify_balances() == []
        assert store.balance("A1") == Decimal("25.00")
        assert store.pay("A1", "5.00", "AFTER", actor="counter", now=T0 + timedelta(days=1)).applied
        assert not store.pay("A1", "1.25", "R3", actor="counter", now=T0 + timedelta(days=1)).applied
        assert store.balance("A1") == Decimal("30.00")
    with pytest.raises(BackupError, match="of a postgresql store"):
        restore(tmp_path / "pg", tmp_path / "sqlite-dir")
