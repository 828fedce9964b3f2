"""Relay flags read by the regular polls update the stored relay state (an account's relay shows
what the meter last said, not only what the last command read back): merged flag by flag, never
moved back in time, bad-quality readings ignored; a change with no command under way is audited as
``relay-observed``.  On both backends (SQLite and PostgreSQL), and through the engine with status
word 3 decoded from its wire bytes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.control.command_store import RELAY_REFRESH
from meterd.control.engine import PrepaidEngine, PrepaidSettings
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.policy import SafetyRules, Threshold, Thresholds
from meterd.control.state import AccountSpec, ControlStore
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.protocols.dlt645.catalogue import decode, status3_word
from meterd.readings import Quality, Reading

M1, M2 = "000000000001", "000000000002"
T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
FLAT = Tariff("flat", (TariffVersion(effective=datetime(2020, 1, 1).date(), kind=TariffKind.FLAT,
                                     price=Decimal("0.50")),))
THRESHOLDS = Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)),
                        Threshold(Decimal(5)))
STATUS3 = 0x04000503
TRIPPED = {"relay.open": True, "relay.command_open": True, "alarm.pre_trip": False, "relay.protected": False}


@pytest.fixture
def store(state_where):
    s = ControlStore(state_where)
    yield s
    s.close()


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def observed_audits(store: ControlStore, meter: str):
    return [a for a in store.audit_log(subject=meter) if a.action == "relay-observed"]


def test_a_poll_newer_than_the_stored_state_merges_its_flags(store):
    store.record_relay(M1, TRIPPED, now=at(0))  # the trip's read-back
    changes = store.observe_relays({M1: {"relay.open": (at(5), False)}}, now=at(6))  # the button pressed
    assert store.relay_state(M1) == (at(5), {**TRIPPED, "relay.open": False})  # the other flags kept
    assert [(c.meter, c.changed) for c in changes] == [(M1, ["relay.open"])]
    [audit] = observed_audits(store, M1)
    assert audit.actor == "daemon" and audit.at == at(6) and audit.detail["account"] is None  # not assigned
    assert audit.detail["before"] == TRIPPED and audit.detail["after"]["relay.open"] is False
    assert audit.detail["changed"] == ["relay.open"]


def test_a_poll_older_than_the_stored_state_never_moves_it_back(store):
    store.record_relay(M1, {"relay.open": False}, now=at(10))
    assert store.observe_relays({M1: {"relay.open": (at(9), True), "relay.protected": (at(10), True)}},
                                now=at(11)) == []
    assert store.relay_state(M1) == (at(10), {"relay.open": False})
    # only the flags read later than the stored state are taken
    store.observe_relays({M1: {"relay.open": (at(9), True), "relay.protected": (at(12), True)}}, now=at(13))
    assert store.relay_state(M1) == (at(12), {"relay.open": False, "relay.protected": True})
    assert observed_audits(store, M1) == []  # a flag seen for the first time is no change


def test_a_first_state_and_an_unchanged_state_are_not_audited(store):
    assert store.observe_relays({M1: {"relay.open": (at(1), False)}, M2: {"relay.open": (at(1), True)}},
                                now=at(2)) == []
    assert store.relay_state(M1) == (at(1), {"relay.open": False})
    assert store.relay_state(M2) == (at(1), {"relay.open": True})
    assert store.observe_relays({M1: {"relay.open": (at(3), False)}}, now=at(4)) == []
    assert store.relay_state(M1) == (at(1), {"relay.open": False})  # same flags: confirmed, not rewritten
    assert observed_audits(store, M1) == [] and observed_audits(store, M2) == []


def polled(at: datetime, flags: dict[str, bool]) -> dict[str, tuple[datetime, bool]]:
    return {f: (at, v) for f, v in flags.items()}


def test_an_unchanged_state_is_written_only_when_its_time_is_the_refresh_age_old(store):
    meters = [f"{i:012d}" for i in range(1, 41)]
    store.observe_relays({m: polled(T0, TRIPPED) for m in meters}, now=T0)
    # polls every 15 minutes with the same flags, up to half the refresh age: nothing rewritten
    for k in range(1, int(RELAY_REFRESH / 2 / timedelta(minutes=15)) + 1):
        when = min(T0 + k * timedelta(minutes=15), T0 + RELAY_REFRESH / 2 - timedelta(milliseconds=1))
        assert store.observe_relays({m: polled(when, TRIPPED) for m in meters}, now=when) == []
        assert all(store.relay_state(m) == (T0, TRIPPED) for m in meters)
    # from half the age to all of it, each meter's refresh comes at its own time (spread by address)
    when = T0 + RELAY_REFRESH * 3 / 4
    store.observe_relays({m: polled(when, TRIPPED) for m in meters}, now=when)
    rewritten = [m for m in meters if store.relay_state(m) == (when, TRIPPED)]
    assert 0 < len(rewritten) < len(meters)
    assert all(store.relay_state(m) == (T0, TRIPPED) for m in meters if m not in rewritten)
    # the refresh age after the stored time: every one rewritten
    when = T0 + RELAY_REFRESH
    store.observe_relays({m: polled(when, TRIPPED) for m in meters}, now=when)
    assert all(store.relay_state(m) == (when, TRIPPED) for m in meters if m not in rewritten)
    assert all(observed_audits(store, m) == [] for m in meters)
    # a changed flag is written at once, whatever the age
    later = when + timedelta(minutes=1)
    [change] = store.observe_relays({meters[0]: {"relay.open": (later, False)}}, now=later)
    assert change.before == TRIPPED and store.relay_state(meters[0]) == (later, {**TRIPPED, "relay.open": False})
    # no refresh age: every newer poll rewritten, as before
    last = later + timedelta(minutes=1)
    store.observe_relays({meters[1]: polled(last, TRIPPED)}, now=last, refresh=timedelta(0))
    assert store.relay_state(meters[1]) == (last, TRIPPED)


def test_the_first_confirmation_after_a_failed_command_is_written(store):
    """The alarm list settles a failed command when the relay is read, after the failure, where the
    command wanted it: that read must be stored even when the flags did not change."""
    store.observe_relays({M1: polled(at(0), TRIPPED)}, now=at(0))  # open already
    store.queue_commands([CommandRequest(M1, CommandKind.TRIP, "test", "operator")], now=at(1),
                         ttl=timedelta(hours=1))
    [trip] = store.claim_due(at(1), node="n1", meters=[M1])
    store.finish(trip.id, CommandState.FAILED, now=at(2), detail="link refused")  # no read-back
    store.observe_relays({M1: polled(at(3), TRIPPED)}, now=at(3))
    assert store.relay_state(M1) == (at(3), TRIPPED)  # read after the failure
    store.observe_relays({M1: polled(at(4), TRIPPED)}, now=at(4))
    assert store.relay_state(M1) == (at(3), TRIPPED)  # and confirmed without a write again
    assert observed_audits(store, M1) == []


def test_a_late_poll_older_than_an_unwritten_confirmation_is_not_taken(store):
    store.observe_relays({M1: polled(at(0), TRIPPED)}, now=at(0))
    store.observe_relays({M1: polled(at(10), TRIPPED)}, now=at(10))  # the same flags: not written
    assert store.relay_state(M1) == (at(0), TRIPPED)
    # an older poll delivered late says the relay was closed: the newer confirmation wins
    assert store.observe_relays({M1: {"relay.open": (at(5), False)}}, now=at(11)) == []
    assert store.relay_state(M1) == (at(0), TRIPPED) and observed_audits(store, M1) == []
    # a newer one is a change
    [change] = store.observe_relays({M1: {"relay.open": (at(12), False)}}, now=at(12))
    assert change.at == at(12) and store.relay_state(M1) == (at(12), {**TRIPPED, "relay.open": False})
    # a command's read-back recorded meanwhile wins over an older poll
    store.record_relay(M1, TRIPPED, now=at(14))
    assert store.observe_relays({M1: {"relay.open": (at(13), False)}}, now=at(15)) == []
    assert store.relay_state(M1) == (at(14), TRIPPED)


def test_a_change_while_a_command_is_under_way_is_the_commands_not_audited(store):
    store.record_relay(M1, {"relay.open": False}, now=at(0))
    store.record_relay(M2, {"relay.open": False}, now=at(0))
    store.queue_commands([CommandRequest(M1, CommandKind.TRIP, "test", "operator"),
                          CommandRequest(M2, CommandKind.TRIP, "test", "operator")], now=at(1),
                         ttl=timedelta(hours=1))
    [sent] = store.claim_due(at(1), node="n1", meters=[M1])
    assert sent.state is CommandState.SENT
    changes = store.observe_relays({M1: {"relay.open": (at(2), True)}, M2: {"relay.open": (at(2), True)}},
                                   now=at(3))
    assert [c.meter for c in changes] == [M2]  # M1's trip is in flight; M2's is queued, never tried
    assert store.relay_state(M1) == (at(2), {"relay.open": True})
    assert observed_audits(store, M1) == [] and len(observed_audits(store, M2)) == 1


def make_engine(tmp_path):
    store = ControlStore(tmp_path)
    store.upsert_accounts([AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=Decimal(50))],
                          actor="test", now=T0)
    return store, PrepaidEngine(store, PrepaidSettings(THRESHOLDS, SafetyRules(trip_notice=timedelta(0))),
                                {"flat": FLAT})


def status3(meter: str, when: datetime, *, relay_open: bool, command_open: bool = False,
            quality: Quality = Quality.GOOD) -> list[Reading]:
    """Status word 3 as a poll reads it: the wire bytes decoded by the catalogue (word and flags)."""
    word = status3_word(relay_open=relay_open, command_open=command_open, pre_trip=False, protected=False)
    return [Reading(meter, v.quantity, when, v.value, v.unit, quality)
            for v in decode(STATUS3, word.to_bytes(2, "little"))]


def test_the_engine_stores_the_relay_the_customer_closed_by_the_button(tmp_path, caplog):
    store, engine = make_engine(tmp_path)
    try:
        # a reclose was permitted: confirmed with the relay still open, waiting for the button
        store.record_relay(M1, {**TRIPPED, "relay.command_open": False}, now=at(0))
        engine.observe([*status3(M1, at(1), relay_open=True),  # an earlier poll of the same round
                        *status3(M1, at(3), relay_open=True, quality=Quality.SUSPECT),  # bad: ignored
                        *status3(M1, at(2), relay_open=False),  # the button pressed
                        *status3(M2, at(2), relay_open=False),  # not assigned to an account
                        Reading(M1, "energy.active.import.total", at(2), Decimal(100), "kWh")])
        with caplog.at_level(logging.INFO, logger="meterd.control.engine"):
            summary = engine.run_pass(at(4))
        assert store.relay_state(M1) == (at(2), {**TRIPPED, "relay.open": False, "relay.command_open": False})
        assert store.relay_state(M2) is None
        assert [(c.meter, c.changed) for c in summary.relays] == [(M1, ["relay.open"])]
        assert any("meter 000000000001 (account A1): relay state changed with no command under way"
                   in r.getMessage()
                   and "relay.open yes -> no" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
        [audit] = observed_audits(store, M1)
        assert audit.detail["account"] == "A1"
        assert audit.detail["before"]["relay.open"] is True and audit.detail["after"]["relay.open"] is False
        # the next pass has nothing new: nothing written, nothing audited
        assert engine.run_pass(at(5)).relays == [] and store.relay_state(M1)[0] == at(2)
        # a late delivery of an older poll does not move the state back
        engine.observe(status3(M1, at(1), relay_open=True))
        engine.run_pass(at(6))
        assert store.relay_state(M1)[1]["relay.open"] is False and len(observed_audits(store, M1)) == 1
    finally:
        store.close()
