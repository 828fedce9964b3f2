"""The prepaid engine on a real state database, time passed in: readings become charges, the policy
moves accounts through their states and queues commands, payments from another connection reclose."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from meterd.control.engine import PrepaidEngine, PrepaidSettings, queue_manual
from meterd.control.limits import PowerLimit
from meterd.control.model import CommandKind, CommandState, Rate
from meterd.control.policy import SafetyRules, Threshold, Thresholds
from meterd.control.state import AccountSpec, ControlStore, LedgerError
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.readings import Quality, Reading

M1, M2, BIG = "000000000001", "000000000002", "000000000009"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc)  # a Monday, 10:00 CST
FLAT = Tariff("flat", (TariffVersion(effective=datetime(2020, 1, 1).date(), kind=TariffKind.FLAT,
                                     price=Decimal("0.50")),))
THRESHOLDS = Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)),
                        Threshold(Decimal(5)))


def energy(meter: str, at: datetime, kwh: str, quantity: str = "energy.active.import.total") -> Reading:
    return Reading(meter, quantity, at, Decimal(kwh), "kWh")


# Most tests here are about charging and the state machine, not onboarding: their accounts open at
# 0.00 (active) and trips follow alarms at once.  The notice period and pending accounts have their
# own tests (tests/integration/test_prepaid_onboarding.py).
NO_NOTICE = SafetyRules(trip_notice=timedelta(0))
OPEN = Decimal(0)


def make(tmp_path, rules: SafetyRules = NO_NOTICE, limits=()):
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=OPEN),
                           AccountSpec("A2", "flat", {M2: Decimal(1)}, area="TA1", protected=True,
                                       opening_balance=OPEN)],
                          actor="test", now=T0)
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, rules), {"flat": FLAT}, limits=limits)
    return store, engine


def kinds(commands):
    return [(c.meter, c.kind) for c in commands]


def test_an_account_runs_down_is_tripped_pays_and_is_reclosed(tmp_path):
    store, engine = make(tmp_path)
    store.pay("A1", "30", "P1", actor="counter", now=T0)
    store.pay("A2", "30", "P2", actor="counter", now=T0)
    engine.observe([energy(M1, T0, "1000"), energy(M2, T0, "500")])
    first = engine.run_pass(T0)
    assert first.entries == 0 and first.commands == []  # first readings only set the cursors
    engine.observe([energy(M1, T0 + timedelta(hours=1), "1030")])  # 30 kWh x 0.50 = 15.00
    p = engine.run_pass(T0 + timedelta(hours=1))
    assert store.balance("A1") == Decimal("15.00") and p.entries == 1
    assert store.account("A1").state == "reminded" and p.commands == []
    engine.observe([energy(M1, T0 + timedelta(hours=2), "1040")])  # -5.00 -> 10.00: alarm (<= 10)
    p = engine.run_pass(T0 + timedelta(hours=2))
    assert kinds(p.commands) == [(M1, CommandKind.ALARM)] and store.account("A1").state == "alarmed"
    engine.observe([energy(M1, T0 + timedelta(hours=3), "1062")])  # -11.00 -> -1.00: trip
    p = engine.run_pass(T0 + timedelta(hours=3))
    assert kinds(p.commands) == [(M1, CommandKind.TRIP)] and store.account("A1").state == "tripped"
    assert store.balance("A1") == Decimal("-1.00")
    # replaying the same readings (a restart, a duplicate delivery) charges nothing
    engine.observe([energy(M1, T0 + timedelta(hours=2), "1040"), energy(M1, T0 + timedelta(hours=3), "1062")])
    assert engine.run_pass(T0 + timedelta(hours=3, minutes=1)).entries == 0
    assert store.balance("A1") == Decimal("-1.00")
    # a payment made by another process (meterd pay) is seen by the next pass
    with ControlStore(tmp_path) as counter:
        counter.pay("A1", "100", "P3", actor="counter", now=T0 + timedelta(hours=4))
    p = engine.run_pass(T0 + timedelta(hours=4))
    assert set(kinds(p.commands)) == {(M1, CommandKind.RECLOSE_ALLOWED), (M1, CommandKind.ALARM_RELEASE)}
    assert store.account("A1").state == "normal" and store.verify_balances() == []
    assert [n.kind for n in p.notices] == ["reclose"]


def test_protected_accounts_are_held_not_tripped(tmp_path):
    store, engine = make(tmp_path)
    store.pay("A1", "100", "P1", actor="c", now=T0)
    store.pay("A2", "30", "P2", actor="c", now=T0)
    engine.observe([energy(M2, T0, "0")])
    assert engine.run_pass(T0).commands == []
    engine.observe([energy(M2, T0 + timedelta(hours=1), "70")])  # 30 - 35 = -5: trip level, but 保电
    p = engine.run_pass(T0 + timedelta(hours=1))
    assert kinds(p.commands) == [(M2, CommandKind.ALARM)]
    account = store.account("A2")
    assert account.state == "alarmed" and "protected" in account.held
    assert [n.kind for n in p.notices].count("held") == 1
    again = engine.run_pass(T0 + timedelta(hours=2))  # re-decided every pass, but no new notice
    assert again.commands == [] and [n.kind for n in again.notices].count("held") == 0


def test_quiet_hours_hold_the_trip_until_they_end(tmp_path):
    rules = SafetyRules(quiet_hours=((time(22, 0), time(7, 0)),), trip_notice=timedelta(0))
    store, engine = make(tmp_path, rules)
    store.pay("A1", "0.50", "P1", actor="c", now=T0)
    store.pay("A2", "100", "P2", actor="c", now=T0)
    night = datetime(2026, 11, 2, 15, 0, tzinfo=timezone.utc)  # 23:00 CST
    engine.observe([energy(M1, night, "0")])
    engine.run_pass(night)
    engine.observe([energy(M1, night + timedelta(minutes=30), "2")])
    p = engine.run_pass(night + timedelta(minutes=30))
    assert (M1, CommandKind.TRIP) not in kinds(p.commands) and "quiet hours" in store.account("A1").held
    morning = datetime(2026, 11, 2, 23, 30, tzinfo=timezone.utc)  # 07:30 CST
    p = engine.run_pass(morning)
    assert kinds(p.commands) == [(M1, CommandKind.TRIP)] and store.account("A1").state == "tripped"


def test_dry_run_records_what_would_be_sent(tmp_path):
    store, engine = make(tmp_path, SafetyRules(dry_run=True, trip_notice=timedelta(0)))
    engine.run_pass(T0)
    commands = store.commands()
    assert {c.state for c in commands} == {CommandState.DRY_RUN}
    assert (M1, CommandKind.TRIP) in kinds(commands)
    assert store.due_commands(T0 + timedelta(days=1)) == []


def test_bad_readings_are_flagged_and_not_charged(tmp_path):
    store, engine = make(tmp_path)
    engine.observe([energy(M1, T0, "100"), energy(M1, T0 + timedelta(hours=1), "90"),
                    Reading(M1, "energy.active.import.total", T0 + timedelta(hours=2), Decimal("500"),
                            quality=Quality.SUSPECT)])
    p = engine.run_pass(T0 + timedelta(hours=2))
    assert p.flags == {"negative_delta": 1} and store.balance("A1") == 0
    assert store.charge_flags()[0][3] == "negative_delta"


def test_frozen_daily_registers_charge_like_live_ones(tmp_path):
    store, engine = make(tmp_path)
    engine.observe([energy(M1, T0, "100", "frozen.daily.energy.active.import.total"),
                    energy(M1, T0 + timedelta(days=1), "110", "frozen.daily.energy.active.import.total")])
    engine.run_pass(T0 + timedelta(days=1, hours=1))
    assert store.balance("A1") == Decimal("-5.00")


def test_power_limit_trips_a_large_customer_after_the_hold(tmp_path):
    limit = PowerLimit(meter=BIG, account=None, area="TA9", limit_kw=Decimal(80), hold=timedelta(minutes=10),
                       action=CommandKind.TRIP)
    store, engine = make(tmp_path, limits=[limit])
    store.pay("A1", "100", "P1", actor="c", now=T0)
    store.pay("A2", "100", "P2", actor="c", now=T0)
    for minute in range(0, 16, 5):
        engine.observe([Reading(BIG, "power.active.total", T0 + timedelta(minutes=minute), Decimal(95), "kW")])
    p = engine.run_pass(T0 + timedelta(minutes=15))
    assert kinds(p.commands) == [(BIG, CommandKind.TRIP)] and p.commands[0].requested_by == "power-limit"
    engine.observe([Reading(BIG, "power.active.total", T0 + timedelta(minutes=20), Decimal(96), "kW")])
    assert engine.run_pass(T0 + timedelta(minutes=20)).commands == []  # acted on once per excursion


def test_manual_commands_need_an_operator_and_respect_protection(tmp_path):
    store, engine = make(tmp_path)
    known = [M1, M2]
    ttl = timedelta(hours=1)
    with pytest.raises(LedgerError, match="unknown meter"):
        queue_manual(store, "000000000077", CommandKind.TRIP, operator="op", reason="r", now=T0, ttl=ttl,
                     known_meters=known)
    with pytest.raises(LedgerError, match="protected"):
        queue_manual(store, M2, CommandKind.TRIP, operator="op", reason="r", now=T0, ttl=ttl, known_meters=known)
    with pytest.raises(LedgerError, match="operator"):
        queue_manual(store, M1, CommandKind.TRIP, operator=" ", reason="r", now=T0, ttl=ttl, known_meters=known)
    cmd = queue_manual(store, M1, CommandKind.TRIP, operator="wang", reason="meter swap", now=T0, ttl=ttl,
                       known_meters=known)
    assert cmd.manual and cmd.requested_by == "wang"
    refusals = [a for a in store.audit_log(subject=M2) if a.action == "command-refused"]
    assert refusals and "protected" in refusals[0].detail["refusal"]


def test_an_operators_reclose_of_a_tripped_account_holds_automatic_trips(tmp_path):
    store, engine = make(tmp_path)
    engine.run_pass(T0)  # zero balance: A1 trips
    assert store.account("A1").state == "tripped"
    queue_manual(store, M1, CommandKind.RECLOSE, operator="wang", reason="hospital visit", now=T0,
                 ttl=timedelta(hours=1), known_meters=[M1], manual_hold=timedelta(hours=24))
    p = engine.run_pass(T0 + timedelta(hours=1))
    assert (M1, CommandKind.TRIP) not in kinds(p.commands)
    p = engine.run_pass(T0 + timedelta(hours=25))
    assert (M1, CommandKind.TRIP) in kinds(p.commands)


def test_a_meter_replacement_charges_the_old_meters_last_use_once_and_continues_on_the_new(tmp_path):
    store, engine = make(tmp_path)
    store.pay("A1", "100", "P1", actor="c", now=T0)
    engine.observe([energy(M1, T0, "1000")])
    engine.run_pass(T0)
    swap = T0 + timedelta(hours=1)
    new = "000000000005"
    assert store.record_replacement("WO-1", "A1", M1, new, swap, {Rate.TOTAL: Decimal("1010")},
                                    {Rate.TOTAL: Decimal("3")}, Decimal(1), actor="wang", now=swap)
    assert not store.record_replacement("WO-1", "A1", M1, new, swap, {Rate.TOTAL: Decimal("1010")},
                                        {Rate.TOTAL: Decimal("3")}, Decimal(1), actor="wang", now=swap)
    p = engine.run_pass(swap)  # the old meter's last 10 kWh
    assert store.balance("A1") == Decimal("95.00") and p.flags.get("replacement") == 1
    engine.observe([energy(new, swap + timedelta(hours=1), "7")])  # 4 kWh on the new meter
    engine.run_pass(swap + timedelta(hours=1))
    engine.run_pass(swap + timedelta(hours=2))  # the replacement is passed again: nothing twice
    assert store.balance("A1") == Decimal("93.00")
    assert store.meter_accounts()[new] == ("A1", Decimal(1)) and M1 not in store.meter_accounts()
    with pytest.raises(LedgerError, match="is not on account"):
        store.record_replacement("WO-2", "A1", M1, "000000000006", swap, {Rate.TOTAL: Decimal(1)},
                                 {Rate.TOTAL: Decimal(0)}, Decimal(1), actor="wang", now=swap)


def test_commands_fit_what_each_meter_can_take(tmp_path):
    caps = {M1: frozenset({CommandKind.TRIP, CommandKind.RECLOSE}),  # a Modbus meter with a relay map
            M2: frozenset()}  # DL/T 645-1997: no relay command
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=OPEN),
                           AccountSpec("A2", "flat", {M2: Decimal(1)}, area="TA1", opening_balance=OPEN)],
                          actor="test", now=T0)
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, NO_NOTICE), {"flat": FLAT},
                           capabilities=caps.get)
    p = engine.run_pass(T0)  # both at zero: trip
    assert kinds(p.commands) == [(M1, CommandKind.TRIP)]  # no alarm for Modbus, nothing for 1997
    assert [n.meter for n in p.notices if n.kind == "anomaly"] == [M2]
    assert store.account("A2").state == "tripped"  # the state moves: the operator must act on site
    store.pay("A1", "100", "P1", actor="c", now=T0)
    p = engine.run_pass(T0 + timedelta(minutes=1))
    assert kinds(p.commands) == [(M1, CommandKind.RECLOSE)] and "direct" in p.commands[0].reason


def test_the_lean_policy_pass_decides_exactly_what_the_full_one_would(tmp_path):
    """decide() reads only the accounts the policy could change (quiet_level): its decisions must
    be those of decide_all over every account."""
    import random

    from meterd.control.policy import decide_all

    rng = random.Random(7)
    store = ControlStore(tmp_path)
    specs = [AccountSpec(f"A{i:03d}", "flat", {f"{i:012d}": Decimal(1)}, area=f"TA{i % 3}",
                         protected=i % 11 == 0, thresholds={"alarm": "15"} if i % 13 == 0 else {})
             for i in range(1, 121)]
    store.upsert_accounts(specs, actor="test", now=T0)
    for spec in specs:
        store.pay(spec.account, Decimal(rng.randrange(1, 6000)).scaleb(-2), f"p-{spec.account}", actor="t", now=T0)
        if rng.random() < 0.5:
            store.adjust(spec.account, Decimal(-rng.randrange(1, 6000)).scaleb(-2), f"a-{spec.account}",
                         actor="t", now=T0, reason="test")
    states = ["pending", "normal", "reminded", "alarmed", "tripped"]
    store.set_control_state([(s.account, rng.choice(states), rng.choice([None, None, "weekend"])) for s in specs],
                            now=T0, actor="test")
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules(max_trips_per_area_hour=5)), {"flat": FLAT})
    now = T0 + timedelta(minutes=1)
    expected = decide_all(engine.views(now, store.accounts()), engine.settings.rules, now,
                          store.area_trips_since(now - timedelta(hours=1)))
    assert expected and len(expected) < len(specs)  # some accounts have nothing to decide
    summary = engine.decide(now)
    assert summary.decisions == len(expected)
    after = {a.account: (a.state, a.held, a.alarmed_at) for a in store.accounts()}
    for d in expected:
        assert after[d.account] == (str(d.new_state), d.held, d.alarmed_at)
    assert not any(d.account for d in expected if d.old_state == "pending")
    assert sorted((c.meter, c.kind) for c in summary.commands) == sorted(
        (c.meter, c.kind) for d in expected for c in d.commands)


@pytest.mark.parametrize("chunk", [1, 4])
def test_a_pass_charges_the_same_in_chunks_as_in_one_part(tmp_path, monkeypatch, chunk):
    """A district's pass is written in chunks of accounts, every account reading the one mapping of
    the pass's cursors: whatever the chunking, the ledger, cursors, tier usage and balances are
    those of one chunk for all (multi-meter accounts, a tariff not configured, a replacement)."""
    from meterd.control import engine as engine_module
    from meterd.control.model import TOU_RATES
    from meterd.control.tariff import Tier

    effective = datetime(2020, 1, 1).date()
    tariffs = {
        "flat": Tariff("flat", (TariffVersion(effective, TariffKind.FLAT, price=Decimal("0.5283"),
                                              fixed_monthly=Decimal("2.50")),)),
        "tiered": Tariff("tiered", (TariffVersion(effective, TariffKind.TIERED, tiers=(
            Tier(Decimal(15), Decimal("0.4883")), Tier(None, Decimal("0.7883")))),)),
        "tou": Tariff("tou", (TariffVersion(effective, TariffKind.TOU, rate_prices={
            Rate.SHARP: Decimal("1.0"), Rate.PEAK: Decimal("0.8"), Rate.FLAT: Decimal("0.55"),
            Rate.VALLEY: Decimal("0.3")}),)),
    }
    kinds = ("flat", "tiered", "tou", "missing")
    specs = [AccountSpec(f"A{i:03d}", kinds[i % 4] if i % 9 else "tiered",
                         {f"{i:09d}{k:03d}": Decimal(1) for k in range(1 + (i % 9 == 0))}, area=f"TA{i % 3}")
             for i in range(1, 31)]

    def round_of(at: datetime, day: int) -> list[Reading]:
        out = []
        for i, spec in enumerate(specs, start=1):
            if i % 7 == 0 and day:  # some accounts not read today
                continue
            for k, meter in enumerate(spec.meters):
                base = Decimal(100 + i) + Decimal(day) * Decimal(i % 5 + k) * Decimal("3.17")
                if spec.tariff == "tou":
                    out += [energy(meter, at, str(base / 4 + j), rate.quantity) for j, rate in enumerate(TOU_RATES)]
                else:
                    out.append(energy(meter, at, str(base)))
        return out

    def run(data_dir, chunk: int):
        monkeypatch.setattr(engine_module, "CHARGE_CHUNK", chunk)
        store = ControlStore(data_dir)
        store.upsert_accounts(specs, actor="test", now=T0)
        engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules()), tariffs)
        for day in range(3):
            at = T0 + timedelta(days=day)
            engine.observe(round_of(at, day))
            if day == 2:  # a meter swapped: its old meter's cursor is read too
                old = next(iter(specs[4].meters))
                store.record_replacement("WO-1", specs[4].account, old, "000000000777", at - timedelta(hours=1),
                                         {Rate.TOTAL: Decimal("140")}, {Rate.TOTAL: Decimal("1")}, Decimal(1),
                                         actor="t", now=at)
            engine.run_pass(at)
        state = ([(r.key, r.account, r.amount, r.detail) for a in specs for r in store.ledger(a.account)],
                 store.cursors(), store.tier_usage(), {a.account: a.balance for a in store.accounts()})
        assert store.verify_balances() == []
        store.close()
        return state

    expected = run(tmp_path / "one", 10**6)
    assert len(expected[0]) > 40 and expected[2]  # charges, fixed charges and tier usage were made
    # the swapped meter's last use (105 -> 140 kWh, across tier 1's 15 kWh) up to the replacement: its own cursor
    last_use = "charge:000000005000:total:2026-11-03T02:00:00+00:00/2026-11-04T01:00:00+00:00:"
    assert [r[2] for r in expected[0] if r[0].startswith(last_use)] == [Decimal("-7.32"), Decimal("-15.77")]
    got = run(tmp_path / "parts", chunk)
    assert got == expected


def test_a_meter_moved_by_an_import_mid_pass_charges_the_owner_at_reading_time(tmp_path):
    """过户: the old customer pays up to the readings taken while the meter was theirs; the new one
    from there on, with nothing charged twice or lost."""
    store, engine = make(tmp_path)
    store.pay("A1", "100", "P1", actor="c", now=T0)
    engine.observe([energy(M1, T0, "1000")])
    engine.run_pass(T0)
    engine.observe([energy(M1, T0 + timedelta(hours=1), "1030")])  # read while A1 holds M1
    # an account import moves M1 to A3 before the next pass (the engine has not been refreshed)
    store.upsert_accounts([AccountSpec("A1", "flat", {}, area="TA1"),
                           AccountSpec("A3", "flat", {M1: Decimal(1)}, area="TA1")], actor="import", now=T0)
    engine.run_pass(T0 + timedelta(hours=1))
    assert store.balance("A1") == Decimal("85.00")  # 30 kWh x 0.50
    assert store.balance("A3") == Decimal("0.00")
    engine.refresh()
    engine.observe([energy(M1, T0 + timedelta(hours=2), "1040")])
    engine.run_pass(T0 + timedelta(hours=2))
    assert store.balance("A1") == Decimal("85.00") and store.balance("A3") == Decimal("-5.00")
    assert store.verify_balances() == []


def test_the_new_owner_of_a_moved_meter_is_charged_from_where_the_old_one_stopped(tmp_path):
    store, engine = make(tmp_path)
    engine.observe([energy(M1, T0, "1000")])
    engine.run_pass(T0)
    engine.observe([energy(M1, T0 + timedelta(hours=1), "1030")])  # A1's
    store.upsert_accounts([AccountSpec("A1", "flat", {}, area="TA1"),
                           AccountSpec("A3", "flat", {M1: Decimal(1)}, area="TA1")], actor="import", now=T0)
    engine.refresh()
    engine.observe([energy(M1, T0 + timedelta(hours=2), "1040")])  # A3's, in the same pass
    engine.run_pass(T0 + timedelta(hours=2))
    engine.run_pass(T0 + timedelta(hours=2, minutes=1))  # A3's reading waited one pass
    assert store.balance("A1") == Decimal("-15.00") and store.balance("A3") == Decimal("-5.00")
    charged = [(a, r.kwh) for a in ("A1", "A3") for r in store.ledger(a)
               if r.kwh is not None]
    assert sorted(charged) == [("A1", Decimal("30")), ("A3", Decimal("10"))]
    assert store.verify_balances() == []


# --- one account never stops the district (issue 14) ---------------------------------------------


@pytest.mark.parametrize("absurd", ["3.4028234663852886E+38", "1E+30", "NaN", "1E+16"])
def test_an_absurd_reading_is_not_charged_and_the_other_accounts_are_charged(tmp_path, absurd):
    # Before: decimal.InvalidOperation from every pass, no account charged or decided again (and
    # 1E+16 kWh charged as 5 x 10^15 yuan).
    store, engine = make(tmp_path)
    store.pay("A1", "30", "P1", actor="c", now=T0)
    store.pay("A2", "30", "P2", actor="c", now=T0)
    engine.observe([energy(M1, T0, "1000"), energy(M2, T0, "500")])
    engine.run_pass(T0)
    t1 = T0 + timedelta(minutes=15)
    engine.observe([energy(M1, t1, absurd), energy(M2, t1, "510")])
    summary = engine.run_pass(t1)
    assert store.balance("A2") == Decimal("25.00") and store.balance("A1") == Decimal("30.00")
    assert summary.failed == {} and summary.flags.get("implausible") == 1
    # the absurd value never became the cursor: the next good reading charges from 1000
    engine.observe([energy(M1, t1 + timedelta(minutes=15), "1004")])
    engine.run_pass(t1 + timedelta(minutes=15))
    assert store.balance("A1") == Decimal("28.00") and store.verify_balances() == []


class Reports(list):
    def __call__(self, findings, resolved):
        self.append((list(findings), list(resolved)))


def test_a_failure_charging_one_account_skips_it_reports_it_and_charges_the_rest(tmp_path, monkeypatch):
    reports = Reports()
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=Decimal(0)),
                           AccountSpec("A2", "flat", {M2: Decimal(1)}, area="TA1", opening_balance=Decimal(0))], actor="test", now=T0)
    store.pay("A1", "30", "P1", actor="c", now=T0)
    store.pay("A2", "30", "P2", actor="c", now=T0)
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules()), {"flat": FLAT}, report=reports)
    engine.observe([energy(M1, T0, "1000"), energy(M2, T0, "500")])
    engine.run_pass(T0)

    import meterd.control.engine as engine_module

    real = engine_module.DistrictCharger.charge

    def faulty(self, account, *args, **kw):  # fault injection: one account's charge raises
        if account == "A1":
            raise ArithmeticError("injected fault")
        return real(self, account, *args, **kw)

    monkeypatch.setattr(engine_module.DistrictCharger, "charge", faulty)
    t1 = T0 + timedelta(hours=1)
    engine.observe([energy(M1, t1, "1010"), energy(M2, t1, "530")])
    summary = engine.run_pass(t1)
    assert list(summary.failed) == ["A1"] and "injected fault" in summary.failed["A1"]
    assert store.balance("A2") == Decimal("15.00") and store.account("A2").state == "reminded"
    assert store.balance("A1") == Decimal("30.00")
    findings, _ = reports[-1]
    assert [(f.meter, str(f.kind)) for f in findings] == [(M1, "prepaid_failed")] and "A1" in findings[0].detail
    # fixed: the next pass charges A1's whole delta from its cursor (the skipped reading is not lost)
    monkeypatch.setattr(engine_module.DistrictCharger, "charge", real)
    engine.observe([energy(M1, t1 + timedelta(hours=1), "1012")])
    summary = engine.run_pass(t1 + timedelta(hours=1))
    assert summary.failed == {} and store.balance("A1") == Decimal("24.00")
    assert reports[-1][1] == [(M1, "prepaid_failed")]  # the event is closed
    assert store.verify_balances() == []


def test_a_failure_deciding_one_account_skips_it_and_decides_the_rest(tmp_path, monkeypatch):
    reports = Reports()
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=Decimal(0)),
                           AccountSpec("A2", "flat", {M2: Decimal(1)}, area="TA1", opening_balance=Decimal(0))], actor="test", now=T0)
    store.pay("A1", "15", "P1", actor="c", now=T0)
    store.pay("A2", "15", "P2", actor="c", now=T0)
    engine = PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules()), {"flat": FLAT}, report=reports)

    import meterd.control.policy as policy

    real = policy.decide

    def faulty(view, *args, **kw):  # fault injection: deciding one account raises
        if view.account == "A1":
            raise ValueError("injected fault")
        return real(view, *args, **kw)

    monkeypatch.setattr(policy, "decide", faulty)
    summary = engine.run_pass(T0)
    assert list(summary.failed) == ["A1"] and "injected fault" in summary.failed["A1"]
    assert store.account("A2").state == "reminded"  # 15.00 <= reminder 20: decided as usual
    assert store.account("A1").state == "normal"
    assert [(f.meter, str(f.kind)) for f in reports[-1][0]] == [(M1, "prepaid_failed")]


def test_a_frozen_value_stamped_ahead_by_the_meters_clock_does_not_stall_charging(tmp_path):
    # A meter whose clock runs 2 h ahead freezes "at midnight" at 22:00 master time: before, that
    # value became the cursor 2 h in the future and every live reading until then was LATE
    store, engine = make(tmp_path)
    frozen = "frozen.daily.energy.active.import.total"
    engine.observe([energy(M1, T0, "100")])
    engine.run_pass(T0)
    engine.observe([energy(M1, T0 + timedelta(hours=2), "104", frozen),  # the meter's clock: +2 h
                    energy(M1, T0 + timedelta(minutes=10), "102")])
    p = engine.run_pass(T0 + timedelta(minutes=10))
    assert store.balance("A1") == Decimal("-1.00") and p.flags == {"clock_ahead": 1}
    engine.observe([energy(M1, T0 + timedelta(minutes=20), "106")])
    engine.run_pass(T0 + timedelta(minutes=20))
    assert store.balance("A1") == Decimal("-3.00")  # live readings go on charging
    [flag] = [f for f in store.charge_flags() if f[3] == "clock_ahead"]
    assert flag[0] == M1 and "ahead of the master's" in flag[4]
    # a frozen value within the slack of a slightly fast clock charges as before
    engine.observe([energy(M1, T0 + timedelta(minutes=34), "108", frozen)])
    engine.run_pass(T0 + timedelta(minutes=30))
    assert store.balance("A1") == Decimal("-4.00")
