"""An operator's 保电 override and the billing system (the system of record for accounts): an
account import that repeats the archived flag keeps the override; one that changes it supersedes
the override, and the job's report says so.  On SQLite and PostgreSQL (``state_where``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from meterd.billing_link.jobs import JobKind, JobSpec, run_job
from meterd.control.state import AccountSpec, ControlStore

NOW = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)  # 12:00 CST
M1, M2 = "000000000001", "000000000002"


def drop(folder, name: str, text: str) -> None:
    inbox = folder / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / (name + ".tmp")).write_text(text)
    os.replace(inbox / (name + ".tmp"), inbox / name)


def test_a_new_protected_flag_from_billing_supersedes_the_override(state_where, tmp_path):
    with ControlStore(state_where) as store:
        store.upsert_accounts([AccountSpec("A1", "residential", {M1: Decimal(1)}, area="TA1"),
                               AccountSpec("H1", "residential", {M2: Decimal(1)}, area="TA1", protected=True)],
                              actor="test", now=NOW - timedelta(days=1))
        store.set_protection("A1", True, reason="hospital event", actor="li", now=NOW)
        store.set_protection("H1", False, reason="clinic closed", actor="li", now=NOW)
    spec = JobSpec("accounts", JobKind.IMPORT_ACCOUNTS, folder=tmp_path / "drop")
    header = "account,tariff,meters,area,protected\n"
    # the same flags as archived: both overrides stay
    drop(tmp_path / "drop", "a1.csv", header + f"A1,residential,{M1},TA1,0\nH1,residential,{M2},TA1,1\n")
    run_job(spec, where=state_where, now=NOW + timedelta(hours=1), known_tariffs=("residential",))
    with ControlStore(state_where) as store:
        later = NOW + timedelta(hours=2)
        assert store.account("A1").protected_at(later) and not store.account("H1").protected_at(later)
    # the billing system now protects A1 itself, and H1 no longer: its value supersedes both overrides
    drop(tmp_path / "drop", "a2.csv", header + f"A1,residential,{M1},TA1,1\nH1,residential,{M2},TA1,0\n")
    result = run_job(spec, where=state_where, now=NOW + timedelta(hours=3), known_tariffs=("residential",))
    said = [line for line in result.detail if "supersedes the operator's override" in line]
    assert len(said) == 2 and any("保电 set by li" in line for line in said), result.detail
    with ControlStore(state_where) as store:
        later = NOW + timedelta(hours=4)
        assert store.account("A1").override is None and store.account("A1").protected_at(later)
        assert store.account("H1").override is None and not store.account("H1").protected_at(later)
