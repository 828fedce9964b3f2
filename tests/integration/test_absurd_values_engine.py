"""One meter's absurd value never stops prepaid control nor corrupts money, on both stores.

The prepaid engine over the real state database (SQLite and PostgreSQL): one account's meter
sends an absurd value, the other account's meter a plausible one.  The absurd one is flagged
(an ``implausible_advance`` anomaly naming the meter and the value), never charged; the other
account is charged as before, in that pass and the next.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.control.engine import PrepaidEngine, PrepaidSettings
from meterd.control.limits import PowerLimit
from meterd.control.model import CommandKind
from meterd.control.policy import SafetyRules, Threshold, Thresholds
from meterd.control.state import AccountSpec, ControlStore
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.plausibility import Gate
from meterd.readings import Reading

M1, M2 = "000000000001", "000000000002"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
THRESHOLDS = Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)), Threshold(Decimal(5)))
FLAT = Tariff("flat", (TariffVersion(effective=datetime(2020, 1, 1).date(), kind=TariffKind.FLAT,
                                     price=Decimal("0.50")),))
QUARTER = timedelta(minutes=15)


def energy(meter: str, at: datetime, kwh: str) -> Reading:
    return Reading(meter, "energy.active.import.total", at, Decimal(kwh), "kWh")


class Reports(list):
    def __call__(self, findings, resolved):
        self.append((list(findings), list(resolved)))


def make(where, *, m1=Decimal(1), m2=Decimal(1)):
    store = ControlStore(where)
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: m1}, opening_balance=Decimal(100)),
                           AccountSpec("A2", "flat", {M2: m2}, opening_balance=Decimal(100))],
                          actor="test", now=T0)
    reports = Reports()
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules(trip_notice=timedelta(0))),
                           {"flat": FLAT}, report=reports)
    return store, engine, reports


def charges(store: ControlStore, account: str) -> list[tuple[Decimal, Decimal]]:
    return [(e.amount, e.kwh) for e in store.ledger(account) if e.kwh is not None]


def test_a_charge_beyond_any_ledger_entry_is_held_and_the_district_is_charged(state_where, caplog):
    # A1's meter is a 500 kV point (CT x PT 10^6) silent for 20 days, then 3 x 10^10 kWh: within
    # what its rating allows over 480 h, 1.5 x 10^10 yuan at 0.50.  Before: LedgerError ("amount
    # -15000000000.00 refused") from every pass, A2 never charged again.
    store, engine, reports = make(state_where, m1=Decimal(1_000_000))
    engine.observe([energy(M1, T0, "0"), energy(M2, T0, "500")])
    engine.run_pass(T0)
    t1 = T0 + timedelta(days=20)
    engine.observe([energy(M1, t1, "30000000000"), energy(M2, t1, "510")])
    summary = engine.run_pass(t1)
    assert summary.failed == {} and summary.flags.get("implausible") == 1
    assert store.balance("A1") == Decimal("100.00") and store.balance("A2") == Decimal("95.00")
    findings, _ = reports[-1]
    assert [(f.meter, str(f.kind)) for f in findings] == [(M1, "implausible_advance")]
    assert "30000000000" in findings[0].detail and "more than any ledger entry" in findings[0].detail
    assert any(M1 in r.getMessage() and "30000000000" in r.getMessage() for r in caplog.records)
    # the next passes go on; A1's register resumes from where it was charged
    t2 = t1 + QUARTER
    engine.observe([energy(M1, t2, "1000000"), energy(M2, t2, "520")])
    summary = engine.run_pass(t2)
    assert summary.failed == {} and store.balance("A2") == Decimal("90.00")
    assert charges(store, "A1") == [(Decimal("-500000.00"), Decimal(1000000))]
    assert store.verify_balances() == []


def test_a_value_beyond_the_span_is_never_charged_nor_credited(state_where):
    # A2 is charged after A1, on the fast path (the delta planned for A1).  Before: 999999.90 ->
    # 1000000.40 was charged there (0.50 kWh) and became the cursor; the rollover to 0.30 after
    # it came out at -0.10 kWh, a CHARGE entry of +0.05 yuan.
    store, engine, _ = make(state_where)
    engine.observe([energy(M1, T0, "500"), energy(M2, T0, "999999.90")])
    engine.run_pass(T0)
    balances = []
    for i, value in enumerate(["1000000.40", "0.30", "0.50"], 1):
        t = T0 + i * QUARTER
        engine.observe([energy(M1, t, str(500 + i)), energy(M2, t, value)])
        assert engine.run_pass(t).failed == {}
        balances.append(store.balance("A2"))
    assert balances == [Decimal("100.00"), Decimal("99.80"), Decimal("99.70")]
    assert charges(store, "A2") == [(Decimal("-0.20"), Decimal("0.40")), (Decimal("-0.10"), Decimal("0.20"))]
    assert store.balance("A1") == Decimal("98.50") and store.verify_balances() == []


@pytest.mark.parametrize("values, kwh", [
    # DL/T 645 garbage: 000000.00 -> 999999.99 and back; a negative register; a float's -0.0
    (["999999.99", "0.00", "1.00"], [Decimal("1.00")]),
    (["-5.00", "0.50"], [Decimal("0.50")]),
    (["-0.0", "0.25"], [Decimal("0.25")]),
])
def test_register_garbage_charges_only_the_real_use(state_where, values, kwh):
    # already so before this change (charging's own plausibility rule): kept, on both stores
    store, engine, _ = make(state_where)
    engine.observe([energy(M1, T0, "0.00"), energy(M2, T0, "500")])
    engine.run_pass(T0)
    for i, value in enumerate(values, 1):
        t = T0 + i * QUARTER
        engine.observe([energy(M1, t, value), energy(M2, t, str(500 + i))])
        assert engine.run_pass(t).failed == {}
    assert [k for _, k in charges(store, "A1")] == kwh
    assert store.balance("A2") == Decimal(100) - Decimal("0.50") * len(values)
    assert all(amount <= 0 for account in ("A1", "A2") for amount, _ in charges(store, account))
    assert store.verify_balances() == []


def test_absurd_power_never_trips_a_customer_under_a_power_limit(state_where):
    # 定值控制 at 50 kW, held 15 min.  Before: two samples of 5E+11 kW (below the 10^12 ceiling)
    # passed the door as good and tripped the customer ("load 5E+11 kW > limit 50 kW for 15m").
    store = ControlStore(state_where)
    store.upsert_accounts([AccountSpec("B", "flat", {M1: Decimal(1)}, opening_balance=Decimal(1000))],
                          actor="test", now=T0)
    limit = PowerLimit(M1, "B", "TA", Decimal(50), timedelta(minutes=15), CommandKind.TRIP)
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules(trip_notice=timedelta(0))),
                           {"flat": FLAT}, limits=[limit])
    gate = Gate({})

    def sample(i: int, kw: str):
        out, found = gate.screen([Reading(M1, "power.active.total", T0 + i * QUARTER, Decimal(kw), "kW")])
        engine.observe(out)
        return engine.run_pass(T0 + i * QUARTER).commands, found

    assert sample(0, "20") == ([], [])
    for i in (1, 2):
        commands, found = sample(i, "5E+11")
        assert commands == [] and [(f.meter, f.quantity) for f in found] == [(M1, "power.active.total")]
        assert "more power than the meter can carry" in found[0].reason
    # a real overload still trips, as before
    assert sample(3, "60")[0] == []
    commands, found = sample(4, "61")
    assert [(c.meter, c.kind) for c in commands] == [(M1, CommandKind.TRIP)] and found == []
