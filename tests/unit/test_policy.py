"""meterd.control.policy: the prepaid state machine, its safety rules, and the hysteresis that keeps
the relay from flapping.  Levels in these tables: reminder 50, alarm 20, trip 0, reclose 10."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterd.clock import CST

from meterd.control.model import CommandKind
from meterd.control.policy import (
    PROTECTED_REASON,
    AccountView,
    ControlState,
    Decision,
    Notice,
    SafetyRules,
    Threshold,
    Thresholds,
    check_manual,
    decide,
    decide_all,
    quiet_level,
    trip_blocked,
)

N, R, A, T = ControlState.NORMAL, ControlState.REMINDED, ControlState.ALARMED, ControlState.TRIPPED
K = CommandKind
WEDNESDAY = datetime(2024, 5, 15, 10, 0, tzinfo=CST)
# These tables are about the state machine and the other rules: no notice period unless a test says so
# (the notice period has its own tests below).
NO_NOTICE = timedelta(0)
NO_RULES = SafetyRules(trip_notice=NO_NOTICE)
QUIET = SafetyRules(trip_notice=NO_NOTICE, quiet_hours=((time(22), time(7)),))


def thresholds(reminder="50", alarm="20", trip="0", reclose="10") -> Thresholds:
    return Thresholds(*(Threshold.parse(x) for x in (reminder, alarm, trip, reclose)))


def view(balance, state=N, *, meters=("m1",), protected=False, held=None, th=None, avg="10", area="north",
         account="acc1", alarmed_at=None) -> AccountView:
    return AccountView(account=account, area=area, protected=protected, balance=Decimal(balance),
                       avg_daily_cost=Decimal(avg), state=state, meters=meters, thresholds=th or thresholds(),
                       held=held, alarmed_at=alarmed_at)


def kinds(decision: Decision) -> list[CommandKind]:
    return [c.kind for c in decision.commands]


def notice_kinds(decision: Decision) -> list[str]:
    return [n.kind for n in decision.notices]


# -- thresholds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("50", Threshold(amount=Decimal("50"))),
    (50, Threshold(amount=Decimal("50"))),
    ("-10", Threshold(amount=Decimal("-10"))),
    (-10, Threshold(amount=Decimal("-10"))),
    (" 12.5 ", Threshold(amount=Decimal("12.5"))),
    (0.1, Threshold(amount=Decimal("0.1"))),  # via str(): not 0.1000000000000000055...
    ("3d", Threshold(days=Decimal("3"))),
    ("1.5 D", Threshold(days=Decimal("1.5"))),
    ("-1d", Threshold(days=Decimal("-1"))),
])
def test_threshold_parse(text, expected):
    assert Threshold.parse(text) == expected


@pytest.mark.parametrize("text", ["", "d", "abc", "3 days", "5元", "nan", "inf", "1e", True, None, float("inf")])
def test_threshold_parse_refuses(text):
    with pytest.raises(ValueError, match="threshold"):
        Threshold.parse(text)


def test_threshold_needs_exactly_one_of_amount_and_days():
    with pytest.raises(ValueError):
        Threshold()
    with pytest.raises(ValueError):
        Threshold(amount=Decimal(1), days=Decimal(1))


@pytest.mark.parametrize("threshold, avg, level", [
    ("50", "10", Decimal("50.00")),
    ("3d", "10", Decimal("30.00")),
    ("3d", "3.333", Decimal("10.00")),  # 9.999 to the fen
    ("0.5d", "0", Decimal("0.00")),  # no history yet
])
def test_threshold_resolve(threshold, avg, level):
    assert Threshold.parse(threshold).resolve(Decimal(avg)) == level


@pytest.mark.parametrize("args, problems", [
    (("50", "20", "0", "10"), []),
    (("20", "20", "0", "10"), []),  # reminder may equal alarm
    (("10", "20", "0", "10"), ["reminder (10) must be ≥ alarm (20)"]),
    (("50", "0", "0", "10"), ["alarm (0) must be > trip (0)"]),
    (("50", "20", "0", "0"), ["reclose (0) must be > trip (0)"]),
    (("50", "20", "0", "-5"), ["reclose (-5) must be > trip (0)"]),
    (("3d", "1d", "0", "10"), []),
    (("1d", "3d", "0", "1d"), ["reminder (1d) must be ≥ alarm (3d)"]),  # both days: comparable
    (("1d", "20", "0", "-1d"), []),  # amount against days: not comparable without the average
])
def test_thresholds_problems(args, problems):
    found = thresholds(*args).problems()
    assert [p.split(":")[0] for p in found] == problems


@pytest.mark.parametrize("args, avg, levels", [
    (("50", "20", "0", "10"), "10", ("50", "20", "0", "10")),
    (("3d", "1d", "0", "0.5d"), "10", ("30", "10", "0", "5")),
    (("3d", "1d", "-1d", "0.5d"), "10", ("30", "10", "-10", "5")),
    # no history: every days level is 0; reclose is raised one fen above trip
    (("3d", "1d", "0", "0.5d"), "0", ("0", "0", "0", "0.01")),
    (("50", "20", "0", "0"), "10", ("50", "20", "0", "0.01")),
    # a days trip level above an amount alarm level: the trip level wins
    (("50", "20", "3d", "4d"), "10", ("50", "30", "30", "40")),
])
def test_thresholds_levels(args, avg, levels):
    assert thresholds(*args).levels(Decimal(avg)) == tuple(Decimal(x) for x in levels)


# -- the state machine ---------------------------------------------------------------------------

@pytest.mark.parametrize("state, balance, new, commands, notices", [
    # going down, one band at a time
    (N, "60", N, [], []),
    (N, "50", R, [], ["reminder"]),  # at the level is in the band below
    (R, "20", A, [K.ALARM], ["alarm"]),
    (A, "0", T, [K.TRIP], ["trip"]),
    # going down, skipping bands
    (N, "20", A, [K.ALARM], ["alarm"]),
    (N, "0", T, [K.ALARM, K.TRIP], ["trip"]),
    (R, "-30", T, [K.ALARM, K.TRIP], ["trip"]),
    # staying
    (R, "30", R, [], []),
    (A, "10", A, [], []),
    (A, "0.01", A, [], []),
    (T, "-50", T, [], []),
    # going up
    (R, "50.01", N, [], []),
    (A, "20.01", R, [K.ALARM_RELEASE], []),
    (A, "100", N, [K.ALARM_RELEASE], []),
    (T, "5", T, [], []),  # above trip, not above reclose: the hysteresis
    (T, "10", T, [], []),
    (T, "10.01", A, [K.RECLOSE_ALLOWED], ["reclose"]),
    (T, "30", R, [K.RECLOSE_ALLOWED, K.ALARM_RELEASE], ["reclose"]),
    (T, "100", N, [K.RECLOSE_ALLOWED, K.ALARM_RELEASE], ["reclose"]),
])
def test_transitions(state, balance, new, commands, notices):
    d = decide(view(balance, state), NO_RULES, WEDNESDAY)
    assert (d.old_state, d.new_state, kinds(d), notice_kinds(d), d.held) == (state, new, commands, notices, None)


def test_commands_go_to_every_meter_with_reasons():
    d = decide(view("-3.2", A, meters=("m1", "m2")), NO_RULES, WEDNESDAY)
    assert [(c.meter, c.kind) for c in d.commands] == [("m1", K.TRIP), ("m2", K.TRIP)]
    for c in d.commands:
        assert (c.account, c.requested_by, c.manual) == ("acc1", "policy", False)
        assert c.reason == "balance -3.20 ≤ trip level 0.00"
    [n] = d.notices
    assert (n.account, n.kind, n.at, n.balance, n.meter) == ("acc1", "trip", WEDNESDAY, Decimal("-3.2"), None)

    d = decide(view("-3.2", N, meters=("m1", "m2")), NO_RULES, WEDNESDAY)
    assert [(c.meter, c.kind) for c in d.commands] == [
        ("m1", K.ALARM), ("m2", K.ALARM), ("m1", K.TRIP), ("m2", K.TRIP)]


def test_reclose_kind_and_reason():
    d = decide(view("12", T), replace(NO_RULES, reclose_kind=K.RECLOSE), WEDNESDAY)
    [c] = d.commands
    assert (c.kind, c.reason) == (K.RECLOSE, "balance 12.00 > reclose level 10.00")


def test_dry_run_decides_the_same():
    for balance, state in [("-1", A), ("30", T), ("15", N)]:
        assert decide(view(balance, state), replace(NO_RULES, dry_run=True), WEDNESDAY) == \
            decide(view(balance, state), NO_RULES, WEDNESDAY)


def test_an_account_without_meters_still_moves():
    d = decide(view("-1", A, meters=()), NO_RULES, WEDNESDAY)
    assert (d.new_state, d.commands, notice_kinds(d)) == (T, (), ["trip"])


def test_days_based_thresholds():
    th = thresholds("3d", "1d", "-1d", "0.5d")  # avg 10: 30 / 10 / -10 / 5
    assert decide(view("25", N, th=th), NO_RULES, WEDNESDAY).new_state is R
    assert decide(view("10", R, th=th), NO_RULES, WEDNESDAY).new_state is A
    assert decide(view("-5", A, th=th), NO_RULES, WEDNESDAY).new_state is A  # overdraft of 1 day allowed
    assert decide(view("-10", A, th=th), NO_RULES, WEDNESDAY).new_state is T
    assert decide(view("5", T, th=th), NO_RULES, WEDNESDAY).new_state is T
    assert decide(view("5.01", T, th=th), NO_RULES, WEDNESDAY).new_state is A
    # the same balance with a heavier user is lower in the bands
    assert decide(view("25", N, th=th, avg="5"), NO_RULES, WEDNESDAY).new_state is N


# -- safety rules --------------------------------------------------------------------------------

def at(y, mo, d, h=10, mi=0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=CST)


@pytest.mark.parametrize("rules, now, reason", [
    (QUIET, at(2024, 5, 15, 21, 59), None),
    (QUIET, at(2024, 5, 15, 22, 0), "quiet hours 22:00-07:00 CST"),
    (QUIET, at(2024, 5, 15, 23, 30), "quiet hours 22:00-07:00 CST"),
    (QUIET, at(2024, 5, 16, 0, 0), "quiet hours 22:00-07:00 CST"),  # past midnight
    (QUIET, at(2024, 5, 16, 6, 59), "quiet hours 22:00-07:00 CST"),
    (QUIET, at(2024, 5, 16, 7, 0), None),
    # UTC in, CST out: 14:30 UTC is 22:30 CST
    (QUIET, datetime(2024, 5, 15, 14, 30, tzinfo=timezone.utc), "quiet hours 22:00-07:00 CST"),
    (QUIET, datetime(2024, 5, 15, 23, 30, tzinfo=timezone.utc), None),  # 07:30 CST
    (SafetyRules(quiet_hours=((time(12), time(13)), (time(22), time(7)))), at(2024, 5, 15, 12, 30),
     "quiet hours 12:00-13:00 CST"),
    (SafetyRules(quiet_hours=((time(12), time(12)),)), at(2024, 5, 15, 12, 0), None),  # empty window
    # weekends
    (SafetyRules(no_trip_weekends=True), at(2024, 5, 18), "weekend"),  # Saturday
    (SafetyRules(no_trip_weekends=True), at(2024, 5, 19, 23, 59), "weekend"),  # Sunday
    (SafetyRules(no_trip_weekends=True), at(2024, 5, 20, 0, 0), None),  # Monday
    (SafetyRules(no_trip_weekends=True), datetime(2024, 5, 17, 16, 0, tzinfo=timezone.utc), "weekend"),
    (SafetyRules(), at(2024, 5, 18), None),
    # holidays (国庆 2024) and make-up working days (调休: Sun 29 Sep, Sat 12 Oct)
    (SafetyRules(holidays=frozenset({date(2024, 10, 1)})), at(2024, 10, 1), "holiday 2024-10-01"),
    (SafetyRules(holidays=frozenset({date(2024, 10, 1)})), datetime(2024, 9, 30, 16, 0, tzinfo=timezone.utc),
     "holiday 2024-10-01"),
    (SafetyRules(holidays=frozenset({date(2024, 10, 1)})), at(2024, 10, 2), None),
    (SafetyRules(no_trip_weekends=True, workdays=frozenset({date(2024, 9, 29), date(2024, 10, 12)})),
     at(2024, 9, 29), None),
    (SafetyRules(no_trip_weekends=True, workdays=frozenset({date(2024, 9, 29), date(2024, 10, 12)})),
     at(2024, 10, 12), None),
    (SafetyRules(no_trip_weekends=True, workdays=frozenset({date(2024, 9, 29), date(2024, 10, 12)})),
     at(2024, 10, 13), "weekend"),
])
def test_trip_blocked(rules, now, reason):
    assert trip_blocked(rules, now) == reason


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        trip_blocked(QUIET, datetime(2024, 5, 15, 23, 0))


NIGHT = at(2024, 5, 15, 23, 0)


@pytest.mark.parametrize("state, protected, rules, now, new, commands, notices, held", [
    (N, True, NO_RULES, WEDNESDAY, A, [K.ALARM], ["alarm", "held"], PROTECTED_REASON),
    (R, True, NO_RULES, WEDNESDAY, A, [K.ALARM], ["alarm", "held"], PROTECTED_REASON),
    (A, True, NO_RULES, WEDNESDAY, A, [], ["held"], PROTECTED_REASON),
    (A, False, QUIET, NIGHT, A, [], ["held"], "quiet hours 22:00-07:00 CST"),
    (N, False, QUIET, NIGHT, A, [K.ALARM], ["alarm", "held"], "quiet hours 22:00-07:00 CST"),
    (A, False, replace(NO_RULES, no_trip_weekends=True), at(2024, 5, 18), A, [], ["held"], "weekend"),
    (A, False, replace(NO_RULES, holidays=frozenset({date(2024, 10, 1)})), at(2024, 10, 1), A, [], ["held"],
     "holiday 2024-10-01"),
    # the blocks do not keep a tripped account tripped, nor stop a reclose
    (T, True, QUIET, NIGHT, A, [K.RECLOSE_ALLOWED], ["reclose"], None),
])
def test_held_trips(state, protected, rules, now, new, commands, notices, held):
    balance = "-5" if state is not T else "15"
    d = decide(view(balance, state, protected=protected), rules, now)
    assert (d.new_state, kinds(d), notice_kinds(d), d.held) == (new, commands, notices, held)


@pytest.mark.parametrize("previous, rules, now, protected, notice", [
    (None, QUIET, NIGHT, False, True),
    ("quiet hours 22:00-07:00 CST", QUIET, NIGHT, False, False),
    ("weekend", QUIET, NIGHT, False, True),
    (PROTECTED_REASON, QUIET, NIGHT, True, False),  # protected is the first reason given
    ("quiet hours 22:00-07:00 CST", QUIET, NIGHT, True, True),
])
def test_held_notice_only_when_the_reason_changes(previous, rules, now, protected, notice):
    d = decide(view("-5", A, protected=protected, held=previous), rules, now)
    assert d.held is not None
    assert notice_kinds(d) == (["held"] if notice else [])
    assert d.commands == ()


def test_a_held_trip_goes_out_when_the_block_ends():
    held = decide(view("-5", A), QUIET, NIGHT)
    assert (held.new_state, held.held) == (A, "quiet hours 22:00-07:00 CST")
    still = decide(view("-5", A, held=held.held), QUIET, at(2024, 5, 16, 6, 59))
    assert (still.new_state, still.commands, still.notices) == (A, (), ())
    morning = decide(view("-5", A, held=held.held), QUIET, at(2024, 5, 16, 7, 0))
    assert (morning.new_state, kinds(morning), notice_kinds(morning), morning.held) == (T, [K.TRIP], ["trip"], None)


def test_held_is_cleared_when_the_balance_recovers():
    d = decide(view("5", A, held="weekend"), NO_RULES, WEDNESDAY)
    assert (d.new_state, d.commands, d.notices, d.held) == (A, (), (), None)
    assert decide_all([view("5", A, held="weekend")], NO_RULES, WEDNESDAY, {}) == [d]


def test_area_cap_single_decision():
    rules = SafetyRules(trip_notice=NO_NOTICE, max_trips_per_area_hour=3)
    assert decide(view("-5", A), rules, WEDNESDAY, area_trips_last_hour=2).new_state is T
    d = decide(view("-5", A), rules, WEDNESDAY, area_trips_last_hour=3)
    assert (d.new_state, d.held) == (A, "area trip cap reached: at most 3 trips per hour in area north")


@pytest.mark.parametrize("already, tripped", [
    ({}, ["a1", "a2", "s1"]),
    ({"north": 1}, ["a1", "s1"]),
    ({"north": 2, "south": 5}, []),
    ({"east": 9}, ["a1", "a2", "s1"]),
])
def test_area_cap_within_one_pass(already, tripped):
    rules = SafetyRules(trip_notice=NO_NOTICE, max_trips_per_area_hour=2)
    views = [view("-5", A, account=f"a{i}") for i in range(1, 5)] + [view("-5", A, account="s1", area="south")]
    decisions = decide_all(views, rules, WEDNESDAY, already)
    assert [d.account for d in decisions if d.new_state is T] == tripped
    for d in decisions:
        if d.new_state is A:
            assert d.held is not None and d.held.startswith("area trip cap reached")


def test_area_cap_counts_meters():
    rules = SafetyRules(trip_notice=NO_NOTICE, max_trips_per_area_hour=2)
    views = [view("-5", A, account="big", meters=("m1", "m2")), view("-5", A, account="small")]
    decisions = decide_all(views, rules, WEDNESDAY, {"north": 1})
    assert [(d.account, d.new_state, len(d.commands)) for d in decisions] == [("big", T, 2), ("small", A, 0)]


def test_decide_all_returns_only_changes():
    views = [
        view("100", N, account="rich"),
        view("30", R, account="steady"),
        view("-5", A, account="protected", protected=True, held=PROTECTED_REASON,
             alarmed_at=WEDNESDAY - timedelta(days=2)),
        view("5", T, account="still-tripped"),
        view("-5", A, account="goes"),
    ]
    decisions = decide_all(views, NO_RULES, WEDNESDAY, {})
    assert [(d.account, d.new_state) for d in decisions] == [("goes", T)]


# -- hysteresis ----------------------------------------------------------------------------------

def run(balances, state=N, th=None, rules=NO_RULES, now=WEDNESDAY, protected=False) -> list[CommandKind]:
    """Feed a sequence of balances through decide, carrying the state over as the caller would."""
    held = None
    sent: list[CommandKind] = []
    for balance in balances:
        d = decide(view(balance, state, th=th, protected=protected, held=held), rules, now)
        sent.extend(kinds(d))
        state, held = d.new_state, d.held
    return sent


def relay(sent: list[CommandKind]) -> list[CommandKind]:
    return [k for k in sent if k in (K.TRIP, K.RECLOSE_ALLOWED, K.RECLOSE)]


def test_oscillating_around_the_trip_level_trips_once_and_recloses_once():
    balances = ["0.5", "-0.5", "0.5", "-0.5", "0", "0.01", "9.99", "10", "10.01", "9", "0.5", "9.5", "0.01"]
    assert relay(run(balances)) == [K.TRIP, K.RECLOSE_ALLOWED]


def test_reclose_equal_to_trip_still_has_a_fen_of_hysteresis():
    th = thresholds("50", "20", "0", "0")
    assert th.levels(Decimal(10))[3] == Decimal("0.01")
    assert relay(run(["-1", "0", "0.01", "0", "0.01"], th=th)) == [K.TRIP]
    assert relay(run(["-1", "0.01", "0.02", "0", "0.02"], th=th)) == [K.TRIP, K.RECLOSE_ALLOWED, K.TRIP,
                                                                      K.RECLOSE_ALLOWED]


LEVELS = st.sampled_from([
    ("50", "20", "0", "10"),
    ("50", "20", "-10", "0"),
    ("3d", "1d", "0", "0.5d"),
    ("10", "10", "0", "0"),  # reclose raised to 0.01
    ("20", "30", "5", "-5"),  # misconfigured: made consistent by levels()
])
BALANCES = st.lists(st.decimals(min_value=-60, max_value=80, places=2), max_size=40)
STEP_RULES = st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 3)), min_size=40, max_size=40)


@settings(max_examples=200, deadline=None)
@given(levels=LEVELS, balances=BALANCES, steps=STEP_RULES, start=st.sampled_from(list(ControlState)),
       reclose=st.sampled_from([K.RECLOSE_ALLOWED, K.RECLOSE]))
def test_relay_commands_alternate(levels, balances, steps, start, reclose):
    """Whatever the balances and whatever blocks come and go, per meter a TRIP is never followed by
    another TRIP before a reclose and vice versa, and ALARM / ALARM_RELEASE alternate likewise."""
    th = thresholds(*levels)
    state, held = start, None
    sent: list[CommandKind] = []
    for balance, (quiet, protected, area_trips) in zip(balances, steps):
        rules = SafetyRules(trip_notice=NO_NOTICE, quiet_hours=((time(22), time(7)),), max_trips_per_area_hour=2,
                            reclose_kind=reclose)
        d = decide(view(balance, state, meters=("m1", "m2"), th=th, protected=protected, held=held), rules,
                   NIGHT if quiet else WEDNESDAY, area_trips_last_hour=area_trips)
        assert [c.meter for c in d.commands] == ["m1", "m2"] * (len(d.commands) // 2)
        sent.extend(c.kind for c in d.commands if c.meter == "m1")
        if K.TRIP in kinds(d):
            assert not quiet and not protected and area_trips < 2
        state, held = d.new_state, d.held
    for group in ((K.TRIP, reclose), (K.ALARM, K.ALARM_RELEASE)):
        seq = [k for k in sent if k in group]
        assert all(a != b for a, b in zip(seq, seq[1:])), seq


# -- pending accounts ----------------------------------------------------------------------------

P = ControlState.PENDING


@pytest.mark.parametrize("balance", ["100", "50", "20", "0", "-500"])
def test_a_pending_account_is_never_reminded_alarmed_or_tripped(balance):
    for rules, now in ((NO_RULES, WEDNESDAY), (SafetyRules(), WEDNESDAY), (QUIET, NIGHT)):
        d = decide(view(balance, P), rules, now)
        assert (d.new_state, d.commands, d.notices, d.held, d.alarmed_at) == (P, (), (), None, None)
        assert decide(view(balance, P, held="weekend"), rules, now).held == "weekend"  # untouched
        assert decide_all([view(balance, P)], rules, now, {}) == []


# -- the notice period ---------------------------------------------------------------------------

DAY = timedelta(hours=24)
NOTICE = SafetyRules()  # the default: 24 h
assert NOTICE.trip_notice == DAY


def test_normal_to_below_trip_is_alarmed_first_and_waits_the_notice():
    """Balance 0 with trip level 0 (an opening balance of 0): alarmed, the trip held with the times."""
    d = decide(view("0", N), NOTICE, WEDNESDAY)
    assert (d.new_state, kinds(d), notice_kinds(d)) == (A, [K.ALARM], ["alarm", "held"])
    assert d.alarmed_at == WEDNESDAY
    assert d.held == "notice period: alarmed 2024-05-15 10:00 CST, trip not before 2024-05-16 10:00 CST"
    alarm, held = d.notices
    assert alarm.message == ("balance 0.00 ≤ trip level 0.00: low balance alarm, please top up; "
                             "supply cut not before 2024-05-16 10:00 CST")
    assert held.message == f"trip held: {d.held} (balance 0.00 ≤ trip level 0.00)"


def test_the_trip_goes_out_when_the_notice_has_passed_and_not_a_minute_before():
    start = WEDNESDAY
    waiting = view("-5", A, alarmed_at=start, held="notice period: alarmed 2024-05-15 10:00 CST, trip not before "
                                                      "2024-05-16 10:00 CST")
    early = decide(waiting, NOTICE, start + DAY - timedelta(seconds=1))
    assert (early.new_state, early.commands, early.notices, early.held) == (A, (), (), waiting.held)
    assert early.alarmed_at == start
    due = decide(waiting, NOTICE, start + DAY)
    assert (due.new_state, kinds(due), notice_kinds(due), due.held) == (T, [K.TRIP], ["trip"], None)
    assert due.alarmed_at == start  # the episode goes on while tripped


def test_the_notice_runs_from_the_alarm_not_from_the_fall_below_trip():
    """Alarmed at 20 on Monday, below trip on Wednesday: the notice had passed, the trip goes out."""
    alarmed = decide(view("15", R), NOTICE, WEDNESDAY - 2 * DAY)
    assert (alarmed.new_state, kinds(alarmed), alarmed.alarmed_at) == (A, [K.ALARM], WEDNESDAY - 2 * DAY)
    d = decide(view("-1", A, alarmed_at=alarmed.alarmed_at), NOTICE, WEDNESDAY)
    assert (d.new_state, kinds(d)) == (T, [K.TRIP])


def test_notice_seconds_are_rounded_up_in_the_reason():
    d = decide(view("-1", N), NOTICE, WEDNESDAY + timedelta(seconds=30))
    assert d.held == "notice period: alarmed 2024-05-15 10:00 CST, trip not before 2024-05-16 10:01 CST"


def test_an_alarmed_account_without_an_episode_start_begins_one_now():
    """Stored before episodes were kept (or put there by an operator's reclose): never tripped at once."""
    d = decide(view("-5", A), NOTICE, WEDNESDAY)
    assert (d.new_state, d.commands, d.alarmed_at) == (A, (), WEDNESDAY)
    assert d.held.startswith("notice period: alarmed 2024-05-15 10:00 CST")
    quiet = decide(view("5", A), NOTICE, WEDNESDAY)  # still only in the alarm band: the clock starts too
    assert (quiet.new_state, quiet.commands, quiet.notices, quiet.alarmed_at) == (A, (), (), WEDNESDAY)
    assert decide_all([view("5", A)], NOTICE, WEDNESDAY, {}) == [quiet]  # stored, so it is kept


def test_a_payment_out_of_the_alarm_band_ends_the_episode_and_the_next_alarm_starts_a_new_one():
    released = decide(view("25", A, alarmed_at=WEDNESDAY - 3 * DAY), NOTICE, WEDNESDAY)
    assert (released.new_state, kinds(released), released.alarmed_at) == (R, [K.ALARM_RELEASE], None)
    again = decide(view("-1", R), NOTICE, WEDNESDAY + timedelta(hours=1))
    assert (again.new_state, kinds(again), again.alarmed_at) == (A, [K.ALARM], WEDNESDAY + timedelta(hours=1))
    assert again.held.startswith("notice period")


def test_a_payment_that_stays_in_the_alarm_band_does_not_restart_the_notice():
    d = decide(view("15", A, alarmed_at=WEDNESDAY - timedelta(hours=20)), NOTICE, WEDNESDAY)
    assert (d.new_state, d.commands, d.alarmed_at) == (A, (), WEDNESDAY - timedelta(hours=20))


def test_a_reclose_into_the_alarm_band_begins_a_new_notice():
    d = decide(view("12", T, alarmed_at=WEDNESDAY - 5 * DAY), NOTICE, WEDNESDAY)
    assert (d.new_state, kinds(d), d.alarmed_at) == (A, [K.RECLOSE_ALLOWED], WEDNESDAY)
    assert "low balance alarm" in d.notices[0].message
    back = decide(view("-1", A, alarmed_at=d.alarmed_at), NOTICE, WEDNESDAY + timedelta(hours=1))
    assert (back.new_state, back.commands) == (A, ())
    assert back.held.startswith("notice period")
    full = decide(view("100", T, alarmed_at=WEDNESDAY - 5 * DAY), NOTICE, WEDNESDAY)
    assert (full.new_state, full.alarmed_at) == (N, None)


def test_protected_is_the_reason_shown_and_the_episode_is_still_kept():
    d = decide(view("-5", N, protected=True), NOTICE, WEDNESDAY)
    assert (d.new_state, kinds(d), d.held, d.alarmed_at) == (A, [K.ALARM], PROTECTED_REASON, WEDNESDAY)
    assert "not before" not in d.notices[0].message  # a protected account is never cut: no trip time
    # protection lifted after the notice: the trip goes out at once
    lifted = decide(view("-5", A, alarmed_at=WEDNESDAY, held=PROTECTED_REASON), NOTICE, WEDNESDAY + 2 * DAY)
    assert (lifted.new_state, kinds(lifted)) == (T, [K.TRIP])


def test_after_the_notice_quiet_hours_still_hold_the_trip():
    rules = replace(QUIET, trip_notice=DAY)
    d = decide(view("-5", A, alarmed_at=NIGHT - DAY - timedelta(hours=1)), rules, NIGHT)
    assert (d.new_state, d.held) == (A, "quiet hours 22:00-07:00 CST")
    during = decide(view("-5", N), rules, NIGHT)  # both apply: the notice is given first
    assert during.held.startswith("notice period: alarmed 2024-05-15 23:00 CST, trip not before 2024-05-16 23:00")


def test_dry_run_keeps_the_notice_too():
    assert decide(view("0", N), replace(NOTICE, dry_run=True), WEDNESDAY) == decide(view("0", N), NOTICE, WEDNESDAY)


def test_zero_notice_trips_in_the_pass_that_alarms_as_before():
    d = decide(view("0", N), NO_RULES, WEDNESDAY)
    assert (d.new_state, kinds(d), d.held, d.alarmed_at) == (T, [K.ALARM, K.TRIP], None, WEDNESDAY)


@settings(max_examples=300, deadline=None)
@given(balances=st.lists(st.decimals(min_value=-60, max_value=80, places=2), max_size=40),
       steps=st.lists(st.integers(1, 12 * 60), min_size=40, max_size=40), notice_h=st.integers(0, 48),
       start=st.sampled_from([N, R, A, T]), protected=st.booleans())
def test_no_automatic_trip_before_the_notice_has_passed_since_an_alarm(balances, steps, notice_h, start, protected):
    """Whatever the balances and however time moves on (carried over as the caller stores it),
    every automatic TRIP comes at least the notice period after the ALARM command or the reclose
    that began its episode, and the meter was sent an ALARM before its first TRIP."""
    rules = SafetyRules(trip_notice=timedelta(hours=notice_h))
    now = WEDNESDAY
    state, held, alarmed_at = start, None, None
    began: datetime | None = None if start is not T else now - 10 * DAY  # an old trip: its own past
    alarm_sent = start in (A, T)
    for balance, minutes in zip(balances, steps):
        now += timedelta(minutes=minutes)
        d = decide(view(balance, state, held=held, alarmed_at=alarmed_at, protected=protected), rules, now)
        if K.ALARM in kinds(d):
            alarm_sent = True
        if d.alarmed_at is not None and d.alarmed_at != alarmed_at:
            began = d.alarmed_at
            assert began == now
        if K.TRIP in kinds(d):
            assert not protected and alarm_sent
            assert began is not None and now - began >= rules.trip_notice
        state, held, alarmed_at = d.new_state, d.held, d.alarmed_at


# -- manual commands -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, operator, reason, protected, refusal", [
    (K.TRIP, "zhang", "meter tamper", False, None),
    (K.RECLOSE, "zhang", "paid at counter", True, None),
    (K.ALARM, "zhang", "test", True, None),
    (K.TRIP, "zhang", "meter tamper", True, "protected account (保电)"),
    (K.TRIP, None, "meter tamper", False, "operator required"),
    (K.TRIP, "  ", "meter tamper", False, "operator required"),
    (K.RECLOSE, "zhang", None, False, "reason required"),
    (K.RECLOSE, "zhang", "\t", False, "reason required"),
])
def test_check_manual(kind, operator, reason, protected, refusal):
    result = check_manual(kind, operator=operator, reason=reason, protected=protected)
    if refusal is None:
        assert result is None
    else:
        assert result is not None and result.startswith(refusal)


def test_notice_kind_is_checked():
    with pytest.raises(ValueError, match="notice kind"):
        Notice("acc1", "bogus", "x", WEDNESDAY)


# -- the quiet level: where decide() leaves a normal account alone --------------------------------

@settings(max_examples=300, deadline=None)
@given(fen=st.lists(st.integers(-5_000, 20_000), min_size=4, max_size=4), above=st.integers(1, 10**7),
       avg=st.integers(0, 10**6), protected=st.booleans(), trips=st.integers(0, 60),
       rules=st.sampled_from([NO_RULES, QUIET, SafetyRules(max_trips_per_area_hour=1, no_trip_weekends=True)]))
def test_above_the_quiet_level_a_normal_account_is_left_alone(fen, above, avg, protected, trips, rules):
    th = Thresholds(*(Threshold(amount=Decimal(f).scaleb(-2)) for f in fen))
    level = quiet_level(th)
    assert level is not None
    v = view(str(level + Decimal(above).scaleb(-2)), N, protected=protected, th=th, avg=str(Decimal(avg).scaleb(-2)))
    for now in (WEDNESDAY, WEDNESDAY.replace(hour=23), datetime(2024, 5, 18, 12, tzinfo=CST)):
        d = decide(v, rules, now, area_trips_last_hour=trips)
        assert (d.new_state, d.commands, d.notices, d.held) == (N, (), (), None)
        assert decide_all([v], rules, now, {"north": trips}) == []
    # at the level itself the account is reminded (the level is the reminder level, not below it)
    assert decide(replace(v, balance=level), rules, WEDNESDAY).new_state is not N


def test_the_quiet_level_needs_amounts_for_reminder_alarm_and_trip():
    assert quiet_level(thresholds()) == Decimal("50.00")
    assert quiet_level(thresholds(reminder="5", alarm="20")) == Decimal("20.00")  # raised to alarm
    assert quiet_level(thresholds(reclose="3d")) == Decimal("50.00")  # reclose is not a NORMAL matter
    for days in ({"reminder": "3d"}, {"alarm": "3d"}, {"trip": "-1d"}):
        assert quiet_level(thresholds(**days)) is None
