"""Billing jobs end to end in one process: a drop folder in tmp_path and a real HTTP server on
localhost (paged payments and accounts, receiving exports), against a real state database.

Exactly-once is checked from every side: the same file twice, the same id in two files, a
payment made at the counter (``ControlStore.pay``) and imported (the bulk path), a crash between
a chunk's ledger commit and its progress commit, a re-fetched last HTTP page.
"""

from __future__ import annotations

import hashlib

import json
import os
import socket
import threading
import time
import urllib.parse
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port

from meterd.billing_link.folder import DropFolder
from meterd.billing_link.http import HttpSyncError
from meterd.billing_link.jobs import JobKind, JobSpec, SyncStore, job_lock, run_job
from meterd.billing_link.store import SyncStore as _Store
from meterd.control.amounts import AmountLimits
from meterd.control.state import AccountSpec, ControlStore
from meterd.errors import SyncError
from meterd.storage.database import Location

NOW = datetime(2026, 3, 1, 4, 0, tzinfo=timezone.utc)  # 12:00 CST
TARIFFS = ("residential", "commercial")
M = [f"{i:012d}" for i in range(10)]
HEADER = "payment_id,account,amount,paid_at,channel\n"
TOKEN = "s3cret-token-value"


@pytest.fixture
def where(state_where: Location) -> Location:
    """The state database, on each backend, with three live accounts."""
    d = state_where
    with ControlStore(d) as store:
        store.upsert_accounts([
            AccountSpec("A1001", "residential", {M[1]: Decimal(1)}, customer="张三", area="TA-001"),
            AccountSpec("A1002", "residential", {M[2]: Decimal(1)}, customer="李四", area="TA-001"),
            AccountSpec("A1003", "commercial", {M[3]: Decimal(80), M[4]: Decimal(1)}, customer="王五", area="TA-002"),
        ], actor="test", now=NOW - timedelta(days=30))
        # live accounts, as a district running before opening balances existed (onboarding: its own tests)
        store.set_control_state([(a, "normal", None) for a in ("A1001", "A1002", "A1003")], now=NOW, actor="test")
    return d


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "drop"


def drop(folder: Path, name: str, data: bytes | str, *, age: float = 0.0) -> Path:
    """As the billing system does: write name.tmp, then rename.  ``age`` seconds older than the rest."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / (name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    target = inbox / name
    tmp.rename(target)
    t = 1_700_000_000 - age
    os.utime(target, (t, t))
    return target


def pay_spec(folder: Path, **kw) -> JobSpec:
    return JobSpec("payments", JobKind.IMPORT_PAYMENTS, folder=folder, **kw)


def balances(where: Location) -> dict[str, Decimal]:
    with ControlStore(where) as store:
        assert store.verify_balances() == []
        return {a.account: a.balance for a in store.accounts()}


def quarantined(where: Location, job: str = "payments") -> dict[tuple[str, int], str]:
    with SyncStore(where) as sync:
        return {(q["source"], q["record_no"]): q["reason"] for q in sync.quarantine(job=job, limit=1000)}


# --- drop folder: payments ----------------------------------------------------------------------------


def test_payments_from_a_drop_folder_are_applied_and_the_file_moved(where, folder):
    drop(folder, "pay-0301.csv", HEADER + "P1,A1001,100.00,2026-03-01 09:00:00,wechat\n"
                                          "P2,A1002,50.5,2026-03-01 09:10:00,\nP3,A1001,0.01,2026-03-01,counter\n")
    (folder / "inbox" / "late.csv.tmp").write_text(HEADER + "P9,A1001,999,2026-03-01,x\n")  # still being written
    (folder / "inbox" / "notes.txt").write_text("not for us")
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert (result.applied, result.duplicates, result.quarantined) == (3, 0, 0)
    assert result.files == ["pay-0301.csv"] and result.watermark == "pay-0301.csv"
    assert balances(where) == {"A1001": Decimal("100.01"), "A1002": Decimal("50.50"), "A1003": Decimal("0.00")}
    assert sorted(p.name for p in (folder / "inbox").iterdir()) == ["late.csv.tmp", "notes.txt"]
    assert [p.name for p in (folder / "processed").iterdir()] == ["pay-0301.20260301T040000Z.csv"]
    with ControlStore(where) as store:
        [first] = [r for r in store.ledger("A1002")]
        assert first.key == "payment:P2" and first.actor == "billing"
        assert "paid 2026-03-01T09:10:00+08:00" in first.detail
    with SyncStore(where) as sync:
        [status] = sync.status()
        assert status["job"] == "payments" and status["last_status"] == "ok" and status["watermark"] == "pay-0301.csv"
        assert status["last_run"] == NOW and status["counts"]["applied"] == 3 and status["files_unfinished"] == 0
        [f] = sync.files("payments")
        assert (f.status, f.records_done, f.records_total, f.counts) == ("done", 3, 3, {"applied": 3})


def test_the_same_file_dropped_twice_applies_nothing_the_second_time(where, folder):
    content = HEADER + "P1,A1001,100.00,2026-03-01,\nP2,A1002,20,2026-03-01,\n"
    drop(folder, "pay.csv", content)
    assert run_job(pay_spec(folder), where=where, now=NOW).applied == 2
    drop(folder, "pay.csv", content)  # the billing system sends it again, same name
    drop(folder, "pay-copy.csv", content, age=-5)  # and under another name
    again = run_job(pay_spec(folder), where=where, now=NOW + timedelta(minutes=5))
    assert (again.applied, again.duplicates, again.quarantined) == (0, 4, 0)
    assert any("identical to pay.csv" in line for line in again.detail)
    assert balances(where)["A1001"] == Decimal("100.00")
    assert len(list((folder / "processed").iterdir())) == 3


def test_the_same_id_in_two_files_is_a_duplicate_or_quarantined_when_it_differs(where, folder):
    drop(folder, "a.csv", HEADER + "P1,A1001,100.00,2026-03-01,\nP2,A1002,20,2026-03-01,\n", age=10)
    drop(folder, "b.csv", HEADER + "P1,A1001,100,2026-03-01,\nP2,A1002,25,2026-03-01,\nP3,A1003,7,2026-03-01,\n"
                                   "P3,A1001,7,2026-03-01,\n")
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert result.files == ["a.csv", "b.csv"]  # oldest first
    assert (result.applied, result.duplicates, result.quarantined) == (3, 1, 2)
    assert any(line.startswith("payment P1 (record 2): duplicate ignored") for line in result.detail)
    assert quarantined(where) == {
        ("b.csv", 3): "duplicate payment id with a different amount/account: payment P2 was applied to A1002 for "
                      "20.00, this record says 25.00",
        ("b.csv", 5): "duplicate payment id with a different amount/account: payment P3 was already applied to "
                      "another account, not A1001",
    }
    assert balances(where) == {"A1001": Decimal("100.00"), "A1002": Decimal("20.00"), "A1003": Decimal("7.00")}


def test_counter_payments_and_imports_share_the_ledger_key(where, folder):
    with ControlStore(where) as store:
        assert store.pay("A1001", "30", "RCPT-1", actor="counter", now=NOW).applied
    drop(folder, "p.csv", HEADER + "RCPT-1,A1001,30.00,2026-03-01,\nRCPT-2,A1002,40,2026-03-01,\n")
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert (result.applied, result.duplicates) == (1, 1)
    with ControlStore(where) as store:
        later = store.pay("A1002", "40", "RCPT-2", actor="counter", now=NOW)
        assert not later.applied and "already applied" in later.reason
    assert balances(where) == {"A1001": Decimal("30.00"), "A1002": Decimal("40.00"), "A1003": Decimal("0.00")}


def test_bad_records_are_quarantined_with_reasons_and_the_rest_applies(where, folder):
    good = ["G1,A1001,10,2026-03-01,", "G2,A1002,20.20,2026/03/01 08:00,", "G3,A1003,30,2026-03-01T08:00:00+08:00,柜台"]
    bad = ["B1,A9999,10,2026-03-01,", "B2,A1001,ten,2026-03-01,", "B3,A1001,-5,2026-03-01,", "B4,A1001,0,2026-03-01,",
           "B5,A1001,1.234,2026-03-01,", "B6,A1001,5", ",A1001,5,2026-03-01,", "B8,A1001,5,not-a-date,",
           "B9,A1001,5,2026-03-01,"]
    lines = [good[0], *bad[:8], good[1], good[2]]
    data = (HEADER + "\n".join(lines) + "\n").encode("utf-8") + (bad[8] + "柜台\n").encode("gbk")
    drop(folder, "mixed.csv", data)
    result = run_job(pay_spec(folder, chunk=4), where=where, now=NOW)
    assert (result.applied, result.quarantined) == (3, 9)
    reasons = quarantined(where)
    assert reasons == {
        ("mixed.csv", 3): "unknown account A9999",
        ("mixed.csv", 4): 'amount "ten" refused: it is not an amount: write yuan with at most two decimals, '
                          "e.g. 100 or 88.50",
        ("mixed.csv", 5): 'amount "-5" refused: it takes no sign',
        ("mixed.csv", 6): 'amount "0" refused: zero is not an amount here',
        ("mixed.csv", 7): 'amount "1.234" refused: more than two decimals (the fen is the smallest unit)',
        ("mixed.csv", 8): "3 fields where the header has 5",
        ("mixed.csv", 9): "empty payment id",
        ("mixed.csv", 10): "bad date 'not-a-date' in paid_at",
        ("mixed.csv", 13): "garbled text in channel (undecodable bytes or control characters: wrong encoding?)",
    }
    assert balances(where) == {"A1001": Decimal("10.00"), "A1002": Decimal("20.20"), "A1003": Decimal("30.00")}
    assert any("utf-8+garbled" in line for line in result.detail)
    with SyncStore(where) as sync:
        raw = {q["record_no"]: q["raw"] for q in sync.quarantine(job="payments")}
        assert raw[4] == "B2,A1001,ten,2026-03-01," and len(sync.quarantine(job="payments", limit=2)) == 2


def test_a_gbk_file_with_chinese_headers(where, folder):
    text = "缴费流水号,户号,缴费金额,缴费时间,缴费渠道\nZ1,A1001,88.80,2026/3/1 10:00:00,营业厅柜台\n"
    drop(folder, "gbk.csv", text.encode("gbk"))
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert result.applied == 1 and "csv gb18030" in result.detail[0]
    with ControlStore(where) as store:
        assert "via 营业厅柜台" in store.ledger("A1001")[0].detail


def test_a_gbk_file_some_of_whose_lines_are_valid_utf8_is_applied_whole(where, folder):
    # issue 17: 郑伟, 郑强 and 专业 in GBK are valid UTF-8 byte runs (Hebrew and Greek letters); the
    # file was decoded as UTF-8, those channels stored as ֣ΰ and the 营业厅 line quarantined as
    # garbled, although the file is valid GB18030 as a whole
    text = ("payment_id,account,amount,paid_at,channel\n"
            "Z1,A1001,10.00,2026/3/1 10:00:00,郑伟\n"
            "Z2,A1002,20.00,2026/3/1 10:05:00,郑强\n"
            "Z3,A1003,30.00,2026/3/1 10:10:00,专业\n"
            "Z4,A1003,5.00,2026/3/1 10:15:00,营业厅柜台\n")
    drop(folder, "gbk-utf8ish.csv", text.encode("gbk"))
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert (result.applied, result.quarantined) == (4, 0) and "csv gb18030" in result.detail[0]
    assert not any("garbled" in line for line in result.detail)
    with ControlStore(where) as store:
        assert "via 郑伟" in store.ledger("A1001")[0].detail
        details = " | ".join(e.detail for e in store.ledger("A1003"))
        assert "via 专业," in details and "via 营业厅柜台," in details


def test_json_payment_files(where, folder):
    drop(folder, "p.json", json.dumps({"records": [
        {"payment_id": "J1", "account": "A1001", "amount": 12.5, "paid_at": "2026-03-01T08:00:00+08:00"},
        {"payment_id": "J2", "account": "A1002", "amount": "0.005", "paid_at": "2026-03-01T08:00:00+08:00"},
        "garbage"]}))
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert (result.applied, result.quarantined) == (1, 2)
    assert set(quarantined(where).values()) == {'amount "0.005" refused: more than two decimals (the fen is '
                                                   "the smallest unit)",
                                                   "record is a JSON str, not an object"}
    assert balances(where)["A1001"] == Decimal("12.50")


# issue #14: every one of these was applied before ("92233720368547758.07" up to the import's own 10^8 limit)
REFUSED_AMOUNTS = {"1e3": "exponent", "1E+2": "exponent", "1_000": "separators", "１０": "FULLWIDTH DIGIT ONE",
                   "١٠": "ARABIC-INDIC DIGIT ONE", "+10": "takes no sign", " 10": "whitespace", "10 ": "whitespace",
                   ".5": "before the point", "10.": "after the point", "10.500": "two decimals",
                   "92233720368547758.07": "more than the limit of 5000 yuan (set by [prepaid] max_payment)",
                   "5000.01": "more than the limit of 5000 yuan", "9" * 300: "longer than 24 characters"}


def test_amounts_outside_the_grammar_or_over_the_sites_limit_are_quarantined_with_the_reason(where, folder):
    rows = [f'Q{i},A1001,"{amount}",2026-03-01,' for i, amount in enumerate(REFUSED_AMOUNTS)]
    drop(folder, "amounts.csv", HEADER + "\n".join([*rows, "G1,A1002,5000,2026-03-01,"]) + "\n")
    result = run_job(pay_spec(folder), where=where, now=NOW, amounts=AmountLimits(max_payment=Decimal(5000)))
    assert (result.applied, result.quarantined) == (1, len(REFUSED_AMOUNTS))
    reasons = quarantined(where)
    for i, says in enumerate(REFUSED_AMOUNTS.values()):
        assert reasons[("amounts.csv", i + 2)].startswith("amount ") and says in reasons[("amounts.csv", i + 2)]
    assert balances(where) == {"A1001": Decimal("0.00"), "A1002": Decimal("5000.00"), "A1003": Decimal("0.00")}
    with ControlStore(where) as store:
        assert store.verify_balances() == []


def test_json_numbers_are_amounts_as_written(where, folder):
    drop(folder, "n.json", b'[{"payment_id": "N1", "account": "A1001", "amount": 1e3, "paid_at": "2026-03-01"},'
                           b' {"payment_id": "N2", "account": "A1001", "amount": 1.5e1, "paid_at": "2026-03-01"},'
                           b' {"payment_id": "N3", "account": "A1001", "amount": true, "paid_at": "2026-03-01"},'
                           b' {"payment_id": "N4", "account": "A1002", "amount": 88.50, "paid_at": "2026-03-01"},'
                           b' {"payment_id": "N5", "account": "A1003", "amount": 7, "paid_at": "2026-03-01"}]')
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert (result.applied, result.quarantined) == (2, 3)
    assert sorted(quarantined(where).values()) == [
        'amount "1.5e1" refused: an exponent is not accepted', 'amount "1e3" refused: an exponent is not accepted',
        'amount must be a number or string such as 88.50 or "88.50", not a true/false (true)']
    assert balances(where) == {"A1001": Decimal("0.00"), "A1002": Decimal("88.50"), "A1003": Decimal("7.00")}


@pytest.mark.parametrize("name, data, reason", [
    ("bad.json", b'[{"payment_id": "P1", "account"', "not valid JSON"),
    ("empty.csv", b"", "empty file"),
    ("cols.csv", b"id,account\nP1,A1001\n", "missing required column(s) amount, paid_at"),
])
def test_unreadable_files_are_quarantined_whole_and_the_next_file_goes_on(where, folder, name, data, reason):
    drop(folder, name, data, age=10)
    drop(folder, "good.csv", HEADER + "P1,A1001,5,2026-03-01,\n")
    result = run_job(pay_spec(folder), where=where, now=NOW)
    assert result.applied == 1 and result.quarantined == 1 and result.counts["files_quarantined"] == 1
    stem, ext = name.rsplit(".", 1)
    moved = folder / "quarantine" / f"{stem}.20260301T040000Z.{ext}"
    assert moved.read_bytes() == data
    assert reason in moved.with_name(moved.name + ".reason.txt").read_text()
    [(source_no, why)] = quarantined(where).items()
    assert source_no == (name, 0) and reason in why
    assert not list((folder / "inbox").iterdir())


MIB = 1024 * 1024


def test_a_file_over_the_jobs_limit_is_quarantined_unread_and_the_next_file_goes_on(where, folder):
    # Reading a file costs ~15x its size while it is parsed, in the daemon that runs prepaid control:
    # a file past the job's max_file_mb is moved aside whole, hashed a MiB at a time, never parsed.
    big = (HEADER + "".join(f"B{i},A1001,1,2026-03-01,\n" for i in range(35_000))).encode()
    big += b"#" * (MIB + 1 - len(big))  # one byte over 1 MiB
    assert len(big) == MIB + 1
    drop(folder, "big.csv", big, age=20)
    edge = b"x" * MIB  # exactly the limit: read, and refused for what it holds
    drop(folder, "edge.csv", edge, age=10)
    drop(folder, "good.csv", HEADER + "P1,A1001,5,2026-03-01,\n")
    result = run_job(pay_spec(folder, max_file_mb=1), where=where, now=NOW)
    assert result.applied == 1 and result.counts["files_quarantined"] == 2
    moved = folder / "quarantine" / "big.20260301T040000Z.csv"
    assert moved.read_bytes() == big
    reason = moved.with_name(moved.name + ".reason.txt").read_text()
    assert "big.csv: 1,048,577 bytes, over the job's limit of 1 MiB (max_file_mb)" in reason
    assert f"sha256 {hashlib.sha256(big).hexdigest()}" in reason
    why = quarantined(where)
    assert why[("big.csv", 0)] == "1,048,577 bytes, over the job's limit of 1 MiB (max_file_mb)"
    assert "unreadable header row" in why[("edge.csv", 0)]
    assert balances(where)["A1001"] == Decimal("5.00")  # not one of the 35,000 payments in big.csv
    assert not list((folder / "inbox").iterdir())
    # the same file dropped again is not read either
    drop(folder, "big.csv", big)
    again = run_job(pay_spec(folder, max_file_mb=1), where=where, now=NOW + timedelta(minutes=5))
    assert again.applied == 0 and again.counts["files_quarantined"] == 1
    # with a larger limit it is read and applied
    drop(folder, "big2.csv", big)
    bigger = run_job(pay_spec(folder, max_file_mb=2), where=where, now=NOW + timedelta(minutes=10))
    assert bigger.applied == 35_000


def test_a_crash_between_ledger_and_progress_commit_replays_the_chunk_once(where, folder, monkeypatch):
    rows = [f"P{i},A100{1 + i % 3},{i}.00,2026-03-01," for i in range(1, 8)]
    drop(folder, "big.csv", HEADER + "\n".join(rows) + "\n")
    real = _Store.commit_chunk
    calls = []

    def dies_on_the_second_chunk(self, *args, **kw):
        calls.append(kw["records_done"])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # after chunk 2 reached the ledger, before its progress
        return real(self, *args, **kw)

    monkeypatch.setattr(_Store, "commit_chunk", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_job(pay_spec(folder, chunk=2), where=where, now=NOW)
    monkeypatch.setattr(_Store, "commit_chunk", real)
    with SyncStore(where) as sync:
        [f] = sync.files()
        assert (f.status, f.records_done) == ("running", 2)
        assert sync.status()[0]["last_status"] == "running"
    result = run_job(pay_spec(folder, chunk=2), where=where, now=NOW + timedelta(minutes=1))
    assert (result.applied, result.replayed, result.duplicates) == (3, 2, 0)
    assert "resumed at record 3" in result.detail[0]
    assert sum(balances(where).values()) == sum(Decimal(i) for i in range(1, 8))
    with SyncStore(where) as sync:
        [f] = sync.files()
        assert (f.status, f.records_done, f.counts) == ("done", 7, {"applied": 5, "replayed": 2})


def test_a_crash_after_finishing_a_file_but_before_moving_it(where, folder, monkeypatch):
    drop(folder, "p.csv", HEADER + "P1,A1001,5,2026-03-01,\n")
    real = DropFolder.move

    def crash(self, src, dest):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(DropFolder, "move", crash)
    with pytest.raises(KeyboardInterrupt):
        run_job(pay_spec(folder), where=where, now=NOW)
    monkeypatch.setattr(DropFolder, "move", real)
    assert [p.name for p in (folder / "inbox").iterdir()] == ["p.csv"]
    result = run_job(pay_spec(folder), where=where, now=NOW + timedelta(minutes=1))
    assert (result.applied, result.duplicates, result.replayed) == (0, 0, 0)
    assert "was done before an interruption" in result.detail[0]
    assert [p.name for p in (folder / "processed").iterdir()] == ["p.20260301T040000Z.csv"]
    assert balances(where)["A1001"] == Decimal("5.00")


def test_job_kind_given_as_text(where, folder):
    drop(folder, "p.csv", HEADER + "P1,A1001,5,2026-03-01,\n")
    spec = JobSpec("payments", "import_payments", folder=folder)  # type: ignore[arg-type]
    assert run_job(spec, where=where, now=NOW).kind is JobKind.IMPORT_PAYMENTS


def test_one_run_of_a_job_at_a_time(where, folder):
    with job_lock(where, "payments"):
        with pytest.raises(SyncError, match="already running"):
            run_job(pay_spec(folder), where=where, now=NOW)


# --- drop folder: accounts ----------------------------------------------------------------------------


def test_account_import_reports_the_diff_and_the_archive_follows(where, folder):
    with ControlStore(where) as store:
        store.upsert_accounts([AccountSpec("A1001", "residential", {M[1]: Decimal(1)}, customer="张三", area="TA-001",
                                           thresholds={"alarm": "3d"})], actor="test", now=NOW)
    text = ("户号,客户名称,台区,电价,表号,保电\n"
            f"A1001,张三,TA-009,residential,{M[1]},1\n"  # area changed, protected now
            f"A1002,李四,TA-001,residential,\"{M[2]};{M[3]}:200*1\",0\n"  # takes M3 from A1003
            f"A1003,王五,TA-002,commercial,{M[4]},0\n"
            f"A1004,赵六,TA-003,residential,{M[5]}:50*2,0\n"  # new
            f"A1005,钱七,TA-003,industrial,{M[6]},0\n"  # unknown tariff
            f"A1006,孙八,TA-003,residential,{M[5]},0\n")  # M5 given twice
    drop(folder, "accounts.csv", text.encode("gbk"))
    spec = JobSpec("accounts", JobKind.IMPORT_ACCOUNTS, folder=folder)
    result = run_job(spec, where=where, now=NOW, known_tariffs=TARIFFS)
    # A1003 only lost M3, which is reported as the move on A1002: A1003's own record is unchanged.
    assert (result.applied, result.quarantined) == (3, 2)
    assert result.counts["created"] == 1 and result.counts["changed"] == 2 and result.counts["meters_moved"] == 1
    assert set(result.detail[1:]) >= {
        "account A1001: changed area 'TA-001' -> 'TA-009', protected False -> True",
        f"meter {M[3]}: moved from account A1003 to A1002 (×200)",
        "account A1004: created (tariff residential, area 'TA-003', 1 meter(s)), pending: no opening balance",
        f"meter {M[5]}: assigned to account A1004 (×100)",
    }
    assert quarantined(where, "accounts") == {
        ("accounts.csv", 6): "unknown tariff 'industrial' (known: commercial, residential)",
        ("accounts.csv", 7): f"meter {M[5]} is also given to account A1004 in this import (record 5)",
    }
    with ControlStore(where) as store:
        got = {a.account: a for a in store.accounts()}
    assert got["A1001"].area == "TA-009" and got["A1001"].protected and got["A1001"].thresholds == {"alarm": "3d"}
    assert got["A1002"].meters == {M[2]: Decimal(1), M[3]: Decimal(200)}
    assert got["A1003"].meters == {M[4]: Decimal(1)}
    assert got["A1004"].customer == "赵六" and got["A1004"].meters == {M[5]: Decimal(100)}
    assert "A1005" not in got and "A1006" not in got
    # The same export again: the archive already follows it.
    drop(folder, "accounts.csv", text.encode("gbk"))
    again = run_job(spec, where=where, now=NOW + timedelta(hours=1), known_tariffs=TARIFFS)
    assert again.applied == 0 and again.counts["unchanged"] == 4


def test_account_import_opening_balances_activate_once(where, folder):
    """A new account without an opening balance waits pending; a record with one applies it once
    and activates; an activation without an amount opens at 0.00; live accounts are not credited."""
    text = ("户号,电价,表号,期初余额,启用\n"
            f"A2001,residential,{M[5]},50.00,\n"  # opens with 50.00
            f"A2002,residential,{M[6]},,\n"  # no opening balance: pending
            f"A2003,residential,{M[7]},,是\n"  # activated without an amount: 0.00
            f"A2004,residential,{M[8]},-12.30,\n"  # owes 12.30 from the old system
            f"A2005,residential,{M[9]},1.234,\n"  # refused
            f"A1001,residential,{M[1]},80,\n")  # live before opening balances: its ledger stands
    drop(folder, "open.csv", text.encode("gbk"))
    spec = JobSpec("accounts", JobKind.IMPORT_ACCOUNTS, folder=folder)
    result = run_job(spec, where=where, now=NOW, known_tariffs=TARIFFS)
    assert result.counts["created"] == 4 and result.counts["activated"] == 3 and result.counts["opening_ignored"] == 1
    assert quarantined(where, "accounts") == {
        ("open.csv", 6): 'opening_balance "1.234" refused: more than two decimals (the fen is the smallest unit)'}
    assert {"account A2001: opening balance 50.00 applied", "account A2003: opening balance 0.00 applied",
            "account A2002: created (tariff residential, area '', 1 meter(s)), pending: no opening balance"} \
        <= set(result.detail)
    with ControlStore(where) as store:
        got = {a.account: (a.state, a.balance) for a in store.accounts()}
        assert store.opening_balances() == {"A2001": Decimal("50.00"), "A2003": Decimal("0.00"),
                                            "A2004": Decimal("-12.30")}
    assert got["A2001"] == ("normal", Decimal("50.00")) and got["A2002"] == ("pending", Decimal("0.00"))
    assert got["A2003"] == ("normal", Decimal("0.00")) and got["A2004"] == ("normal", Decimal("-12.30"))
    assert got["A1001"] == ("normal", Decimal("0.00"))
    # the same file again: nothing twice; then a different opening balance and a late one for A2002
    drop(folder, "open.csv", text.encode("gbk"))
    again = run_job(spec, where=where, now=NOW + timedelta(hours=1), known_tariffs=TARIFFS)
    assert again.applied == 0 and again.counts["unchanged"] == 5
    later = ("account,tariff,meters,opening_balance\n"
             f"A2001,residential,{M[5]},60\n"
             f"A2002,residential,{M[6]},20\n")
    drop(folder, "later.csv", later)
    done = run_job(spec, where=where, now=NOW + timedelta(hours=2), known_tariffs=TARIFFS)
    assert done.counts["activated"] == 1 and done.counts["unchanged"] == 1
    assert any(line.startswith("account A2001: opening balance 60.00 not applied: 50.00 was applied")
               for line in done.detail)
    assert balances(where)["A2001"] == Decimal("50.00") and balances(where)["A2002"] == Decimal("20.00")


def test_accounts_missing_from_an_import_are_reported_never_deleted(where, folder):
    drop(folder, "acc.json", json.dumps([{"account": "A1001", "tariff": "residential",
                                          "meters": [{"meter": M[1], "multiplier": 1}]}]))
    spec = JobSpec("accounts", JobKind.IMPORT_ACCOUNTS, folder=folder)
    result = run_job(spec, where=where, now=NOW, known_tariffs=TARIFFS)
    assert result.counts == {"unchanged": 1, "missing": 2}
    assert "2 account(s) in the archive are not in acc.json (kept, never deleted by an import): A1002, A1003" \
        in result.detail
    with ControlStore(where) as store:
        assert [a.account for a in store.accounts()] == ["A1001", "A1002", "A1003"]
        assert store.account("A1001").customer == "张三"  # no customer field in the file: kept


# --- exports ------------------------------------------------------------------------------------------


def registers(values):
    calls = []

    def register_of(meter: str, day: date):
        calls.append((meter, day))
        return values.get((meter, day))

    register_of.calls = calls
    return register_of


def test_reading_day_export_names_files_per_day_and_rewrites_idempotently(where, folder):
    day = date(2026, 3, 1)
    reg = registers({(M[1], day): Decimal("1234.56"), (M[3], day): (Decimal("10.5"), True),
                     (M[4], day): Decimal("0.00")})
    spec = JobSpec("readings", JobKind.EXPORT_READINGS, folder=folder)
    result = run_job(spec, where=where, now=NOW, register_of=reg, day=day)
    assert result.files == ["readings-20260301.csv"] and result.watermark == "2026-03-01"
    assert result.applied == 3 and result.counts["rows_missing"] == 1
    out = folder / "outbox" / "readings-20260301.csv"
    first = out.read_bytes()
    assert first.decode().splitlines() == [
        "account,meter,day,register_kwh,estimated,status",
        f"A1001,{M[1]},2026-03-01,1234.56,,ok",
        f"A1002,{M[2]},2026-03-01,,,missing",
        f"A1003,{M[3]},2026-03-01,10.5,1,ok",
        f"A1003,{M[4]},2026-03-01,0.00,,ok",
    ]
    again = run_job(spec, where=where, now=NOW + timedelta(hours=3), register_of=reg, day=day)
    assert again.files == ["readings-20260301.csv"] and out.read_bytes() == first
    assert sorted(p.name for p in (folder / "outbox").iterdir()) == ["readings-20260301.csv"]  # no .tmp left

    # Without a day: every day after the watermark through today (CST); an old day rewritten
    # by hand does not move the watermark back.
    later = run_job(spec, where=where, now=NOW + timedelta(days=2), register_of=reg)
    assert later.files == ["readings-20260302.csv", "readings-20260303.csv"] and later.watermark == "2026-03-03"
    old = run_job(spec, where=where, now=NOW + timedelta(days=2), register_of=reg, day=date(2026, 2, 20))
    assert old.watermark == "2026-03-03"
    nothing = run_job(spec, where=where, now=NOW + timedelta(days=2), register_of=reg)
    assert nothing.files == [] and "nothing to export" in nothing.detail[0]


def test_reading_export_as_json_and_without_register_lookup(where, folder):
    day = date(2026, 3, 1)
    spec = JobSpec("readings", JobKind.EXPORT_READINGS, folder=folder, format="json")
    run_job(spec, where=where, now=NOW, register_of=registers({(M[1], day): Decimal("5.10")}), day=day)
    doc = json.loads((folder / "outbox" / "readings-20260301.json").read_text())
    assert doc["day"] == "2026-03-01" and doc["kind"] == "export_readings"
    assert doc["records"][0] == {"account": "A1001", "meter": M[1], "day": "2026-03-01", "register_kwh": "5.10",
                                 "estimated": None, "status": "ok"}
    assert doc["records"][1]["register_kwh"] is None and doc["records"][1]["status"] == "missing"
    with pytest.raises(SyncError, match="needs register_of"):
        run_job(spec, where=where, now=NOW, day=day)
    with SyncStore(where) as sync:
        [status] = sync.status()
        assert status["last_status"] == "error" and "register_of" in status["last_error"]


def test_balance_export_in_gbk(where, folder):
    with ControlStore(where) as store:
        store.pay("A1001", "12.34", "X1", actor="counter", now=NOW)
    spec = JobSpec("balances", JobKind.EXPORT_BALANCES, folder=folder, encoding="gbk")
    result = run_job(spec, where=where, now=NOW)
    assert result.files == ["balances-20260301-120000.csv"] and result.watermark == NOW.isoformat()
    lines = (folder / "outbox" / result.files[0]).read_bytes().decode("gbk").splitlines()
    assert lines[0] == "account,customer,area,balance,state,held,as_of"
    assert lines[1] == f"A1001,张三,TA-001,12.34,normal,,{NOW.isoformat()}"
    assert len(lines) == 4


# --- HTTP ---------------------------------------------------------------------------------------------


class Billing:
    """A billing system on localhost: paged GET of records, POST of exports."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.fail: dict[str, int] = {}  # since -> status to answer with
        self.next_of: dict[str, str] = {}  # since -> the next to answer with, whatever the records
        self.gets: list[dict] = []
        self.posts: list[tuple[dict, dict]] = []
        billing = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _auth(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return False
                return True

            def do_GET(self):
                if not self._auth():
                    return
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                billing.gets.append(query)
                since = query.get("since", "0")
                if since in billing.fail:
                    self.send_response(billing.fail[since])
                    self.end_headers()
                    return
                start, limit = int(since), int(query["limit"])
                page = billing.records[start:start + limit]
                more = start + limit < len(billing.records)
                nxt = billing.next_of.get(since, str(start + limit) if more else None)
                body = json.dumps({"records": page, "next": nxt})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def do_POST(self):
                if not self._auth():
                    return
                body = self.rfile.read(int(self.headers["Content-Length"]))
                billing.posts.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def billing(monkeypatch):
    monkeypatch.setenv("BILLING_TOKEN", TOKEN)
    server = Billing()
    yield server
    server.close()


def payment(i: int, account: str = "A1001", amount: str = "1.00") -> dict:
    return {"payment_id": f"H{i}", "account": account, "amount": amount, "paid_at": "2026-03-01T08:00:00+08:00"}


def http_spec(billing: Billing, **kw) -> JobSpec:
    return JobSpec("http-payments", JobKind.IMPORT_PAYMENTS, url=billing.url("/api/payments"),
                   token_env="BILLING_TOKEN", chunk=3, **kw)


def test_http_payments_are_paged_and_the_watermark_follows(where, billing):
    billing.records = [payment(i) for i in range(7)] + [payment(7, "A9999"), payment(8, "A1002", "-1")]
    result = run_job(http_spec(billing), where=where, now=NOW)
    assert [g.get("since") for g in billing.gets] == [None, "3", "6"]
    assert all(g["limit"] == "3" for g in billing.gets)
    assert (result.applied, result.quarantined, result.watermark) == (7, 2, "6")
    source = f"{billing.url('/api/payments')} since=6"
    assert quarantined(where, "http-payments") == {(source, 2): "unknown account A9999",
                                                      (source, 3): 'amount "-1" refused: it takes no sign'}
    # Next run: the last page is asked again (its next was null): nothing applied twice, not
    # counted as duplicates either; new records are.
    billing.records += [payment(9), payment(10)]
    again = run_job(http_spec(billing), where=where, now=NOW + timedelta(minutes=5))
    assert (again.applied, again.replayed, again.duplicates, again.quarantined) == (2, 1, 0, 0)
    assert again.counts["already_quarantined"] == 2 and len(quarantined(where, "http-payments")) == 2
    assert again.watermark == "9"
    assert balances(where)["A1001"] == Decimal("9.00")
    with SyncStore(where) as sync:
        [status] = sync.status()
        assert status["watermark"] == "9" and status["last_status"] == "ok"


def test_an_http_failure_keeps_the_watermark_at_the_last_applied_page(where, billing):
    billing.records = [payment(i) for i in range(8)]
    billing.fail["3"] = 503
    with pytest.raises(HttpSyncError) as err:
        run_job(http_spec(billing), where=where, now=NOW)
    assert err.value.status == 503 and "since=3" in str(err.value) and TOKEN not in str(err.value)
    assert isinstance(err.value, SyncError)
    with SyncStore(where) as sync:
        [status] = sync.status()
        assert status["watermark"] == "3" and status["last_status"] == "error" and "503" in status["last_error"]
    del billing.fail["3"]
    result = run_job(http_spec(billing), where=where, now=NOW + timedelta(minutes=5))
    assert result.applied == 5 and result.duplicates == 0
    assert balances(where)["A1001"] == Decimal("8.00")


def test_an_http_answer_over_the_jobs_limit_fails_the_run_unread_and_keeps_the_watermark(where, billing):
    billing.records = [payment(i) for i in range(3)] + [payment(i, amount="1." + "0" * 400_000) for i in range(3, 6)]
    with pytest.raises(HttpSyncError) as err:
        run_job(http_spec(billing, max_file_mb=1), where=where, now=NOW)
    assert "GET answer is longer than 1,048,576 bytes (the job's max_file_mb); nothing of it applied" in str(err.value)
    assert "since=3" in str(err.value)
    with SyncStore(where) as sync:
        [status] = sync.status()
        assert status["watermark"] == "3" and status["last_status"] == "error"
        assert "longer than 1,048,576 bytes" in status["last_error"]
    assert balances(where)["A1001"] == Decimal("3.00")  # the first page, nothing of the second


def test_a_next_that_cycles_stops_the_run_with_the_pages_read_applied(where, billing):
    # next 3 -> 6 -> 3 -> ...: a billing system's bug kept the run asking for ever
    billing.records = [payment(i) for i in range(9)]
    billing.next_of["6"] = "3"
    with pytest.raises(HttpSyncError) as err:
        run_job(http_spec(billing), where=where, now=NOW)
    assert "the answer's next '3' names a page this run has already read (a cycle)" in str(err.value)
    assert [g.get("since") for g in billing.gets] == [None, "3", "6"]
    assert balances(where)["A1001"] == Decimal("9.00")  # every page read was applied, once
    with SyncStore(where) as sync:
        [status] = sync.status()
        assert status["last_status"] == "error" and "a cycle" in status["last_error"]


def test_a_run_reads_at_most_max_pages_and_the_next_run_goes_on(where, billing, monkeypatch):
    from meterd.billing_link import imports

    monkeypatch.setattr(imports, "MAX_PAGES", 2)
    billing.records = [payment(i) for i in range(8)]
    first = run_job(http_spec(billing), where=where, now=NOW)
    assert (first.applied, first.watermark) == (6, "6")
    assert any("stopped after 2 pages (at most 2 a run)" in n for n in first.detail), first.detail
    second = run_job(http_spec(billing), where=where, now=NOW + timedelta(minutes=5))
    assert second.applied == 2 and second.duplicates == 0
    assert balances(where)["A1001"] == Decimal("8.00")


def test_an_answer_trickled_past_the_deadline_fails_and_nothing_of_it_is_used(monkeypatch):
    # each wait for bytes is under the 30 s timeout, but the answer never ends: bounded as a whole
    from meterd.billing_link import http

    monkeypatch.setattr(http, "ANSWER_DEADLINE", 1.0)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")
            while not stop.is_set():
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(HttpSyncError) as err:
            http.get_page(f"http://127.0.0.1:{port}/api/payments", since=None, limit=10, token=None)
    finally:
        stop.set()
        server.close()
    assert "GET answer took longer than 1 s" in str(err.value) and "nothing of it applied" in str(err.value)
    assert time.monotonic() - t0 < 5


def test_http_credentials_never_show(where, billing, monkeypatch):
    spec = JobSpec("p", JobKind.IMPORT_PAYMENTS, url=f"http://user:pw@127.0.0.1:{free_port()}/x?api_key=K1",
                   token_env="BILLING_TOKEN")
    with pytest.raises(HttpSyncError) as err:
        run_job(spec, where=where, now=NOW)
    text = str(err.value)
    assert err.value.status is None and "pw" not in text and "K1" not in text and "api_key=***" in text
    monkeypatch.delenv("BILLING_TOKEN")
    with pytest.raises(SyncError, match="environment variable BILLING_TOKEN"):
        run_job(http_spec(billing), where=where, now=NOW)
    monkeypatch.setenv("BILLING_TOKEN", "wrong")
    with pytest.raises(HttpSyncError) as err:
        run_job(http_spec(billing), where=where, now=NOW)
    assert err.value.status == 401 and "wrong" not in str(err.value)


def test_http_account_import(where, billing):
    billing.records = [{"account": "A1001", "tariff": "residential", "meters": [{"meter": M[1], "multiplier": 1}],
                        "customer": "张三", "area": "TA-001", "protected": True},
                       {"account": "A2001", "tariff": "commercial", "meters": f"{M[7]}:100*10"}]
    spec = JobSpec("http-accounts", JobKind.IMPORT_ACCOUNTS, url=billing.url("/api/accounts"),
                   token_env="BILLING_TOKEN")
    result = run_job(spec, where=where, now=NOW, known_tariffs=TARIFFS)
    assert result.counts["created"] == 1 and result.counts["changed"] == 1 and result.counts["missing"] == 2
    with ControlStore(where) as store:
        assert store.account("A2001").meters == {M[7]: Decimal(1000)} and store.account("A1001").protected


def test_exports_are_posted_as_json(where, billing):
    day = date(2026, 3, 1)
    spec = JobSpec("readings", JobKind.EXPORT_READINGS, url=billing.url("/api/readings"), token_env="BILLING_TOKEN")
    result = run_job(spec, where=where, now=NOW, register_of=registers({(M[2], day): Decimal("77.7")}), day=day)
    assert result.files == ["readings-20260301.json"]
    headers, doc = billing.posts[0]
    assert headers["Idempotency-Key"] == "readings-20260301.json" and headers["Content-Type"].startswith(
        "application/json")
    assert doc["day"] == "2026-03-01" and len(doc["records"]) == 4
    assert {r["account"]: r["register_kwh"] for r in doc["records"] if r["status"] == "ok"} == {"A1002": "77.7"}
    spec = JobSpec("balances", JobKind.EXPORT_BALANCES, url=billing.url("/api/balances"), token_env="BILLING_TOKEN")
    run_job(spec, where=where, now=NOW)
    headers, doc = billing.posts[1]
    assert [r["balance"] for r in doc["records"]] == ["0.00", "0.00", "0.00"] and doc["as_of"] == NOW.isoformat()
    with SyncStore(where) as sync:
        assert {s["job"]: s["watermark"] for s in sync.status()} == {"balances": NOW.isoformat(),
                                                                      "readings": "2026-03-01"}
