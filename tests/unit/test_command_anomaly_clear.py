"""A failed relay command's ``command_failed`` anomaly (and its alarm) stays open while the failure
still matters and is settled when the meter's intent changed or was met: a later confirmed command
deciding the same thing (the relay; the pre-trip alarm; 保电) -- a reclose after a failed trip, a
trip after a failed reclose, the same kind that finally worked -- or the relay state the failed
command wanted, in a confirmed command's read-back or seen by the regular polls (the customer
pressed the button).  A confirmed alarm command says nothing of the relay.  Real SQLite stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from meterd.analytics.outages import OutageStore
from meterd.api.alarms import AlarmWatch, command_key, command_state
from meterd.config.prepaid import PrepaidConfig
from meterd.control.command_store import Command, RelayChange
from meterd.control.engine import PrepaidSettings
from meterd.control.model import CommandKind, CommandRequest, CommandState
from meterd.control.policy import SafetyRules, Threshold, Thresholds
from meterd.control.runtime import STILL_FAILED, PrepaidRuntime, record_command_anomaly, record_relay_changes
from meterd.control.state import AccountSpec, ControlStore
from meterd.control.tariff import Tariff, TariffKind, TariffVersion
from meterd.protocols.dlt645.catalogue import decode, status3_word
from meterd.readings import Reading
from meterd.storage.alarms import Action, AlarmState
from meterd.storage.anomalies import AnomalyStore, Event, Finding, Kind, Severity

M1 = "000000000001"
T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
TRIP, RECLOSE, ALLOWED = CommandKind.TRIP, CommandKind.RECLOSE, CommandKind.RECLOSE_ALLOWED
ALARM, ALARM_RELEASE = CommandKind.ALARM, CommandKind.ALARM_RELEASE
PROTECT, PROTECT_RELEASE = CommandKind.PROTECT, CommandKind.PROTECT_RELEASE
FAILED, CONFIRMED = CommandState.FAILED, CommandState.CONFIRMED


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def command(id_: int, kind: CommandKind, state: CommandState, read_back: dict[str, bool] | None = None, *,
            minute: int | None = None) -> Command:
    """Command ``id_`` of meter M1, ended at minute ``minute`` (default: its id)."""
    done = at(id_ if minute is None else minute)
    return Command(id_, M1, "A1", kind, state, "test", "operator", True, done, done + timedelta(hours=2), done, done,
                   done, 1, "refused by the meter" if state is FAILED else "done", read_back or {})


@pytest.fixture
def anomalies(tmp_path):
    store = AnomalyStore(tmp_path)
    yield store
    store.close()


def run(anomalies: AnomalyStore, *commands: Command) -> list[Command]:
    """Record the commands' outcomes in order, as the executor's finished hook does; their history,
    newest first (as the alarm list reads it)."""
    for c in commands:
        record_command_anomaly(anomalies, c, c.finished or T0)
    return list(reversed(commands))


def the_event(anomalies: AnomalyStore) -> Event:
    [event] = anomalies.events(meter=M1, kind=Kind.COMMAND_FAILED)
    return event


# --- noting and closing are one write ------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_settled_event_is_noted_and_closed_in_one_write(anomalies, monkeypatch) -> None:
    """A crash between noting the settlement and closing the event must not leave it noted and open:
    the settlement is one transaction, so a crash at the next write leaves it noted and closed."""
    run(anomalies, command(1, TRIP, FAILED, {"relay.open": False}))
    real, writes = AnomalyStore.update, []

    def update(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        writes.append(args)
        if len(writes) > 1:
            raise Crash
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AnomalyStore, "update", update)
    try:
        run(anomalies, command(2, RECLOSE, CONFIRMED))
    except Crash:
        pass
    event = the_event(anomalies)
    noted = "superseded by #2 reclose" in event.detail
    assert (noted, event.closed) == (True, at(2))


def test_settle_with_no_open_event_writes_nothing(anomalies) -> None:
    finding = Finding(M1, Kind.COMMAND_FAILED, Severity.WARNING, at(1), "late", ())
    assert anomalies.settle(finding, at(2)) is None
    assert anomalies.events(meter=M1) == []


def test_a_write_for_one_meter_leaves_the_other_meters_events_alone(anomalies) -> None:
    """A failed command reads only its meter's open events; with more than a few hundred meters in a
    write (a detection round) every open event is read at once. Both ways give the same events."""
    others = [f"{i:012d}" for i in range(100, 700)]
    anomalies.record([Finding(m, Kind.COMMAND_FAILED, Severity.WARNING, at(0), "old", ()) for m in others], at(0))
    run(anomalies, command(1, TRIP, FAILED))
    assert len(anomalies.open_events()) == len(others) + 1
    anomalies.record([Finding(m, Kind.COMMAND_FAILED, Severity.CRITICAL, at(3), "again", ()) for m in [*others, M1]],
                     at(3))
    assert len(anomalies.open_events()) == len(others) + 1
    assert {e.detail for e in anomalies.open_events()} == {"again"}
    _, closed = anomalies.record([], at(4), resolved=[(m, Kind.COMMAND_FAILED) for m in others])
    assert len(closed) == len(others) and [e.meter for e in anomalies.open_events()] == [M1]


# --- a later confirmed command ------------------------------------------------------------------


def test_a_failed_trip_is_settled_by_a_confirmed_reclose(anomalies) -> None:
    history = run(anomalies, command(1, TRIP, FAILED, {"relay.open": False}), command(2, RECLOSE, CONFIRMED))
    event = the_event(anomalies)
    assert event.closed == at(2)
    assert "#1 trip failed: superseded by #2 reclose, confirmed" in event.detail
    note = event.evidence[-1]
    assert (note["quantity"], note["timestamp"]) == ("command.reclose", at(2).isoformat())
    assert "superseded by #2 reclose" in note["value"] and json.loads(note[STILL_FAILED]) == []
    assert command_state(history, TRIP) == (None, 0)  # the alarm list: the trip's alarm resolves too


def test_a_failed_reclose_is_settled_by_a_confirmed_trip(anomalies) -> None:
    history = run(anomalies, command(1, RECLOSE, FAILED), command(2, TRIP, CONFIRMED, {"relay.open": True}))
    assert the_event(anomalies).closed == at(2)
    assert command_state(history, RECLOSE) == (None, 0)


@pytest.mark.parametrize(("failed", "confirmed"), [(ALLOWED, RECLOSE), (RECLOSE, ALLOWED), (ALLOWED, TRIP),
                                                   (ALARM, ALARM_RELEASE), (PROTECT_RELEASE, PROTECT)])
def test_a_confirmed_command_deciding_the_same_settles(anomalies, failed, confirmed) -> None:
    history = run(anomalies, command(1, failed, FAILED), command(2, confirmed, CONFIRMED))
    assert the_event(anomalies).closed == at(2)
    assert command_state(history, failed) == (None, 0)


def test_a_failed_trip_is_settled_by_the_trip_confirmed_at_last(anomalies) -> None:
    history = run(anomalies, command(1, TRIP, FAILED, {"relay.open": False}), command(2, TRIP, FAILED),
                  command(3, TRIP, CONFIRMED, {"relay.open": True}))
    event = the_event(anomalies)
    assert event.closed == at(3) and "#2 trip failed: #3 trip confirmed" in event.detail
    assert command_state(history, TRIP) == (None, 0)


@pytest.mark.parametrize(("failed", "confirmed", "read_back"), [
    (RECLOSE, ALARM, {"alarm.pre_trip": True, "relay.open": True}),  # the relay still open: the reclose matters
    (TRIP, ALARM_RELEASE, {"alarm.pre_trip": False, "relay.open": False}),
    (TRIP, PROTECT, {"relay.protected": True}),
    (ALARM, TRIP, {"relay.open": True, "alarm.pre_trip": False}),
    (PROTECT, RECLOSE, {"relay.open": False, "relay.protected": False}),
])
def test_a_confirmed_command_deciding_something_else_leaves_it_open(anomalies, failed, confirmed, read_back) -> None:
    history = run(anomalies, command(1, failed, FAILED), command(2, confirmed, CONFIRMED, read_back))
    event = the_event(anomalies)
    assert event.closed is None and event.severity is Severity.WARNING
    assert [f["id"] for f in json.loads(event.evidence[-1][STILL_FAILED])] == [1]
    failing, count = command_state(history, failed)
    assert failing is not None and failing.id == 1 and count == 1


def test_a_confirmation_older_than_the_failure_settles_nothing(anomalies) -> None:
    # a reclose confirmed (minute 2) before the trip failed (minute 3): the trip still matters
    record_command_anomaly(anomalies, command(2, TRIP, FAILED, minute=3), at(3))
    record_command_anomaly(anomalies, command(1, RECLOSE, CONFIRMED, minute=2), at(4))
    assert the_event(anomalies).closed is None


def test_each_thing_decided_is_settled_on_its_own(anomalies) -> None:
    run(anomalies, command(1, TRIP, FAILED, {"relay.open": False}), command(2, ALARM, FAILED))
    event = the_event(anomalies)
    assert event.severity is Severity.CRITICAL  # the trip's relay did not move
    assert [(f["kind"], f["id"]) for f in json.loads(event.evidence[-1][STILL_FAILED])] == [("trip", 1), ("alarm", 2)]
    run(anomalies, command(3, RECLOSE, CONFIRMED))  # the trip is no longer wanted; the alarm failure is left
    event = the_event(anomalies)
    assert event.closed is None and event.severity is Severity.WARNING
    assert "still failed: #2 alarm" in event.detail
    run(anomalies, command(4, ALARM_RELEASE, CONFIRMED))
    assert the_event(anomalies).closed == at(4)


def test_a_newer_failure_of_the_same_thing_replaces_the_older(anomalies) -> None:
    # the trip is no longer wanted once a reclose was asked for, even though the reclose failed too
    run(anomalies, command(1, TRIP, FAILED, {"relay.open": False}), command(2, RECLOSE, FAILED))
    event = the_event(anomalies)
    assert [f["id"] for f in json.loads(event.evidence[-1][STILL_FAILED])] == [2]
    assert event.severity is Severity.WARNING  # the stuck trip's criticality went with it
    run(anomalies, command(3, RECLOSE, CONFIRMED))
    assert the_event(anomalies).closed == at(3)


def test_an_event_recorded_before_the_list_was_kept_still_settles(anomalies) -> None:
    # as the old code wrote it: no still_failed key, the latest failure in the last evidence entry
    anomalies.record([Finding(M1, Kind.COMMAND_FAILED, Severity.CRITICAL, at(1), "command #1 trip failed",
                              ({"meter": M1, "quantity": "command.trip", "timestamp": at(1).isoformat(),
                                "value": "#1 failed"},))], at(1))
    run(anomalies, command(2, ALARM, CONFIRMED))
    assert the_event(anomalies).closed is None
    run(anomalies, command(3, RECLOSE, CONFIRMED))
    assert the_event(anomalies).closed == at(3)


# --- the relay state the failed command wanted ------------------------------------------------------


def test_a_confirmed_commands_read_back_showing_the_wanted_relay_settles(anomalies) -> None:
    run(anomalies, command(1, RECLOSE, FAILED),
        command(2, ALARM_RELEASE, CONFIRMED, {"alarm.pre_trip": False, "relay.open": False}))
    event = the_event(anomalies)
    assert event.closed == at(2) and "relay.open reads no in the read-back of #2 alarm-release" in event.detail


def change(minute: int, before: dict[str, bool], after: dict[str, bool]) -> RelayChange:
    return RelayChange(M1, at(minute), before, after, "A1")


def test_a_poll_seeing_the_relay_where_the_failed_command_wanted_settles(anomalies) -> None:
    run(anomalies, command(1, RECLOSE, FAILED, {"relay.open": True}), command(2, ALARM, FAILED))
    opened, closed = {"relay.open": True}, {"relay.open": False}
    assert record_relay_changes(anomalies, [change(0, opened, closed)], at(3)) == []  # read before the failure
    assert record_relay_changes(anomalies, [change(3, {"relay.protected": False}, {"relay.protected": True})],
                                at(3)) == []  # another flag
    assert record_relay_changes(anomalies, [change(4, opened, closed)], at(5)) == []  # the alarm's failure is left
    event = the_event(anomalies)
    assert event.closed is None and "#1 reclose failed: relay.open read no by a poll" in event.detail
    assert event.evidence[-1]["quantity"] == "relay.open"
    assert [f["id"] for f in json.loads(event.evidence[-1][STILL_FAILED])] == [2]
    [done] = record_relay_changes(anomalies, [change(6, {"alarm.pre_trip": False}, {"alarm.pre_trip": True})], at(7))
    assert done.closed == at(7) and the_event(anomalies).closed == at(7)


def test_a_failed_reclose_allowed_is_settled_by_the_button(anomalies) -> None:
    run(anomalies, command(1, ALLOWED, FAILED))
    assert record_relay_changes(anomalies, [change(2, {"relay.open": True}, {"relay.open": False})], at(2))
    assert the_event(anomalies).closed == at(2)


FLAT = Tariff("flat", (TariffVersion(effective=datetime(2020, 1, 1).date(), kind=TariffKind.FLAT,
                                     price=Decimal("0.50")),))
THRESHOLDS = Thresholds(Threshold(Decimal(20)), Threshold(Decimal(10)), Threshold(Decimal(0)), Threshold(Decimal(5)))


def status3(when: datetime, *, relay_open: bool) -> list[Reading]:
    word = status3_word(relay_open=relay_open, command_open=relay_open, pre_trip=False, protected=False)
    return [Reading(M1, v.quantity, when, v.value, v.unit) for v in decode(0x04000503, word.to_bytes(2, "little"))]


async def test_the_daemons_pass_settles_a_failed_reclose_the_customer_closed(tmp_path) -> None:
    now = [at(0)]
    config = PrepaidConfig(PrepaidSettings(THRESHOLDS, SafetyRules(dry_run=True)), {"flat": FLAT},
                           (AccountSpec("A1", "flat", {M1: Decimal(1)}, area="TA1", opening_balance=Decimal(50)),))
    runtime = PrepaidRuntime(config, meters=[], where=tmp_path, route=lambda meter: None, clock=lambda: now[0])
    try:
        runtime.store.record_relay(M1, {"relay.open": True, "relay.command_open": True}, now=at(1))
        runtime._command_finished(command(1, RECLOSE, FAILED, {"relay.open": True}, minute=1))
        assert runtime.anomalies.events(state="open", meter=M1) != []
        runtime.observe(status3(at(3), relay_open=False))  # the customer pressed the button
        now[0] = at(4)
        await runtime.run_pass()
        assert runtime.anomalies.events(state="open", meter=M1) == []
        [event] = runtime.anomalies.events(meter=M1)
        assert "relay.open read no by a poll" in event.detail and event.closed == at(4)
    finally:
        runtime.store.close()
        runtime.anomalies.close()


# --- the alarm list, through the stores -------------------------------------------------------------


def ended(store: ControlStore, kind: CommandKind, state: CommandState, minute: int,
          read_back: dict[str, bool] | None = None) -> Command:
    [queued] = store.queue_commands([CommandRequest(M1, kind, "test", "operator", account="A1", manual=True)],
                                    now=at(minute), ttl=timedelta(hours=2))
    store.mark_sent(queued.id, now=at(minute))
    if read_back:
        store.record_relay(M1, read_back, now=at(minute))
    return store.finish(queued.id, state, now=at(minute), detail="test", read_back=read_back)


@pytest.fixture
def watch(tmp_path):
    control, anomalies, outages = ControlStore(tmp_path), AnomalyStore(tmp_path), OutageStore(tmp_path)
    found = AlarmWatch(tmp_path, control=control, anomalies=anomalies, outages=outages)
    yield found
    found.close()
    for store in (control, anomalies, outages):
        store.close()


def alarm_states(watch: AlarmWatch, minute: int) -> dict[str, AlarmState]:
    watch.refresh(at(minute), force=True)
    return {a.key: a.state for a in watch.store.alarms()[0]}


def test_the_alarm_of_a_failed_trip_resolves_when_a_reclose_is_confirmed(watch) -> None:
    trip = command_key(M1, TRIP)
    ended(watch.control, TRIP, FAILED, 1, {"relay.open": False})
    assert alarm_states(watch, 2) == {trip: AlarmState.OPEN}
    ended(watch.control, ALARM_RELEASE, CONFIRMED, 3, {"alarm.pre_trip": False})  # not the relay: stays
    assert alarm_states(watch, 4) == {trip: AlarmState.OPEN}
    ended(watch.control, RECLOSE, CONFIRMED, 5, {"relay.open": False})
    assert alarm_states(watch, 6) == {trip: AlarmState.CLOSED}
    [alarm] = watch.store.alarms()[0]
    assert [s.action for s in alarm.history] == [Action.RAISED, Action.RESOLVED]


def test_the_alarm_of_a_failed_reclose_resolves_when_a_poll_sees_the_relay_closed(watch) -> None:
    reclose = command_key(M1, RECLOSE)
    ended(watch.control, RECLOSE, FAILED, 1, {"relay.open": True, "relay.command_open": False})
    assert alarm_states(watch, 2) == {reclose: AlarmState.OPEN}
    watch.control.observe_relays({M1: {"relay.protected": (at(3), False)}}, now=at(3))  # read since: still open
    assert alarm_states(watch, 4) == {reclose: AlarmState.OPEN}
    watch.control.observe_relays({M1: {"relay.open": (at(5), False)}}, now=at(5))  # the customer pressed the button
    assert alarm_states(watch, 6) == {reclose: AlarmState.CLOSED}
