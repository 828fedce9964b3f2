"""``meterd sync`` as an operator runs it against a drop folder: payments from the billing system in
GBK, applied once whatever is dropped again, bad records quarantined with reasons, status and
quarantine listed; a reading-day export keyed by account."""

from __future__ import annotations

import json

from sync_site import PAYMENTS_JOB, READINGS_JOB, payments_inbox, sync_site

SITE = sync_site({"A1": "000000000001", "A2": "000000000002"}, (PAYMENTS_JOB, READINGS_JOB))


def test_payments_from_a_drop_folder_once_with_quarantine(run_meterd, tmp_path):
    (tmp_path / "site.toml").write_text(SITE)
    assert run_meterd("account", "list", "-c", "site.toml").returncode == 0  # the config's accounts are written
    inbox = payments_inbox(tmp_path)
    text = ("payment_id,account,amount,paid_at,channel\n"
            "P1,A1,100.00,2026-11-20 10:00:00,营业厅\n"
            "P2,A2,50.5,2026-11-20 11:00:00,网银\n"
            "P3,NOPE,10,2026-11-20 12:00:00,网银\n"
            "P4,A1,-3,2026-11-20 12:00:00,网银\n"
            "P5,A1,abc,2026-11-20 12:00:00,网银\n")
    (inbox / "day1.csv.tmp").write_bytes(text.encode("gbk"))
    (inbox / "day1.csv.tmp").rename(inbox / "day1.csv")
    p = run_meterd("sync", "run", "payments", "-c", "site.toml", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["applied"] == 2 and result["quarantined"] == 3
    (inbox / "day1-again.csv").write_bytes(text.encode("gbk"))  # the billing system sends it again
    again = json.loads(run_meterd("sync", "run", "payments", "-c", "site.toml", "--json").stdout)
    assert again["applied"] == 0 and again["duplicates"] == 2
    assert json.loads(run_meterd("ledger", "A1", "-c", "site.toml", "--json").stdout)["balance"] == "100.00"
    assert json.loads(run_meterd("ledger", "A2", "-c", "site.toml", "--json").stdout)["balance"] == "50.50"
    reasons = " | ".join(q["reason"] for q in json.loads(
        run_meterd("sync", "quarantine", "payments", "-c", "site.toml", "--json").stdout))
    assert "unknown account NOPE" in reasons and 'amount "-3" refused: it takes no sign' in reasons \
        and 'amount "abc" refused: it is not an amount' in reasons, reasons
    status = {s["job"]: s for s in json.loads(run_meterd("sync", "status", "-c", "site.toml", "--json").stdout)}
    assert status["payments"]["last_status"] == "ok"
    assert list((tmp_path / "billing" / "payments" / "processed").iterdir())


def test_reading_day_export_lists_every_account(run_meterd, tmp_path):
    (tmp_path / "site.toml").write_text(SITE)
    p = run_meterd("sync", "run", "readings", "--day", "2026-11-20", "-c", "site.toml", "--json")
    assert p.returncode == 0, p.stderr
    [out] = list((tmp_path / "billing" / "readings" / "outbox").iterdir())
    doc = json.loads(out.read_text(encoding="utf-8"))
    rows = doc["records"] if isinstance(doc, dict) else doc
    assert {r["account"] for r in rows} == {"A1", "A2"}  # no register yet: listed as missing, not dropped
    assert all(r.get("status") == "missing" for r in rows), rows
    p = run_meterd("sync", "run", "nope", "-c", "site.toml")
    assert p.returncode == 2 and "unknown sync job 'nope'" in p.stderr


def test_status_and_quarantine_as_csv(run_meterd, tmp_path):
    import csv
    import io

    (tmp_path / "site.toml").write_text(SITE)
    inbox = payments_inbox(tmp_path)
    (inbox / "p.csv").write_text("payment_id,account,amount,paid_at\nP1,NOPE,1,2026-11-20 10:00:00\n")
    assert run_meterd("sync", "run", "payments", "-c", "site.toml").returncode == 0
    rows = list(csv.DictReader(io.StringIO(run_meterd("sync", "quarantine", "-c", "site.toml", "--csv", "-").stdout)))
    assert len(rows) == 1 and "NOPE" in rows[0]["reason"]
    rows = list(csv.DictReader(io.StringIO(run_meterd("sync", "status", "-c", "site.toml", "--csv", "-").stdout)))
    assert {r["job"] for r in rows} >= {"payments"}
