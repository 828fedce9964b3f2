"""What becomes an alarm (pure): anomaly events, outages, terminals offline, a growing spool, and a
meter's failed or stuck-relay commands -- with their keys, so one condition is one alarm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meterd.analytics.alarms import anomaly_conditions, outage_conditions, spool_condition, terminal_conditions
from meterd.analytics.outages import Outage
from meterd.api.alarms import command_condition, command_state
from meterd.control.command_store import Command
from meterd.control.model import CommandKind, CommandState
from meterd.storage.alarms import AlarmKind, AlarmSeverity
from meterd.storage.anomalies import Event, Kind, Severity

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def event(id_: int, kind: Kind, severity: Severity, closed: datetime | None = None) -> Event:
    return Event(id_, "000000000001", kind, severity, T0, T0, closed, "detail", ())


def command(id_: int, kind: CommandKind, state: CommandState, read_back: dict[str, bool] | None = None) -> Command:
    at = T0 + timedelta(minutes=id_)
    return Command(id_, "000000000001", "A1", kind, state, "low balance", "policy", False, at, at + timedelta(hours=2),
                   at, at, at, 1, "detail", read_back or {})


def test_anomalies_one_per_open_event_and_not_the_commands_own() -> None:
    found = anomaly_conditions([event(1, Kind.VOLTAGE, Severity.CRITICAL), event(2, Kind.NO_DATA, Severity.WARNING),
                                event(3, Kind.CLOCK, Severity.INFO), event(4, Kind.CLOCK, Severity.INFO, closed=T0),
                                event(5, Kind.COMMAND_FAILED, Severity.CRITICAL)])
    assert [(c.key, c.severity) for c in found] == [("anomaly:1", AlarmSeverity.CRITICAL),
                                                    ("anomaly:2", AlarmSeverity.MAJOR), ("anomaly:3", AlarmSeverity.MINOR)]
    assert "电压越限" in found[0].title and found[0].detail["anomaly_kind"] == "voltage_out_of_limits"


def test_outages_and_terminals() -> None:
    [o] = outage_conditions([Outage(7, "TA-1", T0, None, ("m1", "m2"), ("A1",)),
                             Outage(8, "TA-2", T0, T0, ("m3",), ())])
    assert (o.key, o.kind, o.subject, o.severity) == ("outage:7", AlarmKind.OUTAGE, "TA-1", AlarmSeverity.CRITICAL)
    terminals = [{"id": "DTU1", "channel": "d1", "kind": "dtu", "online": False, "meters": 3},
                 {"id": "DTU2", "channel": "d2", "kind": "dtu", "online": False, "meters": 1},  # never polled
                 {"id": "T3", "channel": "t3", "kind": "mqtt", "online": True, "meters": 5}]
    offline = {"d1": T0 - timedelta(hours=1), "d2": T0 - timedelta(minutes=2)}  # d2: redialling, within grace
    [t] = terminal_conditions(terminals, T0, offline)
    assert (t.key, t.subject, t.kind, t.since) == ("terminal:d1", "DTU1", AlarmKind.TERMINAL_OFFLINE, offline["d1"])
    assert len(terminal_conditions(terminals, T0 + timedelta(minutes=3), offline)) == 2
    assert terminal_conditions(terminals, T0, {}) == []  # never polled: not known to be down


def test_spool_growing_over_the_window_only() -> None:
    def at(seconds: int) -> datetime:
        return T0 + timedelta(seconds=seconds)

    growing = [(at(0), 10, 100), (at(15), 20, 200), (at(30), 20, 200), (at(45), 35, 350)]
    found = spool_condition(growing, at(45))
    assert found is not None and found.key == "spool" and found.detail["records"] == 35
    assert spool_condition(growing[:2], at(15)) is None  # too few samples
    assert spool_condition([*growing, (at(60), 5, 50)], at(60)) is None  # draining
    assert spool_condition([(at(0), 10, 1), (at(15), 10, 1), (at(30), 10, 1)], at(30)) is None  # flat
    assert spool_condition(growing, at(45 + 600)) is None  # samples older than the window
    node = spool_condition(growing, at(45), node="collector-a")  # each collector node has its own spool
    assert node is not None and node.key == "spool:collector-a" and "collector-a" in node.title


def test_a_meters_commands_decide_one_condition_per_kind() -> None:
    stuck = {"relay.open": False}
    history = [command(5, CommandKind.TRIP, CommandState.FAILED, stuck),  # newest first
               command(4, CommandKind.TRIP, CommandState.CANCELLED),
               command(3, CommandKind.TRIP, CommandState.FAILED, stuck),
               command(2, CommandKind.ALARM, CommandState.CONFIRMED),
               command(1, CommandKind.TRIP, CommandState.CONFIRMED)]
    failing, count = command_state(history, CommandKind.TRIP)
    assert failing is not None and failing.id == 5 and count == 2
    assert command_state(history, CommandKind.ALARM) == (None, 0)
    c = command_condition(failing, count)
    assert (c.key, c.kind, c.severity) == ("command:000000000001:trip", AlarmKind.RELAY_STUCK, AlarmSeverity.CRITICAL)
    assert c.detail["failures_in_a_row"] == 2 and c.detail["command_id"] == 5
    confirmed = [command(6, CommandKind.TRIP, CommandState.CONFIRMED, {"relay.open": True}), *history]
    assert command_state(confirmed, CommandKind.TRIP) == (None, 0)
    refused = command_condition(command(7, CommandKind.TRIP, CommandState.FAILED))
    assert (refused.kind, refused.severity) == (AlarmKind.COMMAND_FAILED, AlarmSeverity.MAJOR)
    expired = command_condition(command(8, CommandKind.RECLOSE, CommandState.EXPIRED))
    assert (expired.kind, expired.severity) == (AlarmKind.COMMAND_FAILED, AlarmSeverity.MINOR)
