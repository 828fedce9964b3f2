"""保电 set and released by an operator (``ControlStore.set_protection``, ``meterd protect``) over the
archive's flag: in force until its time or until the archive's own value changes, seen by the
policy pass, by manual commands and by power limits; audited.  Every test runs on SQLite and on
PostgreSQL (``state_where``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.control.engine import PrepaidEngine, PrepaidSettings, queue_manual
from meterd.control.limits import PowerLimit
from meterd.control.model import CommandKind
from meterd.control.policy import PROTECTED_REASON, SafetyRules, Threshold, Thresholds
from meterd.control.state import AccountSpec, ControlStore, LedgerError
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.readings import Reading

M1, M2 = "000000000001", "000000000002"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)  # a Monday, 10:00 CST
HOUR = timedelta(hours=1)
FLAT = Tariff("flat", (TariffVersion(effective=datetime(2020, 1, 1).date(), kind=TariffKind.FLAT,
                                     price=Decimal("0.50")),))
THRESHOLDS = Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)), Threshold(Decimal(5)))
SPECS = [AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=Decimal(0)),
         AccountSpec("H1", "flat", {M2: Decimal(1)}, area="TA1", protected=True, opening_balance=Decimal(0))]


@pytest.fixture
def store(state_where):
    s = ControlStore(state_where)
    s.upsert_accounts(SPECS, actor="config", now=T0)
    yield s
    s.close()


def effective(store: ControlStore, account: str, now: datetime) -> bool:
    """The protection as the policy pass sees it (its rows) and as an Account says it."""
    rows = {r[0]: bool(r[2]) for r in store.policy_rows(changed_since=None, quiet_above=None, now=now)}
    found = store.account(account)
    assert found is not None and rows[account] == found.protected_at(now)
    return rows[account]


def test_a_release_overrides_the_archive_until_its_time_and_is_audited(store):
    change = store.set_protection("H1", False, reason="clinic moved out", actor="li", now=T0, until=T0 + 2 * HOUR)
    assert change.changed and change.protected is False and change.archive is True
    assert "保电 released by li" in change.message and "2026-11-02 12:00 CST" in change.message
    assert "billing system or the config" in change.message
    assert effective(store, "H1", T0 + HOUR) is False
    account = store.account("H1")
    assert account.protected is True  # the archive's flag itself is untouched (the billing import reads it)
    o = account.protection_override(T0 + HOUR)
    assert (o.operator, o.reason, o.until, o.archive) == ("li", "clinic moved out", T0 + 2 * HOUR, True)
    assert effective(store, "H1", T0 + 2 * HOUR) is True  # its time is over: the archive's flag again
    assert store.account("H1").protection_override(T0 + 2 * HOUR) is None
    [line] = [a for a in store.audit_log(subject="H1") if a.action == "protection-override"]
    assert line.actor == "li" and line.detail["reason"] == "clinic moved out" and line.detail["protected"] is False
    assert effective(store, "A1", T0) is False  # the other accounts: their archive's flag


def test_the_same_archive_value_keeps_the_override_a_new_one_supersedes_it(store):
    store.set_protection("A1", True, reason="hospital event", actor="li", now=T0)
    assert effective(store, "A1", T0 + HOUR) is True
    assert store.upsert_accounts(SPECS, actor="config", now=T0 + HOUR) == []  # the daemon restarts: same config
    assert effective(store, "A1", T0 + 2 * HOUR) is True
    # the billing system now says the account is protected, then (a day later) that it is not: the
    # new value supersedes the operator's override, which does not come back
    changes = store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", protected=True)],
                                    actor="billing", now=T0 + 3 * HOUR)
    assert any("supersedes the operator's override (保电 set by li" in c for c in changes), changes
    assert store.account("A1").override is None
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1")], actor="billing",
                          now=T0 + 4 * HOUR)
    assert effective(store, "A1", T0 + 4 * HOUR) is False
    assert [a.actor for a in store.audit_log(subject="A1") if "supersedes" in a.detail.get("change", "")] == ["billing"]


def test_asking_for_the_archive_value_ends_the_override_and_repeats_change_nothing(store):
    assert not store.set_protection("H1", True, reason="r", actor="li", now=T0).changed  # as archived already
    store.set_protection("H1", False, reason="works", actor="li", now=T0)
    again = store.set_protection("H1", False, reason="works", actor="wang", now=T0 + HOUR)
    assert not again.changed and "by li" in again.message
    longer = store.set_protection("H1", False, reason="works go on", actor="wang", now=T0 + HOUR, until=T0 + 9 * HOUR)
    assert longer.changed and store.account("H1").override.until == T0 + 9 * HOUR
    back = store.set_protection("H1", True, reason="works done", actor="wang", now=T0 + 2 * HOUR)
    assert back.changed and back.override is None and "counts again" in back.message
    assert store.account("H1").override is None and effective(store, "H1", T0 + 2 * HOUR) is True


@pytest.mark.parametrize("kwargs, says", [
    ({"account": "NOPE"}, "unknown account"),
    ({"reason": " "}, "a reason is required"),
    ({"actor": ""}, "the operator is required"),
    ({"until": T0 - HOUR}, "not in the future"),
])
def test_refusals_name_what_is_wrong_and_write_nothing(store, kwargs, says):
    args = {"account": "H1", "reason": "r", "actor": "li", "until": None} | kwargs
    with pytest.raises(LedgerError, match=says):
        store.set_protection(args.pop("account"), False, now=T0, **args)
    assert store.account("H1").override is None


def _engine(store: ControlStore, limits=()) -> PrepaidEngine:
    return PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules(trip_notice=timedelta(0))), {"flat": FLAT},
                         limits=limits)


def test_the_policy_pass_trips_a_released_account_and_holds_a_newly_protected_one(store):
    engine = _engine(store)
    engine.observe([Reading(M1, "energy.active.import.total", T0, Decimal(0), "kWh"),
                    Reading(M2, "energy.active.import.total", T0, Decimal(0), "kWh")])
    store.set_protection("A1", True, reason="hospital event", actor="li", now=T0)
    p = engine.run_pass(T0)  # both at 0.00 = the trip level: both protected now, both held
    assert sorted((c.meter, c.kind) for c in p.commands) == [(M1, CommandKind.ALARM), (M2, CommandKind.ALARM)]
    assert store.account("A1").held == PROTECTED_REASON == store.account("H1").held
    store.set_protection("H1", False, reason="clinic closed", actor="li", now=T0 + HOUR)
    p = engine.run_pass(T0 + HOUR)
    assert [(c.meter, c.kind) for c in p.commands] == [(M2, CommandKind.TRIP)]
    assert store.account("H1").state == "tripped" and store.account("A1").state == "alarmed"


def test_manual_trips_follow_the_effective_protection(store):
    def trip(meter: str, now: datetime):
        return queue_manual(store, meter, CommandKind.TRIP, operator="li", reason="test", now=now, ttl=HOUR,
                            known_meters=[M1, M2])

    with pytest.raises(LedgerError, match=r"release the protection first \(meterd protect H1 --release"):
        trip(M2, T0)
    store.set_protection("H1", False, reason="clinic closed", actor="li", now=T0, until=T0 + HOUR)
    assert trip(M2, T0).kind is CommandKind.TRIP
    store.set_protection("A1", True, reason="hospital event", actor="li", now=T0)
    with pytest.raises(LedgerError, match="protected account A1"):
        trip(M1, T0)


def test_power_limit_trips_follow_the_effective_protection(store):
    limit = PowerLimit(meter=M1, account="A1", area="TA1", limit_kw=Decimal(5), hold=timedelta(0),
                       action=CommandKind.TRIP)
    engine = _engine(store, limits=[limit])
    store.set_protection("A1", True, reason="hospital event", actor="li", now=T0)
    engine.observe([Reading(M1, "power.active.total", T0, Decimal(9), "kW")])
    p = engine.power(T0 + timedelta(minutes=1))
    assert CommandKind.TRIP not in [c.kind for c in p.commands] and "protected" in " ".join(
        n.message for n in p.notices)
